"""Executors run chunk requests and hand back their results in submission order.

:class:`InProcessExecutor` is the embedded default: a pool of local processes (or the calling
process itself when one is enough), running the engine natively or, with ``container``
isolation, inside one sandbox session per process. The Celery executor offers the same
``map_ordered``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import signal
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from hermes_worker.contract import ContractError
from hermes_worker.engine import ProfileError
from hermes_worker.runners import LocalRunner, Runner, SandboxRunner
from hermes_worker.settings import Settings

__all__ = ["ExecutorError", "InProcessExecutor"]


class ExecutorError(RuntimeError):
    """Chunks could not be run at all (an infrastructure failure, not a bad item)."""


# The runner of this process: a pool process builds its own in _init_process.
_runner: Runner | None = None


def _make_runner(isolation: str, settings: Settings | None) -> Runner:
    if isolation == "container":
        assert settings is not None
        return SandboxRunner(settings, f"embedded@{socket.gethostname()}:{os.getpid()}")
    return LocalRunner()


def _init_process(isolation: str, settings: Settings | None) -> None:
    global _runner
    # Ctrl-C is the producer's to handle: pool processes must not die mid-chunk with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _runner = _make_runner(isolation, settings)
    # Pool processes end through multiprocessing, which skips atexit but runs its finalizers:
    # the sandbox container goes with its process.
    multiprocessing.util.Finalize(None, _runner.close, exitpriority=10)


def _run_in_pool(payload: dict[str, Any], worker: str) -> dict[str, Any]:
    assert _runner is not None
    return _runner.run(payload, worker)


class InProcessExecutor:
    """Run chunks in this machine's processes, with a bounded number in flight.

    Args:
        processes: how many processes normalize at once; 1 runs inline, without a pool.
        isolation: ``local`` (the engine natively) or ``container`` (a sandbox session per
            process, opened on first use and reused).
        settings: needed for ``container`` isolation (image, limits).
    """

    def __init__(self, processes: int, isolation: str = "local", settings: Settings | None = None) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        if isolation == "container" and settings is None:
            raise ValueError("container isolation needs settings")
        self.processes = processes
        self.mode = isolation
        self._settings = settings
        self.worker = f"embedded@{socket.gethostname()}"
        self._pool: ProcessPoolExecutor | None = None
        self._inline: Runner | None = None

    def describe(self) -> str:
        noun = "process" if self.processes == 1 else "processes"
        where = ""
        if self.mode == "container":
            where = ", in a sandbox container" if self.processes == 1 else ", each in its own sandbox container"
        return f"in-process ({self.processes} {noun}{where})"

    def __enter__(self) -> InProcessExecutor:
        if self.processes > 1:
            # forkserver: pool processes start from a clean interpreter, not a fork of a
            # producer that may already run threads (progress bar, signal handling).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["hermes_worker.processing"])
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=context, initializer=_init_process, initargs=(self.mode, self._settings)
            )
        else:
            self._inline = _make_runner(self.mode, self._settings)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Run every payload; yield results in the order the payloads came.

        At most ``2 * processes + 1`` chunks are read ahead, so memory stays flat however long
        the input is.

        Raises:
            ExecutorError: a pool process died, or the sandbox could not run a chunk.
        """
        if self._pool is None:
            runner = self._inline or _make_runner(self.mode, self._settings)
            for payload in payloads:
                yield _checked(lambda: runner.run(payload, self.worker))  # noqa: B023 - called at once
            return
        window = 2 * self.processes + 1
        pending: deque[Future[dict[str, Any]]] = deque()
        try:
            for payload in payloads:
                pending.append(self._pool.submit(_run_in_pool, payload, self.worker))
                if len(pending) >= window:
                    yield _checked(pending.popleft().result)
            while pending:
                yield _checked(pending.popleft().result)
        finally:
            for future in pending:
                future.cancel()


def _checked(get: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A chunk's result; failures of the machinery (not of items) become ExecutorError."""
    try:
        return get()
    except (ContractError, ProfileError):
        raise  # a bug in the producer, not an infrastructure failure
    except BrokenProcessPool as exc:
        raise ExecutorError(f"a normalization process died unexpectedly: {exc}") from exc
    except Exception as exc:
        # Items never raise (process_chunk turns them into error records): this is the sandbox.
        raise ExecutorError(f"the sandbox failed: {exc}") from exc
