"""What the Celery executor reports while a batch runs: frozen values, and the one sentence each reads as.

The chunk tracker (:mod:`.tracker`) and the executor emit these to the command's callback;
:func:`render` turns any of them into the line the user sees on stderr and the log holds
(``dispatch.reroute``). Scripts, the chaos report and tests match those sentences: keep the
wording when a field changes.

>>> render(ChunkSplit(7, 1025, 1024, Vanished("local@w1"), parts=8))
'chunk 7 (lines 1025-2048): local@w1 vanished while running it; split into 8 parts'
>>> render(OutageEnded("Redis", 2.04))
'Redis answers again after 2.0 s'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hermes_worker.contract import PAYLOAD_VERSION

__all__ = [
    "ChunkRefused", "ChunkResent", "ChunkSplit", "ChunksStranded", "ChunksUnanswered",
    "Event", "FailureReason", "FellBack", "GaveUp",
    "LinesLost", "Malformed", "Misplaced", "NeverTaken", "NoWorker", "NotFinished", "OutageEnded", "OutageStarted",
    "Overdue", "RefusalReason", "RefusedBy", "ResultUnreadable", "RouteMoved", "StreamEntryIgnored",
    "TakenRepeatedly", "TooLarge", "Vanished", "WorkersLost", "WorkersStuck", "bounded_printable", "describe",
    "idle_clause", "render", "sentence",
]  # fmt: skip


# Why a delivery of a chunk ended without a result.


@dataclass(frozen=True, slots=True)
class Overdue:
    """A live worker took the chunk and never answered, long past the chunk time limit."""

    worker: str
    after_s: float
    limit_s: float


@dataclass(frozen=True, slots=True)
class NotFinished:
    """The worker sent a failure notice (``f``) saying why."""

    worker: str
    reason: str


@dataclass(frozen=True, slots=True)
class Vanished:
    """The worker running the chunk left the registry (or stopped serving the queue)."""

    worker: str


@dataclass(frozen=True, slots=True)
class TakenRepeatedly:
    """Start notices kept coming and no result: the process running the chunk dies on it."""

    times: int
    worker: str


@dataclass(frozen=True, slots=True)
class TooLarge:
    """Redis refuses the chunk's lines as one value (``detail`` says how large, or what Redis said)."""

    detail: str


@dataclass(frozen=True, slots=True)
class NeverTaken:
    """Sent ``times`` times, and no worker ever announced it."""

    times: int


FailureReason = Overdue | NotFinished | Vanished | TakenRepeatedly | TooLarge | NeverTaken


# Why a chunk was sent again without counting as a failed delivery.


@dataclass(frozen=True, slots=True)
class RefusedBy:
    """A worker refused the chunk without running it (an ``x`` notice)."""

    worker: str
    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A result that is not the shape a Hermes worker gives (``ChunkResult.from_stream`` refused it)."""

    problem: str


@dataclass(frozen=True, slots=True)
class Misplaced:
    """With ``--isolation container``, records that did not run in a container."""

    worker: str
    mode: str


RefusalReason = RefusedBy | Malformed | Misplaced


# Why the rest of a batch runs in-process.


@dataclass(frozen=True, slots=True)
class WorkersStuck:
    """Workers serve the queue, and none said a word for longer than a chunk may take."""

    silent_s: float
    workers: tuple[str, ...]
    queue: str


@dataclass(frozen=True, slots=True)
class NoWorker:
    """No live worker of the route's kind for ``waited_s``; ``idle``: (name, reason) of those that take no work."""

    tag: str
    waited_s: float
    idle: tuple[tuple[str, str], ...] = ()


# The events.


@dataclass(frozen=True, slots=True)
class OutageStarted:
    what: str  # "Redis" or "the broker"
    error: str
    limit_s: float


@dataclass(frozen=True, slots=True)
class OutageEnded:
    what: str
    after_s: float


@dataclass(frozen=True, slots=True)
class StreamEntryIgnored:
    """An entry on the result stream no Hermes worker wrote."""

    error: str  # the exception's type name


@dataclass(frozen=True, slots=True)
class LinesLost:
    """A worker found no lines under the chunk's key; the chunk was sent again."""

    chunk: int
    worker: str


@dataclass(frozen=True, slots=True)
class ChunkRefused:
    chunk: int
    why: RefusalReason


@dataclass(frozen=True, slots=True)
class ResultUnreadable:
    """A result with another record count or version: its lines get error records."""

    worker: str
    records: int
    items: int
    version: Any


@dataclass(frozen=True, slots=True)
class WorkersLost:
    """Workers vanished (or stopped serving the queue): ``chunks`` were sent again."""

    workers: tuple[str, ...]
    chunks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ChunksStranded:
    """Chunks neither queued nor announced for a while: sent again."""

    chunks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ChunksUnanswered:
    """Chunks announced before an outage, with no result since and their queue empty: sent again.

    Redis may come back without what it had acknowledged (a promoted replica, a restart that lost
    the last writes): a result gone, its start notice kept.
    """

    chunks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RouteMoved:
    """With ``--isolation auto``, the outstanding chunks moved to the other kind of worker."""

    old_tag: str
    new_tag: str
    workers: tuple[str, ...]
    chunks: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class FellBack:
    """The rest of the batch runs in-process."""

    cause: WorkersStuck | NoWorker
    outstanding: int


@dataclass(frozen=True, slots=True)
class ChunkResent:
    """A delivery failed; the chunk was sent again (``failures`` of ``allowed``)."""

    chunk: int
    first: int
    count: int
    reason: FailureReason
    failures: int
    allowed: int


