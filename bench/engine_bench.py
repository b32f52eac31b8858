"""Engine alone, one process: every profile next to a bare NFKC loop and ``ftfy.fix_text``.

No queue, no JSON, no files: a list of prompts in memory through one function, timed with
``perf_counter`` (wall) and ``process_time`` (CPU). Each profile three ways: ``normalize`` as
batches run it (one validation round), ``normalize`` with ``max_validation=0`` (what validation
adds is the difference), and ``apply_profile`` (one bare pass). Also checks that the engine's
ftfy step gives exactly ``ftfy.fix_text``'s output on every prompt, and that ``normalize`` gives
exactly what the frozen reference engine (``tests/reference_engine``) gives, field by field.
"""

from __future__ import annotations

import gc
import statistics
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import ftfy

from hermes_worker.engine import BUILTIN_PROFILES, apply_profile, normalize
from hermes_worker.engine.steps import fix_with_ftfy

__all__ = ["differential", "ftfy_equality", "measure_engine", "run_engine", "validation_overhead"]

Fn = Callable[[str], str]
_KEPT = ("engine_ftfy_step", "ftfy_fix_text")  # outputs compared for equality


def _timed(fn: Fn, texts: list[str]) -> tuple[float, float, list[str]]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = [fn(t) for t in texts]
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _candidates() -> dict[str, tuple[str, Fn]]:
    """name -> (what it is, function)."""
    rows: dict[str, tuple[str, Fn]] = {
        "unicodedata_nfkc": (
            "bare `unicodedata.normalize('NFKC', t)` loop",
            lambda t: unicodedata.normalize("NFKC", t),
        ),
        "ftfy_fix_text": ("`ftfy.fix_text(t)` alone", ftfy.fix_text),
        "engine_ftfy_step": ("Hermes' ftfy step alone (`fix_with_ftfy`)", fix_with_ftfy),
    }
    for name, profile in BUILTIN_PROFILES.items():
        rows[f"profile_{name}"] = (
            f"`normalize(t, {name})`: one pass + 1 validation round, for a caller that did not run `check_prompt`",
            lambda t, p=profile: normalize(t, p).text,  # type: ignore[misc]
        )
        rows[f"profile_{name}_checked"] = (
            f"`normalize(t, {name}, checked=True)`: as batches run it (processing.py ran `check_prompt`)",
            lambda t, p=profile: normalize(t, p, checked=True).text,  # type: ignore[misc]
        )
        rows[f"profile_{name}_no_validation"] = (
            f"`normalize(t, {name}, max_validation=0)`: the same call without validation",
            lambda t, p=profile: normalize(t, p, 0).text,  # type: ignore[misc]
        )
        rows[f"profile_{name}_one_pass"] = (
            f"`apply_profile(t, {name})`: one bare pass, no result object",
            lambda t, p=profile: apply_profile(t, p),  # type: ignore[misc]
        )
    reference = _reference()
    if reference is not None:  # the engine before issue 13, in the same run: before/after ratios
        for name, profile in BUILTIN_PROFILES.items():
            old = reference.Profile(name, profile.steps)
            rows[f"reference_{name}"] = (
                f"`normalize(t, {name})` of the frozen reference engine (before issue 13)",
                lambda t, p=old: reference.normalize(t, p).text,  # type: ignore[misc]
            )
    return rows


def _reference() -> Any:
    """``tests.reference_engine`` (the engine at c6a5bcc), or None in a checkout without tests/."""
    try:
        from tests import reference_engine
    except ImportError:
        return None
    return reference_engine


def measure_engine(texts: list[str], repeat: int) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Median prompts/s and MB/s of every candidate over ``texts``, ``repeat`` runs each.

    Runs are interleaved (every candidate once, then again) so that a burst of load from
    elsewhere on the machine hits all of them alike. Returns the rows and the first run's
    outputs of the two ftfy candidates, for :func:`ftfy_equality`.
    """
    size_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    candidates = _candidates()
    walls: dict[str, list[float]] = {name: [] for name in candidates}
    cpus: dict[str, list[float]] = {name: [] for name in candidates}
    kept: dict[str, list[str]] = {}
    for _ in range(repeat):
        for name, (_what, fn) in candidates.items():
            wall, cpu, out = _timed(fn, texts)
            walls[name].append(wall)
            cpus[name].append(cpu)
            if name in _KEPT and name not in kept:
                kept[name] = out
    rows = {}
    for name, (what, _fn) in candidates.items():
        wall = statistics.median(walls[name])
        rows[name] = {
            "what": what,
            "prompts_per_s": round(len(texts) / wall, 1),
            "mb_per_s": round(size_mb / wall, 2),
            "cpu_us_per_prompt": round(statistics.median(cpus[name]) / len(texts) * 1e6, 2),
            "runs_s": [round(w, 3) for w in walls[name]],
        }
    return rows, kept


def ftfy_equality(texts: list[str], ours: list[str], theirs: list[str]) -> dict[str, Any]:
    """Compare the engine's ftfy step with ``ftfy.fix_text`` on every prompt."""
    mismatches = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    repaired = sum(1 for text, fixed in zip(texts, theirs, strict=True) if text != fixed)
    return {
        "checked": len(texts),
        "ftfy_changed": repaired,
        "mismatches": len(mismatches),
        "examples": [
            {"index": i, "input": texts[i][:120], "hermes": ours[i][:120], "ftfy": theirs[i][:120]}
            for i in mismatches[:5]
        ],
        "equal": not mismatches,
    }


