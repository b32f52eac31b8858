"""CPU time of a call, stopped once it is past a limit: how the linear-time tests measure.

A super-linear step would take hours on the large inputs of those tests; a CPU timer stops it at
the limit (the re engine and the interpreter both check for signals), so a failing case fails
in seconds. CPU time, not wall time: other work on the machine slows a run far less.

The clock is the calling thread's (``time.thread_time``), where the call runs. The process's
clock (``time.process_time``) will not do: once a process CPU timer such as that limit has been
armed, Linux reads it from the timer's tick-driven totals, and a run of 1 ms reads 0 or 4 ms.
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable
from typing import Any


class _OverLimit(BaseException):  # not an Exception: code under test must not turn it into a result
    """A run went past the time that already makes its case fail."""


def cpu_seconds(
    fn: Callable[[], Any], repeat: int = 1, limit_s: float | None = None, before: Callable[[], Any] | None = None
) -> float:
    """The least CPU time of ``repeat`` calls of ``fn`` (``before`` runs untimed before each);
    ``inf`` as soon as a call passes ``limit_s``."""
    best = float("inf")

    def stop(signum: int, frame: Any) -> None:
        raise _OverLimit

    for _ in range(repeat):
        if before is not None:
            before()
        gc.disable()  # as timeit does: a collection of the test session's objects is not the call's
        previous = signal.signal(signal.SIGPROF, stop) if limit_s is not None else None
        try:
            start = time.thread_time()
            if limit_s is not None:
                signal.setitimer(signal.ITIMER_PROF, limit_s)
            fn()
            best = min(best, time.thread_time() - start)
        except _OverLimit:
            return float("inf")
        finally:
            try:
                if limit_s is not None:
                    signal.setitimer(signal.ITIMER_PROF, 0)
            finally:
                if limit_s is not None:
                    signal.signal(signal.SIGPROF, previous)
                gc.enable()
    return best
