"""End to end: the in-process limit, Celery with 1 and 2 local worker processes, container
sessions, and the CPU they spend beyond the in-process run, all measured in the same run.

Each repetition runs every configuration once, back to back; ratios are taken within a
repetition and the reported figure is their median. Two limits: the honest one (issue 13,
section 4), ``alone_2``: two independent in-process ``hermes batch --processes 1`` commands at
once, with no coordination at all, i.e. what this machine's cores really give this work (two
vCPUs do not scale linearly); and the old one, in-process ``hermes batch`` on one process × the
number of worker processes of the configuration it is compared with.

CPU per prompt is *marginal*: (CPU of the run − CPU of the same command on a 200-prompt input)
÷ (prompt difference), so interpreter start-up and worker discovery, paid once per command,
are not spread over the prompts. The gross figure is reported too.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hermes_worker.settings import Settings

from .corpus import write_jsonl
from .hermes_runs import BatchRun, Fleet, hermes_env, run_batch, run_parallel
from .plan import Plan

__all__ = ["Inputs", "median_rate", "run_e2e"]

TINY = 200


@dataclass(frozen=True, slots=True)
class Inputs:
    """The JSONL inputs every section shares."""

    main: Path
    main_count: int
    tiny: Path
    per_prompt: Path
    per_prompt_count: int

    @classmethod
    def write(cls, texts: list[str], per_prompt: int, work: Path) -> Inputs:
        return cls(
            write_jsonl(texts, work / "corpus.jsonl"),
            len(texts),
            write_jsonl(texts[:TINY], work / "tiny.jsonl"),
            write_jsonl(texts[:per_prompt], work / "per_prompt.jsonl"),
            min(per_prompt, len(texts)),
        )


def median_rate(runs: list[BatchRun]) -> float:
    return statistics.median(r.rate for r in runs) if runs else 0.0


def _cpu(run: BatchRun, group: str) -> float:
    return sum(run.cpu_s.values()) if group == "total" else run.cpu_s.get(group, 0.0)


def marginal_cpu_us(full: list[BatchRun], tiny: list[BatchRun]) -> dict[str, float]:
    """Median marginal CPU µs per prompt, by process group and in total."""
    if not full or not tiny:
        return {}
    out: dict[str, float] = {}
    for group in [*full[0].cpu_s, "total"]:
        values = [
            (_cpu(big, group) - _cpu(small, group)) / max(1, big.prompts - small.prompts) * 1e6
            for big, small in zip(full, tiny, strict=False)
        ]
        out[group] = round(statistics.median(values), 2)
    return out


def _configs(inputs: Inputs, fleet: Fleet | None, containers: bool) -> list[tuple[str, Any, Path, list[str]]]:
    """(row name, workers or None for in-process, input, batch arguments), in running order."""
    inproc = ["--isolation", "local"]
    rows: list[tuple[str, Any, Path, list[str]]] = [
        ("in_process_1/prompt", None, inputs.main, ["--profile", "prompt", "--processes", "1", *inproc]),
        ("in_process_2/prompt", None, inputs.main, ["--profile", "prompt", "--processes", "2", *inproc]),
        ("in_process_1/compact", None, inputs.main, ["--profile", "compact", "--processes", "1", *inproc]),
        ("in_process_1/compact/tiny", None, inputs.tiny, ["--profile", "compact", "--processes", "1", *inproc]),
    ]
    rows.append(("alone_2/prompt", "parallel", inputs.main, ["--profile", "prompt", "--processes", "1", *inproc]))
    if containers:
        rows.append(
            (
                "embedded_container_2/prompt",
                None,
                inputs.main,
                ["--profile", "prompt", "--processes", "2", "--isolation", "container"],
            )
        )
    if fleet is None:
        return rows
    for name in ("celery_1", "celery_2", *(("container_2",) if containers else ())):
        rows.append((f"{name}/prompt", name, inputs.main, ["--profile", "prompt"]))
    rows += [
        ("celery_2/compact", "celery_2", inputs.main, ["--profile", "compact"]),
        ("celery_2/compact/tiny", "celery_2", inputs.tiny, ["--profile", "compact"]),
        ("celery_2/compact/no_validation", "celery_2", inputs.main, ["--profile", "compact", "--max-validation", "0"]),
    ]
    return rows


def _ratio(
    runs: dict[str, list[BatchRun]], name: str, processes: int, wall: bool = False, limit: str = "in_process_1/prompt"
) -> float | None:
    """Median over repetitions of (rate of ``name``) / (processes × rate of ``limit``).

    ``wall``: rates from each command's whole wall time (start-up and worker discovery included)
    instead of the batch's own summary time. The honest limit (``alone_2/prompt``) is one run of
    all the processes: ``processes`` is then 1.
    """
    base, got = runs.get(limit, []), runs.get(name, [])
    if not base or not got:
        return None

    def rate(run: BatchRun) -> float:
        return run.prompts / run.wall_s if wall else run.rate

    return round(statistics.median(rate(g) / (processes * rate(b)) for g, b in zip(got, base, strict=False)), 3)


def run_e2e(plan: Plan, inputs: Inputs, fleet: Fleet | None, containers: bool, work: Path) -> dict[str, Any]:
    """Every end-to-end configuration, ``plan.repeat`` times, interleaved; rates, ratios, CPU."""
    env = hermes_env(work / "home", None)
    runs: dict[str, list[BatchRun]] = defaultdict(list)
    skipped: dict[str, str] = {}
    for _ in range(plan.repeat):
        for name, set_name, source, args in _configs(inputs, fleet, containers):
            if set_name is None:
                runs[name].append(run_batch(source, work, env, args))
                continue
            if set_name == "parallel":
                runs[name].append(run_parallel(source, work, env, args, 2))
                continue
            assert fleet is not None
            workers = fleet.get(set_name)
            if workers is None:
                skipped[name] = fleet.failed[set_name]
                continue
            runs[name].append(run_batch(source, work, workers.env, [*args, *workers.args()], workers.meter()))
            workers.flush_results()
    limit_1 = median_rate(runs["in_process_1/prompt"])
    overhead = marginal_cpu_us(runs.get("celery_2/compact", []), runs.get("celery_2/compact/tiny", []))
    inproc = marginal_cpu_us(runs["in_process_1/compact"], runs["in_process_1/compact/tiny"])
    return {
        "default_chunk_size": Settings.from_env({}).chunk_size,
        "limit_1_process": round(limit_1, 1),
        "limit_2_processes": round(2 * limit_1, 1),
        "rates": {name: round(median_rate(rs), 1) for name, rs in runs.items()},
        "limit_alone_2": round(median_rate(runs.get("alone_2/prompt", [])), 1),
        "ratios_honest": {
            "celery_1_vs_alone_1": _ratio(runs, "celery_1/prompt", 1),
            "celery_2_vs_alone_2": _ratio(runs, "celery_2/prompt", 1, limit="alone_2/prompt"),
            "container_2_vs_alone_2": _ratio(runs, "container_2/prompt", 1, limit="alone_2/prompt"),
            "embedded_container_2_vs_alone_2": _ratio(runs, "embedded_container_2/prompt", 1, limit="alone_2/prompt"),
            "in_process_2_vs_alone_2": _ratio(runs, "in_process_2/prompt", 1, limit="alone_2/prompt"),
            "alone_2_vs_1x2": _ratio(runs, "alone_2/prompt", 2),
        },
        "ratios": {
            "celery_1_vs_limit": _ratio(runs, "celery_1/prompt", 1),
            "celery_2_vs_limit": _ratio(runs, "celery_2/prompt", 2),
            "container_2_vs_limit": _ratio(runs, "container_2/prompt", 2),
            "embedded_container_2_vs_limit": _ratio(runs, "embedded_container_2/prompt", 2),
            "in_process_2_vs_limit": _ratio(runs, "in_process_2/prompt", 2),
        },
        "ratios_wall_clock": {
            "celery_1_vs_limit": _ratio(runs, "celery_1/prompt", 1, wall=True),
            "celery_2_vs_limit": _ratio(runs, "celery_2/prompt", 2, wall=True),
            "container_2_vs_limit": _ratio(runs, "container_2/prompt", 2, wall=True),
        },
        "cpu_us_per_prompt": {
            "in_process_1/compact": inproc,
            "celery_2/compact": overhead,
            # Pool runs are left out: their worker processes are not children the producer waits for.
            "gross": {
                name: round(statistics.median(r.cpu_us_per_prompt() for r in rs), 2)
                for name, rs in runs.items()
                if not name.startswith(("in_process_2", "embedded"))
            },
        },
        "overhead_us_per_prompt": round(overhead["total"] - inproc["total"], 2) if overhead and inproc else None,
        # In-process CPU per prompt / cluster CPU per prompt (producer, workers, Redis): 1 would be free transport.
        "cpu_efficiency": round(inproc["total"] / overhead["total"], 3) if overhead and inproc else None,
        "skipped": skipped,
        "runs": {name: [r.to_dict() for r in rs] for name, rs in runs.items()},
    }
