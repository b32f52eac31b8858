"""The running batches: each producer's small entry about its batch, for `hermes batches` and Prometheus.

A producer running a batch on the cluster writes ``hermes:batch:ID`` (:data:`KEY_BATCH`): one
JSON object of a few hundred bytes (:class:`BatchStatus`), refreshed about once a second with
an expiry of :data:`ENTRY_TTL_S`, and deleted when the batch ends; the entry of a producer that
died goes away by itself. ``hermes batches`` prints the entries, the cluster exporter
(``hermes metrics``) turns them into gauges.

Anyone who can write to Redis can write such an entry, and it ends up on a terminal and in
Prometheus labels, so a reader trusts none of it: the key must name a batch id (hex, a fixed
length) and hold a string; the value is read :data:`MAX_ENTRY_BYTES` at most; every field must
have its type and bounds (counts, finite times, names of at most :data:`MAX_TEXT` printable
characters, which producers make so with :func:`escaped`, :data:`MAX_WORKERS` workers, error
codes Hermes defines). Printers still escape what they print (``hermes_producer.terminal``).
At most :data:`MAX_BATCHES` entries are read at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from .contract import BATCH_ID, ERROR_CODES, KEY_BATCH, ContractError, shown

__all__ = ["ENTRY_TTL_S", "MAX_BATCHES", "BatchStatus", "Board", "escaped", "read_board"]

ENTRY_VERSION = 1
ENTRY_TTL_S = 30  # an entry its producer stopped refreshing is gone this long after
MAX_ENTRY_BYTES = 16 * 1024  # a real entry is well under 2 KiB: 16 workers, 13 codes
MAX_BATCHES = 200  # entries read at once; `Board.truncated` says when there were more
MAX_WORKERS = 16  # workers an entry names (the ones that made the most records)
MAX_TEXT = 200  # characters of an input name, a worker name, a profile...
MAX_COUNT = (1 << 62) - 1
UNKNOWN_CODE = "unknown"  # an error code this Hermes does not define (a newer worker's)
_PREFIX = KEY_BATCH.format(batch="")


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """One running batch, as its producer last saw it.

    ``read`` is the bytes of the input whose records are written: exact for ASCII input, else
    within one read block (1 MiB) of it. With ``size`` (an input file's) it gives the fraction
    done; ``rate`` and ``eta_s`` are measured over the last few seconds by the producer, which
    has the clock.
    """

    batch: str
    producer: str  # hermes-producer@HOST
    pid: int
    input: str  # the input as the command names it; "-" for standard input or a stream of prompts
    profile: str
    queue: str
    started: float  # Unix time
    updated: float  # Unix time of this entry
    records: int  # records written so far
    failed: int  # error records among them
    errors: dict[str, int] = field(default_factory=dict)  # error records by code
    read: int = 0  # bytes of the input read (0: not a file, or not known)
    size: int | None = None  # bytes of the input, when it is a file
    rate: float = 0.0  # records a second, lately
    eta_s: float | None = None  # seconds to go, when the size is known and records come
    workers: dict[str, int] = field(default_factory=dict)  # records each worker (or in-process) made
    holding: tuple[str, ...] = ()  # workers holding one of its chunks now

    @property
    def fraction(self) -> float | None:
        """How much of the input is done (0 to 1), when its size is known."""
        if not self.size:
            return None
        return min(self.read / self.size, 1.0)

    def to_json(self) -> str:
        return json.dumps({"v": ENTRY_VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes, batch: str) -> BatchStatus:
        """The entry under ``hermes:batch:BATCH``, checked field by field.

        Raises:
            ContractError: it is too large, not JSON, another version, names another batch, or
                a field lacks its type or bounds.
        """
        if len(raw) > MAX_ENTRY_BYTES:
            raise ContractError(f"batch entry: over {MAX_ENTRY_BYTES:,} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise ContractError("batch entry: not JSON") from None
        if not isinstance(data, dict) or data.get("v") != ENTRY_VERSION:
            raise ContractError("batch entry: not a version-1 object")
        if data.get("batch") != batch:
            raise ContractError(f"batch entry: names batch {shown(data.get('batch'))}, not {batch}")
        size = data.get("size")
        eta = data.get("eta_s")
        return cls(
            batch=batch,
            producer=_text(data, "producer"),
            pid=_count(data, "pid"),
            input=_text(data, "input"),
            profile=_text(data, "profile"),
            queue=_text(data, "queue"),
            started=_number(data, "started"),
            updated=_number(data, "updated"),
            records=_count(data, "records"),
            failed=_count(data, "failed"),
            errors=_counts(data, "errors", codes=True),
            read=_count(data, "read"),
            size=None if size is None else _count(data, "size"),
            rate=_number(data, "rate"),
            eta_s=None if eta is None else _number(data, "eta_s"),
            workers=_counts(data, "workers", codes=False),
            holding=_names(data, "holding"),
        )


def escaped(text: str) -> str:
    r"""``text`` with every character ``str.isprintable`` refuses spelled as an escape: what a
    producer writes, so that no name on the board can act on a terminal or break a line.

    >>> escaped("in\x1b]0;x\x07\u202e.txt\n"), escaped("café.jsonl")
    ('in\\x1b]0;x\\x07\\u202e.txt\\x0a', 'café.jsonl')
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise ContractError(f"batch entry: {key!r} must be printable text of at most {MAX_TEXT} characters")
    return value


def _count(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ContractError(f"batch entry: {key!r} must be a count")
    return value


def _number(data: Mapping[str, Any], key: str) -> float:
    value: Any = data.get(key)
    if type(value) not in (int, float) or not (math.isfinite(value) and 0 <= value < 1e12):
        raise ContractError(f"batch entry: {key!r} must be a number of seconds or a rate")
    return float(value)


def _counts(data: Mapping[str, Any], key: str, *, codes: bool) -> dict[str, int]:
    """A mapping of names (error codes, or worker names) to counts."""
    value = data.get(key)
    limit = len(ERROR_CODES) + 1 if codes else MAX_WORKERS
    if not isinstance(value, dict) or len(value) > limit:
        raise ContractError(f"batch entry: {key!r} must be an object of at most {limit} counts")
    counts = {}
    for name, number in value.items():
        if codes and name not in ERROR_CODES and name != UNKNOWN_CODE:
            raise ContractError(f"batch entry: {shown(name)} is not an error code")
        counts[_text({key: name}, key)] = _count({key: number}, key)
    return counts


def _names(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or len(value) > MAX_WORKERS:
        raise ContractError(f"batch entry: {key!r} must be a list of at most {MAX_WORKERS} names")
    return tuple(_text({key: name}, key) for name in value)


@dataclass(frozen=True, slots=True)
class Board:
    """The running batches, oldest first, and what was under the prefix that could not be read."""

    batches: tuple[BatchStatus, ...]
    unreadable: int = 0  # keys or entries no Hermes producer wrote (skipped)
    truncated: bool = False  # more than MAX_BATCHES entries: the rest were not read


def read_board(client: redis.Redis) -> Board:
    """Every running batch's entry that reads as one (at most :data:`MAX_BATCHES`).

    Raises:
        redis.RedisError: Redis did not answer.
    """
    found: list[str] = []
    unreadable = 0
    truncated = False
    for key in client.scan_iter(match=KEY_BATCH.format(batch="*"), count=500):
        batch = key[len(_PREFIX) :].decode("ascii", "replace")
        if not BATCH_ID.fullmatch(batch):
            unreadable += 1
        elif len(found) >= MAX_BATCHES:
            truncated = True
            break
        else:
            found.append(batch)
    pipe = client.pipeline(transaction=False)
    for batch in found:
        # A range, never the whole value: whoever wrote a gigabyte there does not get it read.
        pipe.getrange(KEY_BATCH.format(batch=batch), 0, MAX_ENTRY_BYTES)
    statuses = []
    for batch, raw in zip(found, pipe.execute(raise_on_error=False) if found else [], strict=True):
        if not isinstance(raw, bytes) or not raw:  # another type (WRONGTYPE), or gone meanwhile
            unreadable += isinstance(raw, Exception)
            continue
        try:
            statuses.append(BatchStatus.from_json(raw, batch))
        except ContractError:
            unreadable += 1
    statuses.sort(key=lambda s: (s.started, s.batch))
    return Board(tuple(statuses), unreadable, truncated)
