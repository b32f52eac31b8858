"""Run chunks on Celery workers and collect their results, in order, from a Redis stream.

A loop over two parts: the transport (:mod:`.transport`: send a chunk by name, read the batch's
result stream) and the chunk tracker (:mod:`.tracker`: what is sent, announced, done, stranded
or overdue, and what to do about it, without any I/O). The loop feeds what the transport
observed into the tracker, with the time, and carries out the tracker's decisions; it retries
through outages with back-off, and reports what happened as events (:mod:`.chunk_events`).

Workers append a *start notice* naming who took a chunk, so when that worker disappears from
the registry the chunk is sent again at once instead of after the broker's visibility timeout.
Duplicates (a redelivered chunk finishing twice) are dropped: the output gets each chunk
exactly once. The tracker's docstring lists the faults it rides out, and how.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis

from hermes_worker.contract import ContractError, new_batch_id
from hermes_worker.metrics import bump
from hermes_worker.wire import ChunkResult, Reply

from .batch_board import BatchBoard, BatchProgress, producer_name
from .chunk_events import Event, FellBack, RouteMoved, StreamEntryIgnored
from .chunk_ledger import Forget, RunHere, Send
from .cluster import Cluster, Route
from .executors import ExecutorError
from .notices import ResultPosted, decode_entry
from .tracker import HEALTH_EVERY_S, ChunkTracker, Limits
from .transport import ChunkTransport, NotAnswering, ValueTooLarge

__all__ = ["CeleryExecutor"]

_BACKOFF_MAX_S = 5.0


class CeleryExecutor:
    """Fan chunks out over the workers behind ``route``.

    Args:
        cluster: the connected cluster.
        route: the queue and the workers that serve it.
        batch_id: names the result stream; reuse it to resume a batch.
        on_event: called with each :mod:`.chunk_events` event (chunks sent again, split or
            given up on, outages, re-routes, the fall-back); :func:`.chunk_events.render`
            says it in words.
        fallback: runs a chunk in-process when no worker is left for the route; None means
            such a batch fails instead (``--no-fallback``, or container isolation).
        isolation: what the user asked for (default: the route's tag); ``auto`` lets the
            batch move to the other kind of worker when the route has none left.
        wait_for_workers_s: how long the route may have no worker before the batch gives up
            or falls back (``--wait-for-workers``; default: the settings'), at least the
            heartbeat expiry.
    """

    on_board = True

    def __init__(
        self,
        cluster: Cluster,
        route: Route,
        batch_id: str | None = None,
        on_event: Callable[[Event], None] | None = None,
        fallback: Callable[[dict[str, Any]], ChunkResult] | None = None,
        isolation: str | None = None,
        wait_for_workers_s: float | None = None,
    ) -> None:
        settings = cluster.settings
        self.cluster = cluster
        self.batch_id = batch_id or new_batch_id()
        try:
            reply = Reply(self.batch_id, settings.result_ttl_s)
        except ContractError as exc:  # a journal edited by hand; settings are checked when read
            raise ExecutorError(str(exc)) from None
        isolation = isolation or route.tag
        self.transport = ChunkTransport(cluster, reply, isolation)
        self.stream = reply.stream
        self._fallback = fallback
        self._on_event = on_event or (lambda _event: None)
        wait = settings.wait_for_workers_s if wait_for_workers_s is None else wait_for_workers_s
        limits = Limits(
            chunk_time_limit_s=settings.chunk_time_limit_s,
            heartbeat_s=settings.heartbeat_s,
            worker_ttl_s=settings.worker_ttl_s,
            outage_timeout_s=settings.outage_timeout_s,
            patience_s=max(wait, settings.worker_ttl_s),
        )
        producer = producer_name()
        self.tracker = ChunkTracker(
            route, isolation=isolation, limits=limits, fallback=fallback is not None,
            producer=producer, on_event=self._event, now=time.monotonic(),
        )  # fmt: skip
        # The batch's entry on the board of running batches (`hermes batches`, `hermes metrics`).
        self.board = BatchBoard(
            cluster.redis, BatchProgress(self.batch_id, producer, route.queue, time.monotonic(), time.time())
        )

    @property
    def route(self) -> Route:
        """Where chunks go now (a re-route moves it)."""
        return self.tracker.route

    @property
    def mode(self) -> str:
        return self.tracker.route.tag

    def describe(self) -> str:
        route = self.route
        names = ", ".join(w.name for w in route.workers)
        return f"on {len(route.workers)} {route.tag} worker(s) via {route.queue} ({names})"

    def __enter__(self) -> CeleryExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.board.close()
        self.transport.close()
        if exc_info[0] is not None:  # stopped (failed, interrupted): its part files must not outlive it
            self.transport.drop_parts()

    def follow_input(self, name: str, size: int | None, position: Callable[[], int] | None) -> None:
        """Name the batch's input on the board, with its size and how far it is read, for an ETA."""
        self.board.progress.follow_input(name, size, position)

    def finish(self) -> None:
        """Drop the batch's result stream (call once every result is safely written)."""
        self.transport.finish()

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[ChunkResult]:
        """Send every payload, yield the results in payload order.

        Raises:
            ExecutorError: no live worker remained for the route long enough to give up, or
                Redis did not answer for longer than the outage timeout.
        """
        tracker = self.tracker
        tracker.begin()
        source = iter(payloads)
        exhausted = False
        next_health = time.monotonic() + HEALTH_EVERY_S
        while True:
            while not exhausted and tracker.has_room():
                payload = next(source, None)
                if payload is None:
                    exhausted = True
                    break
                self.board.progress.pulled(payload)
                tracker.admit(payload, time.monotonic())
                self._carry_out()
            while (written := tracker.next_written()) is not None:
                chunk, result = written
                self.board.progress.written(chunk, result)
                yield result
                # The consumer has written what it got before asking for more: only now may
                # the entries behind it, and the chunk's lines, go.
                self.transport.written(chunk)
            if tracker.idle and exhausted:
                return
            if not self._read():
                continue  # Redis is away: the registry cannot be read either
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + HEALTH_EVERY_S
                self._check_health()
                self.board.progress.queue = "in-process" if tracker.degraded else tracker.route.queue
                self.board.tick(time.monotonic(), tracker.holders())

    def _read(self) -> bool:
        """Feed the result stream's next entries to the tracker; False if Redis did not answer."""
        try:
            entries = self.transport.read()
        except NotAnswering as exc:
            self.tracker.unanswered(exc.what, str(exc.cause), time.monotonic())
            time.sleep(1.0)
            return False
        now = time.monotonic()
        self.tracker.answered(now)
        if entries:
            self.tracker.heard(now)
        for _entry_id, fields in entries:
            try:
                seen = decode_entry(fields)
                if isinstance(seen, ResultPosted) and seen.part is not None:
                    seen = self.transport.load_part(seen) if self.tracker.wants_result(seen) else None
                if seen is not None:
                    self.tracker.observe(seen, time.monotonic())
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                # Not something a Hermes worker writes: say so, and wait for the real one.
                self._event(StreamEntryIgnored(type(exc).__name__))
            self._carry_out()
        return True

    def _check_health(self) -> None:
        """Once a second: workers that vanished, stranded chunks, a route with no worker."""
        try:
            workers = self.transport.live_workers()
        except redis.RedisError:
            return
        tracker, now = self.tracker, time.monotonic()
        if tracker.check_workers(now, workers):
            self._carry_out()
            # Asking the broker costs a connection: only when a chunk looks stranded.
            depth = self.transport.queue_depth(tracker.route.queue) if tracker.stranded_candidates(now) else None
            tracker.check_stranded(now, depth)
            self._carry_out()
            tracker.check_silence(now, workers)
        self._carry_out()

    def _carry_out(self) -> None:
        """Do what the tracker decided, until it decides nothing more."""
        while decisions := self.tracker.take_decisions():
            for decision in decisions:
                if isinstance(decision, Send):
                    self._send(decision)
                elif isinstance(decision, Forget):
                    self.transport.forget_lines(decision.chunk)
                elif isinstance(decision, RunHere):
                    assert self._fallback is not None
                    self.tracker.ran_here(decision.chunk, self._fallback(decision.payload))

    def _send(self, send: Send) -> None:
        """Send one chunk, retrying with back-off while Redis or the broker is away (up to the outage timeout)."""
        if not self.tracker.wants_sent(send.chunk):
            return  # finished meanwhile
        if send.resend:
            bump(self.cluster.redis, "producers", "fallbacks", kind="resent")
        delay = 0.25
        while True:
            try:
                self.transport.send(send.payload, send.queue)
            except ValueTooLarge as exc:
                self.tracker.too_large(send.chunk, str(exc), time.monotonic())
                return
            except NotAnswering as exc:
                self.tracker.unanswered(exc.what, str(exc.cause), time.monotonic())
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
            else:
                self.tracker.answered(time.monotonic())
                return

    def _event(self, event: Event) -> None:
        """Count what the metrics count, then tell the command."""
        if isinstance(event, RouteMoved):
            bump(self.cluster.redis, "producers", "fallbacks", kind="rerouted")
        elif isinstance(event, FellBack):
            bump(self.cluster.redis, "producers", "fallbacks", kind="in_process_mid_batch")
        self._on_event(event)
