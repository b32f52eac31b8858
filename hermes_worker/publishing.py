"""How a worker process writes to the producer's reply stream: one pipeline, retried through outages.

Every write a chunk makes (its start notice, its result, a failure or refusal notice) is one
round trip that also carries its cluster-log event and, for a result, its metric increments.
A Redis outage is waited out with back-off until the chunk's deadline; a refusal that waiting
cannot fix (a value too large, a key of the wrong type) is raised at once as :class:`Unpublishable`.
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

__all__ = ["Publisher", "Unpublishable"]

log = logging.getLogger("hermes.worker")

# Redis errors that pass: loading, a replica promoted, a failed save (MISCONF), out of memory
# (the producer frees the stream as it reads), cluster resharding.
_TRANSIENT = ("LOADING", "READONLY", "MISCONF", "OOM", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "BUSY")


class Unpublishable(HermesError):
    """Redis refuses what a worker tries to publish, for a reason that waiting does not fix."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


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
    ) -> bytes | None:
        """Append ``fields`` to ``stream`` (and the event, the counters; and GET ``fetch``).

        Returns:
            The value of ``fetch``, or None (no key asked for, or none readable there).

        Raises:
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
                return self._send(stream, ttl, fields, event, counters, fetch)
            except (redis.DataError, UnicodeError) as exc:
                raise Unpublishable(f"{type(exc).__name__}: {exc}") from exc
            except redis.ResponseError as exc:
                # Redis refused a command: wrong type, bad argument, no permission. It would again:
                # no outage to wait out, unless it is one of the passing states (_TRANSIENT).
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
    ) -> bytes | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.expire(stream, ttl)
        pipe.xadd(KEY_EVENTS, event, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
        if counters is not None:
            add_metrics(pipe, *counters)
        if fetch is not None:
            pipe.get(fetch)  # the chunk's lines, in the same round trip as its start notice
        # raise_on_error=False: a refused GET of the chunk's lines (a key of another type,
        # put there by a Redis writer) is not a refusal of the notice (see _fetched).
        return _fetched(pipe.execute(raise_on_error=False), fetch)


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
