"""The peers section: plain Celery, RQ and Dramatiq, one task per prompt and 256-prompt chunks."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..e2e import Inputs
from ..plan import Plan
from .runner import TUNING, PeerRun, peer_workers

__all__ = ["CHUNK", "run_peers"]

CHUNK = 256


def _summary(runs: list[PeerRun]) -> dict[str, Any]:
    rate = statistics.median(r.rate for r in runs)
    cpu = statistics.median(sum(r.cpu_s.values()) / r.prompts * 1e6 for r in runs)
    return {
        "prompts": runs[0].prompts,
        "prompts_per_s": round(rate, 1),
        "cpu_us_per_prompt": round(cpu, 2),
        "runs": [r.to_dict() for r in runs],
    }


def run_peers(plan: Plan, inputs: Inputs, work: Path) -> dict[str, Any]:
    """Each peer with 2 worker processes, in both modes; median of ``plan.repeat`` runs each."""
    rows: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for peer in ("celery", "rq", "dramatiq"):
        for mode, source, chunk in (("per_prompt", inputs.per_prompt, None), ("chunked", inputs.main, CHUNK)):
            key = f"{peer}/{mode}"
            try:
                with peer_workers(peer, chunk is not None, work / f"{peer}-{mode}.log") as workers:
                    runs = [workers.run(source, work / "peer-out.jsonl", chunk) for _ in range(plan.repeat)]
            except Exception as exc:  # a peer that fails is reported, the others still run
                errors[key] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            rows[key] = _summary(runs)
    best = max((k for k in rows), key=lambda k: rows[k]["prompts_per_s"], default=None)
    return {
        "function": "hermes_worker.engine.apply_profile(text, compact): NFKC + collapse_whitespace, one pass",
        "chunk": CHUNK,
        "tuning": TUNING,
        "rows": rows,
        "best": best,
        "errors": errors,
    }
