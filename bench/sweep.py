"""Chunk-size sweep (one task per prompt up to 4096 prompts a task) and producer memory.

Both run ``hermes batch`` with the ``compact`` profile on the 2-process Celery workers of the
fleet, where the per-task cost shows most. CPU per prompt is marginal (a 200-prompt run of the
same command is subtracted, see :mod:`bench.e2e`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from hermes_worker.settings import Settings

from .corpus import Corpus, write_jsonl
from .e2e import Inputs, median_rate
from .hermes_runs import BatchRun, Fleet, hermes_env, run_batch
from .plan import Plan

__all__ = ["run_memory", "run_sweep"]


def _inputs_by_size(plan: Plan, inputs: Inputs, texts: list[str], work: Path) -> dict[int, tuple[Path, int]]:
    found: dict[int, tuple[Path, int]] = {}
    for size, count in plan.sweep.items():
        if count == 0 or count >= inputs.main_count:
            found[size] = (inputs.main, inputs.main_count)
        elif count == inputs.per_prompt_count:
            found[size] = (inputs.per_prompt, count)
        else:
            found[size] = (write_jsonl(texts[:count], work / f"sweep-{count}.jsonl"), count)
    return found


def _marginal(run: BatchRun, tiny: BatchRun, group: str | None = None) -> float:
    """Marginal CPU µs per prompt of ``run`` over ``tiny``: all groups, or ``group`` alone."""

    def cpu(r: BatchRun) -> float:
        return sum(r.cpu_s.values()) if group is None else r.cpu_s.get(group, 0.0)

    return (cpu(run) - cpu(tiny)) / max(1, run.prompts - tiny.prompts) * 1e6


def run_sweep(plan: Plan, inputs: Inputs, texts: list[str], fleet: Fleet, work: Path) -> dict[str, Any]:
    """Every chunk size of the plan on the 2-process local workers, interleaved across repetitions."""
    workers = fleet.get("celery_2")
    if workers is None:
        return {"skipped": fleet.failed.get("celery_2", "no workers")}
    sources = _inputs_by_size(plan, inputs, texts, work)
    runs: dict[int, list[BatchRun]] = defaultdict(list)
    cpu: dict[int, list[float]] = defaultdict(list)
    by_group: dict[int, list[dict[str, float]]] = defaultdict(list)
    for _ in range(plan.repeat):
        tiny = run_batch(inputs.tiny, work, workers.env, ["--profile", "compact", *workers.args()], workers.meter())
        for size, (source, _count) in sources.items():
            args = ["--profile", "compact", "--chunk-size", str(size), *workers.args()]
            run = run_batch(source, work, workers.env, args, workers.meter())
            workers.flush_results()
            runs[size].append(run)
            cpu[size].append(_marginal(run, tiny))
            by_group[size].append({g: _marginal(run, tiny, g) for g in run.cpu_s})
    rows: dict[str, dict[str, Any]] = {}
    for size, rs in runs.items():
        rows[str(size)] = {
            "prompts": rs[0].prompts,
            "prompts_per_s": round(median_rate(rs), 1),
            "cpu_us_per_prompt": round(statistics.median(cpu[size]), 2),
            "cpu_s_by_group": {g: round(statistics.median(r.cpu_s.get(g, 0.0) for r in rs), 3) for g in rs[0].cpu_s},
            "cpu_us_per_prompt_by_group": {
                g: round(statistics.median(m[g] for m in by_group[size]), 2) for g in by_group[size][0]
            },
            "producer_peak_mb": round(max(r.peak_rss for r in rs) / 2**20, 1),
        }
    best = max(rows, key=lambda s: float(rows[s]["prompts_per_s"]))
    return {
        "profile": "compact",
        "workers": "celery_2",
        "rows": rows,
        "fastest_chunk_size": int(best),
        "default_chunk_size": Settings.from_env({}).chunk_size,
    }


def run_memory(plan: Plan, corpus: Corpus, fleet: Fleet | None, work: Path) -> dict[str, Any]:
    """Producer peak resident memory (VmHWM) at each input size, in-process and over Celery (1 run each)."""
    sizes = plan.memory_sizes
    env = hermes_env(work / "home", None)
    modes: dict[str, tuple[dict[str, str], list[str]]] = {
        "in_process_2": (env, ["--processes", "2", "--isolation", "local"]),
    }
    workers = fleet.get("celery_2") if fleet is not None else None
    if workers is not None:
        modes["celery_2"] = (workers.env, workers.args())
    rows: dict[str, Any] = {mode: {} for mode in modes}
    for n in sizes:  # one file at a time: the 1M-prompt input is ~190 MB
        source = write_jsonl(corpus.sample(n), work / f"memory-{n}.jsonl")
        for mode, (mode_env, args) in modes.items():
            run = run_batch(source, work, mode_env, ["--profile", "compact", *args])
            rows[mode][str(n)] = {"peak_mb": round(run.peak_rss / 2**20, 1), "prompts_per_s": round(run.rate, 1)}
        source.unlink(missing_ok=True)
    for peaks in rows.values():
        first, mid, last = (peaks[str(n)]["peak_mb"] for n in (sizes[0], sizes[len(sizes) // 2], sizes[-1]))
        peaks["growth_mb"] = round(last - first, 1)
        peaks["growth_last_step_mb"] = round(last - mid, 1)
        peaks["flat"] = last - first <= 0.25 * first
    return {
        "sizes": list(sizes),
        "profile": "compact",
        "rows": rows,
        "runs_per_size": 1,
        "seen_ids_mb": _seen_ids_growth(sizes),
    }


_SEEN_IDS_PROBE = """
import json, sys
from pathlib import Path
from hermes_producer.seen_ids import SeenIds
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
marks = set(json.loads(sys.argv[1]))
seen, base, out, done = SeenIds(), rss(), {}, 0
for mark in sorted(marks):  # string ids (a numbered file would be one run), 1,024 a chunk as batches send them
    while done < mark:
        count = min(1024, mark - done)
        seen.check_chunk(done + 1, [f"id-{n}" for n in range(done, done + count)])
        done += count
    out[str(mark)] = round(rss() - base, 1)
print(json.dumps(out))
"""


def _seen_ids_growth(sizes: tuple[int, ...]) -> dict[str, float]:
    """Resident growth (MB) of the producer's duplicate-id guard alone, in a fresh process, at each size."""
    done = subprocess.run(
        [sys.executable, "-c", _SEEN_IDS_PROBE, json.dumps(list(sizes))], capture_output=True, text=True, check=False
    )
    return dict(json.loads(done.stdout)) if done.returncode == 0 else {}
