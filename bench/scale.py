"""One batch, many workers: how fast one batch can go when its workers cost nothing (issue 13, §3).

A private Redis, the real producer (``hermes batch``, a fresh process per run), real Celery
messages, and simulated workers (:mod:`bench.scale_worker`: a real ``hermes worker --mode local``
whose runner answers each chunk with the records the real engine made beforehand). So the
producer and Redis are the only limit, and each is one single-threaded process: one batch can
never go faster than ``1 / (producer CPU per prompt)`` or ``1 / (Redis CPU per prompt)``,
however many workers join. That is the **one-batch ceiling**, computed from CPU measured in the
same run (the rate measured on this machine is given beside it: there the simulated workers,
the producer and Redis share its cores).

Measured, per chunk size of the plan, each a big and a tiny run (CPU per prompt is marginal: the
tiny run is subtracted, see :mod:`bench.e2e`): the producer's CPU (``wait4``), Redis's
(``INFO cpu``), the simulated workers' (their process tree, from /proc). Two chunk sizes give
each part's CPU per prompt and per chunk. Every run's output is checked byte for byte against
the records computed beforehand. Then, in this process: where the producer's CPU goes, stage by
stage (:mod:`bench.producer_stages`); what the producer's once-a-second registry read costs with
8, 64 and 512 registered workers; what idle workers cost Redis per second.

The projection: one batch on 8, 64 and 512 worker processes (each with a core of its own, on
other machines), from those costs: the workers can take N / (worker CPU per prompt), where a
worker's CPU per prompt is the engine's (``process_chunk``, measured here per profile) plus the
simulated workers' (everything but the engine); the producer and Redis can take what their
ceilings leave after their per-worker costs. The smallest of the three is the throughput, and
names the part that saturates first.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hermes_producer.batch import BatchOptions, chunk_options, text_chunk_requests
from hermes_producer.reader import read_chunks
from hermes_worker.contract import KEY_WORKER, QUEUE_LOCAL
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.registry import Registry, WorkerInfo
from hermes_worker.settings import Settings
from hermes_worker.wire import ChunkRequest, ChunkResult

from .corpus import Corpus, write_jsonl
from .hermes_runs import BatchRun, hermes_env, run_batch
from .infra import RedisServer, redis_cpu_s, stop, tree_cpu_s, wait_serving
from .machine import fresh_page_us
from .plan import Plan
from .producer_stages import stage_costs
from .scale_worker import MISSES_KEY, PrecomputedRunner

__all__ = ["PROJECTED_WORKERS", "run_scale"]

TINY = 200
PROFILE = "compact"
PROJECTED_WORKERS = (8, 64, 512)
REPO = Path(__file__).resolve().parent.parent
GROUPS = ("producer", "redis", "workers")


class ScaleMeter:
    """CPU seconds of the simulated workers (/proc) and of Redis (``INFO cpu``) between start and stop."""

    def __init__(self, redis: RedisServer, worker_pid: int) -> None:
        self._client, self._pid = redis.client(), worker_pid
        self._before = (0.0, 0.0)

    def _now(self) -> tuple[float, float]:
        return redis_cpu_s(self._client), tree_cpu_s(self._pid)

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        redis_now, workers_now = self._now()
        return {"redis": redis_now - self._before[0], "workers": workers_now - self._before[1]}


def _options(chunk_size: int, profile: str = PROFILE) -> BatchOptions:
    return BatchOptions(resolve_profile(profile), "jsonl", chunk_options(Settings.from_env({})), chunk_size)


def _precompute(source: Path, chunk_size: int, profile: str = PROFILE) -> tuple[list[ChunkResult], float]:
    """Every chunk's result from the real engine, as the producer will chunk ``source``; and the CPU it took."""
    options = _options(chunk_size, profile)
    started = time.process_time()
    with source.open("rb") as stream:
        chunks = read_chunks(stream, "jsonl", options.chunk.max_prompt_bytes, chunk_size)
        results = [
            process_chunk(ChunkRequest.from_payload(p), mode="local", worker="local@bench-precomputed")
            for p in text_chunk_requests(chunks, options)
        ]
    return results, time.process_time() - started