@dataclass(frozen=True, slots=True)
class ChunkSplit:
    chunk: int
    first: int
    count: int
    reason: FailureReason
    parts: int


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The producer wrote error records for these lines."""

    chunk: int
    first: int
    count: int
    reason: FailureReason


Event = (
    OutageStarted | OutageEnded | StreamEntryIgnored | LinesLost | ChunkRefused | ResultUnreadable | WorkersLost
    | ChunksStranded | ChunksUnanswered | RouteMoved | FellBack | ChunkResent | ChunkSplit | GaveUp
)


def bounded_printable(value: Any, limit: int = 300) -> str:
    """A worker's words as they may reach a terminal and the log: printable, bounded."""
    text = str(value)[:limit]
    return text if text.isprintable() else "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def render(event: Event) -> str:
    """The line users see for ``event``: events quote what workers sent, so never a control character."""
    return bounded_printable(sentence(event), limit=2000)


def sentence(event: Event) -> str:
    """``event`` as a sentence, unbounded (error records quote it too)."""
    match event:
        case OutageStarted(what, error, limit_s):
            return f"{what} is not answering ({error}); retrying for up to {limit_s:.0f} s"
        case OutageEnded(what, after_s):
            return f"{what} answers again after {after_s:.1f} s"
        case StreamEntryIgnored(error):
            return f"ignored a malformed entry on the result stream ({error})"
        case LinesLost(chunk, worker):
            return f"chunk {chunk}: {worker} found its lines gone from Redis; sent again"
        case ChunkRefused(chunk, why):
            return f"chunk {chunk} {describe(why)}; sent again"
        case ResultUnreadable(worker, records, items, version):
            return (f"{worker} answered with {records} record(s) for {items} item(s) (result version {version!r}, "
                    f"expected {PAYLOAD_VERSION}): run the same Hermes version everywhere")  # fmt: skip
        case WorkersLost(workers, chunks):
            return (f"worker {', '.join(workers)} is gone or stopped taking this work: {len(chunks)} chunk(s) "
                    f"sent again ({_span(chunks)})")  # fmt: skip
        case ChunksUnanswered(chunks):
            return (f"{len(chunks)} chunk(s) taken before Redis went away and never answered (a failover or "
                    f"restart can lose what Redis acknowledged): sent again ({_span(chunks)})")  # fmt: skip
        case ChunksStranded(chunks):
            return (f"{len(chunks)} chunk(s) neither queued nor held by any worker (lost in a broken "
                    f"connection?): sent again ({_span(chunks)})")  # fmt: skip
        case RouteMoved(old_tag, new_tag, workers, chunks, note):
            return (f"no {old_tag} worker is taking work: {chunks} outstanding chunk(s) re-routed to {new_tag} "
                    f"worker(s) {', '.join(workers)}" + (f" ({note})" if note else ""))  # fmt: skip
        case FellBack(cause, outstanding):
            return f"{describe(cause)}: finishing the batch in-process ({outstanding} chunk(s) outstanding)"
        case ChunkResent(chunk, first, count, reason, failures, allowed):
            return (f"chunk {chunk} ({_lines(first, count)}): {describe(reason)}; sent again "
                    f"({failures} of {allowed} deliveries failed)")  # fmt: skip
        case ChunkSplit(chunk, first, count, reason, parts):
            return f"chunk {chunk} ({_lines(first, count)}): {describe(reason)}; split into {parts} parts"
        case GaveUp(_chunk, first, count, reason):
            return f"{_lines(first, count)}: gave up: {describe(reason)}"
    raise TypeError(f"not an executor event: {event!r}")


def describe(reason: FailureReason | RefusalReason | WorkersStuck | NoWorker) -> str:
    """Why something happened, as the clause the event sentences (and error records) quote."""
    match reason:
        case Overdue(worker, after_s, limit_s):
            return f"{worker} took it {after_s:.0f} s ago and never answered (the chunk time limit is {limit_s:.0f} s)"
        case NotFinished(worker, why):
            return f"{worker} could not finish it: {why}"
        case Vanished(worker):
            return f"{worker} vanished while running it"
        case TakenRepeatedly(times, worker):
            return f"taken {times} times with no result, last by {worker} (does it kill its process?)"
        case TooLarge(detail):
            return detail
        case NeverTaken(times):
            return f"sent {times} times and never taken by a worker (can the workers write to Redis?)"
        case RefusedBy(worker, why):
            return f"refused by {worker}: {why}"
        case Malformed(problem):
            return f"answered with {problem}"
        case Misplaced(worker, mode):
            return f"answered by {worker} with records that ran in mode {mode!r}, not in a container"
        case WorkersStuck(silent_s, workers, queue):
            names = ", ".join(workers)
            return f"no worker answered for {silent_s:.0f} s although {names} serve {queue}: are they stuck?"
        case NoWorker(tag, waited_s, idle):
            return f"no live {tag} worker for {waited_s:.0f} s{idle_clause(idle)}"
    raise TypeError(f"not a reason: {reason!r}")


def idle_clause(idle: tuple[tuple[str, str], ...]) -> str:
    """`` (NAME is not taking work: REASON; ...)`` for live workers that take none of the route's work, or ``""``."""
    reasons = "; ".join(f"{name} is not taking work: {why}" for name, why in idle)
    return f" ({reasons})" if reasons else ""


def _lines(first: int, count: int) -> str:
    return f"line {first}" if count == 1 else f"lines {first}-{first + count - 1}"


def _span(chunks: tuple[int, ...]) -> str:
    shown = ", ".join(str(c) for c in sorted(chunks)[:8])
    return f"chunks {shown}{', ...' if len(chunks) > 8 else ''}"
