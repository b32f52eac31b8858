"""Executors run chunk requests and hand back their results in submission order.

:class:`InProcessExecutor` is the embedded default: a pool of local processes (or the calling
process itself when one is enough), running the engine natively or, with ``container``
isolation, inside one sandbox session per process. The Celery executor
(:mod:`.celery_executor`) is the other :class:`ChunkExecutor`.

What stops a batch here is the machinery only (a sandbox that cannot run, a profile that is
invalid), with a message naming it; a chunk that fails for any other reason gets error
records. A pool process that dies (out of memory, a crash) is replaced, and the chunk it may
have died on runs alone, split in halves if it kills its process again, until the line to
blame is alone and gets its ``engine_failure`` record.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from hermes_worker.contract import ENGINE_FAILURE, ContractError
from hermes_worker.engine import ProfileError
from hermes_worker.errors import HermesError
from hermes_worker.processing import failed_chunk_result
from hermes_worker.runners import Runner, make_runner
from hermes_worker.sandbox.errors import SandboxError
from hermes_worker.settings import Settings
from hermes_worker.wire import ChunkRequest, ChunkResult, Item, request_span

from .splitting import merge_results, split_request

__all__ = ["ChunkExecutor", "ExecutorError", "InProcessExecutor"]


class ExecutorError(HermesError):
    """Chunks could not be run at all (an infrastructure failure, not a bad item: exit 3)."""


class ChunkExecutor(Protocol):
    """Anything that runs chunk payloads and yields their results in order.

    A command enters it, runs one or more ``map_ordered``, calls ``finish`` once every result
    is safely written (not after a failure: a resumed batch still needs what it left), and
    leaves it. ``on_board``: whether the batch is on the cluster's board of running batches
    (``hermes batches``), which it is whenever Redis answers.
    """

    on_board: bool

    @property
    def mode(self) -> str:
        """Where chunks run now: ``local`` or ``container``."""
        ...

    def describe(self) -> str: ...

    def __enter__(self) -> ChunkExecutor: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[ChunkResult]: ...

    def finish(self) -> None:
        """Drop what the batch kept outside this process (a result stream); nothing to drop in-process."""
        ...

    def follow_input(self, name: str, size: int | None, position: Callable[[], int] | None) -> None:
        """The input the chunks come from: its name, size in bytes (if known) and how far it is read.

        The Celery executor shows them on the board of running batches (``hermes batches``).
        """
        ...


# Runs of one chunk alone whose process dies before it is split (or, one line, failed).
_ATTEMPTS = 2
# Parts per split (as the Celery executor does): fewer rounds to find the line to blame.
_SPLIT_WAYS = 8
# How often a wait for a result looks at the pool's processes, and how long a dead one may go
# unreported by the pool before the pool is taken for hung (it reports one within milliseconds).
_POLL_S = 0.5
_UNREPORTED_S = 3.0


# The runner of this process: a pool process builds its own in _init_process.
_runner: Runner | None = None


def _make_runner(isolation: str, settings: Settings | None) -> Runner:
    return make_runner(isolation, settings, f"embedded@{socket.gethostname()}:{os.getpid()}")


def _init_process(isolation: str, settings: Settings | None) -> None:
    global _runner
    # Ctrl-C is the producer's to handle: pool processes must not die mid-chunk with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _runner = _make_runner(isolation, settings)
    # Pool processes end through multiprocessing, which skips atexit but runs its finalizers:
    # the sandbox container goes with its process.
    multiprocessing.util.Finalize(None, _runner.close, exitpriority=10)


def _run(runner: Runner, payload: dict[str, Any], worker: str) -> ChunkResult:
    """Check a chunk payload against the contract, then run it (ContractError: the request is bad)."""
    return runner.run(ChunkRequest.from_payload(payload), worker)


def _run_in_pool(payload: dict[str, Any], worker: str) -> ChunkResult:
    assert _runner is not None
    return _run(_runner, payload, worker)


class InProcessExecutor:
    """Run chunks in this machine's processes, with a bounded number in flight.

    Args:
        processes: how many processes normalize at once; 1 runs inline, without a pool.
        isolation: ``local`` (the engine natively) or ``container`` (a sandbox session per
            process, opened on first use and reused).
        settings: needed for ``container`` isolation (image, limits).
    """

    on_board = False  # alone, it is where no Redis answers; on a cluster, batch_board.OnBoard wraps it

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
        self._hung = False  # the pool hung on a dead process (see _wait): release it, do not just drop it

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

    def finish(self) -> None:
        """Nothing outlives a batch run in-process."""

    def follow_input(self, name: str, size: int | None, position: Callable[[], int] | None) -> None:
        """Nobody else watches an in-process batch: its progress line is the command's."""

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[ChunkResult]:
        """Run every payload; yield results in the order the payloads came.

        At most ``2 * processes + 1`` chunks are read ahead, so memory stays flat however long
        the input is.

        Raises:
            ExecutorError: the sandbox could not run a chunk, the profile is invalid, or pool
                processes die even on a chunk with nothing to normalize.
        """
        if self._pool is None:
            runner = self._inline or _make_runner(self.mode, self._settings)
            for payload in payloads:
                yield self._checked(payload, lambda: _run(runner, payload, self.worker))  # noqa: B023 - called at once
            return
        window = 2 * self.processes + 1
        pending: deque[tuple[dict[str, Any], Future[ChunkResult]]] = deque()
        try:
            for payload in payloads:
                pending.append((payload, self._submit(payload)))
                if len(pending) >= window:
                    yield self._next(pending)
            while pending:
                yield self._next(pending)
        finally:
            for _payload, future in pending:
                future.cancel()

    def _submit(self, payload: dict[str, Any]) -> Future[ChunkResult]:
        assert self._pool is not None
        try:
            return self._pool.submit(_run_in_pool, payload, self.worker)
        except BrokenProcessPool as exc:
            # The pool broke before anyone asked for a result: this chunk waits its turn in
            # the window like the others, and is run again then.
            failed: Future[ChunkResult] = Future()
            failed.set_exception(exc)
            return failed

    def _next(self, pending: deque[tuple[dict[str, Any], Future[ChunkResult]]]) -> ChunkResult:
        """The result of the oldest chunk in flight."""
        payload, future = pending.popleft()
        try:
            return self._checked(payload, lambda: self._wait(future))
        except BrokenProcessPool:
            pass
        # A pool process died, and every chunk in flight with it: which one killed it is not
        # known. A new pool runs this chunk alone, then the others again.
        self._restart_pool()
        result = self._alone(payload, _ATTEMPTS - 1)
        for index, (other, other_future) in enumerate(pending):
            if not other_future.done() or other_future.exception() is not None:
                pending[index] = (other, self._submit(other))
        return result

    def _alone(self, payload: dict[str, Any], attempts: int) -> ChunkResult:
        """``payload``'s result, run with no other chunk in flight; split while its process dies."""
        for _ in range(attempts):
            try:
                future = self._submit(payload)
                return self._checked(payload, lambda: self._wait(future))  # noqa: B023 - called at once
            except BrokenProcessPool:
                self._restart_pool()
        parts = split_request(payload, _SPLIT_WAYS)
        if parts:
            # A part that kills its process is split again at once; a single line gets a retry.
            results = [self._alone(part, 1 if request_span(part)[1] > 1 else _ATTEMPTS) for part in parts]
            return merge_results(payload, results)
        self._check_pool(payload)
        message = f"the normalization process died on this line {_ATTEMPTS} times (out of memory? a crash?)"
        return failed_chunk_result(payload, ENGINE_FAILURE, message, mode=self.mode, worker=self.worker)

    def _check_pool(self, payload: dict[str, Any]) -> None:
        """Raise ExecutorError if a pool process dies even on a chunk with nothing to normalize."""
        first, _count = request_span(payload)
        probe = dict(payload, items=[Item(first, first, None, (ENGINE_FAILURE, "probe")).to_wire()])
        for key in ("text", "first", "format", "bad"):
            probe.pop(key, None)
        try:
            self._wait(self._submit(probe))
        except BrokenProcessPool as exc:
            self._restart_pool()
            raise ExecutorError(f"normalization processes die even with nothing to normalize: {exc}") from exc

    def _wait(self, future: Future[ChunkResult]) -> ChunkResult:
        """``future``'s result; BrokenProcessPool when a pool process died and the pool never says so.

        CPython's pool hangs for ever when a process is killed while it sends a result (the OOM
        killer, a kill -9): its manager thread waits for the rest of a message that never comes,
        and the other processes for the lock the dead one held. Seen about once in 40 kills.
        """
        unreported_since: float | None = None
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except FutureTimeout:
                pass
            if not _lost_a_process(self._pool):
                unreported_since = None
            elif unreported_since is None:
                unreported_since = time.monotonic()
            elif time.monotonic() - unreported_since > _UNREPORTED_S:
                self._hung = True
                raise BrokenProcessPool("a pool process died and the pool hung on its half-sent result")

    def _restart_pool(self) -> None:
        assert self._pool is not None
        old, self._pool = self._pool, None
        if self._hung:  # before shutdown, which drops the pool's references to what must be released
            _release(old)
            self._hung = False
        old.shutdown(wait=False, cancel_futures=True)
        self.__enter__()

    def _checked(self, payload: dict[str, Any], get: Callable[[], ChunkResult]) -> ChunkResult:
        """A chunk's result; error records if it failed for a reason of its own.

        Raises:
            ExecutorError: what failed is the machinery (the sandbox, the profile), named.
            BrokenProcessPool: the pool process died.
        """
        try:
            return get()
        except BrokenProcessPool:
            raise
        except ProfileError as exc:
            raise ExecutorError(f"the profile is invalid: {exc}") from exc
        except SandboxError as exc:
            raise ExecutorError(f"the sandbox failed on {_lines(payload)}: {exc}") from exc
        except Exception as exc:
            # Items never raise (process_chunk turns them into error records), so this is a
            # fault of this chunk's request or of Hermes: its lines get records saying so.
            kind = "was refused" if isinstance(exc, ContractError) else "failed"
            message = f"the chunk holding this line {kind} in-process: {type(exc).__name__}: {exc}"
            return failed_chunk_result(payload, ENGINE_FAILURE, message, mode=self.mode, worker=self.worker)


def _lost_a_process(pool: ProcessPoolExecutor | None) -> bool:
    """Whether a process of ``pool`` has exited (pool processes live as long as their pool)."""
    processes = getattr(pool, "_processes", None) or {}
    return any(process.exitcode is not None for process in list(processes.values()))


def _release(pool: ProcessPoolExecutor) -> None:
    """Let go of a hung pool: its processes killed, its manager thread freed.

    The manager thread blocks in a read of the rest of a result that will never come; the
    interpreter would wait for it at exit for ever. Bytes written into the result pipe complete
    that message: it fails to unpickle, the thread takes the pool for broken, and ends.
    """
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    manager = getattr(pool, "_executor_manager_thread", None)
    queue = getattr(pool, "_result_queue", None)
    if manager is None or queue is None:
        return
    writer = queue._writer.fileno()

    def feed() -> None:
        filler = b"\0" * 65536
        while manager.is_alive():
            try:
                os.write(writer, filler)
            except OSError:
                return

    threading.Thread(target=feed, name="hermes-release-hung-pool", daemon=True).start()


def _lines(payload: dict[str, Any]) -> str:
    first, count = request_span(payload)
    return f"line {first}" if count == 1 else f"lines {first}-{first + count - 1}"
