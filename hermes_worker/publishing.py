"""How a worker process writes to the producer's reply stream: one pipeline, retried through outages.

Every write a chunk makes (its start notice, its result, a failure or refusal notice) is one
round trip that also carries its cluster-log event and, for a result, its metric increments.
A Redis outage is waited out with back-off until the chunk's deadline; a refusal that waiting
cannot fix (a value too large, a key of the wrong type) is raised at once as :class:`Unpublishable`.

A write about a chunk whose lines wait in Redis never creates the batch's stream unless those lines
are still there (:class:`BatchEnded`): once the producer has written every chunk it deletes the
lines and the stream, and a late write (a worker cut off and back, a copy of a chunk redelivered
after the end) would otherwise make the stream again, holding records nobody reads for
``HERMES_RESULT_TTL``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from .contract import EVENTS_MAXLEN, KEY_EVENTS
from .errors import HermesError
from .metrics import add as add_metrics
from .redis_conn import refused_for_size

__all__ = ["BatchEnded", "Publisher", "Unpublishable"]

log = logging.getLogger("hermes.worker")

# Redis errors that pass: loading, a replica promoted, a failed save (MISCONF), out of memory
# (the producer frees the stream as it reads), cluster resharding.
_TRANSIENT = ("LOADING", "READONLY", "MISCONF", "OOM", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "BUSY")


class Unpublishable(HermesError):
    """Redis refuses what a worker tries to publish, for a reason that waiting does not fix."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


class BatchEnded(HermesError):
    """The batch's result stream is gone and the chunk's lines with it: its producer has finished
    (or gave it up), and nothing more is written for it."""


class Publisher:
    """Appends to reply streams for one worker process, retrying until :attr:`deadline`.

    Args:
        client: the result Redis.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.deadline = 0.0  # monotonic: until when the current chunk may keep retrying Redis

    def allow(self, seconds: float) -> None:
        """Let the writes of the chunk now starting retry for ``seconds`` from now."""
        self.deadline = time.monotonic() + seconds

    def publish(
        self,
        stream: str,
        ttl: int,
        fields: dict[str, str | bytes],
        event: dict[str, str],
        counters: tuple[str, dict[str, float]] | None = None,
        fetch: str | None = None,
        wanted: str | None = None,
    ) -> bytes | None:
        """Append ``fields`` to ``stream`` (and the event, the counters; and GET ``fetch``).

        ``wanted``: the key of the chunk's lines, which exist while the batch waits for the chunk.
        Given, the write creates the stream only while they do (the batch's first write); else
        it only appends to the stream there is. Without it (a chunk of items) it always may.

        Returns:
            The value of ``fetch``, or None (no key asked for, or none readable there).

        Raises:
            BatchEnded: neither the stream nor the lines ``wanted`` exist: nothing was written
                to the stream (the event and counters were).
            Unpublishable: Redis refuses these fields for good; retrying cannot help.
            redis.RedisError: Redis did not answer until the deadline.
        """
        # A result must not be lost to a Redis outage: retry with back-off until the deadline;
        # then the task fails and the producer, finding the chunk overdue, sends it again.
        deadline = max(self.deadline, time.monotonic() + 2.0)
        delay = 0.2
        size = sum(len(value) for value in fields.values())
        while True:
            try:
                return self._send(stream, ttl, fields, event, counters, fetch, wanted)
            except (redis.DataError, UnicodeError) as exc:
                raise Unpublishable(f"{type(exc).__name__}: {exc}") from exc
            except redis.ResponseError as exc:
                # Redis refused a command: wrong type, bad argument, no permission. It would again:
                # no outage to wait out, unless it is one of the passing states (_TRANSIENT).
                if refused_for_size(self.redis, size, exc):
                    raise Unpublishable(f"Redis refused {size:,} bytes ({exc})", too_large=True) from exc
                if not _transient(exc):
                    raise Unpublishable(_redis_reason(exc)) from exc
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Redis is busy (%s); retrying in %.1f s", _redis_reason(exc), delay)
            except redis.RedisError as exc:
                if refused_for_size(self.redis, size, exc):
                    raise Unpublishable(f"Redis refused {size:,} bytes ({exc})", too_large=True) from exc
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Redis is not answering (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _send(
        self,
        stream: str,
        ttl: int,
        fields: dict[str, str | bytes],
        event: dict[str, str],
        counters: tuple[str, dict[str, float]] | None,
        fetch: str | None,
        wanted: str | None,
    ) -> bytes | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(stream, fields, nomkstream=wanted is not None)  # type: ignore[arg-type]
        pipe.expire(stream, ttl)
        pipe.xadd(KEY_EVENTS, event, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
        if counters is not None:
            add_metrics(pipe, *counters)
        if fetch is not None:
            pipe.get(fetch)  # the chunk's lines, in the same round trip as its start notice
        # raise_on_error=False: a refused GET of the chunk's lines (a key of another type,
        # put there by a Redis writer) is not a refusal of the notice (see _fetched).
        replies = pipe.execute(raise_on_error=False)
        fetched = _fetched(replies, fetch)
        if wanted is not None and replies[0] is None and not self._create(stream, ttl, fields, wanted):
            raise BatchEnded(f"{stream} and {wanted} are gone: the batch has ended")
        return fetched

    def _create(self, stream: str, ttl: int, fields: dict[str, str | bytes], wanted: str) -> bool:
        """Write ``fields`` to a stream that does not exist yet, if ``wanted`` still does; whether written.

        WATCH makes the check and the write one: lines deleted in between (the batch ending)
        abort the write; lines written again in between (the chunk sent again) are checked again.
        """
        for _attempt in range(3):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(wanted)  # type: ignore[no-untyped-call]
                    if not pipe.exists(wanted):
                        return False
                    pipe.multi()
                    pipe.xadd(stream, fields)  # type: ignore[arg-type]
                    pipe.expire(stream, ttl)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
        return False


def _transient(exc: redis.ResponseError) -> bool:
    status = getattr(exc, "status_code", None)
    return isinstance(exc, redis.exceptions.OutOfMemoryError | redis.ReadOnlyError) or (
        status in _TRANSIENT or _redis_reason(exc).startswith(_TRANSIENT)
    )


def _redis_reason(exc: redis.RedisError) -> str:
    """A Redis error without the command redis-py quotes in front of it (it may hold prompts)."""
    text = str(exc)
    return text.split(" caused error: ", 1)[-1][:300]


def _fetched(replies: list[Any], fetch: str | None) -> bytes | None:
    """The fetched value of a :meth:`Publisher.publish` pipeline; raises what Redis refused."""
    for reply in replies[:-1] if fetch is not None else replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    if fetch is None:
        return None
    value = replies[-1]
    if isinstance(value, redis.ResponseError):
        # The chunk's key holds something other than its lines (a Redis writer put it there):
        # like lines gone, the producer is told and sends the chunk again (its SET replaces it).
        log.warning("the lines of a chunk could not be read from %s: %s", fetch, value)
        return None
    return value if isinstance(value, bytes) else None
