"""Run chunks on Celery workers and collect their results, in order, from a Redis stream.

Results never travel over pub/sub: each worker appends to the batch's own stream, which the
producer reads at its own pace. Workers also append a *start notice* naming who took a chunk,
so when that worker disappears from the registry the chunk is sent again at once instead of
after the broker's visibility timeout. Duplicates (a redelivered chunk finishing twice) are
dropped here: the output gets each chunk exactly once.

Faults it rides out, and how:

- A worker vanishes (killed, or its heartbeat stops): every chunk it announced, and every chunk
  nobody announced yet (it may have reserved them without starting), is sent again at once.
- A chunk is stranded: nobody announced it for a few seconds while its queue stayed empty.
  Workers announce a chunk the moment they take it, so it is in no queue and no worker: the
  Redis transport pops a message before it records it as unacknowledged, and a connection that
  breaks in between loses the message, or leaves it unacknowledged until the visibility
  timeout. It is sent again.
- Every worker of the route stops serving it (e.g. container workers whose Docker engine went
  away): with ``--isolation auto`` the outstanding chunks are re-routed to the other kind of
  worker; otherwise they wait for a worker, then run in-process or fail, as configured.
- Redis or the broker stops answering: sending and reading retry with back-off for up to
  ``HERMES_OUTAGE_TIMEOUT`` seconds; registry entries that expired meanwhile are given a
  heartbeat period to come back before anyone is judged gone.

The producer never waits for ever, and no chunk is sent again for ever:

- A worker that cannot publish a chunk's result says so with a *failure notice*; a chunk
  announced by a live worker that has not answered within the chunk time limit (plus a grace
  period) is overdue. Either way the chunk is sent again.
- A chunk gets at most :data:`MAX_DELIVERIES` deliveries that end without a result (failure
  notices, overdue, its worker gone, or taken again while no result came). Past that it is
  *split* in halves that run as chunks of their own (:mod:`.splitting`), down to the one line
  to blame, which gets an ``engine_failure`` record naming the reason and the worker: a poison
  line that kills every process running it costs its own record, not its chunk's. A chunk
  whose lines or result are too large for one Redis value is split at once; one whose result
  Redis refuses for another reason (a permission) gets error records, since no line is to blame.
- A chunk sent :data:`MAX_STRANDED` times that no worker ever announced gets error records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from kombu.exceptions import ChannelError, OperationalError

from hermes_worker.contract import (
    ENGINE_FAILURE,
    ISOLATION_CONTAINER,
    KEY_CHUNK_TEXT,
    MAX_VALUE_BYTES,
    NOTICE_REFUSED,
    PAYLOAD_VERSION,
    TASK_NORMALIZE_CHUNK,
    TEXT_KEY,
    ChunkResult,
    ContractError,
    Reply,
    new_batch_id,
    request_span,
)
from hermes_worker.metrics import bump
from hermes_worker.processing import failed_chunk_result
from hermes_worker.registry import WorkerInfo

from .cluster import Cluster, Route
from .executors import ExecutorError
from .splitting import merge_results, split_request

__all__ = ["CeleryExecutor"]

_HEALTH_EVERY_S = 1.0
_BACKOFF_MAX_S = 5.0
# A chunk nobody announced this long after it was sent, with its queue empty all that time, is stranded.
_STRANDED_AFTER_S = 3.0
# Deliveries of one chunk that may end without a result before it is split (or, alone, failed).
MAX_DELIVERIES = 3
# A part of a split chunk is split again as soon as one delivery fails: it holds the culprit,
# and splitting an innocent part by bad luck costs nothing. A part of one line is failed only
# after MAX_DELIVERIES, so that one unlucky death cannot blame it.
_PART_DELIVERIES = 1
# Parts per split: eight parts in parallel find the line to blame in a 1,024-line chunk in four
# rounds (halves would take ten), each round costing a dead process or two.
_SPLIT_WAYS = 8
# Sends of one chunk that no worker ever announced (each "stranded") before it gets error records.
MAX_STRANDED = 5
# A chunk announced by a live worker is overdue this long after the chunk time limit, plus two
# heartbeats: by then Celery has killed the process running it, and no result can come.
_OVERDUE_GRACE_S = 5.0
# Parts of split chunks are numbered from here: far above any chunk number a batch uses.
_PART_BASE = 1 << 40
# Redis' smallest proto-max-bulk-len: a write this large that breaks the connection may be refused.
_BIG_VALUE_BYTES = 1 << 20
# A chunk workers refused (or answered from the wrong kind of worker) this often stops the batch.
_MAX_REFUSALS = 3


def summarize(payload: dict[str, Any]) -> str:
    """What monitoring (task events, Flower) shows of a chunk: counts, sizes and a hash, never prompts."""
    digest = hashlib.sha256()
    chars = 0
    if "text" in payload:
        chars = len(payload["text"])
        digest.update(payload["text"].encode("utf-8", "surrogatepass"))
    for _line, _id, prompt, _error in payload.get("items") or []:
        if isinstance(prompt, str):
            chars += len(prompt)
            digest.update(prompt.encode("utf-8", "surrogatepass"))
    first, count = request_span(payload)
    lines = f"lines {first}-{first + count - 1}" if count else "no lines"
    return (
        f"chunk {payload['chunk']}: {count} prompts ({lines}), {chars:,} chars, "
        f"sha256 {digest.hexdigest()[:16]}, profile {payload['profile'].get('name')}"
    )


@dataclass(slots=True)
class _Outstanding:
    payload: dict[str, Any]
    sent_at: float
    worker: str | None = None
    started_at: float = 0.0  # when ``worker`` announced it
    starts: int = 0  # start notices seen: deliveries that began
    failures: int = 0  # deliveries known to have ended without a result
    stranded: int = 0  # times sent again because nobody ever took it
    allowed: int = MAX_DELIVERIES
    parent: int | None = None  # the chunk this is a part of
    parts: list[int] | None = None  # set once this chunk is split: its parts, in order


class _TooLarge(Exception):
    """Redis refuses a chunk's lines as one value: the chunk must be split."""


