"""A CPU-time budget per item: the defence behind the engine's linear-time steps.

Every step runs in linear time (``tests/test_hostile_time.py`` feeds each one megabytes of
hostile text). This budget is what stops an item if a step, ftfy or CPython turns out to be
slower on some input nobody has tried yet: an item whose normalization uses more CPU time than
its budget raises :class:`ItemTooSlow` (code ``too_slow``), which becomes that item's error
record while the other items of its chunk go on.

The budget grows with the prompt's UTF-8 size: ``scale × (1 s + 30 s per MiB)``, 31 s for a
1 MiB prompt, about twice the slowest hostile megabyte measured through the ``prompt`` profile
(15 s of CPU on a slow core: mojibake that ftfy peels one character a pass, ``python -m
bench.hostile``), and well inside a chunk's soft time limit (96 s by default). Ordinary prompts
take milliseconds. It counts CPU time, not wall time: a loaded machine must not turn good items
into errors. ``scale`` comes from ``HERMES_ITEM_TIME_BUDGET`` through the chunk request (0 turns
the budget off; the chunk's own time limit still applies, and it also bounds a chunk of many
slow items, each within its budget).

How it is enforced:

- In the main thread of a process, an ``ITIMER_PROF`` timer delivers SIGPROF once the item has
  used its budget, and the handler raises :class:`ItemTooSlow`. Python runs the handler between
  bytecodes, and the ``re`` engine checks for signals every few thousand steps, so even a runaway
  regular expression stops. Every process that runs chunks does so in its main thread: Celery's
  prefork pool processes, the sandbox server, the in-process pool's processes and the CLI's inline
  path. The handler is installed once per chunk (:func:`chunk_clock`) and the previous handler
  restored after it; the timer is armed for each item and disarmed after it, always. When the
  signal is not ours to take (another SIGPROF handler or a running profiling timer), the item
  falls back to the check below.
- Anywhere else (a library user's thread: signals only reach the main thread), the thread's CPU
  clock is checked between steps: a single step that never returns is not stopped there.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from .errors import ItemError
from .normalize import Normalized, normalize
from .profiles import Profile

__all__ = [
    "MAX_BUDGET_SCALE",
    "Deadline",
    "ItemTooSlow",
    "chunk_clock",
    "item_budget_s",
    "normalize_within_budget",
]

BASE_S = 1.0
PER_MIB_S = 30.0
# The largest scale a chunk request may carry: a budget 100 times the default is already far
# beyond any chunk's time limit, which then stops the chunk as it did before budgets existed.
MAX_BUDGET_SCALE = 100.0

_MIB = 1024 * 1024
P = ParamSpec("P")
R = TypeVar("R")


class ItemTooSlow(ItemError):
    """An item used more CPU time than its budget."""

    def __init__(self, budget_s: float, prompt: str) -> None:
        super().__init__(
            "too_slow",
            f"normalization took longer than its budget of {budget_s:.3g} s of CPU time "
            f"(prompt of {utf8_size(prompt):,} bytes)",
        )
        self.budget_s = budget_s


def utf8_size(text: str) -> int:
    """The length of ``text`` in UTF-8, without encoding ASCII."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def item_budget_s(prompt: str, scale: float = 1.0) -> float | None:
    """The CPU seconds normalizing ``prompt`` may take, or None when budgets are off (``scale`` 0).

    >>> item_budget_s("x" * 1024 * 1024)
    31.0
    >>> item_budget_s("hello", 0) is None
    True
    """
    if not scale:
        return None
    # Bytes, like the prompt size limit. The slowest hostile text is multi-byte (mojibake is
    # made of two-byte characters): per character it costs twice what its bytes suggest.
    return scale * (BASE_S + PER_MIB_S * utf8_size(prompt) / _MIB)


class Deadline:
    """A thread's CPU clock against a budget, checked between steps where no signal can help."""

    __slots__ = ("_budget_s", "_end", "_prompt")

    def __init__(self, budget_s: float, prompt: str) -> None:
        self._budget_s = budget_s
        self._prompt = prompt
        self._end = time.thread_time() + budget_s

    def check(self) -> None:
        """Raise :class:`ItemTooSlow` once the budget is spent."""
        if time.thread_time() > self._end:
            raise ItemTooSlow(self._budget_s, self._prompt)


