"""The cluster log: structured events from every worker on one capped Redis stream.

Records have the shape of the local file log (``ts``, ``level``, ``event``, ``message`` and
fields), so ``hermes log`` shows both the same way, and obey the same rules: secrets are masked
in the message and every field when an event is written (:func:`~hermes_worker.redact.redact`)
and again when it is read; callers put no prompt, id or item message in an event.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from .contract import EVENTS_MAXLEN, KEY_EVENTS
from .redact import redact, redact_data
from .timestamps import utc_iso

__all__ = ["ClusterLog"]

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
log = logging.getLogger("hermes.events")


class ClusterLog:
    """Append to and read the cluster's event stream."""

    def __init__(self, client: redis.Redis, source: str, maxlen: int = EVENTS_MAXLEN) -> None:
        self._redis = client
        self._source = source
        self._maxlen = maxlen

    def entry(self, level: str, event: str, message: str, **fields: Any) -> dict[str, str]:
        """The stream fields of one event, for callers that add it to their own pipeline."""
        record = {"ts": utc_iso(), "level": level, "event": event, "message": redact(message), "worker": self._source}
        # Through JSON first, so that objects are redacted as the repr() they are stored as.
        record.update(redact_data(json.loads(json.dumps(fields, default=repr))))
        return {"r": json.dumps(record, default=repr)}

    def emit(self, level: str, event: str, message: str, **fields: Any) -> None:
        """Append one event; never raises (an event lost to a Redis outage is only logged)."""
        try:
            self._redis.xadd(
                KEY_EVENTS,
                self.entry(level, event, message, **fields),  # type: ignore[arg-type]
                maxlen=self._maxlen,
                approximate=True,
            )
        except redis.RedisError as exc:
            log.warning("cluster event %s not recorded: %s", event, exc)

    def read(self, n: int, min_level: str = "INFO", errors_only: bool = False) -> list[dict[str, Any]]:
        """The last ``n`` events at or above ``min_level``, oldest first."""
        floor = _LEVELS["ERROR"] if errors_only else _LEVELS.get(min_level, 20)
        found: list[dict[str, Any]] = []
        last = "+"
        while len(found) < n:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = self._redis.xrevrange(  # type: ignore[assignment]
                KEY_EVENTS, max=last, count=500
            )
            if not entries:
                break
            for _entry_id, fields in entries:
                record = _decode(fields)
                if record is not None and _LEVELS.get(record.get("level", ""), 0) >= floor:
                    # Redacted on the way out too: events from an older Hermes, or anyone else.
                    found.append(redact_data(record))
                    if len(found) == n:
                        break
            last = "(" + entries[-1][0].decode()
        return found[::-1]

    def follow(
        self, min_level: str = "INFO", stop: Callable[[], bool] | None = None, block_ms: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Yield events appended from now on, until ``stop()`` returns True.

        Each read starts after the last entry seen, the newest one when following began if
        none came since: an event appended between two reads is yielded too (reading from
        ``$`` each time would lose it).
        """
        floor = _LEVELS.get(min_level, 20)
        last: str | None = None
        while not (stop and stop()):
            try:
                if last is None:
                    newest: Any = self._redis.xrevrange(KEY_EVENTS, count=1)
                    last = _entry_id(newest[0][0]) if newest else "0-0"
                reply: Any = self._redis.xread({KEY_EVENTS: last}, block=block_ms, count=200)
            except redis.RedisError:
                time.sleep(block_ms / 1000)
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = _entry_id(entry_id)
                    record = _decode(fields)
                    if record is not None and _LEVELS.get(record.get("level", ""), 0) >= floor:
                        yield redact_data(record)


def _entry_id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    """The event an entry holds, or None for one no Hermes wrote.

    Anyone who can write to Redis can add entries: one that is not JSON, is nested too deeply
    to parse, or has a level that is not a string is skipped, so it cannot hide the others.
    """
    try:
        record = json.loads(fields[b"r"])
    except (KeyError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("level"), str) else None