class CeleryExecutor:
    """Fan chunks out over the workers behind ``route``.

    Args:
        cluster: the connected cluster.
        route: the queue and the workers that serve it.
        batch_id: names the result stream; reuse it to resume a batch.
        on_reroute: called with a message when chunks are sent again.
        fallback: runs a chunk in-process when no worker is left for the route; None means
            such a batch fails instead (``--no-fallback``, or container isolation).
        isolation: what the user asked for (default: the route's tag); ``auto`` lets the
            batch move to the other kind of worker when the route has none left.
        wait_for_workers_s: how long the route may have no worker before the batch gives up
            or falls back (``--wait-for-workers``; default: the settings'), at least the
            heartbeat expiry.
    """

    def __init__(
        self,
        cluster: Cluster,
        route: Route,
        batch_id: str | None = None,
        on_reroute: Callable[[str], None] | None = None,
        fallback: Callable[[dict[str, Any]], ChunkResult] | None = None,
        isolation: str | None = None,
        wait_for_workers_s: float | None = None,
    ) -> None:
        self.cluster = cluster
        self.route = route
        self.mode = route.tag
        self.isolation = isolation or route.tag
        wait = cluster.settings.wait_for_workers_s if wait_for_workers_s is None else wait_for_workers_s
        self.patience_s = max(wait, cluster.settings.worker_ttl_s)
        self.batch_id = batch_id or new_batch_id()
        try:
            reply = Reply(self.batch_id, cluster.settings.result_ttl_s)
        except ContractError as exc:  # a journal edited by hand; settings are checked when read
            raise ExecutorError(str(exc)) from None
        self.stream = reply.stream
        self._reply: dict[str, Any] = reply.to_wire()
        notify = on_reroute or (lambda _message: None)
        # Messages quote what workers sent (names, reasons): never let them steer a terminal.
        self._on_reroute: Callable[[str], None] = lambda message: notify(_shown(message, limit=2000))
        self._refusals: dict[int, int] = {}  # chunk -> times refused, or answered by the wrong kind of worker
        self._fallback = fallback
        self.degraded = False  # True once the rest of the batch runs in-process
        self.resent = 0
        self._serving = {w.name for w in route.workers}  # who consumed the route's queue last time we looked
        self._outage_since: float | None = None  # when Redis or the broker stopped answering, if it did
        self._heard_at = time.monotonic()  # when the last entry came on the result stream
        self._outage_of = "Redis"
        self._trouble_at = float("-inf")  # when either last failed
        self._suspects: dict[int, float] = {}  # chunk -> since when it looks stranded
        self._broker: Any = None  # a kombu connection for queue depths, opened when first needed
        self._written_texts: list[str] = []  # keys of written chunks' lines still to delete
        self._part_results: dict[int, ChunkResult] = {}  # finished parts of split chunks
        self._next_part = _PART_BASE
        self._name = f"hermes-producer@{socket.gethostname()}"  # who wrote the records the producer gives up on
        # Where reading the stream resumes; "0" the first time: a resumed batch picks up
        # results that arrived while no producer was reading.
        self._last_id: bytes | str = "0"

    def describe(self) -> str:
        names = ", ".join(w.name for w in self.route.workers)
        return f"on {len(self.route.workers)} {self.route.tag} worker(s) via {self.route.queue} ({names})"

    def __enter__(self) -> CeleryExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self._broker.release()
            self._broker = None

    def finish(self) -> None:
        """Drop the batch's result stream (call once every result is safely written)."""
        with contextlib.suppress(redis.RedisError):  # it expires by itself anyway
            self.cluster.redis.delete(self.stream)

    def _send(self, payload: dict[str, Any]) -> None:
        """Send one chunk, retrying with back-off while the broker is away (up to the outage timeout).

        Raises:
            _TooLarge: the chunk's lines are too large for one Redis value.
        """
        message = {k: v for k, v in payload.items() if k != "text"}
        if self.isolation == ISOLATION_CONTAINER:
            message["isolation"] = ISOLATION_CONTAINER  # a worker that cannot isolate it refuses it
        body = b""
        if "text" in payload:
            # The lines go to Redis as bytes; the task message only names them (contract.TEXT_KEY).
            key = KEY_CHUNK_TEXT.format(batch=self.batch_id, chunk=payload["chunk"])
            message |= {TEXT_KEY: key, "count": request_span(payload)[1]}
            body = payload["text"].encode("utf-8")
            if len(body) > MAX_VALUE_BYTES:
                raise _TooLarge(
                    f"its lines are {len(body):,} bytes, over the {MAX_VALUE_BYTES:,}-byte bound of one value"
                )
        delay = 0.25
        while True:
            what = "Redis"
            try:
                if "text" in payload:
                    try:
                        self.cluster.redis.set(key, body, ex=self._reply["ttl"])
                    except redis.ConnectionError as exc:
                        # Redis drops the connection on a value over its proto-max-bulk-len: if it
                        # answers a ping at once, it was the size, and waiting will not help.
                        if len(body) > _BIG_VALUE_BYTES and self._answers():
                            raise _TooLarge(f"Redis refused its {len(body):,} bytes of lines ({exc})") from exc
                        raise
                what = "the broker"
                self.cluster.app.send_task(
                    TASK_NORMALIZE_CHUNK,
                    args=[message, self._reply],
                    queue=self.route.queue,
                    argsrepr=summarize(payload),
                    kwargsrepr="{}",
                )
            except (OperationalError, redis.RedisError, OSError) as exc:
                self._outage(what, exc)
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
            else:
                self._answered()
                return

    def _answers(self) -> bool:
        try:
            return bool(self.cluster.redis.ping())
        except redis.RedisError:
            return False

    def _outage(self, what: str, exc: BaseException) -> None:
        """Note that ``what`` did not answer; give up once that has lasted the outage timeout.

        Raises:
            ExecutorError: the outage lasted longer than ``HERMES_OUTAGE_TIMEOUT``.
        """
        now = time.monotonic()
        self._trouble_at = now
        limit = self.cluster.settings.outage_timeout_s
        if self._outage_since is None:
            self._outage_since, self._outage_of = now, what
            self._on_reroute(f"{what} is not answering ({exc}); retrying for up to {limit:.0f} s")
        elif now - self._outage_since > limit:
            raise ExecutorError(f"{what} has not answered for {limit:.0f} s ({exc})")

    def _answered(self) -> None:
        if self._outage_since is not None:
            self._on_reroute(f"{self._outage_of} answers again after {time.monotonic() - self._outage_since:.1f} s")
            self._outage_since = None

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[ChunkResult]:
        """Send every payload, yield the results in payload order.

        Raises:
            ExecutorError: no live worker remained for the route long enough to give up, or
                Redis did not answer for longer than the outage timeout.
        """
        window = 4 * self.route.concurrency + 4
        source = iter(payloads)
        exhausted = False
        order: deque[int] = deque()
        outstanding: dict[int, _Outstanding] = {}
        ready: dict[int, ChunkResult] = {}
        consumed_ids: list[bytes] = []
        next_health = time.monotonic() + _HEALTH_EVERY_S
        orphaned_since: float | None = None
        while True:
            while not exhausted and len(order) < window:
                payload = next(source, None)
                if payload is None:
                    exhausted = True
                    break
                chunk = payload["chunk"]
                order.append(chunk)
                if not outstanding:
                    self._heard_at = time.monotonic()  # silence counts from the first chunk out
                outstanding[chunk] = _Outstanding(payload, time.monotonic())
                if self.degraded and self._fallback is not None:
                    ready[chunk] = self._fallback(payload)
                else:
                    self._dispatch(chunk, outstanding, ready)
            while order and order[0] in ready:
                chunk = order.popleft()
                outstanding.pop(chunk, None)
                yield ready.pop(chunk)
                # The consumer has written what it got before asking for more: only now may
                # the entries behind it, and the chunk's lines, go (a resumed batch would need
                # them otherwise).
                self._written_texts.append(KEY_CHUNK_TEXT.format(batch=self.batch_id, chunk=chunk))
                try:
                    pipe = self.cluster.redis.pipeline(transaction=False)
                    if consumed_ids:
                        pipe.xdel(self.stream, *consumed_ids)
                    pipe.delete(*self._written_texts)
                    pipe.execute()
                except redis.RedisError:
                    pass  # tried again after the next chunk; a resumed batch skips them anyway
                else:
                    consumed_ids.clear()
                    self._written_texts.clear()
            if not order and exhausted:
                return
            try:
                reply: Any = self.cluster.redis.xread({self.stream: self._last_id}, count=256, block=500)
            except redis.RedisError as exc:
                self._outage("Redis", exc)
                time.sleep(1.0)
                continue
            self._answered()
            for _stream, entries in reply or []:
                self._heard_at = time.monotonic()
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    try:
                        self._take(fields, outstanding, ready)
                    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                        # Not something a Hermes worker writes: say so, and wait for the real one.
                        self._on_reroute(f"ignored a malformed entry on the result stream ({type(exc).__name__})")
                    consumed_ids.append(entry_id)
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + _HEALTH_EVERY_S
                orphaned_since = self._check_health(outstanding, ready, orphaned_since)

    def _take(
        self, fields: dict[bytes, bytes], outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult]
    ) -> None:
        if b"r" in fields:
            result = json.loads(fields[b"r"])
            chunk = result.get("chunk")
            waiting = outstanding.get(chunk)
            # else: a duplicate, not ours, or a part of another run of this batch (other lines)
            if waiting is not None and chunk not in ready and _same_lines(result, waiting.payload):
                try:
                    posted = ChunkResult.from_stream(result, fields.get(b"t", b""))
                except ContractError as exc:
                    self._refused(outstanding, ready, chunk, f"answered with {exc}")
                    return
                wrong = self._misplaced(posted)
                if wrong is not None:
                    self._refused(outstanding, ready, chunk, wrong)
                    return
                self._complete(chunk, self._checked(posted, waiting.payload), outstanding, ready)
            return
        kind = next((k for k in (b"s", b"m", b"f", _REFUSED) if k in fields), None)
        if kind is None:
            return
        notice = json.loads(fields[kind])
        chunk, worker = notice.get("chunk"), _shown(notice.get("worker"))
        waiting = outstanding.get(chunk)
        if waiting is None or chunk in ready or waiting.parts is not None:
            return  # done already, not ours, or split (its parts carry on)
        if kind == b"s":
            waiting.worker, waiting.started_at = worker, time.monotonic()
            waiting.starts += 1
            if waiting.starts > waiting.allowed:
                # Taken again and again, and never a result: the process running it dies on it
                # (memory, a crash) and Celery puts it back each time. No notice says so.
                reason = f"taken {waiting.starts} times with no result, last by {worker} (does it kill its process?)"
                self._failed(chunk, reason, outstanding, ready, split=True)
        elif kind == _REFUSED:
            # A worker refused the chunk without running it (a queue not its own, a container
            # chunk on a local worker, a request it does not accept): send it again, a few times.
            self._refused(outstanding, ready, chunk, f"refused by {worker}: {_shown(notice.get('reason'))}")
        elif kind == b"m":
            # A worker found no lines under the chunk's key (Redis lost them): send it again.
            self._resend(outstanding, ready, [chunk], time.monotonic())
            self._on_reroute(f"chunk {chunk}: {worker} found its lines gone from Redis; sent again")
        else:
            # A worker that knows splitting helps (too large, too slow) says so; otherwise Redis
            # refused the result for a reason no line is to blame for: sending it in parts will
            # not help either, and the chunk gets error records once it is out of deliveries.
            reason = f"{worker} could not finish it: {_shown(notice.get('reason'))}"
            split = bool(notice.get("split"))
            self._failed(chunk, reason, outstanding, ready, split=split, then_split=split)

    def _misplaced(self, result: ChunkResult) -> str | None:
        """Why a result must not be written: it did not run where ``--isolation`` demands; or None.

        With ``--isolation container`` only records that ran in a container are accepted,
        whoever sent them (a worker consuming a queue not its own, an old worker, a forged
        registry entry): the summary never claims isolation the records do not have.
        """
        mode, worker = result.provenance.get("mode"), result.provenance.get("worker")
        if self.isolation != ISOLATION_CONTAINER or mode == ISOLATION_CONTAINER:
            return None
        return f"answered by {_shown(worker)} with records that ran in mode {_shown(mode)!r}, not in a container"

    def _refused(
        self, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult], chunk: int, why: str
    ) -> None:
        """Send a refused (or wrongly placed) chunk again; stop the batch once it happened too often.

        Unlike a failed delivery, no line is to blame and no error record would be true: a batch
        whose chunks keep going to the wrong kind of worker stops, naming why.

        Raises:
            ExecutorError: the chunk was refused :data:`_MAX_REFUSALS` times.
        """
        times = self._refusals[chunk] = self._refusals.get(chunk, 0) + 1
        if times >= _MAX_REFUSALS:
            raise ExecutorError(_shown(f"chunk {chunk} was refused {times} times; last: {why}", limit=2000))
        outstanding[chunk].worker = None
        self._resend(outstanding, ready, [chunk], time.monotonic())
        self._on_reroute(f"chunk {chunk} {why}; sent again")

    def _checked(self, result: ChunkResult, payload: dict[str, Any]) -> ChunkResult:
        """The result, or error records for the whole chunk if it does not hold one record per item.

        A worker of another Hermes version could answer in a shape this producer does not read;
        its records must not vanish quietly.
        """
        _first, count = request_span(payload)
        records = result.records.count("\n")
        if result.version == PAYLOAD_VERSION and records == count == result.count:
            return result
        worker = result.provenance["worker"]
        message = (f"{worker} answered with {records} record(s) for {count} item(s) (result version "
                   f"{result.version!r}, expected {PAYLOAD_VERSION}): run the same Hermes version everywhere")
        self._on_reroute(message)
        return failed_chunk_result(payload, ENGINE_FAILURE, message, mode=self.route.tag, worker=str(worker))

    def _check_health(
        self, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult], orphaned_since: float | None
    ) -> float | None:
        """Resend chunks whose worker vanished, re-route or wait when the route has no worker left."""
        try:
            workers = self.cluster.live_workers()
        except redis.RedisError:
            return orphaned_since
        now = time.monotonic()
        if now - self._trouble_at < self.cluster.settings.worker_ttl_s + _HEALTH_EVERY_S:
            # Registry entries expired while Redis was away: nobody is judged gone until every
            # worker has had a heartbeat to publish its entry again.
            return None
        serving = {w.name for w in workers if self.route.queue in w.queues}
        vanished, self._serving = self._serving - serving, serving
        # Split chunks are not sent any more: their parts are.
        pending = [c for c in outstanding if c not in ready and outstanding[c].parts is None]
        if pending and not serving and self._reroute(outstanding, ready, pending):
            return None
        lost = [c for c in pending if outstanding[c].worker is not None and outstanding[c].worker not in serving]
        # A chunk whose worker keeps vanishing with it may be what kills the worker: counted.
        struck = [c for c in lost if outstanding[c].failures + 1 >= outstanding[c].allowed]
        if vanished:
            # A worker killed outright may hold chunks it had reserved but not announced; the
            # broker would hand them out again only after its visibility timeout. Send every
            # unannounced chunk again now: a result that arrives twice is written once.
            lost += [c for c in pending if outstanding[c].worker is None]
        gone = vanished | {w for c in lost if (w := outstanding[c].worker) is not None}
        for chunk in struck:
            reason = f"{outstanding[chunk].worker} vanished while running it"
            self._failed(chunk, reason, outstanding, ready, split=True)
        lost = [c for c in lost if c not in struck]
        for chunk in lost:
            outstanding[chunk].failures += outstanding[chunk].worker is not None
        self._resend(outstanding, ready, lost, now)
        if lost:
            names = ", ".join(sorted(gone))
            self._on_reroute(
                f"worker {names} is gone or stopped taking this work: {len(lost)} chunk(s) sent again ({_span(lost)})"
            )
        self._overdue(outstanding, ready, [c for c in pending if c not in lost and c not in struck], now)
        unsent = [c for c in pending if c in outstanding and c not in ready and c not in lost and c not in struck]
        stranded = self._stranded(outstanding, unsent, now)
        for chunk in stranded:
            outstanding[chunk].stranded += 1
        given_up = [c for c in stranded if outstanding[c].stranded >= MAX_STRANDED]
        for chunk in given_up:
            self._give_up(chunk, f"sent {MAX_STRANDED} times and never taken by a worker "
                          "(can the workers write to Redis?)", outstanding, ready)  # fmt: skip
        stranded = [c for c in stranded if c not in given_up]
        self._resend(outstanding, ready, stranded, now)
        if stranded:
            self._on_reroute(
                f"{len(stranded)} chunk(s) neither queued nor held by any worker (lost in a broken "
                f"connection?): sent again ({_span(stranded)})"
            )
        pending = [c for c in outstanding if c not in ready and outstanding[c].parts is None]
        silent = now - max(self._heard_at, self._trouble_at)
        if pending and serving and silent > self._overdue_after():
            # Workers that serve the queue, and not one word from any of them for longer than a
            # chunk may take: they are stuck (a pool process wedged between chunks takes nothing
            # and announces nothing). Waiting longer cannot help.
            names = ", ".join(sorted(serving))
            if self._fallback is None:
                raise ExecutorError(
                    f"no worker answered for {silent:.0f} s with {len(pending)} chunk(s) outstanding, although "
                    f"{names} serve {self.route.queue}: are they stuck? (see hermes workers and their logs)"
                )
            self._degrade(outstanding, ready, f"no worker answered for {silent:.0f} s although {names} serve "
                          f"{self.route.queue}: are they stuck?")  # fmt: skip
            return None
        if serving or not pending:
            return None
        if orphaned_since is None:
            return now
        patience = self.patience_s
        if now - orphaned_since <= patience:
            return orphaned_since
        why = _idle_reasons(workers, self.route)
        if self._fallback is None:
            raise ExecutorError(
                f"no live {self.route.tag} worker for {patience:.0f} s with {len(pending)} chunk(s) outstanding"
                f"{why}; start one with: hermes worker --mode {self.route.tag}"
            )
        self._degrade(outstanding, ready, f"no live {self.route.tag} worker for {patience:.0f} s{why}")
        return None

    def _degrade(self, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult], why: str) -> None:
        """Finish the batch in-process: every outstanding chunk now, every later one as it comes."""
        assert self._fallback is not None
        pending = [c for c in outstanding if c not in ready and outstanding[c].parent is None]
        self.degraded = True
        bump(self.cluster.redis, "producers", "fallbacks", kind="in_process_mid_batch")
        self._on_reroute(f"{why}: finishing the batch in-process ({len(pending)} chunk(s) outstanding)")
        for chunk in [c for c in outstanding if c not in ready and outstanding[c].parent is None]:
            ready[chunk] = self._fallback(outstanding[chunk].payload)  # a split chunk runs whole
        for part in [c for c in outstanding if outstanding[c].parent is not None]:
            del outstanding[part]
        self._part_results.clear()

    def _overdue_after(self) -> float:
        """How long after a worker took a chunk no result can come any more (Celery killed it)."""
        settings = self.cluster.settings
        return settings.chunk_time_limit_s + _OVERDUE_GRACE_S + 2 * settings.heartbeat_s

    def _resend(
        self, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult], chunks: list[int], now: float
    ) -> None:
        for chunk in chunks:
            if chunk not in outstanding or chunk in ready:
                continue  # finished meanwhile (given up on, or its result came)
            outstanding[chunk].worker = None
            outstanding[chunk].sent_at = now
            self._dispatch(chunk, outstanding, ready)
            self.resent += 1
            bump(self.cluster.redis, "producers", "fallbacks", kind="resent")

    def _dispatch(self, chunk: int, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult]) -> None:
        """Send ``chunk``; split it first if its lines are too large for one Redis value."""
        try:
            self._send(outstanding[chunk].payload)
        except _TooLarge as exc:
            self._split(chunk, str(exc), outstanding, ready)

    def _failed(
        self, chunk: int, reason: str, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult],
        *, split: bool, then_split: bool = True,
    ) -> None:  # fmt: skip
        """A delivery of ``chunk`` ended without a result: send it again, or split it once that
        happened ``allowed`` times (at once if ``split``: sending it whole again cannot help).
        Without ``then_split`` (no line can be to blame) a chunk out of deliveries gets error records."""
        waiting = outstanding[chunk]
        waiting.failures += 1
        waiting.worker = None
        if split or waiting.failures >= waiting.allowed:
            if split or then_split:
                self._split(chunk, reason, outstanding, ready)
            else:
                self._give_up(chunk, reason, outstanding, ready)
            return
        self._on_reroute(f"chunk {chunk} ({_lines(waiting.payload)}): {reason}; sent again "
                         f"({waiting.failures} of {waiting.allowed} deliveries failed)")  # fmt: skip
        self._resend(outstanding, ready, [chunk], time.monotonic())

    def _split(
        self, chunk: int, reason: str, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult]
    ) -> None:
        """Run ``chunk``'s parts as chunks of their own; a chunk of one line gets its error record."""
        waiting = outstanding[chunk]
        parts = split_request(waiting.payload, _SPLIT_WAYS)
        if not parts:
            self._give_up(chunk, reason, outstanding, ready)
            return
        self._on_reroute(
            f"chunk {chunk} ({_lines(waiting.payload)}): {reason}; split into {len(parts)} parts"
        )
        waiting.parts, waiting.worker = [], None
        # Copies of the whole chunk still in the broker now find no lines, and end at once.
        self._forget_lines(chunk)
        now = time.monotonic()
        for part in parts:
            number, self._next_part = self._next_part, self._next_part + 1
            part["chunk"] = number
            allowed = _PART_DELIVERIES if request_span(part)[1] > 1 else MAX_DELIVERIES
            outstanding[number] = _Outstanding(part, now, allowed=allowed, parent=chunk)
            waiting.parts.append(number)
        for number in list(waiting.parts):
            if number in outstanding and chunk in outstanding and chunk not in ready:
                self._dispatch(number, outstanding, ready)

    def _give_up(
        self, chunk: int, reason: str, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult]
    ) -> None:
        """Error records, written by the producer, for every line of ``chunk``."""
        payload = outstanding[chunk].payload
        self._on_reroute(f"{_lines(payload)}: gave up: {reason}")
        message = f"no worker could process this line: {reason}"
        self._complete(
            chunk,
            failed_chunk_result(payload, ENGINE_FAILURE, message, mode=self.route.tag, worker=self._name),
            outstanding,
            ready,
        )

    def _complete(
        self, chunk: int, result: ChunkResult, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult]
    ) -> None:
        """``chunk`` has its result: ready to be written, or one part closer to its parent's."""
        waiting = outstanding[chunk]
        self._drop_parts(waiting, outstanding)
        if waiting.parent is None:
            ready[chunk] = result
            return
        del outstanding[chunk]
        self._forget_lines(chunk)
        self._part_results[chunk] = result
        parent = outstanding.get(waiting.parent)
        if parent is None or parent.parts is None or waiting.parent in ready:
            return
        if all(part in self._part_results for part in parent.parts):
            parts = [self._part_results.pop(part) for part in parent.parts]
            self._complete(waiting.parent, merge_results(parent.payload, parts), outstanding, ready)

    def _drop_parts(self, waiting: _Outstanding, outstanding: dict[int, _Outstanding]) -> None:
        """Forget the parts of a chunk that has its result (a copy of the whole chunk may finish first)."""
        for part in waiting.parts or []:
            self._part_results.pop(part, None)
            dropped = outstanding.pop(part, None)
            if dropped is not None:
                self._forget_lines(part)
                self._drop_parts(dropped, outstanding)

    def _forget_lines(self, chunk: int) -> None:
        """Delete the lines of a chunk nobody needs to run any more (a split chunk, a finished
        part): copies of its message still in the broker then end at once, with an ``m`` notice."""
        key = KEY_CHUNK_TEXT.format(batch=self.batch_id, chunk=chunk)
        try:
            self.cluster.redis.delete(key)
        except redis.RedisError:
            self._written_texts.append(key)  # tried again after the next chunk is written

    def _overdue(
        self, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult], pending: list[int], now: float
    ) -> None:
        """Chunks announced by a worker that still serves, with no result long past the chunk time limit.

        Celery kills a chunk's process at the time limit (and acknowledges the message, so the
        broker never delivers it again); whatever else ended it without a word, no result can
        come any more.
        """
        settings, limit = self.cluster.settings, self._overdue_after()
        for chunk in pending:
            waiting = outstanding.get(chunk)
            if waiting is None or chunk in ready or waiting.worker is None or now - waiting.started_at <= limit:
                continue
            self._failed(chunk, f"{waiting.worker} took it {now - waiting.started_at:.0f} s ago and never answered "
                         f"(the chunk time limit is {settings.chunk_time_limit_s:.0f} s)", outstanding, ready,
                         split=False)  # fmt: skip

    def _stranded(self, outstanding: dict[int, _Outstanding], pending: list[int], now: float) -> list[int]:
        """Unannounced chunks that stayed out of the (empty) queue for ``_STRANDED_AFTER_S``."""
        unannounced = [
            c for c in pending if outstanding[c].worker is None and now - outstanding[c].sent_at >= _STRANDED_AFTER_S
        ]
        if not unannounced or self._queue_depth() != 0:
            self._suspects = {}
            return []
        self._suspects = {c: self._suspects.get(c, now) for c in unannounced}
        stranded = [c for c, since in self._suspects.items() if now - since >= _STRANDED_AFTER_S]
        for chunk in stranded:
            del self._suspects[chunk]
        return sorted(stranded)

    def _queue_depth(self) -> int | None:
        """Messages waiting in the route's queue, or None if the broker cannot say right now."""
        try:
            if self._broker is None:
                self._broker = self.cluster.app.connection_for_write()
            _, count, _ = self._broker.default_channel.queue_declare(queue=self.route.queue, passive=True)
            return int(count)
        except ChannelError:
            return 0  # "no such queue": the Redis transport's way of saying its list is empty
        except Exception:
            with contextlib.suppress(Exception):
                self._broker.release()
            self._broker = None
            return None

    def _reroute(
        self, outstanding: dict[int, _Outstanding], ready: dict[int, ChunkResult], pending: list[int]
    ) -> bool:
        """With ``auto`` isolation, move the outstanding chunks to the other kind of worker, if any is alive."""
        if self.isolation != "auto":
            return False
        try:
            route = self.cluster.route("auto")
        except redis.RedisError:
            return False
        if route is None or route.queue == self.route.queue:
            return False
        old, self.route, self.mode = self.route, route, route.tag
        self._serving = {w.name for w in route.workers}
        self._resend(outstanding, ready, pending, time.monotonic())
        bump(self.cluster.redis, "producers", "fallbacks", kind="rerouted")
        names = ", ".join(w.name for w in route.workers)
        self._on_reroute(
            f"no {old.tag} worker is taking work: {len(pending)} outstanding chunk(s) re-routed to "
            f"{route.tag} worker(s) {names}" + (f" ({route.note})" if route.note else "")
        )
        return True