def _write_records(results: list[ChunkResult], out: Any) -> str:
    """Append ``results`` to the simulated workers' file; the sha256 of the output they make."""
    digest = hashlib.sha256()
    for result in results:
        fields = result.to_stream()
        digest.update(fields["t"] if isinstance(fields["t"], bytes) else fields["t"].encode())
        line = {"first": result.first, "count": result.count, "r": fields["r"], "t": result.records}
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return digest.hexdigest()


class SimulatedWorkers:
    """``python -m bench.scale_worker`` on its own private Redis: a real worker that runs no engine."""

    def __init__(self, home: Path, records: Path, concurrency: int) -> None:
        self.redis = RedisServer()
        self.home, self.records, self.concurrency = home, records, concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.name = "local@bench-scale"

    def __enter__(self) -> SimulatedWorkers:
        self.redis.__enter__()
        self.env = hermes_env(self.home, self.redis.url)
        # The inputs sit next to the home: `--shared` runs (the shared mode's row) may name them.
        self.env["HERMES_SHARED_ROOT"] = str(self.home.parent)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "bench.scale_worker", str(self.records), "--mode", "local",
                   "-c", str(self.concurrency), "--name", "bench-scale", "-l", "warning"]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_serving(self.redis.client(), self.name, self.process, 120,
                         "the simulated worker (python -m bench.scale_worker)")  # fmt: skip
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def stop_worker(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=60)
            self.process = None

    def __exit__(self, *exc_info: object) -> None:
        self.stop_worker()
        self.redis.__exit__()

    def meter(self) -> ScaleMeter:
        assert self.process is not None
        return ScaleMeter(self.redis, self.process.pid)

    def args(self, chunk_size: int, *extra: str) -> list[str]:
        return ["--profile", PROFILE, "--chunk-size", str(chunk_size), "--isolation", "local", "--no-fallback", *extra]

    def tidy(self) -> None:
        client = self.redis.client()
        for key in client.scan_iter("hermes:results:*"):
            client.delete(key)


def _checker(expected: str) -> Callable[[Path], None]:
    def check(out: Path) -> None:
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        if digest != expected:
            raise RuntimeError("the scale run's output differs from the records its workers were given")

    return check


def _marginal(big: list[BatchRun], tiny: list[BatchRun], measure: Callable[[BatchRun], float]) -> float:
    """The median over pairs of what ``measure`` grows by per prompt from a tiny run to a big one."""
    return statistics.median(
        (measure(b) - measure(t)) / (b.prompts - t.prompts) for b, t in zip(big, tiny, strict=True)
    )


def _cpu_us(group: str) -> Callable[[BatchRun], float]:
    return lambda run: run.cpu_s[group] * 1e6