def validation_overhead(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per profile, what the validation round adds, from CPU µs per prompt (immune to other load).

    ``overhead``: ``normalize(checked=True)`` ÷ ``normalize(max_validation=0)`` - 1, the call as
    batches make it (``processing.py`` runs ``check_prompt`` on every item first, so an unchanged
    output needs no lone-surrogate test) with and without validation; ``overhead_unchecked``: the
    same for a caller that ran no ``check_prompt``; ``vs_one_pass``: ``normalize`` ÷
    ``apply_profile`` - 1, which also counts building the result object.
    """
    out = {}
    for name in BUILTIN_PROFILES:
        full = rows[f"profile_{name}"]["cpu_us_per_prompt"]
        checked = rows[f"profile_{name}_checked"]["cpu_us_per_prompt"]
        bare = rows[f"profile_{name}_no_validation"]["cpu_us_per_prompt"]
        one = rows[f"profile_{name}_one_pass"]["cpu_us_per_prompt"]
        out[name] = {
            "us": full,
            "no_validation_us": bare,
            "one_pass_us": one,
            "checked_us": checked,
            "overhead": round(checked / bare - 1, 3) if bare else 0.0,
            "overhead_unchecked": round(full / bare - 1, 3) if bare else 0.0,
            "vs_one_pass": round(full / one - 1, 3) if one else 0.0,
        }
    return out


def differential(texts: list[str]) -> dict[str, Any]:
    """``normalize`` against the frozen reference engine on ``texts``: every built-in profile,
    ``max_validation`` 0 to 3, with and without ``explain``, every field of the result."""
    try:
        from tests.support.differential import MAX_VALIDATIONS, compare
    except ImportError as exc:  # a checkout without tests/: say so rather than fail the section
        return {"error": f"the reference engine is not importable: {exc}", "mismatches": None}
    started = time.perf_counter()
    count, first = compare(texts, BUILTIN_PROFILES.values())
    return {
        "cases": len(texts) * len(BUILTIN_PROFILES) * len(MAX_VALIDATIONS) * 2,
        "mismatches": count,
        "examples": [str(m) for m in first[:5]],
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_engine(texts: list[str], repeat: int) -> dict[str, Any]:
    """The engine section: every candidate, the ftfy equality check, ratios, validation, the differential."""
    rows, kept = measure_engine(texts, repeat)
    equality = ftfy_equality(texts, kept["engine_ftfy_step"], kept["ftfy_fix_text"])
    ftfy_rate = rows["ftfy_fix_text"]["prompts_per_s"]
    cpu = {name: row["cpu_us_per_prompt"] for name, row in rows.items()}
    ftfy_cpu = cpu["ftfy_fix_text"]
    return {
        "prompts": len(texts),
        "mb": round(sum(len(t.encode("utf-8")) for t in texts) / 1e6, 2),
        "repeat": repeat,
        "rows": rows,
        "ftfy_equality": equality,
        # CPU time: one process doing nothing but this, on a machine others may share. Wall-clock
        # rates there measure the scheduler too (the two runs sit seconds apart).
        "prompt_vs_ftfy": round(ftfy_cpu / cpu["profile_prompt"], 3),
        "prompt_vs_ftfy_wall": round(rows["profile_prompt"]["prompts_per_s"] / ftfy_rate, 3),
        "prompt_one_pass_vs_ftfy": round(rows["profile_prompt_one_pass"]["prompts_per_s"] / ftfy_rate, 3),
        "ftfy_step_vs_ftfy": round(rows["engine_ftfy_step"]["prompts_per_s"] / ftfy_rate, 3),
        "validation_overhead": validation_overhead(rows),
        "speedup_vs_reference": {
            name: round(cpu[f"reference_{name}"] / cpu[f"profile_{name}"], 2)
            for name in BUILTIN_PROFILES
            if f"reference_{name}" in cpu
        },
        "differential": differential(texts),
    }
