"""The headline figures, their targets, and the JSON report.

Headline definitions (all from the same ``python -m bench`` run):

- ``e2e_local_ratio``: ``hermes batch`` over Celery, one local worker with 2 processes,
  ``prompt`` profile ÷ (in-process ``hermes batch`` on 1 process × 2).
- ``container_ratio``: the same through container workers (2 processes, one sandbox session each).
- ``prompt_vs_ftfy``: engine ``normalize(t, prompt)`` prompts per CPU second ÷ ``ftfy.fix_text``
  prompts per CPU second, one process (``prompt_vs_ftfy_wall``: the same from wall-clock time, which
  on a shared machine also measures the load); passes only if the engine's ftfy step also equals
  ``ftfy.fix_text`` on every prompt.
- ``validation_overhead``: per built-in profile, what the validation round adds to one pass: CPU
  per prompt of ``normalize(t, p)`` ÷ ``normalize(t, p, max_validation=0)`` - 1 (the same call;
  the engine section also gives it against a bare ``apply_profile``). ``validation_overhead_max``:
  the largest of them; ``validation_overhead_checked_max``: the same with ``checked=True`` (what
  batches would pay once ``processing.py`` tells ``normalize`` that ``check_prompt`` ran).
- ``differential_mismatches``: cases (prompt × built-in profile × ``max_validation`` 0-3 × explain
  or not) where any field of ``normalize()``'s result differs from the frozen reference engine's
  (``tests/reference_engine``).
- ``vs_celery_per_prompt``: Hermes over Celery (2 processes, ``compact``, default chunks) ÷ plain
  Celery with one task per prompt (2 processes, the ``compact`` function).
- ``vs_best_peer``: the same Hermes figure ÷ the fastest peer configuration (either mode).
- ``overhead_us_per_prompt``: marginal CPU µs per prompt of producer + workers + Redis over Celery
  (``compact``), minus the in-process run's.
- ``producer_us_per_prompt``: the producer's share of that Celery run, marginal CPU µs per prompt
  (``python -m bench.producer`` measures it alone, with the guard and the producer's memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "headline", "targets", "write_json"]

# name -> (comparison, threshold)
TARGETS: dict[str, tuple[str, float]] = {
    "e2e_local_ratio": (">=", 0.85),
    "container_ratio": (">=", 0.75),
    "prompt_vs_ftfy": (">=", 5.0),
    "validation_overhead_max": ("<=", 0.25),
    "differential_mismatches": ("<=", 0),
    "vs_celery_per_prompt": (">=", 10.0),
    "vs_best_peer": (">=", 2.0),
    "overhead_us_per_prompt": ("<=", 3.0),
    "producer_us_per_prompt": ("<=", 1.5),
}


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def headline(sections: dict[str, Any]) -> dict[str, Any]:
    """The headline figures from the sections' results (None where a section did not run)."""
    hermes_compact = _get(sections, "e2e", "rates", "celery_2/compact")
    hermes_same_work = _get(sections, "e2e", "rates", "celery_2/compact/no_validation")
    celery_per_prompt = _get(sections, "peers", "rows", "celery/per_prompt", "prompts_per_s")
    best_key = _get(sections, "peers", "best")
    best_rate = _get(sections, "peers", "rows", best_key, "prompts_per_s") if best_key else None
    equal = _get(sections, "engine", "ftfy_equality", "equal")
    overhead = _get(sections, "engine", "validation_overhead") or {}
    validation = {name: figures["overhead"] for name, figures in overhead.items()}
    checked = [figures["overhead_checked"] for figures in overhead.values() if "overhead_checked" in figures]
    return {
        "e2e_local_ratio": _get(sections, "e2e", "ratios", "celery_2_vs_limit"),
        "container_ratio": _get(sections, "e2e", "ratios", "container_2_vs_limit"),
        "prompt_vs_ftfy": _get(sections, "engine", "prompt_vs_ftfy"),
        "prompt_vs_ftfy_wall": _get(sections, "engine", "prompt_vs_ftfy_wall"),
        "ftfy_equal": equal,
        "validation_overhead": validation or None,
        "validation_overhead_max": max(validation.values()) if validation else None,
        "validation_overhead_checked_max": max(checked) if checked else None,
        "differential_mismatches": _get(sections, "engine", "differential", "mismatches"),
        "vs_celery_per_prompt": _div(hermes_compact, celery_per_prompt),
        "vs_best_peer": _div(hermes_compact, best_rate),
        "vs_best_peer_same_work": _div(hermes_same_work, best_rate),
        "best_peer": best_key,
        "overhead_us_per_prompt": _get(sections, "e2e", "overhead_us_per_prompt"),
        "producer_us_per_prompt": _get(sections, "e2e", "cpu_us_per_prompt", "celery_2/compact", "producer"),
    }


def targets(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with its value and pass/fail (None when not measured)."""
    out = {}
    for name, (op, threshold) in TARGETS.items():
        value = figures.get(name)
        passed = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        if name == "prompt_vs_ftfy" and passed is not None:
            passed = passed and bool(figures.get("ftfy_equal"))
        out[name] = {"value": value, "target": f"{op} {threshold:g}", "pass": passed}
    return out


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
