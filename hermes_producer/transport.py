"""The Celery executor's transport: send a chunk by name, read the batch's result stream, tidy up.

Thin on purpose: each call is one attempt at one thing, and raises what went wrong; what to do
about it (retry, resend, split, give up) is the tracker's to decide (:mod:`.tracker`).

Results never travel over pub/sub: each worker appends to the batch's own stream, which the
producer reads at its own pace (:func:`.notices.decode_entry` turns an entry into what the
tracker observes). The prompts never ride inside the broker message: the chunk's lines go to their own
Redis key, and the message names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import replace
from typing import Any

import redis
from kombu.exceptions import OperationalError

from hermes_worker.contract import (
    ISOLATION_CONTAINER,
    MAX_VALUE_BYTES,
    QUEUE_CONTAINER,
    QUEUE_LOCAL,
    TASK_NORMALIZE_CHUNK,
    TEXT_KEY,
    ContractError,
)  # fmt: skip
from hermes_worker.errors import HermesError
from hermes_worker.redis_conn import refused_for_size
from hermes_worker.registry import WorkerInfo
from hermes_worker.shared_parts import PartDir, PartRef
from hermes_worker.wire import ReadPayload, Reply, request_span

from .cluster import Cluster, queue_depth
from .notices import ResultPosted
from .purge import purge_quietly, task_id_prefix

__all__ = ["SHARED_MARKER", "ChunkTransport", "NotAnswering", "ValueTooLarge", "summarize"]

# What a shared input's chunk keeps under its lines' key: that the chunk is still wanted.
SHARED_MARKER = b"shared"


class ValueTooLarge(HermesError):
    """Redis refuses a chunk's lines as one value: the chunk must be split."""


