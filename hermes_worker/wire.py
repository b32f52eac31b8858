"""The values that cross a wire between producers and workers, each with one encode and one decode.

Standard library only: it ships inside the sandbox image with :mod:`hermes_worker.contract`
(names, codes, bounds) and :mod:`hermes_worker.chunk_options` (what a chunk's items are
processed with). Plain JSON: no pickle, ever.

What crosses a wire is a typed value with one encode and one decode each (as arq's
``JobDef``/``JobResult``, dramatiq's ``Message``): :class:`ChunkRequest` (``to_payload`` /
``from_payload``), :class:`ChunkResult`, :class:`Item` and :class:`ItemFailure` (``to_wire`` /
``from_wire``), :class:`Reply`. Code reads them by attribute; the dict shapes below exist only
on the wire, and every decode checks its input (types, bounds) and names the field that is wrong
in a :class:`ContractError`. A result's records stay one pre-encoded JSONL string from where the
chunk runs to the output file: no value is made per record.

A chunk request carries either raw input lines (what ``hermes batch`` sends)::

    {"v": 3, "chunk": 7, "profile": {"name": "prompt", "steps": [...]},
     "max_validation": 1, "explain": false, "max_prompt_bytes": 1048576,
     "format": "jsonl", "first": 7169, "text": "{\"id\": ...}\n{...}\n...",
     "bad": [[index, "invalid_utf8", "..."], ...]}

``text`` is the chunk's input lines as they were read, joined by ``"\n"``, the first being line
``first``; the worker parses them (:mod:`hermes_worker.lines`), so the producer never decodes a
prompt. ``bad`` lists lines the producer could not ship as text (invalid UTF-8, far too long):
an empty line stands in for each, and its error record says why. Or the request carries
items already parsed (``hermes run``, ``hermes queue``, tests)::

     ... "items": [[line, id, prompt, null], [line, id, null, ["malformed_json", "..."]], ...]}

(each an :class:`Item`)

A text request of a shared input (``hermes batch --shared``) also carries ``range``
(:class:`~hermes_worker.shared_input.ByteRange`: ``path``, ``start``, ``end``, ``sha256``): in its
task message the key holds a marker, and the worker reads and checks the range instead. With
``"parts": UID`` the producer (user id UID) took the batch's part directory, and the worker may
write the chunk's records there (:mod:`~hermes_worker.shared_parts`) if it is still UID's;
without it, never (a directory of the batch's name the producer did not take is not one it
reads, and one put in its place by another user is not the producer's).

An item whose fourth field is set failed before it reached the engine; the worker turns it
into its error record so that records stay in input order.

A chunk result (:class:`ChunkResult`; its ``errors`` are :class:`ItemFailure` values)::

    {"v": 3, "chunk": 7, "lines": ["{...record...}", ...], "ok": 255, "failed": 1,
     "errors": [[line, code, message], ...], "provenance": {...},
     "first": 7169, "ids": [17, "a", true, null, ...]}

``lines`` holds one JSON-encoded output record per item, in item order: producers write them
as they are, without decoding them again. ``ids`` (JSONL text requests only) gives, per record,
the id the producer's duplicate guard checks: the explicit id, ``true`` for a line whose id is
its line number, ``null`` for a line that failed before its id counted. The producer, which
sees every chunk in order, turns a record whose id was used before into a ``duplicate_id``
error record.

Through Celery, results come back on the batch's stream (:data:`KEY_RESULTS`), one entry per
message, each with one of these fields (JSON objects naming ``chunk`` and ``worker``):

- ``s``: a start notice, when a worker takes a chunk (so the producer knows who holds it);
- ``r`` and ``t``: the chunk's result (counts, ``errors``, ``ids``) and its records (raw JSONL);
- ``m``: the chunk's lines were not in Redis (a late duplicate, or Redis lost them);
- ``f``: a failure notice, the worker could not finish or publish the chunk, with ``reason``
  and ``split``: true when its lines are to blame and splitting helps (its result is too large,
  it ran past the soft time limit), false when Redis refused for another reason (sent again,
  then error records). Always ASCII JSON, so that it cannot fail to encode itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .chunk_options import ChunkOptions
from .contract import (
    BATCH_ID,
    ERROR_CODES,
    ISOLATION_CONTAINER,
    KEY_CHUNK_TEXT,
    KEY_RESULTS,
    MAX_CHUNK_LINES,
    MAX_CHUNK_NUMBER,
    MAX_LINE_NUMBER,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_RESULT_TTL_S,
    MAX_USER_ID,
    PAYLOAD_VERSION,
    RESULTS_PREFIX,
    TEXT_KEY,
    ContractError,
    shown,
)
from .shared_input import ByteRange

__all__ = ["ChunkRequest", "ChunkResult", "Item", "ItemFailure", "ReadPayload", "Reply", "request_span"]


class ReadPayload(dict[str, Any]):
    """A text chunk request's payload as the producer's reader made it: the wire dict, and beside
    it (never sent) what the reader knew of its lines: ``lines``, how many; ``utf8``, the text as
    the input's UTF-8 bytes (None if not kept). Nobody counts them or encodes the text back again.

    A copy (``dict(payload, ...)``: a split part, a probe) is a plain dict: what was known of these
    lines is not taken for another's.
    """

    __slots__ = ("lines", "utf8")

    def __init__(self, payload: Mapping[str, Any], lines: int, utf8: bytes | None) -> None:
        super().__init__(payload)
        self.lines = lines
        self.utf8 = utf8


def request_span(payload: Mapping[str, Any]) -> tuple[int, int]:
    """``(first line, number of lines)`` of an encoded chunk request, without parsing its lines."""
    text = payload.get("text")
    if isinstance(text, str):
        lines = payload.lines if isinstance(payload, ReadPayload) else text.count("\n") + 1
        return int(payload.get("first") or 1), lines
    items = payload.get("items") or []
    return (items[0][0] if items else 0), len(items)


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """Why one item got an error record; on the wire (a result's ``errors``): ``[line, code, message]``.

    Named so that it does not clash with the engine's :class:`~hermes_worker.engine.ItemError`,
    the exception an item's check raises; this is the record of it that travels.

    >>> ItemFailure.from_wire([7, "too_large", "prompt is 2 MB"])
    ItemFailure(line=7, code='too_large', message='prompt is 2 MB')
    """

    line: int
    code: str
    message: str

    def to_wire(self) -> list[Any]:
        return [self.line, self.code, self.message]

    @classmethod
    def from_wire(cls, value: Any) -> ItemFailure:
        """Raises: ContractError: not a ``[line, code, message]`` list of an integer and two strings."""
        if not (isinstance(value, list) and len(value) == 3 and type(value[0]) is int
                and isinstance(value[1], str) and isinstance(value[2], str)):  # fmt: skip
            raise ContractError(f"result 'errors': {shown(value)} is not a [line, code, message] list")
        return cls(value[0], value[1], value[2])


@dataclass(frozen=True, slots=True)
class Item:
    """One input item of a chunk; on the wire (a request's ``items``): ``[line, id, prompt, error]``.

    ``error`` is ``(code, message)`` when the item failed before it reached the engine (the
    worker turns it into the item's error record, in order), else None. ``id`` and ``prompt``
    are whatever the item holds: an id that cannot be one, or a prompt that is not a string,
    becomes that item's error record where the chunk runs, not a refused chunk.

    >>> Item.from_wire([3, "a", None, ["too_large", "big"]]).error
    ('too_large', 'big')
    """

    line: int
    id: Any
    prompt: Any
    error: tuple[str, str] | None = None

    def to_wire(self) -> list[Any]:
        return [self.line, self.id, self.prompt, None if self.error is None else list(self.error)]

    @classmethod
    def from_wire(cls, value: Any) -> Item:
        """Raises: ContractError: naming the field that is wrong."""
        if not (isinstance(value, list) and len(value) == 4):
            raise ContractError("chunk payload: 'items' must be a list of [line, id, prompt, error] lists")
        line, item_id, prompt, error = value
        if type(line) is not int or not 0 <= line <= MAX_LINE_NUMBER:
            raise ContractError(f"chunk payload: item line {shown(line)} is not a line number")
        return cls(line, item_id, prompt, None if error is None else _item_error(error, f"item on line {line}"))


@dataclass(frozen=True, slots=True)
class Reply:
    """Where a worker publishes a chunk's result: the batch's result stream, and how long it lives.

    On the wire (the task's second argument): ``{"stream": "hermes:results:BATCH", "ttl": seconds}``.
    The stream is bound to one batch id in the format producers make, so a message cannot point a
    worker at any other key; the chunk's lines must then come from that same batch's keys.
    """

    batch: str
    ttl: int

    def __post_init__(self) -> None:
        if not isinstance(self.batch, str) or not BATCH_ID.fullmatch(self.batch):
            raise ContractError(f"reply: batch id {shown(self.batch)} is not 16 or 32 lowercase hex digits")
        if type(self.ttl) is not int or not 1 <= self.ttl <= MAX_RESULT_TTL_S:
            raise ContractError(f"reply: 'ttl' must be an integer from 1 to {MAX_RESULT_TTL_S} seconds")

    @property
    def stream(self) -> str:
        return KEY_RESULTS.format(batch=self.batch)

    def text_key(self, chunk: int) -> str:
        """The only key the lines of chunk ``chunk`` of this batch may be read from."""
        return KEY_CHUNK_TEXT.format(batch=self.batch, chunk=chunk)

    def to_wire(self) -> dict[str, Any]:
        return {"stream": self.stream, "ttl": self.ttl}

    @classmethod
    def from_wire(cls, value: Any) -> Reply:
        """Validate the task's reply argument.

        Raises:
            ContractError: naming what is wrong.
        """
        if not isinstance(value, Mapping) or set(value) != {"stream", "ttl"}:
            raise ContractError("reply must be an object with exactly 'stream' and 'ttl'")
        stream = value["stream"]
        if not isinstance(stream, str) or not stream.startswith(RESULTS_PREFIX):
            raise ContractError(f"reply stream {shown(stream)} is not a Hermes results stream")
        return cls(stream[len(RESULTS_PREFIX) :], value["ttl"])


def _integer(payload: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = payload.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ContractError(f"chunk payload: {name!r} must be an integer from {low} to {high}, got {shown(value)}")
    return value


def _item_error(value: Any, where: str) -> tuple[str, str]:
    """A ``[code, message]`` pair a producer put in a request, checked."""
    if not (isinstance(value, list) and len(value) == 2):
        raise ContractError(f"chunk payload: {where} must be a [code, message] pair")
    code, message = value
    if code not in ERROR_CODES:
        raise ContractError(f"chunk payload: {where}: unknown error code {shown(code)}")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise ContractError(f"chunk payload: {where}: the message must be a string of at most {MAX_MESSAGE_CHARS}")
    return code, message


def _profile(value: Any) -> dict[str, Any]:
    """The profile spec of a request, checked by the engine itself within the contract's bounds.

    Raises:
        ContractError: not a spec, or out of bounds.
        ProfileError: a spec the engine refuses.
    """
    if not isinstance(value, Mapping):
        raise ContractError("chunk payload: 'profile' must be an object with 'name' and 'steps'")
    from .engine.profiles import MAX_PROFILE_STEPS, Profile  # the engine ships wherever the contract does

    name, steps = value.get("name"), value.get("steps")
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_PROFILE_STEPS:
        raise ContractError(f"chunk payload: the profile must have 1 to {MAX_PROFILE_STEPS} steps")
    if not all(isinstance(n, str) and len(n) <= MAX_NAME_CHARS for n in (name, *steps)):
        raise ContractError(f"chunk payload: profile and step names must be strings of at most {MAX_NAME_CHARS}")

    return Profile.from_spec({"name": name, "steps": steps}).spec()  # ProfileError names what is wrong


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """A validated chunk request; see the module docstring for the wire form.

    ``options`` (:class:`~hermes_worker.chunk_options.ChunkOptions`) travel as fields of the
    request itself. In a task message the lines of a text request stay in Redis: the request
    carries ``text_key`` (which must be the batch's own key for this chunk) and ``count``
    instead of ``text``. ``isolation="container"`` says the chunk must run inside a container:
    a worker that would run it any other way refuses it.
    """

    chunk: int
    profile: Mapping[str, Any]
    options: ChunkOptions = field(default_factory=ChunkOptions)
    items: list[Item] | None = None
    text: str | None = None
    first: int = 1
    format: str = "jsonl"
    bad: list[list[Any]] | None = None
    text_key: str | None = None
    count: int | None = None
    isolation: str | None = None
    source: ByteRange | None = None  # a shared input's bytes that hold the lines (``range``)
    parts: int | None = None  # with ``source``: the records may go to a part file of this user's (``parts``)

    def to_payload(self) -> dict[str, Any]:
        payload = {"v": PAYLOAD_VERSION, "chunk": self.chunk, "profile": dict(self.profile)} | self.options.to_wire()
        if self.isolation is not None:
            payload["isolation"] = self.isolation
        if self.text is not None:
            payload |= {"format": self.format, "first": self.first, "text": self.text, "bad": self.bad or []}
        elif self.text_key is not None:
            payload |= {"format": self.format, "first": self.first, TEXT_KEY: self.text_key, "count": self.count}
            payload["bad"] = self.bad or []
        else:
            payload["items"] = None if self.items is None else [item.to_wire() for item in self.items]
            return payload
        if self.source is not None:
            payload["range"] = self.source.to_wire()
            if self.parts is not None:
                payload["parts"] = self.parts
        return payload

    def bad_lines(self) -> dict[int, tuple[str, str]]:
        """Lines of a text request the producer could not ship: index in the chunk -> (code, message)."""
        return {index: (code, message) for index, code, message in self.bad or []}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], reply: Reply | None = None) -> ChunkRequest:
        """Validate a decoded payload: every field, its type and its range, before anyone acts on it.

        Fields the contract does not name are ignored (and not passed on): a newer producer may
        add some. A request whose lines wait in Redis (``text_key``) needs the ``reply`` its task
        message came with, since the key must belong to the same batch.

        Raises:
            ContractError: naming the first field that is wrong (never quoting prompts).
            ProfileError: the profile is not one the engine can run (an unknown step...).
        """
        if not isinstance(payload, Mapping):
            raise ContractError("chunk payload must be a JSON object")
        if payload.get("v") != PAYLOAD_VERSION:
            raise ContractError(
                f"chunk payload version {shown(payload.get('v'))} is not {PAYLOAD_VERSION}: upgrade the older side"
            )
        chunk = _integer(payload, "chunk", 0, MAX_CHUNK_NUMBER)
        isolation = payload.get("isolation")
        if isolation not in (None, ISOLATION_CONTAINER):
            raise ContractError(f"chunk payload: 'isolation' must be {ISOLATION_CONTAINER!r} if present")
        request = cls(chunk, _profile(payload.get("profile")), ChunkOptions.from_wire(payload), isolation=isolation)
        forms = [name for name in ("text", TEXT_KEY, "items") if payload.get(name) is not None]
        if len(forms) != 1:
            raise ContractError("chunk payload: needs exactly one of 'text', 'text_key' or 'items'")
        if forms[0] == "items":
            return replace(request, items=_items(payload.get("items")))
        return request._with_lines(payload, reply)

    def _with_lines(self, payload: Mapping[str, Any], reply: Reply | None) -> ChunkRequest:
        """This request with the raw input lines of ``payload`` (``text``, or ``text_key`` and ``count``)."""
        text, key = payload.get("text"), payload.get(TEXT_KEY)
        if text is not None:
            if not isinstance(text, str):
                raise ContractError("chunk payload: 'text' must be a string of input lines")
            count = text.count("\n") + 1
            if count > MAX_CHUNK_LINES:
                raise ContractError(f"chunk payload: more than {MAX_CHUNK_LINES} lines in one chunk")
        else:
            if reply is None or key != reply.text_key(self.chunk):
                expected = reply.text_key(self.chunk) if reply is not None else "the key of this batch and chunk"
                raise ContractError(f"chunk payload: 'text_key' must be {expected!r}, got {shown(key)}")
            count = _integer(payload, "count", 1, MAX_CHUNK_LINES)
        first = _integer(payload, "first", 1, MAX_LINE_NUMBER - count + 1)
        fmt = payload.get("format")
        if fmt not in ("jsonl", "text"):
            raise ContractError("chunk payload: 'format' must be 'jsonl' or 'text'")
        bad = _bad_lines(payload.get("bad") or [], count)
        source = None if payload.get("range") is None else ByteRange.from_wire(payload["range"])
        if source is not None and count > source.end - source.start:
            size = source.end - source.start
            raise ContractError(f"chunk payload: {count} lines cannot fit in the {size} bytes of 'range'")
        parts = payload.get("parts")
        if parts is not None and (type(parts) is not int or not 0 <= parts <= MAX_USER_ID):
            raise ContractError(f"chunk payload: 'parts' must be a user id, an integer from 0 to {MAX_USER_ID}")
        parts = None if source is None else parts
        if text is not None:
            return replace(self, text=text, first=first, format=fmt, bad=bad, source=source, parts=parts)
        return replace(self, text_key=key, count=count, first=first, format=fmt, bad=bad, source=source, parts=parts)


def _bad_lines(bad: Any, count: int) -> list[list[Any]]:
    """A text request's ``bad`` lines, checked: ``[index, code, message]`` for lines of the chunk."""
    if not isinstance(bad, list) or not all(isinstance(b, list) and len(b) == 3 for b in bad):
        raise ContractError("chunk payload: 'bad' must be a list of [index, code, message] lists")
    checked = []
    for index, *error in bad:
        if type(index) is not int or not 0 <= index < count:
            raise ContractError(f"chunk payload: 'bad' index {shown(index)} is not a line of the chunk")
        checked.append([index, *_item_error(error, f"'bad' line {index}")])
    return checked


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """A chunk's result: its records, already JSON-encoded, and what the producer counts.

    ``records`` holds one JSON-encoded output record per item, in item order, each line ending
    with ``"\\n"``: the records are encoded once, where the chunk runs, and written as they are;
    nothing decodes them again on the way. ``first`` and ``ids`` (text requests only: ``first``
    is None for an items request) feed the producer's duplicate guard; ``ids`` is None for plain
    text, whose ids are line numbers. ``version`` is the payload version of whoever made it.

    On the wire a result is one JSON object (:meth:`to_wire`; see the module docstring) whose
    records are a list (``lines``: the in-process pool) or one string (``text``: a result
    stream's ``t`` field, put back by :meth:`from_stream`), or the object without its records
    (:meth:`counts_wire`) with the records as raw bytes beside it (a sandbox frame's blob).
    """

    chunk: int
    records: str
    ok: int
    failed: int
    errors: tuple[ItemFailure, ...]
    provenance: Mapping[str, Any]
    first: int | None = None
    ids: list[Any] | None = None
    version: int | None = PAYLOAD_VERSION

    @property
    def count(self) -> int:
        """How many records (items) the result claims."""
        return self.ok + self.failed

    def record_lines(self) -> list[str]:
        """The records, one JSON string each, without their newlines."""
        return self.records.split("\n")[:-1]

    def followed_by(self, *others: ChunkResult) -> ChunkResult:
        """This result with the records, counts and errors of ``others`` after its own."""
        parts = (self, *others)
        return replace(
            self,
            records="".join(part.records for part in parts),
            ok=sum(part.ok for part in parts),
            failed=sum(part.failed for part in parts),
            errors=tuple(error for part in parts for error in part.errors),
        )

    def counts_wire(self) -> dict[str, Any]:
        """The result as one JSON object without its records (the sandbox sends those as raw bytes)."""
        counts = {"v": self.version, "chunk": self.chunk, "ok": self.ok, "failed": self.failed,
                  "errors": [error.to_wire() for error in self.errors], "provenance": self.provenance}  # fmt: skip
        if self.first is not None:
            counts |= {"first": self.first, "ids": self.ids}
        return counts

    def to_wire(self) -> dict[str, Any]:
        """The result as one JSON object, its records a list (``lines``)."""
        return {"v": self.version, "chunk": self.chunk, "lines": self.record_lines()} | self.counts_wire()

    def to_stream(self) -> dict[str, str | bytes]:
        """The fields of the result's entry on a result stream: ``r`` the rest as ASCII JSON,
        ``t`` the records as UTF-8 bytes (raw JSONL: encoding them again as JSON strings would
        make every quote an escape for Redis to store and the producer to undo).

        Raises:
            UnicodeEncodeError: a record holds a lone surrogate.
        """
        return {"r": json.dumps(self.counts_wire(), ensure_ascii=True), "t": self.records.encode("utf-8")}

    @classmethod
    def from_stream(cls, counts: Mapping[str, Any], text: bytes) -> ChunkResult:
        """A result read back from a result stream: ``r`` (decoded JSON) and ``t``.

        Raises:
            ContractError: as :meth:`from_wire`; also records that are not UTF-8.
        """
        try:
            records = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ContractError("a result whose records are not UTF-8") from None
        if not isinstance(counts, Mapping):
            raise ContractError("a result that is not an object")
        return cls.from_wire({**counts, "text": records})

    @classmethod
    def from_wire(cls, value: Any) -> ChunkResult:
        """Check a result that crossed a boundary: its shape, its types and its counts.

        Anyone who can write to Redis can add entries to a stream: a producer writes nothing,
        and counts nothing, that does not have the shape a Hermes worker gives it. Whether the
        records are the request's (one per item, this version) is the caller's to judge.

        Raises:
            ContractError: naming the field that is wrong.
        """
        if not isinstance(value, Mapping):
            raise ContractError("a result that is not an object")
        chunk, ok, failed = value.get("chunk"), value.get("ok"), value.get("failed")
        if not (type(chunk) is int and type(ok) is int and type(failed) is int and ok >= 0 and failed >= 0):
            raise ContractError("a result without its chunk number or counts")
        provenance = value.get("provenance")
        if not isinstance(provenance, Mapping):
            raise ContractError("a result without its provenance")
        worker = provenance.get("worker")  # (a worker name goes to the summary, on a terminal)
        if not (isinstance(worker, str) and worker.isprintable() and isinstance(provenance.get("mode"), str)):
            raise ContractError("a result without its provenance")
        errors = value.get("errors")
        if not (isinstance(errors, list) and len(errors) == failed):
            raise ContractError("a result whose errors do not match its counts")
        try:
            failures = tuple(ItemFailure.from_wire(error) for error in errors)
        except ContractError:
            raise ContractError("a result whose errors do not match its counts") from None
        first, ids = value.get("first"), value.get("ids")
        if ids is not None and not (isinstance(ids, list) and len(ids) == ok + failed and type(first) is int):
            raise ContractError("a result whose ids do not match its counts")
        if first is not None and type(first) is not int:
            raise ContractError("a result whose first line is not a line number")
        version = value.get("v")
        return cls(chunk, _records(value), ok, failed, failures, provenance, first, ids,
                   version if type(version) is int else None)  # fmt: skip


def _records(result: Mapping[str, Any]) -> str:
    """A wire result's records as JSONL text: its ``text``, or its ``lines`` joined."""
    text, lines = result.get("text"), result.get("lines")
    if isinstance(text, str):
        return text
    if not (isinstance(lines, list) and all(isinstance(line, str) for line in lines)):
        raise ContractError("a result without its records ('lines' or 'text')")
    return "\n".join(lines) + "\n" if lines else ""



def _items(items: Any) -> list[Item]:
    """The items of a request that carries them parsed, each checked (:meth:`Item.from_wire`)."""
    if not isinstance(items, list):
        raise ContractError("chunk payload: 'items' must be a list of [line, id, prompt, error] lists")
    if len(items) > MAX_CHUNK_LINES:
        raise ContractError(f"chunk payload: more than {MAX_CHUNK_LINES} items in one chunk")
    return [Item.from_wire(item) for item in items]
