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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
    NOTICE_REFUSED,
    PAYLOAD_VERSION,
    TASK_NORMALIZE_CHUNK,
    TEXT_KEY,
    ContractError,
    Reply,
    new_batch_id,
    request_span,
    result_problem,
)
from hermes_worker.metrics import bump
from hermes_worker.processing import failed_chunk_result
from hermes_worker.registry import WorkerInfo

from .cluster import Cluster, Route
from .executors import ExecutorError

__all__ = ["CeleryExecutor"]

_HEALTH_EVERY_S = 1.0
_BACKOFF_MAX_S = 5.0
# A chunk nobody announced this long after it was sent, with its queue empty all that time, is stranded.
_STRANDED_AFTER_S = 3.0
# A chunk workers refused (or answered from the wrong kind of worker) this often stops the batch.
_MAX_REFUSALS = 3


def _printable(text: str, limit: int = 500) -> str:
    """Text a worker sent, fit for a terminal: no control characters or escape sequences."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


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
        fallback: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
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
        self._on_reroute: Callable[[str], None] = lambda message: notify(_printable(message))
        self._refusals: dict[int, int] = {}  # chunk -> times refused, or answered by the wrong kind of worker
        self._fallback = fallback
        self.degraded = False  # True once the rest of the batch runs in-process
        self.resent = 0
        self._serving = {w.name for w in route.workers}  # who consumed the route's queue last time we looked
        self._outage_since: float | None = None  # when Redis or the broker stopped answering, if it did
        self._outage_of = "Redis"
        self._trouble_at = float("-inf")  # when either last failed
        self._suspects: dict[int, float] = {}  # chunk -> since when it looks stranded
        self._broker: Any = None  # a kombu connection for queue depths, opened when first needed
        self._written_texts: list[str] = []  # keys of written chunks' lines still to delete
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
        """Send one chunk, retrying with back-off while the broker is away (up to the outage timeout)."""
        message = dict(payload)
        if self.isolation == ISOLATION_CONTAINER:
            message["isolation"] = ISOLATION_CONTAINER  # a worker that cannot isolate it refuses it
        if "text" in payload:
            # The lines go to Redis as bytes; the task message only names them (contract.TEXT_KEY).
            key = KEY_CHUNK_TEXT.format(batch=self.batch_id, chunk=payload["chunk"])
            del message["text"]
            message |= {TEXT_KEY: key, "count": request_span(payload)[1]}
        delay = 0.25
        while True:
            what = "Redis"
            try:
                if "text" in payload:
                    self.cluster.redis.set(key, payload["text"].encode("utf-8"), ex=self._reply["ttl"])
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

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
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
        ready: dict[int, dict[str, Any]] = {}
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
                outstanding[chunk] = _Outstanding(payload, time.monotonic())
                if self.degraded and self._fallback is not None:
                    ready[chunk] = self._fallback(payload)
                else:
                    self._send(payload)
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
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    try:
                        self._take(fields, outstanding, ready)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        # No Hermes worker writes that; anyone with access to Redis could.
                        self._on_reroute(f"skipped an entry on the result stream that no worker wrote ({entry_id!r})")
                    consumed_ids.append(entry_id)
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + _HEALTH_EVERY_S
                orphaned_since = self._check_health(outstanding, ready, orphaned_since)

    def _take(
        self, fields: dict[bytes, bytes], outstanding: dict[int, _Outstanding], ready: dict[int, dict[str, Any]]
    ) -> None:
        if b"r" in fields:
            result = json.loads(fields[b"r"])
            chunk = result.get("chunk")
            if chunk in outstanding and chunk not in ready:  # else: a duplicate, or not ours
                result["text"] = fields.get(b"t", b"").decode("utf-8")
                malformed = result_problem(result)
                wrong = f"answered with {malformed}" if malformed else self._misplaced(result)
                if wrong is not None:
                    self._refused(outstanding, chunk, wrong)
                    return
                ready[chunk] = self._checked(result, outstanding[chunk].payload)
        elif NOTICE_REFUSED.encode() in fields:
            # A worker refused the chunk without running it (a queue not its own, a container
            # chunk on a local worker, a request it does not accept): send it again, a few times.
            notice = json.loads(fields[NOTICE_REFUSED.encode()])
            chunk = notice.get("chunk")
            if chunk in outstanding and chunk not in ready:
                self._refused(outstanding, chunk, f"refused by {notice.get('worker')}: {notice.get('reason')}")
        elif b"s" in fields:
            notice = json.loads(fields[b"s"])
            waiting = outstanding.get(notice.get("chunk"))
            if waiting is not None and isinstance(notice.get("worker"), str):
                waiting.worker = notice.get("worker")
        elif b"m" in fields:
            # A worker found no lines under the chunk's key (Redis lost them): send it again.
            notice = json.loads(fields[b"m"])
            chunk = notice.get("chunk")
            if chunk in outstanding and chunk not in ready:
                self._resend(outstanding, [chunk], time.monotonic())
                self._on_reroute(f"chunk {chunk}: {notice.get('worker')} found its lines gone from Redis; sent again")

    def _misplaced(self, result: dict[str, Any]) -> str | None:
        """Why a result must not be written: it did not run where ``--isolation`` demands; or None.

        With ``--isolation container`` only records that ran in a container are accepted,
        whoever sent them (a worker consuming a queue not its own, an old worker, a forged
        registry entry): the summary never claims isolation the records do not have.
        """
        provenance = result.get("provenance")
        mode = provenance.get("mode") if isinstance(provenance, dict) else None
        if self.isolation != ISOLATION_CONTAINER or mode == ISOLATION_CONTAINER:
            return None
        worker = provenance.get("worker") if isinstance(provenance, dict) else None
        return f"answered by {worker} with records that ran in mode {mode!r}, not in a container"

    def _refused(self, outstanding: dict[int, _Outstanding], chunk: int, why: str) -> None:
        """Send a refused (or wrongly placed) chunk again; stop the batch once it happened too often.

        Raises:
            ExecutorError: the chunk was refused :data:`_MAX_REFUSALS` times.
        """
        times = self._refusals[chunk] = self._refusals.get(chunk, 0) + 1
        if times >= _MAX_REFUSALS:
            raise ExecutorError(_printable(f"chunk {chunk} was refused {times} times; last: {why}"))
        self._resend(outstanding, [chunk], time.monotonic())
        self._on_reroute(f"chunk {chunk} {why}; sent again")

    def _checked(self, result: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """The result, or error records for the whole chunk if it does not hold one record per item.

        A worker of another Hermes version could answer in a shape this producer does not read;
        its records must not vanish quietly.
        """
        _first, count = request_span(payload)
        records = result["text"].count("\n")
        if result.get("v") == PAYLOAD_VERSION and records == count == result["ok"] + result["failed"]:
            return result
        worker = result.get("provenance", {}).get("worker", "unknown worker")
        message = (f"{worker} answered with {records} record(s) for {count} item(s) (result version "
                   f"{result.get('v')!r}, expected {PAYLOAD_VERSION}): run the same Hermes version everywhere")
        self._on_reroute(message)
        return failed_chunk_result(payload, ENGINE_FAILURE, message, mode=self.route.tag, worker=str(worker))

    def _check_health(
        self, outstanding: dict[int, _Outstanding], ready: dict[int, dict[str, Any]], orphaned_since: float | None
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
        pending = [c for c in outstanding if c not in ready]
        if pending and not serving and self._reroute(outstanding, pending):
            return None
        lost = [c for c in pending if outstanding[c].worker is not None and outstanding[c].worker not in serving]
        if vanished:
            # A worker killed outright may hold chunks it had reserved but not announced; the
            # broker would hand them out again only after its visibility timeout. Send every
            # unannounced chunk again now: a result that arrives twice is written once.
            lost += [c for c in pending if outstanding[c].worker is None]
        gone = vanished | {w for c in lost if (w := outstanding[c].worker) is not None}
        self._resend(outstanding, lost, now)
        if lost:
            names = ", ".join(sorted(gone))
            self._on_reroute(
                f"worker {names} is gone or stopped taking this work: {len(lost)} chunk(s) sent again ({_span(lost)})"
            )
        stranded = self._stranded(outstanding, [c for c in pending if c not in lost], now)
        self._resend(outstanding, stranded, now)
        if stranded:
            self._on_reroute(
                f"{len(stranded)} chunk(s) neither queued nor held by any worker (lost in a broken "
                f"connection?): sent again ({_span(stranded)})"
            )
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
        self.degraded = True
        bump(self.cluster.redis, "producers", "fallbacks", kind="in_process_mid_batch")
        self._on_reroute(
            f"no live {self.route.tag} worker for {patience:.0f} s{why}: "
            f"finishing the batch in-process ({len(pending)} chunk(s) outstanding)"
        )
        for chunk in pending:
            ready[chunk] = self._fallback(outstanding[chunk].payload)
        return None

    def _resend(self, outstanding: dict[int, _Outstanding], chunks: list[int], now: float) -> None:
        for chunk in chunks:
            outstanding[chunk].worker = None
            outstanding[chunk].sent_at = now
            self._send(outstanding[chunk].payload)
            self.resent += 1
            bump(self.cluster.redis, "producers", "fallbacks", kind="resent")

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

    def _reroute(self, outstanding: dict[int, _Outstanding], pending: list[int]) -> bool:
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
        self._resend(outstanding, pending, time.monotonic())
        bump(self.cluster.redis, "producers", "fallbacks", kind="rerouted")
        names = ", ".join(w.name for w in route.workers)
        self._on_reroute(
            f"no {old.tag} worker is taking work: {len(pending)} outstanding chunk(s) re-routed to "
            f"{route.tag} worker(s) {names}" + (f" ({route.note})" if route.note else "")
        )
        return True


def _span(chunks: list[int]) -> str:
    shown = ", ".join(str(c) for c in sorted(chunks)[:8])
    return f"chunks {shown}{', ...' if len(chunks) > 8 else ''}"


def _idle_reasons(workers: list[WorkerInfo], route: Route) -> str:
    """Why live workers of the route's kind take none of its work (e.g. their Docker engine is gone)."""
    idle = [w for w in workers if w.tag == route.tag and route.queue not in w.queues]
    reasons = "; ".join(f"{w.name} is not taking work: {w.probe.get('reason', 'unknown reason')}" for w in idle)
    return f" ({reasons})" if reasons else ""