class NotAnswering(HermesError):
    """Redis or the broker did not answer; ``what`` says which, ``cause`` how."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: {cause}")
        self.what = what
        self.cause = cause


def summarize(payload: dict[str, Any], text: bytes | None = None, span: tuple[int, int] | None = None) -> str:
    """What monitoring (task events, Flower) shows of a chunk: counts, sizes and a hash, never prompts.

    ``text`` (the chunk's lines as UTF-8) and ``span`` (:func:`request_span`) spare working them
    out again when the caller has them.
    """
    digest = hashlib.sha256()
    chars = 0
    if "range" in payload:  # a shared input's chunk: its bytes' digest is known already
        first, count = span or request_span(payload)
        where = payload["range"]
        return (f"chunk {payload['chunk']}: {count} prompts (lines {first}-{first + count - 1}), "
                f"{where['end'] - where['start']:,} bytes, sha256 {where['sha256'][:16]}, "
                f"profile {payload['profile'].get('name')}")  # fmt: skip
    if "text" in payload:
        chars = len(payload["text"])
        digest.update(text if text is not None else payload["text"].encode("utf-8", "surrogatepass"))
    for _line, _id, prompt, _error in payload.get("items") or []:
        if isinstance(prompt, str):
            chars += len(prompt)
            digest.update(prompt.encode("utf-8", "surrogatepass"))
    first, count = span or request_span(payload)
    lines = f"lines {first}-{first + count - 1}" if count else "no lines"
    return (
        f"chunk {payload['chunk']}: {count} prompts ({lines}), {chars:,} chars, "
        f"sha256 {digest.hexdigest()[:16]}, profile {payload['profile'].get('name')}"
    )


class ChunkTransport:
    """One batch's traffic with the cluster: its chunks' lines and messages out, its stream in.

    Args:
        cluster: the connected cluster.
        reply: the batch's result stream, and how long what the batch writes lives.
        isolation: ``container`` marks every message so that only a container worker runs it.
    """

    def __init__(self, cluster: Cluster, reply: Reply, isolation: str) -> None:
        self.cluster = cluster
        self.reply = reply
        self.stream = reply.stream
        self._wire = reply.to_wire()
        self._isolation = isolation
        self._broker: Any = None  # a kombu connection for queue depths, opened when first needed
        self._consumed: list[bytes] = []  # stream entries read, deleted once the next chunk is written
        self._unwanted: list[str] = []  # keys of chunks' lines nobody needs, still to delete
        # Where reading the stream resumes; "0" the first time: a resumed batch picks up
        # results that arrived while no producer was reading.
        self._last_id: bytes | str = "0"
        self._stream_made = False
        # Every chunk whose lines were written, and whether Redis or the broker failed to answer
        # once: Redis may then have come back without its last writes (finish() reconciles).
        self._sent: set[int] = set()
        self._troubled = False
        self._declared: set[str] = set()  # queues this batch's messages declared
        # A shared input's records come back as part files (hermes_worker.shared_parts): the
        # batch's part directory, made with its first shared chunk, and the parts read per chunk.
        self._parts: PartDir | None = None
        self._parts_made = False
        self._parts_read: dict[int, list[PartRef]] = {}

    def send(self, payload: dict[str, Any], queue: str) -> None:
        """Write the chunk's lines, then send its message to ``queue``: one attempt.

        Raises:
            ValueTooLarge: the chunk's lines are too large for one Redis value.
            NotAnswering: Redis or the broker did not answer.
        """
        if not self._stream_made:
            self._make_stream()
        message = {k: v for k, v in payload.items() if k != "text"}
        if self._isolation == ISOLATION_CONTAINER:
            message["isolation"] = ISOLATION_CONTAINER  # a worker that cannot isolate it refuses it
        span, body = request_span(payload), None
        if "range" in payload:
            # A shared input's chunk: workers read its lines from the file (hermes_worker.shared_input);
            # the key holds a marker, so a chunk the batch no longer needs still ends as before.
            key = self.reply.text_key(payload["chunk"])
            self._sent.add(payload["chunk"])
            message |= {TEXT_KEY: key, "count": span[1], "bad": []}  # the worker finds its bad lines
            if not self._parts_made:
                self._make_parts()
            if self._parts is not None:
                message["parts"] = self._parts.owner  # workers write records only to a directory this producer took
            where = payload["range"]
            self._write_lines(key, SHARED_MARKER, size=where["end"] - where["start"])
            body = b""
        elif "text" in payload:
            # The lines go to Redis as bytes; the task message only names them (contract.TEXT_KEY).
            key = self.reply.text_key(payload["chunk"])
            self._sent.add(payload["chunk"])
            message |= {TEXT_KEY: key, "count": span[1]}
            # As the reader joined them from the input, if it did: encoding the text back costs more.
            body = payload.utf8 if isinstance(payload, ReadPayload) else None
            body = payload["text"].encode("utf-8") if body is None else body
            self._write_lines(key, body)
        # The queue is declared with its first message (and again after any trouble), not with every
        # one: a message goes straight to its queue (Celery's anonymous exchange for a direct one),
        # and kombu would only find the declaration in its cache again, at a cost (issue 13).
        declare: list[Any] | None = None if queue not in self._declared else []
        try:
            self.cluster.app.send_task(
                TASK_NORMALIZE_CHUNK, args=[message, self._wire], queue=queue, argsrepr=summarize(payload, body, span),
                kwargsrepr="{}", task_id=task_id_prefix(self.reply.batch) + uuid.uuid4().hex, declare=declare,
            )  # fmt: skip
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise self._not_answering("the broker", exc) from exc
        self._declared.add(queue)

    def _not_answering(self, what: str, exc: BaseException) -> NotAnswering:
        self._troubled = True
        self._declared.clear()  # kombu may come back on a new connection, which declares afresh
        return NotAnswering(what, exc)

    def _make_stream(self) -> None:
        """Make the batch's result stream, empty, before its first chunk is sent (a resumed batch's
        is there already, and stays as it is).

        Workers append to it but make it only for a chunk whose lines still wait in Redis
        (hermes_worker.publishing): once the batch has ended and :meth:`finish` deleted it, nothing
        late makes it again. Made here, it is there for a worker that finds a chunk's lines gone
        before any chunk has started, and says so.
        """
        try:
            pipe = self.cluster.redis.pipeline(transaction=False)
            pipe.xadd(self.stream, {"o": ""}, id="0-1")  # refused when the stream has entries: fine
            pipe.xdel(self.stream, "0-1")
            pipe.expire(self.stream, self.reply.ttl)
            pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise self._not_answering("Redis", exc) from exc
        self._stream_made = True

    def _make_parts(self) -> None:
        """The batch's part directory, for workers to write shared chunks' records in; without
        one (no shared root here, or it cannot be made safely) the records come through Redis."""
        self._parts_made = True
        root = self.cluster.settings.shared_root
        self._parts = None if root is None else PartDir.create(root, self.reply.batch)

    def load_part(self, seen: ResultPosted) -> ResultPosted:
        """``seen`` with its records read from its part file, or with why they cannot be."""
        assert seen.part is not None
        if self._parts is None:
            return replace(seen, problem=f"part {seen.part.name}: this producer made no part directory")
        try:
            text = self._parts.load(seen.part)
        except ContractError as exc:
            return replace(seen, problem=str(exc))
        if isinstance(seen.chunk, int):
            self._parts_read.setdefault(seen.chunk, []).append(seen.part)
        return replace(seen, text=text)

    def _write_lines(self, key: str, body: bytes, size: int | None = None) -> None:
        size = len(body) if size is None else size
        if size > MAX_VALUE_BYTES:
            bound = f"over the {MAX_VALUE_BYTES:,}-byte bound of one value"
            raise ValueTooLarge(f"its lines are {size:,} bytes, {bound}")
        try:
            self.cluster.redis.set(key, body, ex=self.reply.ttl)
        except (redis.RedisError, OSError) as exc:
            if refused_for_size(self.cluster.redis, len(body), exc):
                raise ValueTooLarge(f"Redis refused its {len(body):,} bytes of lines ({exc})") from exc
            raise self._not_answering("Redis", exc) from exc

    def read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The stream's next entries, waiting up to half a second for one.

        Raises:
            NotAnswering: Redis did not answer.
        """
        try:
            reply: Any = self.cluster.redis.xread({self.stream: self._last_id}, count=256, block=500)
        except redis.RedisError as exc:
            raise self._not_answering("Redis", exc) from exc
        entries = [entry for _stream, stream_entries in reply or [] for entry in stream_entries]
        if entries:
            self._last_id = entries[-1][0]
            self._consumed += [entry_id for entry_id, _fields in entries]
        return entries

    def written(self, chunk: int) -> None:
        """Chunk ``chunk`` is written: the entries read so far and its lines may go.

        Only now: a resumed batch would need them otherwise. What Redis refuses now is tried
        again after the next chunk; a resumed batch skips it anyway.
        """
        self._unwanted.append(self.reply.text_key(chunk))
        if self._parts is not None:
            for part in self._parts_read.pop(chunk, ()):
                self._parts.remove(part)
        try:
            pipe = self.cluster.redis.pipeline(transaction=False)
            if self._consumed:
                pipe.xdel(self.stream, *self._consumed)
            pipe.delete(*self._unwanted)
            pipe.execute()
        except redis.RedisError:
            return
        self._consumed.clear()
        self._unwanted.clear()

    def forget_lines(self, chunk: int) -> None:
        """Delete the lines of a chunk nobody needs to run any more (a split chunk, a finished
        part): copies of its message still in the broker then end at once, with an ``m`` notice."""
        key = self.reply.text_key(chunk)
        try:
            self.cluster.redis.delete(key)
        except redis.RedisError:
            self._unwanted.append(key)  # tried again after the next chunk is written

    def live_workers(self) -> list[WorkerInfo]:
        """The registry's live workers.

        Raises:
            redis.RedisError: Redis did not answer.
        """
        return self.cluster.live_workers()

    def queue_depth(self, queue: str) -> int | None:
        """Messages waiting in ``queue``, or None if the broker cannot say right now."""
        try:
            if self._broker is None:
                self._broker = self.cluster.app.connection_for_write()
            return queue_depth(self._broker.default_channel, queue)
        except Exception:
            self.close()
            return None

    def finish(self) -> None:
        """Drop the batch's result stream, and what is left of its messages in the broker (copies
        still queued, or held by a worker that died): call once every result is safely written.

        After an outage, Redis may have come back without its last writes (Sentinel promoted a
        replica that had not got them; a restart lost them): deletions of chunks' lines, and
        workers' acknowledgements, undone. So then the lines of every chunk are deleted again too.
        """
        with contextlib.suppress(redis.RedisError):  # it expires by itself anyway
            self.cluster.redis.delete(self.stream)
        self.drop_parts()
        if self._troubled:
            keys = [self.reply.text_key(chunk) for chunk in sorted(self._sent)]
            with contextlib.suppress(redis.RedisError):  # they expire with the results anyway
                for start in range(0, len(keys), 1000):
                    self.cluster.redis.delete(*keys[start : start + 1000])
        try:
            if self._broker is None:
                self._broker = self.cluster.app.connection_for_write()
            prefix = task_id_prefix(self.reply.batch)
            purge_quietly(self._broker.default_channel, prefix, (QUEUE_LOCAL, QUEUE_CONTAINER))
        except Exception:  # no broker now: what stays is taken for nothing later (BatchEnded)
            self.close()

    def drop_parts(self) -> None:
        """Remove the batch's part directory and every part in it: when the batch ends, done or
        stopped. Nothing expires a part, unlike a Redis value; a resumed batch makes the
        directory again and runs the chunks whose parts are gone again."""
        if self._parts is not None:
            self._parts.remove_all()
            self._parts = None

    def close(self) -> None:
        """Release the broker connection opened for queue depths, if any."""
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self._broker.release()
            self._broker = None
