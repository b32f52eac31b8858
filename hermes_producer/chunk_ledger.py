"""The chunk ledger: what one executor has out, in input order, and the decisions that follow.

The bookkeeping under :class:`~.tracker.ChunkTracker`, pure like it (no I/O, no clock): the
reorder window (chunks admitted, results waiting for their turn, handed back in order), each
chunk's deliveries, and the mechanics the tracker's rules call on: sending a chunk again,
splitting one into parts (:mod:`.splitting`) and merging their results, giving up on one with
error records. What it decides is a list of :class:`Send`, :class:`Forget` and :class:`RunHere`
for the executor to carry out; when to resend, split or give up is the tracker's to judge.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hermes_worker.contract import ENGINE_FAILURE
from hermes_worker.processing import failed_chunk_result
from hermes_worker.routes import Route
from hermes_worker.wire import ChunkResult, request_span

from . import chunk_events as events
from .splitting import merge_results, split_request

__all__ = ["MAX_DELIVERIES", "ChunkLedger", "ChunkState", "Decision", "Forget", "RunHere", "Send"]

# Deliveries of one chunk that may end without a result before it is split (or, alone, failed).
MAX_DELIVERIES = 3
# A part of a split chunk is split again as soon as one delivery fails: it holds the culprit,
# and splitting an innocent part by bad luck costs nothing. A part of one line is failed only
# after MAX_DELIVERIES, so that one unlucky death cannot blame it.
PART_DELIVERIES = 1
# Parts per split: eight parts in parallel find the line to blame in a 1,024-line chunk in four
# rounds (halves would take ten), each round costing a dead process or two.
SPLIT_WAYS = 8
# Parts of split chunks are numbered from here: far above any chunk number a batch uses.
PART_BASE = 1 << 40


# What the tracker decided: the executor carries these out, in order.


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``payload`` (chunk ``chunk``) to ``queue``; ``resend``: it was sent before."""

    chunk: int
    payload: dict[str, Any]
    queue: str
    resend: bool = False


@dataclass(frozen=True, slots=True)
class Forget:
    """Delete chunk ``chunk``'s lines: copies of its message still in the broker then end at once."""

    chunk: int


@dataclass(frozen=True, slots=True)
class RunHere:
    """Run ``payload`` in-process and hand the result to :meth:`ChunkLedger.ran_here`."""

    chunk: int
    payload: dict[str, Any]


Decision = Send | Forget | RunHere


@dataclass(slots=True)
class ChunkState:
    """One chunk or part not yet handed back: its payload and how its deliveries went."""

    payload: dict[str, Any]
    sent_at: float
    worker: str | None = None
    started_at: float = 0.0  # when ``worker`` announced it
    starts: int = 0  # start notices seen: deliveries that began
    failures: int = 0  # deliveries known to have ended without a result
    stranded: int = 0  # times sent again because nobody ever took it
    doubted_at: float | None = None  # announced before an outage: its result may be lost with it
    allowed: int = MAX_DELIVERIES
    parent: int | None = None  # the chunk this is a part of
    parts: list[int] | None = None  # set once this chunk is split: its parts, in order
    _span: tuple[int, int] | None = None

    @property
    def span(self) -> tuple[int, int]:
        """``(first line, lines)`` of the payload (counted once: the payload does not change)."""
        if self._span is None:
            self._span = request_span(self.payload)
        return self._span


