"""The headline figures, their targets, and the JSON report.

Headline definitions (all from the same ``python -m bench`` run):

- ``e2e_local_ratio``: ``hermes batch`` over Celery, one local worker with 2 processes,
  ``prompt`` profile ÷ the honest limit: two independent in-process ``hermes batch --processes 1``
  at once, with no coordination (``alone_2``: what this machine's two vCPUs really give this work).
  ``e2e_local_ratio_vs_1x2``: the old figure, ÷ (in-process on 1 process × 2).
- ``container_ratio``: the same through container workers (2 processes, one sandbox session each);
  ``container_ratio_vs_1x2`` the old figure.
- ``e2e_cpu_efficiency``: in-process CPU per prompt ÷ cluster CPU per prompt (producer, workers
  and Redis), both marginal, ``compact``: 1 would be transport for free.
- ``prompt_vs_ftfy``: engine ``normalize(t, prompt)`` prompts per CPU second ÷ ``ftfy.fix_text``
  prompts per CPU second, one process (``prompt_vs_ftfy_wall``: the same from wall-clock time, which
  on a shared machine also measures the load); passes only if the engine's ftfy step also equals
  ``ftfy.fix_text`` on every prompt.
- ``validation_overhead``: per built-in profile, what the validation round adds to one pass as
  batches run it: CPU per prompt of ``normalize(t, p, checked=True)`` (``processing.py`` runs
  ``check_prompt`` on every item and says so) ÷ ``normalize(t, p, max_validation=0)`` - 1 (the
  engine section also gives it against a bare ``apply_profile``). ``validation_overhead_max``:
  the largest of them; ``validation_overhead_unchecked_max``: the same for a caller that ran no
  ``check_prompt`` (``normalize(t, p)``, which must test an unchanged output for lone surrogates).
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
- ``chunk_fixed_ms``: CPU ms a chunk costs all processes together, whatever its size: the sweep's
  fit of CPU/prompt = per_prompt + per_chunk ÷ chunk size (16 and 4096 prompts a chunk).
- ``per_prompt_vs_dramatiq``: Hermes with one prompt a chunk (the sweep's chunk size 1) ÷ Dramatiq
  with one task a prompt, prompts per second, same run.
- ``one_batch_ceiling``: the fastest one batch can go however many workers join, prompts/s: the
  scale section's producer and Redis each a single process, at 1 / (CPU per prompt) each, with
  workers that cost nothing (``bench/scale.py``); ``scale_projection`` the throughput of one batch
  on 8, 64 and 512 worker processes and which part saturates first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .findings import chunk_cost_model

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
    "chunk_fixed_ms": ("<=", 0.6),
    "one_batch_ceiling": (">=", 500_000),
    "per_prompt_vs_dramatiq": (">=", 2.0),
    "e2e_cpu_efficiency": (">=", 0.9),
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
    unchecked = [figures["overhead_unchecked"] for figures in overhead.values() if "overhead_unchecked" in figures]
    model = chunk_cost_model(_get(sections, "sweep") or {})
    one_prompt_chunks = _get(sections, "sweep", "rows", "1", "prompts_per_s")
    dramatiq = _get(sections, "peers", "rows", "dramatiq/per_prompt", "prompts_per_s")
    return {
        "e2e_local_ratio": _get(sections, "e2e", "ratios_honest", "celery_2_vs_alone_2"),
        "e2e_local_ratio_vs_1x2": _get(sections, "e2e", "ratios", "celery_2_vs_limit"),
        "container_ratio": _get(sections, "e2e", "ratios_honest", "container_2_vs_alone_2"),
        "container_ratio_vs_1x2": _get(sections, "e2e", "ratios", "container_2_vs_limit"),
        "prompt_vs_ftfy": _get(sections, "engine", "prompt_vs_ftfy"),
        "prompt_vs_ftfy_wall": _get(sections, "engine", "prompt_vs_ftfy_wall"),
        "ftfy_equal": equal,
        "validation_overhead": validation or None,
        "validation_overhead_max": max(validation.values()) if validation else None,
        "validation_overhead_unchecked_max": max(unchecked) if unchecked else None,
        "differential_mismatches": _get(sections, "engine", "differential", "mismatches"),
        "vs_celery_per_prompt": _div(hermes_compact, celery_per_prompt),
        "vs_best_peer": _div(hermes_compact, best_rate),
        "vs_best_peer_same_work": _div(hermes_same_work, best_rate),
        "best_peer": best_key,
        "overhead_us_per_prompt": _get(sections, "e2e", "overhead_us_per_prompt"),
        "producer_us_per_prompt": _get(sections, "e2e", "cpu_us_per_prompt", "celery_2/compact", "producer"),
        "chunk_fixed_ms": round(model["per_chunk_us"] / 1000, 3) if model else None,
        "per_prompt_vs_dramatiq": _div(one_prompt_chunks, dramatiq),
        "e2e_cpu_efficiency": _get(sections, "e2e", "cpu_efficiency"),
        "one_batch_ceiling": _get(sections, "scale", "one_batch_ceiling"),
        "scale_projection": _get(sections, "scale", "projection"),
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
