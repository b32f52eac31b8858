"""Run chunks on Celery workers and collect their results, in order, from a Redis stream.

Results never travel over pub/sub: each worker appends to the batch's own stream, which the
producer reads at its own pace. Workers also append a *start notice* naming who took a chunk,
so when that worker disappears from the registry the chunk is sent again at once instead of
after the broker's visibility timeout. Duplicates (a redelivered chunk finishing twice) are
dropped here: the output gets each chunk exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from hermes_worker.contract import (
    ENGINE_FAILURE,
    KEY_CHUNK_TEXT,
    KEY_RESULTS,
    PAYLOAD_VERSION,
    TASK_NORMALIZE_CHUNK,
    TEXT_KEY,
    request_span,
)
from hermes_worker.metrics import bump
from hermes_worker.processing import failed_chunk_result

from .cluster import Cluster, Route
from .executors import ExecutorError

__all__ = ["CeleryExecutor"]

_HEALTH_EVERY_S = 1.0


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
    """

    def __init__(
        self,
        cluster: Cluster,
        route: Route,
        batch_id: str | None = None,
        on_reroute: Callable[[str], None] | None = None,
        fallback: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.cluster = cluster
        self.route = route
        self.mode = route.tag
        self.batch_id = batch_id or uuid.uuid4().hex
        self.stream = KEY_RESULTS.format(batch=self.batch_id)
        self._reply = {"stream": self.stream, "ttl": cluster.settings.result_ttl_s}
        self._on_reroute = on_reroute or (lambda _message: None)
        self._fallback = fallback
        self.degraded = False  # True once the rest of the batch runs in-process
        self.resent = 0
        # Where reading the stream resumes; "0" the first time: a resumed batch picks up
        # results that arrived while no producer was reading.
        self._last_id: bytes | str = "0"

    def describe(self) -> str:
        names = ", ".join(w.name for w in self.route.workers)
        return f"on {len(self.route.workers)} {self.route.tag} worker(s) via {self.route.queue} ({names})"

    def __enter__(self) -> CeleryExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def finish(self) -> None:
        """Drop the batch's result stream (call once every result is safely written)."""
        with contextlib.suppress(redis.RedisError):  # it expires by itself anyway
            self.cluster.redis.delete(self.stream)

    def _send(self, payload: dict[str, Any]) -> None:
        message = payload
        if "text" in payload:
            # The lines go to Redis as bytes; the task message only names them (contract.TEXT_KEY).
            key = KEY_CHUNK_TEXT.format(batch=self.batch_id, chunk=payload["chunk"])
            self.cluster.redis.set(key, payload["text"].encode("utf-8"), ex=self._reply["ttl"])
            message = {k: v for k, v in payload.items() if k != "text"}
            message |= {TEXT_KEY: key, "count": request_span(payload)[1]}
        self.cluster.app.send_task(
            TASK_NORMALIZE_CHUNK,
            args=[message, self._reply],
            queue=self.route.queue,
            argsrepr=summarize(payload),
            kwargsrepr="{}",
        )

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Send every payload, yield the results in payload order.

        Raises:
            ExecutorError: no live worker remained for the route long enough to give up.
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
                pipe = self.cluster.redis.pipeline(transaction=False)
                if consumed_ids:
                    pipe.xdel(self.stream, *consumed_ids)
                    consumed_ids.clear()
                pipe.delete(KEY_CHUNK_TEXT.format(batch=self.batch_id, chunk=chunk))
                pipe.execute()
            if not order and exhausted:
                return
            try:
                reply: Any = self.cluster.redis.xread({self.stream: self._last_id}, count=256, block=500)
            except redis.RedisError as exc:
                self._on_reroute(f"result stream unreachable ({exc}); retrying")
                time.sleep(1.0)
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    self._take(fields, outstanding, ready)
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
                ready[chunk] = self._checked(result, outstanding[chunk].payload)
        elif b"s" in fields:
            notice = json.loads(fields[b"s"])
            waiting = outstanding.get(notice.get("chunk"))
            if waiting is not None:
                waiting.worker = notice.get("worker")

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
        """Resend chunks whose worker vanished; give up when no worker is left for too long."""
        try:
            alive = {w.name for w in self.cluster.live_workers() if w.tag == self.route.tag}
        except redis.RedisError:
            return orphaned_since
        pending = [c for c in outstanding if c not in ready]
        lost = [c for c in pending if outstanding[c].worker is not None and outstanding[c].worker not in alive]
        for chunk in lost:
            gone = outstanding[chunk].worker
            outstanding[chunk].worker = None
            outstanding[chunk].sent_at = time.monotonic()
            self._send(outstanding[chunk].payload)
            self.resent += 1
            bump(self.cluster.redis, "producers", "fallbacks", kind="resent")
            self._on_reroute(f"worker {gone} is gone: chunk {chunk} sent again")
        if alive or not pending:
            return None
        now = time.monotonic()
        if orphaned_since is None:
            return now
        patience = max(self.cluster.settings.wait_for_workers_s, self.cluster.settings.worker_ttl_s)
        if now - orphaned_since > patience and self._fallback is not None:
            self.degraded = True
            bump(self.cluster.redis, "producers", "fallbacks", kind="in_process_mid_batch")
            self._on_reroute(
                f"no live {self.route.tag} worker for {patience:.0f} s: "
                f"finishing the batch in-process ({len(pending)} chunk(s) outstanding)"
            )
            for chunk in pending:
                ready[chunk] = self._fallback(outstanding[chunk].payload)
            return None
        if now - orphaned_since > patience:
            raise ExecutorError(
                f"no live {self.route.tag} worker for {patience:.0f} s with {len(pending)} chunk(s) outstanding; "
                f"start one with: hermes worker --mode {self.route.tag}"
            )
        return orphaned_since