class ChunkLedger:
    """The chunks of one executor's batch (``hermes queue`` runs several), and the decisions they need.

    Args:
        route: where chunks go now (the tracker's re-route changes it).
        fallback: whether chunks may run in-process once no worker is left.
        producer: the name error records written by the producer carry.
        on_event: called with every :mod:`.chunk_events` event.
    """

    def __init__(
        self, route: Route, *, fallback: bool, producer: str, on_event: Callable[[events.Event], None]
    ) -> None:
        self.route = route
        self.fallback = fallback
        self.degraded = False  # True once the rest of the batch runs in-process
        self.resent = 0
        self._producer = producer
        self._emit = on_event
        self._next_part = PART_BASE
        self._decisions: list[Decision] = []
        self.begin()

    # -- one batch: admitting, completing and handing back chunks in order --

    def begin(self) -> None:
        """Start a batch (a call of ``map_ordered``): no chunk outstanding, a window for the route."""
        self._window = 4 * self.route.concurrency + 4
        self._order: deque[int] = deque()  # chunks admitted and not yet handed back, in input order
        self._chunks: dict[int, ChunkState] = {}  # chunks and parts not yet handed back
        self._ready: dict[int, ChunkResult] = {}  # results of chunks, waiting for their turn
        self._part_results: dict[int, ChunkResult] = {}  # finished parts of split chunks

    def holders(self) -> set[str]:
        """The workers that announced a chunk of this batch whose result has not come yet."""
        return {c.worker for n, c in self._chunks.items() if c.worker is not None and n not in self._ready}

    def has_room(self) -> bool:
        """Whether another chunk may be admitted: at most ``4 * concurrency + 4`` are in flight."""
        return len(self._order) < self._window

    @property
    def idle(self) -> bool:
        """No chunk admitted and not handed back."""
        return not self._order

    def admit(self, payload: dict[str, Any], now: float) -> None:
        """Take chunk ``payload["chunk"]``: send it, or run it here once the batch fell back."""
        chunk = payload["chunk"]
        self._order.append(chunk)
        self._chunks[chunk] = ChunkState(payload, now)
        if self.degraded and self.fallback:
            self._decisions.append(RunHere(chunk, payload))
        else:
            self._decisions.append(Send(chunk, payload, self.route.queue))

    def take_decisions(self) -> list[Decision]:
        """What to do now, in order; the executor carries each out (and may add more by reporting back)."""
        decisions, self._decisions = self._decisions, []
        return decisions

    def wants_sent(self, chunk: int) -> bool:
        """Whether a :class:`Send` of ``chunk`` decided earlier still makes sense (it may have finished meanwhile)."""
        waiting = self._chunks.get(chunk)
        if waiting is None or chunk in self._ready or waiting.parts is not None:
            return False
        return waiting.parent is None or (waiting.parent in self._chunks and waiting.parent not in self._ready)

    def too_large(self, chunk: int, detail: str, now: float) -> None:
        """Redis refused ``chunk``'s lines as one value: split it."""
        self._split(chunk, events.TooLarge(detail), now)

    def ran_here(self, chunk: int, result: ChunkResult) -> None:
        """The in-process result of a :class:`RunHere`."""
        self._ready[chunk] = result

    def next_written(self) -> tuple[int, ChunkResult] | None:
        """The next chunk in input order and its result, if it has one; it leaves the ledger."""
        if not self._order or self._order[0] not in self._ready:
            return None
        chunk = self._order.popleft()
        self._chunks.pop(chunk, None)
        return chunk, self._ready.pop(chunk)

    # -- sending again, splitting, giving up --

    def _pending(self) -> list[int]:
        """Chunks and parts still to be answered; split chunks are not sent any more: their parts are."""
        return [c for c, waiting in self._chunks.items() if c not in self._ready and waiting.parts is None]

    def _resend(self, chunks: Iterable[int], now: float) -> None:
        for chunk in chunks:
            waiting = self._chunks.get(chunk)
            if waiting is None or chunk in self._ready:
                continue  # finished meanwhile (given up on, or its result came)
            waiting.worker, waiting.sent_at, waiting.doubted_at = None, now, None
            self._decisions.append(Send(chunk, waiting.payload, self.route.queue, resend=True))
            self.resent += 1

    def _failed(
        self, chunk: int, reason: events.FailureReason, now: float, *, split: bool, then_split: bool = True
    ) -> None:
        """A delivery of ``chunk`` ended without a result: send it again, or split it once that
        happened ``allowed`` times (at once if ``split``: sending it whole again cannot help).
        Without ``then_split`` (no line can be to blame) a chunk out of deliveries gets error records."""
        waiting = self._chunks[chunk]
        waiting.failures += 1
        waiting.worker = None
        if split or waiting.failures >= waiting.allowed:
            if split or then_split:
                self._split(chunk, reason, now)
            else:
                self._give_up(chunk, reason)
            return
        self._emit(events.ChunkResent(chunk, *waiting.span, reason, waiting.failures, waiting.allowed))
        self._resend([chunk], now)

    def _split(self, chunk: int, reason: events.FailureReason, now: float) -> None:
        """Run ``chunk``'s parts as chunks of their own; a chunk of one line gets its error record."""
        waiting = self._chunks[chunk]
        parts = split_request(waiting.payload, SPLIT_WAYS)
        if not parts:
            self._give_up(chunk, reason)
            return
        self._emit(events.ChunkSplit(chunk, *waiting.span, reason, len(parts)))
        waiting.parts, waiting.worker = [], None
        # Copies of the whole chunk still in the broker now find no lines, and end at once.
        self._decisions.append(Forget(chunk))
        for part in parts:
            number, self._next_part = self._next_part, self._next_part + 1
            part["chunk"] = number
            allowed = PART_DELIVERIES if request_span(part)[1] > 1 else MAX_DELIVERIES
            self._chunks[number] = ChunkState(part, now, allowed=allowed, parent=chunk)
            waiting.parts.append(number)
            self._decisions.append(Send(number, part, self.route.queue))

    def _give_up(self, chunk: int, reason: events.FailureReason) -> None:
        """Error records, written by the producer, for every line of ``chunk``."""
        waiting = self._chunks[chunk]
        self._emit(events.GaveUp(chunk, *waiting.span, reason))
        message = f"no worker could process this line: {events.describe(reason)}"
        result = failed_chunk_result(waiting.payload, ENGINE_FAILURE, message, mode=self.route.tag,
                                     worker=self._producer)  # fmt: skip
        self._complete(chunk, result)

    def _complete(self, chunk: int, result: ChunkResult) -> None:
        """``chunk`` has its result: ready to be written, or one part closer to its parent's."""
        waiting = self._chunks[chunk]
        self._drop_parts(waiting)
        if waiting.parent is None:
            self._ready[chunk] = result
            return
        del self._chunks[chunk]
        self._decisions.append(Forget(chunk))
        self._part_results[chunk] = result
        parent = self._chunks.get(waiting.parent)
        if parent is None or parent.parts is None or waiting.parent in self._ready:
            return
        if all(part in self._part_results for part in parent.parts):
            results = [self._part_results.pop(part) for part in parent.parts]
            self._complete(waiting.parent, merge_results(parent.payload, results))

    def _drop_parts(self, waiting: ChunkState) -> None:
        """Forget the parts of a chunk that has its result (a copy of the whole chunk may finish first)."""
        for part in waiting.parts or []:
            self._part_results.pop(part, None)
            dropped = self._chunks.pop(part, None)
            if dropped is not None:
                self._decisions.append(Forget(part))
                self._drop_parts(dropped)
