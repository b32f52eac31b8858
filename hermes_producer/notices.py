"""What the entries of a batch's result stream say, as values: the chunk tracker's observations.

Workers append to the batch's stream (``contract.KEY_RESULTS``) a *start notice* when they
take a chunk, then its result, or a notice saying why there is none. :func:`decode_entry`
reads one entry; anything no Hermes worker writes raises, and the executor skips it.

>>> decode_entry({b"s": b'{"chunk": 3, "worker": "local@w1"}'})
StartNotice(chunk=3, worker='local@w1')
>>> decode_entry({b"f": b'{"chunk": 3, "worker": "local@w1", "reason": "too large", "split": true}'})
FailureNotice(chunk=3, worker='local@w1', reason='too large', split=True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hermes_worker.contract import ISOLATION_CONTAINER, NOTICE_REFUSED, PAYLOAD_VERSION
from hermes_worker.shared_parts import PartRef
from hermes_worker.wire import ChunkResult

from .chunk_events import Misplaced, ResultUnreadable, bounded_printable

__all__ = [
    "FailureNotice", "MissingNotice", "Observation", "RefusalNotice", "ResultPosted", "StartNotice", "StreamedResult",
    "decode_entry", "refusal", "unreadable_result",
]  # fmt: skip

_REFUSED = NOTICE_REFUSED.encode()


@dataclass(frozen=True, slots=True)
class ResultPosted:
    """An ``r`` entry: its counts (decoded JSON, not yet checked) and its records, still bytes (``t``).

    The tracker first sees whether the result is about the lines it waits for (``first``), and
    only then decodes it (:meth:`ChunkResult.from_stream`).
    """

    chunk: Any
    result: Mapping[str, Any]
    text: bytes
    # With a shared input: where the records are instead of ``text`` (``p``), until the
    # transport has read them (:meth:`.transport.ChunkTransport.load_part`); or why they
    # cannot be had, which makes the result malformed.
    part: PartRef | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class StreamedResult(ChunkResult):
    """A result read from a stream, its records also kept as the UTF-8 bytes that came (``raw``),
    so that a writer need not encode them again. Any change (``dataclasses.replace``: a duplicate
    id made an error record, parts merged) leaves ``raw`` None: the bytes would be stale.
    """

    raw: bytes | None = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def read(cls, seen: ResultPosted) -> StreamedResult:
        """Raises: ContractError: as :meth:`ChunkResult.from_stream`."""
        result = cls.from_stream(seen.result, seen.text)
        assert isinstance(result, StreamedResult)
        object.__setattr__(result, "raw", seen.text)
        return result


@dataclass(frozen=True, slots=True)
class StartNotice:
    """An ``s`` entry: ``worker`` took the chunk."""

    chunk: Any
    worker: str


@dataclass(frozen=True, slots=True)
class MissingNotice:
    """An ``m`` entry: ``worker`` found no lines under the chunk's key."""

    chunk: Any
    worker: str


@dataclass(frozen=True, slots=True)
class FailureNotice:
    """An ``f`` entry: ``worker`` could not finish the chunk; ``split``: splitting it helps."""

    chunk: Any
    worker: str
    reason: str
    split: bool


@dataclass(frozen=True, slots=True)
class RefusalNotice:
    """An ``x`` entry: ``worker`` refused the chunk without running it."""

    chunk: Any
    worker: str
    reason: str


Observation = ResultPosted | StartNotice | MissingNotice | FailureNotice | RefusalNotice




def decode_entry(fields: Mapping[bytes, bytes]) -> Observation | None:
    """What one entry of the result stream says, or None for an entry of no kind the producer reads.

    Worker names and reasons come printable and bounded: they reach a terminal.

    Raises:
        ValueError, KeyError, TypeError, AttributeError: not something a Hermes worker writes.
    """
    if b"r" in fields:
        result = json.loads(fields[b"r"])
        chunk = result.get("chunk")
        hash(chunk)  # a chunk number that cannot be one (a list, an object)
        if b"p" not in fields:
            return ResultPosted(chunk, result, fields.get(b"t", b""))
        try:
            part = PartRef.from_wire(json.loads(fields[b"p"]))
        except ValueError as exc:  # ContractError or JSON: the records cannot be had
            return ResultPosted(chunk, result, b"", problem=str(exc))
        if type(chunk) is not int or not part.name.startswith(f"{chunk}-"):
            # A worker writes its own chunk's part: another's would be written as this chunk's
            # records and deleted with them, before that chunk's own result came to read it.
            return ResultPosted(chunk, result, b"", problem=f"a result's part: {part.name} is not one of this chunk's")
        return ResultPosted(chunk, result, b"", part=part)
    kind = next((k for k in (b"s", b"m", b"f", _REFUSED) if k in fields), None)
    if kind is None:
        return None
    notice = json.loads(fields[kind])
    chunk, worker = notice.get("chunk"), bounded_printable(notice.get("worker"))
    hash(chunk)
    if kind == b"s":
        return StartNotice(chunk, worker)
    if kind == b"m":
        return MissingNotice(chunk, worker)
    reason = bounded_printable(notice.get("reason"))
    if kind == _REFUSED:
        return RefusalNotice(chunk, worker, reason)
    return FailureNotice(chunk, worker, reason, split=bool(notice.get("split")))


def refusal(result: ChunkResult, isolation: str) -> Misplaced | None:
    """Why a well-formed posted result must not be written, and its chunk goes again; or None.

    With ``--isolation container`` only records that ran in a container are accepted, whoever
    sent them (a worker consuming a queue not its own, an old worker, a forged registry entry):
    the summary never claims isolation the records do not have.
    """
    mode = result.provenance.get("mode")
    if isolation != ISOLATION_CONTAINER or mode == ISOLATION_CONTAINER:
        return None
    return Misplaced(bounded_printable(result.provenance.get("worker")), bounded_printable(mode))


def unreadable_result(result: ChunkResult, count: int, records: int | None = None) -> ResultUnreadable | None:
    """Why a well-formed result cannot be written as it is: not one record per item of the
    ``count`` its request had (a worker of another Hermes version answering in a shape this
    producer does not read); or None. ``records``: the records' newlines, if counted already."""
    records = result.records.count("\n") if records is None else records
    if result.version == PAYLOAD_VERSION and records == count == result.count:
        return None
    return ResultUnreadable(str(result.provenance.get("worker", "unknown worker")), records, count, result.version)
