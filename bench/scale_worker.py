"""A simulated worker for the scale section: a real ``hermes worker``, with no engine cost.

``python -m bench.scale_worker RECORDS [hermes worker options...]`` runs the real worker
(``hermes worker``: Celery, the prefork pool, the guard, the handler, the result stream, task
events, heartbeats) with one change: each pool process's runner answers a chunk with the records
the real engine made for those lines beforehand (``RECORDS``, written by :mod:`bench.scale`),
instead of running the engine. Everything a worker does per chunk except the engine still
happens, on the real wire: kombu takes the message from Redis, the main process checks it, the
pool process publishes the start notice and reads the chunk's lines (one round trip), decodes and
checks the :class:`~hermes_worker.wire.ChunkRequest`, encodes the
:class:`~hermes_worker.wire.ChunkResult` onto the batch's stream with its event and metrics, and
the message is acknowledged.

``RECORDS`` holds one JSON object a line: ``{"first": F, "count": C, "r": COUNTS, "t": RECORDS}``
(``r`` and ``t`` as :meth:`ChunkResult.to_stream` gives them). A chunk whose lines are not in it
(another chunking) is run by the real engine and counted in Redis under :data:`MISSES_KEY`, which
the section reports (it must stay 0: the figures would include engine work).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from hermes_worker.processing import process_chunk
from hermes_worker.wire import ChunkRequest, ChunkResult

__all__ = ["MISSES_KEY", "PrecomputedRunner", "main"]

MISSES_KEY = "bench:scale:misses"


class PrecomputedRunner:
    """A :class:`~hermes_worker.runners.Runner` that looks a chunk's result up instead of computing it."""

    mode = "local"
    restarts = 0

    def __init__(self, results: dict[tuple[int, int], ChunkResult]) -> None:
        self.results = results
        self._redis = None

    @classmethod
    def load(cls, path: Path) -> PrecomputedRunner:
        results = {}
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line)
                counts = json.loads(entry["r"])
                results[(entry["first"], entry["count"])] = ChunkResult.from_stream(counts, entry["t"].encode("utf-8"))
        return cls(results)

    def run(self, request: ChunkRequest, worker: str) -> ChunkResult:
        count = request.text.count("\n") + 1 if request.text is not None else len(request.items or [])
        found = self.results.get((request.first, count))
        if found is not None:
            return replace(found, chunk=request.chunk)
        self._missed()
        return process_chunk(request, mode="local", worker=worker)

    def _missed(self) -> None:
        if self._redis is None:
            from hermes_worker.redis_conn import connect
            from hermes_worker.settings import Settings

            settings = Settings.from_env()
            self._redis = connect(settings.result_backend, settings.broker_timeout_s)
        self._redis.incr(MISSES_KEY)

    def close(self) -> None:
        pass


def main(argv: list[str]) -> None:
    runner = PrecomputedRunner.load(Path(argv[0]))
    import hermes_worker.runtime as runtime

    # Every pool process's handler gets this runner (forked with its results already loaded).
    runtime.make_runner = lambda _tag, _settings, _worker_id: runner  # type: ignore[assignment]
    from hermes_producer.cli import main as hermes

    hermes(args=["worker", *argv[1:]], prog_name="hermes")


if __name__ == "__main__":
    main(sys.argv[1:])