def _fit(rows: dict[int, dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """Each group's CPU µs a prompt and a chunk, through the smallest and largest chunk size."""
    if len(rows) < 2:
        return None
    small, big = min(rows), max(rows)
    fit = {}
    for group in (*GROUPS, "total"):
        a, b = rows[small]["cpu_us_per_prompt"][group], rows[big]["cpu_us_per_prompt"][group]
        per_chunk = (a - b) / (1 / small - 1 / big)
        fit[group] = {"per_prompt_us": round(b - per_chunk / big, 3), "per_chunk_us": round(per_chunk, 1)}
    return fit


def _registry_cost(client: Any, counts: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """CPU ms of the producer's registry read (``Registry.live``) and Redis's, with ``n`` entries."""
    registry = Registry(client, 60.0)
    out = {}
    for n in counts:
        for k in range(n):
            info = WorkerInfo(f"local@bench-fake-{k}", "local", 1, ["bench.none"], "bench", 1, {"hermes": "x"},
                              {"mode": "local"}, heartbeat_at=time.time())  # fmt: skip
            client.set(KEY_WORKER.format(name=info.name), json.dumps(asdict(info)), px=60_000)
        rounds = 20
        redis_before, started = redis_cpu_s(client), time.process_time()
        for _ in range(rounds):
            registry.live()
        producer = (time.process_time() - started) / rounds
        redis = (redis_cpu_s(client) - redis_before) / rounds
        out[str(n)] = {"producer_ms": round(producer * 1000, 3), "redis_ms": round(redis * 1000, 3)}
        for key in client.scan_iter(KEY_WORKER.format(name="local@bench-fake-*")):
            client.delete(key)
    return out


def _idle_redis(workers: SimulatedWorkers, seconds: float = 3.0) -> float:
    """Redis CPU µs a second that the idle simulated worker (one node of ``concurrency`` processes) costs."""
    client = workers.redis.client()
    before = redis_cpu_s(client)
    time.sleep(seconds)
    return (redis_cpu_s(client) - before) / seconds * 1e6


def _engine_cost(texts: list[str], chunk_size: int, work: Path) -> dict[str, float]:
    """``process_chunk`` CPU µs per prompt (parse, check, normalize, encode records), per profile."""
    out = {}
    sample = write_jsonl(texts, work / "scale-engine.jsonl")
    for profile in (PROFILE, "prompt"):
        _results, spent = _precompute(sample, chunk_size, profile)
        out[profile] = round(spent / len(texts) * 1e6, 2)
    return out


def _measure(plan: Plan, workers: SimulatedWorkers, inputs: dict[int, tuple[Path, Path, str, str]], work: Path,
             *extra: str) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Every chunk size: ``plan.repeat`` big and tiny runs, interleaved; CPU per prompt by group.
    ``extra``: more ``hermes batch`` options (``--shared``)."""
    runs: dict[int, tuple[list[BatchRun], list[BatchRun]]] = {size: ([], []) for size in inputs}
    for _ in range(plan.repeat):
        for size, (big, tiny, big_sha, tiny_sha) in inputs.items():
            for source, sha, into in ((big, big_sha, runs[size][0]), (tiny, tiny_sha, runs[size][1])):
                run = run_batch(source, work, workers.env, workers.args(size, *extra), workers.meter(), _checker(sha))
                workers.tidy()
                into.append(run)
    rows: dict[int, dict[str, Any]] = {}
    for size, (big_runs, tiny_runs) in runs.items():
        cpu = {group: round(_marginal(big_runs, tiny_runs, _cpu_us(group)), 3) for group in GROUPS}
        cpu["total"] = round(sum(cpu.values()), 3)
        rate = statistics.median(r.rate for r in big_runs)
        wall = statistics.median(r.wall_s for r in big_runs)  # the producer's start-up included
        busy = {g: round(statistics.median(r.cpu_s[g] for r in big_runs) / wall, 2) for g in GROUPS}
        faults = _marginal(big_runs, tiny_runs, lambda run: run.faults)
        rows[size] = {
            "prompts": big_runs[0].prompts,
            # Fresh pages the producer took a prompt (marginal minor faults; see fresh_page_us).
            "producer_faults_per_prompt": round(faults, 4),
            "prompts_per_s": round(rate, 1),
            "cpu_us_per_prompt": cpu,
            "cpu_us_per_chunk": {g: round(v * size, 1) for g, v in cpu.items()},
            "cores_busy": busy,
            "runs": [r.to_dict() for r in big_runs],
        }
    return rows


def _ceiling(row: dict[str, Any]) -> dict[str, Any]:
    cpu = row["cpu_us_per_prompt"]
    producer, redis = 1e6 / max(cpu["producer"], 1e-3), 1e6 / max(cpu["redis"], 1e-3)
    return {
        "producer_prompts_per_s": round(producer),
        "redis_prompts_per_s": round(redis),
        "one_batch_ceiling": round(min(producer, redis)),
        "limited_by": "producer" if producer <= redis else "redis",
        "measured_prompts_per_s": row["prompts_per_s"],
    }


def project(
    ceiling: dict[str, Any], worker_us: float, registry: dict[str, dict[str, float]], idle_redis_us_per_s: float,
    node: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """One batch on N worker processes (each with its own core): what each part can take, the minimum.

    The producer reads the registry once a second (``registry[N]``: its CPU ms, and Redis's);
    idle workers cost Redis ``idle_redis_us_per_s`` a second for each node of ``node`` processes.
    """
    rows = []
    for n in PROJECTED_WORKERS:
        cost = registry.get(str(n), {"producer_ms": 0.0, "redis_ms": 0.0})
        capacity = {
            "workers": n * 1e6 / worker_us,
            "producer": ceiling["producer_prompts_per_s"] * max(0.0, 1 - cost["producer_ms"] / 1000),
            "redis": ceiling["redis_prompts_per_s"]
            * max(0.0, 1 - cost["redis_ms"] / 1000 - idle_redis_us_per_s * (n / node) / 1e6),
        }
        first = min(capacity, key=lambda part: capacity[part])
        rows.append({
            "worker_processes": n,
            **{f"{part}_prompts_per_s": round(value) for part, value in capacity.items()},
            "prompts_per_s": round(capacity[first]),
            "saturates_first": first,
            "workers_used": round(min(1.0, capacity[first] / capacity["workers"]), 3),
        })  # fmt: skip
    return rows


def _inputs(plan: Plan, corpus: Corpus, work: Path, records: Path) -> tuple[dict[int, tuple[Path, Path, str, str]],
                                                                             float, int]:  # fmt: skip
    """The inputs of each chunk size and the records their workers answer with; engine CPU spent on the big ones."""
    inputs = {}
    spent, prompts = 0.0, 0
    with records.open("w", encoding="utf-8") as out:
        for size, count in sorted(plan.scale_chunks.items(), reverse=True):
            big = write_jsonl(corpus.sample(count), work / f"scale-{size}.jsonl")
            tiny = write_jsonl(corpus.sample(TINY), work / f"scale-{size}-tiny.jsonl")
            results, seconds = _precompute(big, size)
            spent, prompts = spent + seconds, prompts + count
            big_sha = _write_records(results, out)
            del results
            tiny_sha = _write_records(_precompute(tiny, size)[0], out)
            inputs[size] = (big, tiny, big_sha, tiny_sha)
    return inputs, spent, prompts


def run_scale(plan: Plan, corpus: Corpus, work: Path) -> dict[str, Any]:
    """The scale section (see the module docstring)."""
    from hermes_producer.cluster import Cluster

    records = work / "scale-records.jsonl"
    inputs, engine_s, engine_prompts = _inputs(plan, corpus, work, records)
    default = Settings.from_env({}).chunk_size
    headline = default if default in inputs else max(inputs)
    engine = _engine_cost(corpus.sample(min(20_000, max(plan.scale_chunks.values()))), headline, work)
    with SimulatedWorkers(work / "home", records, plan.scale_concurrency) as workers:
        rows = _measure(plan, workers, inputs, work)
        # The shared-storage mode: lines and records through files, O(chunks) through Redis.
        shared = _measure(plan, workers, {headline: inputs[headline]}, work, "--shared")[headline]
        misses = int(workers.redis.client().get(MISSES_KEY) or 0)
        idle = _idle_redis(workers)
        workers.stop_worker()  # the stages send to hermes.local: nobody may take those messages
        client = workers.redis.client()
        cluster = Cluster.connect(Settings.from_env(workers.env))
        answers = PrecomputedRunner.load(records).results
        stages = stage_costs(inputs[headline][0], _options(headline), answers, cluster, work)
        registry = _registry_cost(client, PROJECTED_WORKERS)
        client.delete(QUEUE_LOCAL)
    row = rows[headline]
    ceiling = _ceiling(row)
    producer = row["cpu_us_per_prompt"]["producer"]
    stages["rest_us_per_prompt"] = round(producer - stages["sum_us_per_prompt"], 3)
    # The stages run warm, on memory they reuse; the real producer takes fresh pages from the
    # kernel as it goes: what those cost on this machine accounts for part of the rest.
    page_us = fresh_page_us()
    stages["fresh_page_us"] = page_us
    stages["faults_us_per_prompt"] = round(row["producer_faults_per_prompt"] * page_us, 3)
    worker_us = {p: round(engine[p] + row["cpu_us_per_prompt"]["workers"], 2) for p in (PROFILE, "prompt")}
    projection = {p: project(ceiling, us, registry, idle, plan.scale_concurrency) for p, us in worker_us.items()}
    return {
        "profile": PROFILE,
        "chunk_size": headline,
        "simulated_worker_processes": plan.scale_concurrency,
        "rows": {str(size): r for size, r in sorted(rows.items())},
        "fit": _fit(rows),
        "ceiling": ceiling,
        "one_batch_ceiling": ceiling["one_batch_ceiling"],
        "shared": shared,
        "shared_ceiling": _ceiling(shared),
        "producer_stages": stages,
        "engine_us_per_prompt": engine,
        # The same for the scale inputs themselves (every chunk size; computed for the workers' answers).
        "engine_us_per_prompt_scale_inputs": round(engine_s / engine_prompts * 1e6, 2),
        "worker_us_per_prompt": worker_us,
        "registry_read": registry,
        "idle_redis_us_per_s_per_node": round(idle, 1),
        "projection": projection,
        "misses": misses,
    }
