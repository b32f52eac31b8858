"""Executors run chunk requests and hand back their results in submission order.

:class:`InProcessExecutor` is the embedded default: a pool of local processes (or the calling
process itself when one is enough). Broker-backed executors offer the same ``map_ordered``.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from hermes_worker.processing import process_chunk

__all__ = ["ExecutorError", "InProcessExecutor"]


class ExecutorError(RuntimeError):
    """Chunks could not be run at all (an infrastructure failure, not a bad item)."""


def _ignore_sigint() -> None:
    # Ctrl-C is the producer's to handle: pool processes must not die mid-chunk with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_local(payload: dict[str, Any], worker: str) -> dict[str, Any]:
    return process_chunk(payload, mode="local", worker=worker)


class InProcessExecutor:
    """Run chunks in this machine's processes, with a bounded number in flight.

    Args:
        processes: how many processes normalize at once; 1 runs inline, without a pool.
    """

    mode = "local"

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes = processes
        self.worker = f"embedded@{socket.gethostname()}"
        self._pool: ProcessPoolExecutor | None = None

    def describe(self) -> str:
        noun = "process" if self.processes == 1 else "processes"
        return f"in-process ({self.processes} {noun})"

    def __enter__(self) -> InProcessExecutor:
        if self.processes > 1:
            # forkserver: pool processes start from a clean interpreter, not a fork of a
            # producer that may already run threads (progress bar, signal handling).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["hermes_worker.processing"])
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_ignore_sigint)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Run every payload; yield results in the order the payloads came.

        At most ``2 * processes + 1`` chunks are read ahead, so memory stays flat however long
        the input is.

        Raises:
            ExecutorError: a pool process died.
        """
        if self._pool is None:
            for payload in payloads:
                yield _run_local(payload, self.worker)
            return
        window = 2 * self.processes + 1
        pending: deque[Future[dict[str, Any]]] = deque()
        try:
            for payload in payloads:
                pending.append(self._pool.submit(_run_local, payload, self.worker))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as exc:
            raise ExecutorError(f"a normalization process died unexpectedly: {exc}") from exc
        finally:
            for future in pending:
                future.cancel()
