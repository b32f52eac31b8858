"""The chunk tracker: what a batch sent, who took what, what is done, and what to do next.

The decision logic of :class:`~.celery_executor.CeleryExecutor`, and no I/O, no Redis, no
clock. The executor feeds it what the transport observed (:mod:`.notices` read from the
batch's stream, the live workers, a queue's depth, an outage) with the time, and carries out
its decisions (``Send``, ``Forget``, ``RunHere``); it emits what happened as :mod:`.chunk_events`.
The bookkeeping (the reorder window, deliveries, splits, merges) and the decisions are
:class:`~.chunk_ledger.ChunkLedger`'s; :class:`ChunkTracker` adds the rules. Faults it rides
out, and how:

- A worker vanishes (killed, or its heartbeat stops): every chunk it announced, and every chunk
  nobody announced yet (it may have reserved them without starting), is sent again at once.
- A chunk is stranded: nobody announced it for :data:`STRANDED_AFTER_S` while its queue stayed
  empty. Workers announce a chunk the moment they take it, so it is in no queue and no worker:
  the Redis transport pops a message before it records it as unacknowledged, and a connection
  that breaks in between loses the message. It is sent again.
- Every worker of the route stops serving it (e.g. container workers whose Docker engine went
  away): with ``--isolation auto`` the outstanding chunks move to the other kind of worker;
  otherwise they wait for a worker (``patience_s``), then run in-process or fail, as configured.
- Redis or the broker stops answering: the executor retries, and tells the tracker, which ends
  the batch after the outage timeout and judges nobody gone until every worker had a
  heartbeat to publish its registry entry again. Redis may come back without its last writes
  (a replica promoted by Sentinel, a restart): a chunk announced before the outage that still
  has no result :data:`STRANDED_AFTER_S` after it, with its queue empty, is sent again.

The producer never waits for ever, and no chunk is sent again for ever:

- A *failure notice*, or a chunk announced by a live worker that has not answered within the
  chunk time limit (plus a grace period), ends a delivery: the chunk is sent again.
- A chunk gets at most :data:`~.chunk_ledger.MAX_DELIVERIES` deliveries that end without a
  result (failure notices, overdue, its worker gone, or taken again while no result came). Past
  that it is *split* into parts that run as chunks of their own (:mod:`.splitting`), down to the one line
  to blame, which gets an ``engine_failure`` record naming the reason: a poison line that kills
  every process running it costs its own record, not its chunk's. A chunk whose lines or result
  are too large for one Redis value is split at once; one whose result Redis refuses for
  another reason (a permission) gets error records, since no line is to blame.
- A chunk sent :data:`MAX_STRANDED` times that no worker ever announced gets error records.
- Workers that serve the queue and say nothing for longer than a chunk may take are stuck.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_worker.contract import ENGINE_FAILURE, ContractError
from hermes_worker.processing import failed_chunk_result
from hermes_worker.registry import WorkerInfo
from hermes_worker.routes import Route, route_for
from hermes_worker.wire import ChunkResult

from . import chunk_events as events
from .chunk_ledger import ChunkLedger, ChunkState, RunHere
from .executors import ExecutorError
from .notices import (
    MissingNotice,
    Observation,
    RefusalNotice,
    ResultPosted,
    StartNotice,
    StreamedResult,
    refusal,
    unreadable_result,
)

__all__ = ["HEALTH_EVERY_S", "MAX_STRANDED", "STRANDED_AFTER_S", "ChunkTracker", "Limits"]

# How often the executor checks the registry; the tracker's grace after an outage counts it too.
HEALTH_EVERY_S = 1.0
# A chunk nobody announced this long after it was sent, with its queue empty all that time, is stranded.
STRANDED_AFTER_S = 3.0
# Sends of one chunk that no worker ever announced (each "stranded") before it gets error records.
MAX_STRANDED = 5
# A chunk announced by a live worker is overdue this long after the chunk time limit, plus two
# heartbeats: by then Celery has killed the process running it, and no result can come.
OVERDUE_GRACE_S = 5.0
# A chunk workers refused (or answered from the wrong kind of worker) this often stops the batch.
MAX_REFUSALS = 3


@dataclass(frozen=True, slots=True)
class Limits:
    """The times the tracker judges by, from the settings."""

    chunk_time_limit_s: float
    heartbeat_s: float
    worker_ttl_s: float
    outage_timeout_s: float
    patience_s: float  # how long the route may have no worker before the batch falls back or fails

    @property
    def overdue_after_s(self) -> float:
        """How long after a worker took a chunk no result can come any more (Celery killed it)."""
        return self.chunk_time_limit_s + OVERDUE_GRACE_S + 2 * self.heartbeat_s


class ChunkTracker(ChunkLedger):
    """The rules over one executor's chunks, across its batches (``hermes queue`` runs several).

    Args:
        route: where chunks go now (a re-route changes it).
        isolation: what the user asked for; ``auto`` lets chunks move to the other kind of worker.
        limits: the times to judge by.
        fallback: whether chunks may run in-process once no worker is left; if not, the batch fails.
        producer: the name error records written by the producer carry.
        on_event: called with every :mod:`.chunk_events` event.
        now: the time, to start counting silence and outages from.
    """

    def __init__(
        self, route: Route, *, isolation: str, limits: Limits, fallback: bool, producer: str,
        on_event: Callable[[events.Event], None], now: float,
    ) -> None:  # fmt: skip
        self.isolation = isolation
        self.limits = limits
        self._serving = {w.name for w in route.workers}  # who consumed the route's queue last time we looked
        self._outage_since: float | None = None  # when Redis or the broker stopped answering, if it did
        self._outage_of = "Redis"
        self._heard_at = now  # when the last entry came on the result stream
        self._trouble_at = float("-inf")  # when an outage was last seen
        self._suspects: dict[int, float] = {}  # chunk -> since when it looks stranded
        self._refusals: dict[int, int] = {}  # chunk -> times refused, or answered by the wrong kind of worker
        super().__init__(route, fallback=fallback, producer=producer, on_event=on_event)

    # -- one batch --

    def begin(self) -> None:
        """Start a batch (a call of ``map_ordered``): no chunk outstanding, a window for the route, no orphan."""
        super().begin()
        self._orphaned_since: float | None = None  # since when the route has had no worker

    def admit(self, payload: dict[str, Any], now: float) -> None:
        """Take chunk ``payload["chunk"]`` (:meth:`.ChunkLedger.admit`); silence counts from the first one."""
        if not self._chunks:
            self._heard_at = now  # silence counts from the first chunk out
        super().admit(payload, now)

    # -- what came on the result stream --

    def heard(self, now: float) -> None:
        """Entries came on the result stream: the workers are not silent."""
        self._heard_at = now

    def wants_result(self, seen: ResultPosted) -> bool:
        """Whether :meth:`observe` would take ``seen`` in: a result whose records are in a part
        file is read only then (a duplicate, a stranger or a replayed entry costs no read)."""
        waiting = self._chunks.get(seen.chunk)
        if waiting is None or seen.chunk in self._ready:
            return False
        return "text" not in waiting.payload or seen.result.get("first") == waiting.payload.get("first")

    def observe(self, seen: Observation, now: float) -> None:
        """Take a notice or a result read from the stream; duplicates and strangers are dropped.

        A result that is not the shape a Hermes worker gives counts as a refusal of its chunk.
        """
        waiting = self._chunks.get(seen.chunk)
        if waiting is None or seen.chunk in self._ready:
            return  # done already (a duplicate), or not ours
        if isinstance(seen, ResultPosted):
            if self.wants_result(seen):  # else a part of another run of this batch, numbered alike
                self._result(seen, waiting, now)
            return
        if waiting.parts is not None:
            return  # split: its parts carry on
        chunk = seen.chunk
        if isinstance(seen, StartNotice):
            waiting.worker, waiting.started_at = seen.worker, now
            waiting.starts += 1
            if waiting.starts > waiting.allowed:
                # Taken again and again, and never a result: the process running it dies on it
                # (memory, a crash) and Celery puts it back each time. No notice says so.
                self._failed(chunk, events.TakenRepeatedly(waiting.starts, seen.worker), now, split=True)
        elif isinstance(seen, RefusalNotice):
            # Refused without running it (a queue not its own, a container chunk on a local
            # worker, a request it does not accept): sent again, a few times.
            self._refused(chunk, events.RefusedBy(seen.worker, seen.reason), now)
        elif isinstance(seen, MissingNotice):
            # Redis lost the chunk's lines: send it again. The take this notice explains is not
            # one that died on the chunk: it does not count toward giving up (TakenRepeatedly).
            waiting.starts = max(0, waiting.starts - 1)
            self._resend([chunk], now)
            self._emit(events.LinesLost(chunk, seen.worker))
        else:
            # A worker that knows splitting helps (too large, too slow) says so; otherwise Redis
            # refused the result for a reason no line is to blame for: sending it in parts will
            # not help either, and the chunk gets error records once it is out of deliveries.
            reason = events.NotFinished(seen.worker, seen.reason)
            self._failed(chunk, reason, now, split=seen.split, then_split=seen.split)

    def _result(self, seen: ResultPosted, waiting: ChunkState, now: float) -> None:
        if seen.problem is not None:  # its part file is gone, or not what the worker wrote
            self._refused(seen.chunk, events.Malformed(seen.problem), now)
            return
        try:
            result: ChunkResult = StreamedResult.read(seen)
        except ContractError as exc:  # not the shape a Hermes worker gives a result
            self._refused(seen.chunk, events.Malformed(exc.reason), now)
            return
        wrong = refusal(result, self.isolation)
        if wrong is not None:
            self._refused(seen.chunk, wrong, now)
            return
        unreadable = unreadable_result(result, waiting.span[1], seen.text.count(b"\n"))
        if unreadable is not None:
            # Its records must not vanish quietly: every line gets an error record saying why.
            self._emit(unreadable)
            message = events.sentence(unreadable)
            result = failed_chunk_result(waiting.payload, ENGINE_FAILURE, message, mode=self.route.tag,
                                         worker=unreadable.worker)  # fmt: skip
        self._complete(seen.chunk, result)

    def _refused(self, chunk: int, why: events.RefusalReason, now: float) -> None:
        """Send a refused (or wrongly placed) chunk again; stop the batch once it happened too often.

        Unlike a failed delivery, no line is to blame and no error record would be true: a batch
        whose chunks keep going to the wrong kind of worker stops, naming why.

        Raises:
            ExecutorError: the chunk was refused :data:`MAX_REFUSALS` times.
        """
        times = self._refusals[chunk] = self._refusals.get(chunk, 0) + 1
        if times >= MAX_REFUSALS:
            message = f"chunk {chunk} was refused {times} times; last: {events.describe(why)}"
            raise ExecutorError(events.bounded_printable(message, limit=2000))
        self._chunks[chunk].worker = None
        self._resend([chunk], now)
        self._emit(events.ChunkRefused(chunk, why))

    # -- outages --

    def unanswered(self, what: str, error: str, now: float) -> None:
        """``what`` ("Redis", "the broker") did not answer; the executor retries after a pause.

        Raises:
            ExecutorError: the outage lasted longer than ``HERMES_OUTAGE_TIMEOUT``.
        """
        self._trouble_at = now
        limit = self.limits.outage_timeout_s
        if self._outage_since is None:
            self._outage_since, self._outage_of = now, what
            self._emit(events.OutageStarted(what, error, limit))
        elif now - self._outage_since > limit:
            raise ExecutorError(f"{what} has not answered for {limit:.0f} s ({error})")

    def answered(self, now: float) -> None:
        """Redis or the broker answered."""
        if self._outage_since is not None:
            self._emit(events.OutageEnded(self._outage_of, now - self._outage_since))
            self._outage_since = None
            # Redis may be back without what it acknowledged last (Sentinel promoted a replica
            # that had not got it, a restart lost it): a result gone, its start notice kept. The
            # chunks announced so far are doubted until they answer (check_stranded).
            for chunk in self._pending():
                if self._chunks[chunk].worker is not None:
                    self._chunks[chunk].doubted_at = now

    # -- the health check, once a second: three steps, with the executor's sends in between --

    def check_workers(self, now: float, workers: list[WorkerInfo]) -> bool:
        """Resend the chunks of workers that vanished, re-route, resend overdue chunks.

        Returns:
            whether the check goes on (:meth:`check_stranded`, :meth:`check_silence`): not
            right after an outage, nor after a re-route.
        """
        if now - self._trouble_at < self.limits.worker_ttl_s + HEALTH_EVERY_S:
            # Registry entries expired while Redis was away: nobody is judged gone until every
            # worker has had a heartbeat to publish its entry again.
            self._orphaned_since = None
            return False
        serving = {w.name for w in workers if self.route.queue in w.queues}
        vanished, self._serving = self._serving - serving, serving
        pending = self._pending()
        if pending and not serving and self._reroute(workers, pending, now):
            self._orphaned_since = None
            return False
        lost = [c for c in pending if self._chunks[c].worker is not None and self._chunks[c].worker not in serving]
        # A chunk whose worker keeps vanishing with it may be what kills the worker: counted.
        struck = [c for c in lost if self._chunks[c].failures + 1 >= self._chunks[c].allowed]
        if vanished:
            # A worker killed outright may hold chunks it had reserved but not announced; the
            # broker would hand them out again only after its visibility timeout. Send every
            # unannounced chunk again now: a result that arrives twice is written once.
            lost += [c for c in pending if self._chunks[c].worker is None]
        gone = vanished | {w for c in lost if (w := self._chunks[c].worker) is not None}
        for chunk in struck:
            if chunk in self._chunks:
                self._failed(chunk, events.Vanished(str(self._chunks[chunk].worker)), now, split=True)
        lost = [c for c in lost if c not in struck]
        for chunk in lost:
            self._chunks[chunk].failures += self._chunks[chunk].worker is not None
        self._resend(lost, now)
        if lost:
            self._emit(events.WorkersLost(tuple(sorted(gone)), tuple(lost)))
        self._overdue([c for c in pending if c not in lost and c not in struck], now)
        return True

    def stranded_candidates(self, now: float) -> list[int]:
        """Chunks nobody announced for :data:`STRANDED_AFTER_S`, or doubted that long since an outage
        (:meth:`answered`) without a result: worth asking the queue's depth for."""
        return [c for c in self._pending() if self._silent_since(self._chunks[c], now) >= STRANDED_AFTER_S]

    @staticmethod
    def _silent_since(waiting: ChunkState, now: float) -> float:
        if waiting.worker is None:
            return now - waiting.sent_at
        return -1.0 if waiting.doubted_at is None else now - waiting.doubted_at

    def check_stranded(self, now: float, queue_depth: int | None) -> None:
        """Resend chunks that stayed out of the (empty) queue, and out of every worker, too long.

        Args:
            queue_depth: messages in the route's queue now (None: the broker cannot say); asked
                for only when :meth:`stranded_candidates` has any.
        """
        unannounced = self.stranded_candidates(now)
        if not unannounced or queue_depth != 0:
            self._suspects = {}
            return
        self._suspects = {c: self._suspects.get(c, now) for c in unannounced}
        stranded = sorted(c for c, since in self._suspects.items() if now - since >= STRANDED_AFTER_S)
        doubted = [c for c in stranded if self._chunks[c].worker is not None]
        stranded = [c for c in stranded if c not in doubted]
        for chunk in doubted:
            del self._suspects[chunk]
        self._resend(doubted, now)
        if doubted:
            self._emit(events.ChunksUnanswered(tuple(doubted)))
        for chunk in stranded:
            del self._suspects[chunk]
            self._chunks[chunk].stranded += 1
        given_up = [c for c in stranded if self._chunks[c].stranded >= MAX_STRANDED]
        for chunk in given_up:
            if chunk in self._chunks:
                self._give_up(chunk, events.NeverTaken(MAX_STRANDED))
        stranded = [c for c in stranded if c not in given_up]
        self._resend(stranded, now)
        if stranded:
            self._emit(events.ChunksStranded(tuple(stranded)))

    def check_silence(self, now: float, workers: list[WorkerInfo]) -> None:
        """Fall back (or fail) when workers serve the queue but are stuck, or none served it for too long.

        Raises:
            ExecutorError: either, and the batch may not fall back.
        """
        pending = self._pending()
        silent = now - max(self._heard_at, self._trouble_at)
        if pending and self._serving and silent > self.limits.overdue_after_s:
            # Workers that serve the queue, and not one word from any of them for longer than a
            # chunk may take: they are stuck (a pool process wedged between chunks takes nothing
            # and announces nothing). Waiting longer cannot help.
            stuck = events.WorkersStuck(silent, tuple(sorted(self._serving)), self.route.queue)
            if not self.fallback:
                names = ", ".join(stuck.workers)
                raise ExecutorError(
                    f"no worker answered for {silent:.0f} s with {len(pending)} chunk(s) outstanding, although "
                    f"{names} serve {stuck.queue}: are they stuck? (see hermes workers and their logs)"
                )
            self._degrade(stuck)
        elif self._serving or not pending:
            self._orphaned_since = None
        elif self._orphaned_since is None:
            self._orphaned_since = now
        elif now - self._orphaned_since > self.limits.patience_s:
            self._no_worker(workers, len(pending))

    def _no_worker(self, workers: list[WorkerInfo], pending: int) -> None:
        """The route had no worker for ``patience_s``: fall back, or fail naming who is idle and why."""
        route = self.route
        idle = [w for w in workers if w.tag == route.tag and route.queue not in w.queues]
        cause = events.NoWorker(route.tag, self.limits.patience_s,
                         tuple((w.name, str(w.probe.get("reason", "unknown reason"))) for w in idle))  # fmt: skip
        if not self.fallback:
            raise ExecutorError(
                f"no live {route.tag} worker for {cause.waited_s:.0f} s with {pending} chunk(s) outstanding"
                f"{events.idle_clause(cause.idle)}; start one with: hermes worker --mode {route.tag}"
            )
        self._degrade(cause)

    def _degrade(self, cause: events.WorkersStuck | events.NoWorker) -> None:
        """Finish the batch in-process: every outstanding chunk now, every later one as it comes."""
        self._orphaned_since = None
        pending = [c for c in self._chunks if c not in self._ready and self._chunks[c].parent is None]
        self.degraded = True
        self._emit(events.FellBack(cause, len(pending)))
        # A split chunk runs whole; its parts are forgotten.
        self._decisions += [RunHere(chunk, self._chunks[chunk].payload) for chunk in pending]
        for part in [c for c in self._chunks if self._chunks[c].parent is not None]:
            del self._chunks[part]
        self._part_results.clear()

    def _reroute(self, workers: list[WorkerInfo], pending: list[int], now: float) -> bool:
        """With ``auto`` isolation, move the outstanding chunks to the other kind of worker, if any is alive."""
        if self.isolation != "auto":
            return False
        route = route_for(workers, "auto")
        if route is None or route.queue == self.route.queue:
            return False
        old, self.route = self.route, route
        self._serving = {w.name for w in route.workers}
        self._resend(pending, now)
        names = tuple(w.name for w in route.workers)
        self._emit(events.RouteMoved(old.tag, route.tag, names, len(pending), route.note))
        return True

    def _overdue(self, pending: list[int], now: float) -> None:
        """Chunks announced by a worker that still serves, with no result long past the chunk time limit.

        Celery kills a chunk's process at the time limit (and acknowledges the message, so the
        broker never delivers it again); whatever else ended it without a word, no result can
        come any more.
        """
        for chunk in pending:
            waiting = self._chunks.get(chunk)
            if waiting is None or chunk in self._ready or waiting.worker is None:
                continue
            if now - waiting.started_at > self.limits.overdue_after_s:
                reason = events.Overdue(waiting.worker, now - waiting.started_at, self.limits.chunk_time_limit_s)
                self._failed(chunk, reason, now, split=False)
