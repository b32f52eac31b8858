"""Run the peers: start 2 worker processes, send the prompts, collect every result, in order.

Each producer does what ``hermes batch`` does around the function: read the JSONL input,
send one task per prompt (or per chunk of prompts), collect every result in input order and
write a JSONL output. Only the framework differs. Time runs from reading the input to the
last line written; CPU is the producer (this process), the workers and Redis.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

from ..infra import CpuMeter, RedisServer, stop

__all__ = ["PEERS", "PeerRun", "peer_workers"]

REPO = Path(__file__).resolve().parents[2]
Produce = Callable[[list[str], int | None, float], list[str]]


@dataclass(slots=True)
class PeerRun:
    """One timed batch through a peer."""

    prompts: int
    seconds: float
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.prompts / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "seconds": round(self.seconds, 4),
            "prompts_per_s": round(self.rate, 1),
            "cpu_s": {k: round(v, 4) for k, v in self.cpu_s.items()},
        }


def _flatten(values: list[Any], chunk: int | None) -> list[str]:
    """Results in input order: one string per task, or one list of strings per chunk task."""
    return [str(v) for v in values] if chunk is None else [str(t) for part in values for t in part]


def _celery(texts: list[str], chunk: int | None, timeout: float) -> list[str]:
    from celery.result import ResultSet

    from .celery_app import app, many, one

    with app.producer_or_acquire() as producer:
        if chunk is None:
            sent = [one.apply_async((t,), producer=producer) for t in texts]
        else:
            sent = [many.apply_async((texts[i : i + chunk],), producer=producer) for i in range(0, len(texts), chunk)]
    return _flatten(ResultSet(sent, app=app).join_native(timeout=timeout), chunk)


def _rq(texts: list[str], chunk: int | None, timeout: float) -> list[str]:
    from redis import Redis
    from rq import Queue

    from .work import REDIS_URL, compact, compact_many

    connection = Redis.from_url(REDIS_URL)
    queue = Queue("bench", connection=connection)
    args = [(t,) for t in texts] if chunk is None else [(texts[i : i + chunk],) for i in range(0, len(texts), chunk)]
    function = compact if chunk is None else compact_many
    jobs = []
    for start in range(0, len(args), 1000):  # bulk enqueue, one pipeline per thousand jobs (RQ docs)
        with connection.pipeline() as pipe:
            datas = [Queue.prepare_data(function, a, result_ttl=3600, timeout=600) for a in args[start : start + 1000]]
            jobs += queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()
    values = []
    for job in jobs:
        result = job.latest_result(timeout=int(timeout))
        if result is None or result.type != result.Type.SUCCESSFUL:
            raise RuntimeError(f"RQ job {job.id} failed: {result and result.exc_string}")
        values.append(result.return_value)
    return _flatten(values, chunk)


def _dramatiq(texts: list[str], chunk: int | None, timeout: float) -> list[str]:
    from .dramatiq_app import backend, many, one

    messages: list[Any]
    if chunk is None:
        messages = [one.send(t) for t in texts]
    else:
        messages = [many.send(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    return _flatten([m.get_result(backend=backend, block=True, timeout=int(timeout * 1000)) for m in messages], chunk)


def _commands(peer: str) -> list[list[str]]:
    py = sys.executable
    if peer == "celery":
        return [
            [
                py,
                "-m",
                "celery",
                "-A",
                "bench.peers.celery_app",
                "worker",
                "-c",
                "2",
                "-P",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "warning",
            ]
        ]
    if peer == "rq":  # SimpleWorker: the job runs in the worker process, no fork per job (RQ docs)
        return [
            [
                py,
                "-m",
                "rq.cli",
                "worker",
                "-w",
                "rq.worker.SimpleWorker",
                "-u",
                "$URL",
                "-q",
                "--disable-job-desc-logging",
                "bench",
            ]
            for _ in range(2)
        ]
    return [[py, "-m", "dramatiq", "bench.peers.dramatiq_app", "-p", "2", "-t", "1"]]


PEERS: dict[str, Produce] = {"celery": _celery, "rq": _rq, "dramatiq": _dramatiq}
TUNING = {
    "celery": "prefork -c 2; prefetch multiplier 64 (per prompt) / 4 (chunked); early ack; rate limits, gossip, "
    "mingle, heartbeat off; one reused producer connection; results via Redis backend, join_native",
    "rq": "2 × `rq worker -w SimpleWorker` (no fork per job); bulk enqueue_many in pipelines of 1000; "
    "results via latest_result (blocking read of each job's result stream)",
    "dramatiq": "`dramatiq -p 2 -t 1` (one thread per process: CPU-bound); dramatiq_queue_prefetch=64; "
    "max_retries=0; Results middleware on Redis, get_result(block=True)",
}


class PeerWorkers:
    """A peer's 2 worker processes on a private Redis; :meth:`run` times one batch."""

    def __init__(self, peer: str, redis: RedisServer, prefetch: int, log: Path) -> None:
        self.peer, self.redis = peer, redis
        self.env = dict(
            os.environ,
            BENCH_PEER_REDIS_URL=redis.url,
            BENCH_CELERY_PREFETCH=str(prefetch),
            dramatiq_queue_prefetch=str(prefetch),
            PYTHONPATH=str(REPO),
        )
        self.log = log
        self.processes: list[psutil.Popen] = []

    def start(self) -> None:
        import psutil

        os.environ["BENCH_PEER_REDIS_URL"] = self.redis.url  # the producer side reads it at import
        with self.log.open("ab") as log:
            for command in _commands(self.peer):
                command = [self.redis.url if part == "$URL" else part for part in command]
                self.processes.append(
                    psutil.Popen(command, env=self.env, cwd=REPO, stdout=log, stderr=log, start_new_session=True)
                )

    def stop(self) -> None:
        for process in self.processes:
            stop(process, timeout=30)

    def run(self, source: Path, out: Path, chunk: int | None, timeout: float = 900) -> PeerRun:
        assert self.redis.process is not None
        meter = CpuMeter({"workers": list(self.processes), "redis": [self.redis.process]})
        meter.start()
        cpu, started = time.process_time(), time.perf_counter()
        with source.open(encoding="utf-8") as handle:
            items = [json.loads(line) for line in handle]
        values = PEERS[self.peer]([item["prompt"] for item in items], chunk, timeout)
        with out.open("w", encoding="utf-8") as sink:
            for item, text in zip(items, values, strict=True):
                sink.write(json.dumps({"id": item["id"], "text": text}, ensure_ascii=False) + "\n")
        seconds = time.perf_counter() - started
        used = {"producer": time.process_time() - cpu, **meter.stop()}
        return PeerRun(len(items), seconds, used)


@contextmanager
def peer_workers(peer: str, chunked: bool, log: Path) -> Iterator[PeerWorkers]:
    """Workers of ``peer`` on a fresh Redis, warmed up (which also proves they are consuming)."""
    prefetch = 4 if chunked and peer == "celery" else 64
    with RedisServer() as redis:
        workers = PeerWorkers(peer, redis, prefetch, log)
        workers.start()
        try:
            _purge_modules()
            warm = log.with_suffix(".warm.jsonl")
            warm.write_text("".join(json.dumps({"id": i, "prompt": f"warm up {i}"}) + "\n" for i in range(64)))
            workers.run(warm, log.with_suffix(".out"), 16 if chunked else None, timeout=60)
            yield workers
        finally:
            workers.stop()


def _purge_modules() -> None:
    # The producer-side apps read the Redis URL at import: each peer run gets a fresh Redis.
    for name in [m for m in sys.modules if m.startswith("bench.peers.") and m != __name__]:
        del sys.modules[name]