_REFUSED = NOTICE_REFUSED.encode()


def _shown(value: Any, limit: int = 300) -> str:
    """A worker's words as they may reach a terminal and the log: printable, bounded."""
    text = str(value)[:limit]
    return text if text.isprintable() else "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def _lines(payload: dict[str, Any]) -> str:
    first, count = request_span(payload)
    return f"line {first}" if count == 1 else f"lines {first}-{first + count - 1}"


def _same_lines(result: dict[str, Any], payload: dict[str, Any]) -> bool:
    """False for a result about other lines than ``payload`` (a part of an earlier run, numbered alike)."""
    return "text" not in payload or result.get("first") == payload.get("first")


def _span(chunks: list[int]) -> str:
    shown = ", ".join(str(c) for c in sorted(chunks)[:8])
    return f"chunks {shown}{', ...' if len(chunks) > 8 else ''}"


def _idle_reasons(workers: list[WorkerInfo], route: Route) -> str:
    """Why live workers of the route's kind take none of its work (e.g. their Docker engine is gone)."""
    idle = [w for w in workers if w.tag == route.tag and route.queue not in w.queues]
    reasons = "; ".join(f"{w.name} is not taking work: {w.probe.get('reason', 'unknown reason')}" for w in idle)
    return f" ({reasons})" if reasons else ""
