"""Engine alone, one process: every profile next to a bare NFKC loop and ``ftfy.fix_text``.

No queue, no JSON, no files: a list of prompts in memory through one function, timed with
``perf_counter`` (wall) and ``process_time`` (CPU). Also checks that the engine's ftfy step
gives exactly ``ftfy.fix_text``'s output on every prompt of the corpus.
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

from .what_if import WHAT_IFS

__all__ = ["ftfy_equality", "measure_engine", "run_engine"]

Fn = Callable[[str], str]
# Outputs compared for equality: (candidate, reference).
_SAME = (
    ("engine_ftfy_step", "ftfy_fix_text"),
    ("what_if_ftfy_step_prefiltered", "ftfy_fix_text"),
    ("what_if_prompt_skip_unchanged", "profile_prompt"),
    ("what_if_prompt_both", "profile_prompt"),
)
_KEPT = {name for pair in _SAME for name in pair}


def _timed(fn: Fn, texts: list[str]) -> tuple[float, float, list[str]]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = [fn(t) for t in texts]
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _candidates() -> dict[str, tuple[str, Fn]]:
    """name -> (what it is, function). Engine rows run normalize() as batches do (1 validation round)."""
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
            f"`normalize(t, {name})`: one pass + 1 validation round",
            lambda t, p=profile: normalize(t, p).text,  # type: ignore[misc]
        )
        rows[f"profile_{name}_one_pass"] = (
            f"`apply_profile(t, {name})`: one pass, no validation",
            lambda t, p=profile: apply_profile(t, p),  # type: ignore[misc]
        )
    rows.update(WHAT_IFS)
    return rows


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


def run_engine(texts: list[str], repeat: int) -> dict[str, Any]:
    """The engine section: every candidate, the ftfy equality check, and the prompt/ftfy ratio."""
    rows, kept = measure_engine(texts, repeat)
    equality = ftfy_equality(texts, kept["engine_ftfy_step"], kept["ftfy_fix_text"])
    what_if_equal = {f"{a} == {b}": sum(x != y for x, y in zip(kept[a], kept[b], strict=True)) for a, b in _SAME[1:]}
    ftfy_rate = rows["ftfy_fix_text"]["prompts_per_s"]
    return {
        "prompts": len(texts),
        "mb": round(sum(len(t.encode("utf-8")) for t in texts) / 1e6, 2),
        "repeat": repeat,
        "rows": rows,
        "ftfy_equality": equality,
        "prompt_vs_ftfy": round(rows["profile_prompt"]["prompts_per_s"] / ftfy_rate, 3),
        "prompt_one_pass_vs_ftfy": round(rows["profile_prompt_one_pass"]["prompts_per_s"] / ftfy_rate, 3),
        "ftfy_step_vs_ftfy": round(rows["engine_ftfy_step"]["prompts_per_s"] / ftfy_rate, 3),
        "what_if_mismatches": what_if_equal,
        "what_if_vs_ftfy": {
            name: round(rows[name]["prompts_per_s"] / ftfy_rate, 3)
            for name in WHAT_IFS
            if name.startswith("what_if_prompt")
        },
    }