class _SignalClock:
    """SIGPROF while an item runs: installed for a chunk, armed for each item."""

    __slots__ = ("_budget_s", "_prompt")

    def __init__(self) -> None:
        self._budget_s = 0.0
        self._prompt: str | None = None  # the item being timed; None between items

    def _expired(self, signum: int, frame: Any) -> None:
        # A signal that was on its way when the item ended finds no item: nothing to stop.
        prompt, self._prompt = self._prompt, None
        if prompt is not None:
            raise ItemTooSlow(self._budget_s, prompt)

    def run(self, budget_s: float, prompt: str, fn: Callable[[], R]) -> R:
        self._budget_s, self._prompt = budget_s, prompt
        signal.setitimer(signal.ITIMER_PROF, budget_s)
        try:
            return fn()
        finally:
            # Disarm first: the handler then raises at most once more, and only while _prompt is
            # still set, that is, still inside this call.
            signal.setitimer(signal.ITIMER_PROF, 0)
            self._prompt = None

    @classmethod
    @contextmanager
    def installed(cls) -> Iterator[_SignalClock | None]:
        """A clock whose handler is installed for the block, or None if SIGPROF is not ours to take."""
        if threading.current_thread() is not threading.main_thread():
            yield None  # signal handlers run in the main thread only
            return
        if signal.getsignal(signal.SIGPROF) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            yield None  # someone else's handler (a sampling profiler, or our own clock already)
            return
        if signal.getitimer(signal.ITIMER_PROF) != (0.0, 0.0):
            yield None  # someone else's timer is running
            return
        clock = cls()
        previous = signal.signal(signal.SIGPROF, clock._expired)
        try:
            yield clock
        finally:
            try:
                signal.setitimer(signal.ITIMER_PROF, 0)  # never leave a timer armed
            finally:
                signal.signal(signal.SIGPROF, previous)


_ACTIVE: ContextVar[_SignalClock | None] = ContextVar("hermes_item_clock", default=None)


def chunk_clock(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function that normalizes many items: one SIGPROF handler for all of them.

    Installing a handler costs a few microseconds, about a fifth of a short prompt's work; arming
    the timer costs a tenth of one. Without the decorator, :func:`normalize_within_budget` installs
    the handler for each item.
    """

    @functools.wraps(fn)
    def with_clock(*args: P.args, **kwargs: P.kwargs) -> R:
        if _ACTIVE.get() is not None:
            return fn(*args, **kwargs)  # already inside a clocked call: its clock serves
        with _SignalClock.installed() as clock:
            token = _ACTIVE.set(clock)
            try:
                return fn(*args, **kwargs)
            finally:
                _ACTIVE.reset(token)

    return with_clock


def normalize_within_budget(
    text: str,
    profile: Profile,
    max_validation: int = 1,
    explain: bool = False,
    scale: float = 1.0,
    checked: bool = False,
) -> Normalized:
    """:func:`normalize`, stopped with :class:`ItemTooSlow` once it used its CPU-time budget.

    Args:
        scale: the budget is ``scale`` times :func:`item_budget_s`'s default; 0 turns it off.
        checked: ``text`` passed :func:`.check_prompt` (see :func:`.normalize`).

    Raises:
        ItemTooSlow: the budget ran out; code ``too_slow``, the budget and the prompt's size in
            the message.
    """
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"budget scale must be a finite number >= 0, got {scale!r}")
    budget_s = item_budget_s(text, scale)
    if budget_s is None:
        return normalize(text, profile, max_validation, explain, checked=checked)
    clock = _ACTIVE.get()
    if clock is not None:
        return clock.run(budget_s, text, lambda: normalize(text, profile, max_validation, explain, checked=checked))
    with _SignalClock.installed() as own:
        if own is not None:
            return own.run(budget_s, text, lambda: normalize(text, profile, max_validation, explain, checked=checked))
    deadline = Deadline(budget_s, text).check
    return normalize(text, profile, max_validation, explain, between_steps=deadline, checked=checked)
