"""What the host accepts back from the sandbox: every reply is checked before anything uses it.

The sandbox runs the engine on untrusted prompts. If a prompt ever took the engine over (an
exploit in a text library), the container could answer anything: ``"mode": "local"``, another
worker's name, records for lines it was not given, a record with a line break inside (two
records on the producer's side), ids that poison the producer's duplicate guard, error codes
that break metric labels, a reply of gigabytes. The host therefore trusts nothing in a reply
that it can know itself:

- the structure: exactly one record per item, each a single line of JSON, of the shape
  :mod:`hermes_worker.processing` writes, within a size bound derived from its prompt;
- each record's ``line`` and ``id`` (the host parsed the items itself), the error of an item
  that failed before the engine, and ``changed`` against the prompt the host sent;
- the provenance: rebuilt on the host (``mode`` container, this worker's name, the image digest
  the host looked up, the versions the container reported at its start, before it saw any
  prompt) and required, equal, in every record;
- the counts, the error list and the duplicate guard's ids: recomputed from the records and the
  host's own parse, and required equal to what the sandbox said.

What it cannot know is the normalized text itself: a compromised container can still write
wrong text into the records of the chunk it was given (the start-up self-test compares the
sandbox byte for byte with the host, and a fresh container replaces a refused one). A reply
that fails any check raises :class:`BadReply`, which the session handles like a container
death: replace the container, retry, split, and give the item that keeps causing it a
``sandbox_failure`` record written here, on the host.

Standard library, the contract and the engine only: the package ships inside the sandbox image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import fast_json
from ..engine import Profile
from ..fast_json import encode_compact
from ..processing import request_items
from ..wire import ChunkRequest, ChunkResult, Item, ItemFailure
from .errors import ContainerDied, FrameTooLarge

__all__ = [
    "BadReply",
    "ClaimedTooLarge",
    "Expected",
    "check_hello",
    "check_result",
    "error_result",
]

# Error codes become metric labels and JUnit text: lowercase words, as contract.py defines them.
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Characters that end a line for the producer (split on "\n") or for line-oriented readers of
# the output (str.splitlines, editors); JSON needs none of them raw.
# The records are split on "\n"; the others are looked for once in the whole blob.
_BREAKS = re.compile("[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_OK_KEYS = frozenset({"id", "line", "text", "changed", "validation", "provenance"})
_ERROR_KEYS = frozenset({"id", "line", "error", "provenance"})
# A record's bound: fixed room for the id, counters, provenance and an error message, plus a
# multiple of its prompt's length. Normalization can lengthen text (NFKC turns one code point
# into at most 18) and JSON can escape a character into 6; 128 covers both with room to spare.
_RECORD_SLACK = 8192
_EXPANSION = 128
_EXPLAIN_PER_STEP = 512  # an explanation entry per step and round, with ftfy's repair names
_VERSION_KEYS = ("engine", "python", "unicode", "ftfy")



class BadReply(ContainerDied):
    """The sandbox answered with something the host refuses: off the contract, contrary to what
    the host knows, or out of bounds. Handled like a death: the container is not trusted again.

    The reason may quote the container; it goes into log lines and an error record, so control
    characters (a forged log line, a terminal escape) become spaces.
    """

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__("".join(c if c.isprintable() else " " for c in reason), fix)


class ClaimedTooLarge(FrameTooLarge):
    """The sandbox says its result did not fit in one frame (believed only when it could be true)."""


@dataclass(frozen=True, slots=True)
class Expected:
    """What the host knows about a chunk before the sandbox answers.

    Attributes:
        chunk: the chunk number of the request.
        items: the items, as the host parsed them.
        provenance: the provenance every record must carry, built by the host.
        explain: whether ok records carry an explanation.
        explain_room: characters an explanation may take in one record.
        ids: the duplicate guard's ids of a text request (host-parsed), else None.
        first: the first line of a text request, else None.
    """

    chunk: int
    items: list[Item]
    provenance: dict[str, Any]
    explain: bool = False
    explain_room: int = 0
    ids: list[Any] | None = None
    first: int | None = None

    @classmethod
    def of(cls, request: ChunkRequest, profile: Profile, provenance: dict[str, Any]) -> Expected:
        """What the host expects back for ``request``: it parses the items itself (the same pure
        parser the sandbox runs), so each record's line and id, and the guard's ids, come from here."""
        items, ids = request_items(request)
        room = (
            _EXPLAIN_PER_STEP * (request.options.max_validation + 1) * max(1, len(profile.steps))
            if request.options.explain
            else 0
        )
        first = request.first if request.text is not None else None
        return cls(request.chunk, items, provenance, request.options.explain, room, ids, first)

    def part(self, start: int, stop: int) -> Expected:
        """The expectation for items ``start:stop`` sent on their own (an items request)."""
        return Expected(self.chunk, self.items[start:stop], self.provenance, self.explain, self.explain_room)

    def as_items(self) -> Expected:
        """The expectation for the same items sent as an items request (no guard ids)."""
        return self.part(0, len(self.items))

    def record_bound(self, item: Item) -> int:
        """The longest record (in characters) the item can legitimately get."""
        bound = _RECORD_SLACK + self.explain_room
        if isinstance(item.prompt, str):
            bound += _EXPANSION * len(item.prompt)
        if isinstance(item.id, str):
            bound += 6 * len(item.id)
        if item.error is not None:
            bound += 6 * len(item.error[1])
        return bound

    def reply_bound(self) -> int:
        """The most bytes an honest reply to this request can take (UTF-8: 4 bytes a character)."""
        return 4 * sum(self.record_bound(item) for item in self.items) + 4 * _RECORD_SLACK


def check_hello(reply: Mapping[str, Any]) -> dict[str, str]:
    """The versions a fresh container reports (before it has seen any prompt), checked.

    Raises:
        BadReply: not a successful hello with short printable version strings.
    """
    result = reply.get("result") if reply.get("ok") is True else None
    if not isinstance(result, dict):
        raise BadReply(f"the sandbox engine's hello is not a result: {str(reply.get('error'))[:200]}")
    versions = {key: result.get(key) for key in _VERSION_KEYS}
    for key, value in versions.items():
        if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
            raise BadReply(f"the sandbox engine's hello has no valid {key!r} version")
    return {key: str(value) for key, value in versions.items()}


def _refuse(line: Any, problem: str) -> BadReply:
    return BadReply(f"the sandbox's record for line {line} {problem}")


def provenance_tail(provenance: Mapping[str, Any]) -> str:
    """How an honest record without an explanation ends: its provenance, encoded as
    :mod:`hermes_worker.processing` encodes it, and the closing brace."""
    tail = f',"provenance":{encode_compact(provenance)}}}'
    for raw, escaped in (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        tail = tail.replace(raw, escaped)
    return tail


def _decode_record(record: str, line: int, tail: str, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The record as a JSON object. A record that ends with exactly the provenance the host
    expects (``tail``) has only the rest decoded: the provenance is the host's own, and the
    record is valid JSON exactly when its head, closed, is (the tail adds one member)."""
    head = record[: len(record) - len(tail)] + "}" if record.endswith(tail) else None
    try:
        value = fast_json.loads(record if head is None else head)
    except (ValueError, RecursionError):
        raise _refuse(line, "is not valid JSON") from None
    if type(value) is not dict:
        raise _refuse(line, "is not a JSON object")
    if head is not None:
        if "provenance" in value:
            raise _refuse(line, "names its provenance twice")
        value["provenance"] = provenance  # what the tail encodes
    return value


def _check_record(record: Any, item: Item, expected: Expected, tail: str) -> ItemFailure | None:
    """Check one record against its item; return its failure if it is an error record.

    ``tail``: :func:`provenance_tail` of the expected provenance."""
    line, item_id, prompt, pre_error = item.line, item.id, item.prompt, item.error
    if not isinstance(record, str):
        raise _refuse(line, f"is a JSON {type(record).__name__}, not an encoded record")
    bound = expected.record_bound(item)
    if len(record) > bound:
        raise _refuse(line, f"is {len(record):,} characters long, over its bound of {bound:,}")
    value = _decode_record(record, line, tail, expected.provenance)
    if value.get("line") != line or type(value.get("line")) is not int:
        raise _refuse(line, f"names line {str(value.get('line'))[:40]}")
    if value.get("id") != item_id or type(value.get("id")) is not type(item_id):
        raise _refuse(line, "carries another id than the item's")
    if value.get("provenance") != expected.provenance:
        raise _refuse(line, f"claims another provenance: {json.dumps(value.get('provenance'))[:300]}")
    if "error" in value:
        return _check_error(value, line, pre_error)
    if pre_error is not None:
        raise _refuse(line, f"is not the {pre_error[0]} error the host found in the item")
    keys = _OK_KEYS | {"explain"} if expected.explain else _OK_KEYS
    if value.keys() != keys:
        raise _refuse(line, f"has the fields {sorted(value)[:10]}, not {sorted(keys)}")
    text, validation = value["text"], value["validation"]
    if not isinstance(text, str) or value["changed"] is not (text != prompt):
        raise _refuse(line, "has a text or a 'changed' flag that does not match its prompt")
    if (
        type(validation) is not dict
        or validation.keys() != {"rounds", "converged"}
        or type(validation["rounds"]) is not int
        or validation["rounds"] < 1
        or validation["converged"] not in (True, False, None)
    ):
        raise _refuse(line, "has a malformed 'validation'")
    if expected.explain and type(value["explain"]) is not list:
        raise _refuse(line, "has a malformed 'explain'")
    return None


def _check_error(value: dict[str, Any], line: int, pre_error: tuple[str, str] | None) -> ItemFailure:
    error = value["error"]
    if value.keys() != _ERROR_KEYS or type(error) is not dict or error.keys() != {"code", "message", "line"}:
        raise _refuse(line, "is a malformed error record")
    code, message = error["code"], error["message"]
    if not isinstance(code, str) or not _CODE.fullmatch(code) or not isinstance(message, str):
        raise _refuse(line, f"has an invalid error code {str(code)[:40]!r}")
    if error["line"] != line or type(error["line"]) is not int:
        raise _refuse(line, "has an error naming another line")
    if pre_error is not None and (code, message) != pre_error:
        raise _refuse(line, f"is not the {pre_error[0]} error the host found in the item")
    return ItemFailure(line, code, message)


def check_result(result: Any, records: bytes, expected: Expected) -> ChunkResult:
    """The chunk result to pass on, rebuilt by the host from a sandbox result it checked.

    ``result`` is the reply's result object (counts, errors, provenance, ids), ``records`` the
    frame's blob: the records as raw JSONL bytes. Every field besides the records is the host's
    own; the sandbox's must equal it.

    Raises:
        BadReply: naming the first thing that is wrong.
    """
    if type(result) is not dict:
        raise BadReply("the sandbox's result is not a JSON object")
    text, lines = _record_lines(records, len(expected.items))
    other_break = _BREAKS.search(text)
    if other_break:  # a record with one would read as more than one for line-oriented readers
        line = expected.items[text.count("\n", 0, other_break.start())].line
        raise _refuse(line, "holds a raw line break (it would read as more than one record)")
    tail = provenance_tail(expected.provenance)
    errors = [e for e in (_check_record(r, i, expected, tail) for r, i in zip(lines, expected.items, strict=True)) if e]
    # A text request's result names its first line, with or without guard ids (plain text has none).
    rebuilt = ChunkResult(expected.chunk, text, len(lines) - len(errors), len(errors), tuple(errors),
                          expected.provenance, expected.first, expected.ids)  # fmt: skip
    wire = rebuilt.counts_wire()
    if result.keys() != wire.keys():
        raise BadReply(f"the sandbox's result has the fields {sorted(result)[:12]}, not {sorted(wire)}")
    for key, value in wire.items():
        if result[key] != value or _shape(result[key]) != _shape(value):
            raise BadReply(f"the sandbox's {key!r} is not what its records and its request say")
    return rebuilt


def _record_lines(records: Any, count: int) -> tuple[str, list[str]]:
    """The records of a reply's blob as text, and one string each: UTF-8, each ending with a line break."""
    if type(records) is not bytes:
        raise BadReply("the sandbox's records are not bytes")
    try:
        text = records.decode("utf-8", "surrogatepass")  # as a frame's JSON was decoded: lone surrogates pass
    except UnicodeDecodeError as exc:
        raise BadReply(f"the sandbox's records are not UTF-8 (byte {exc.start:,} of {len(records):,})") from None
    if text and not text.endswith("\n"):
        raise BadReply("the sandbox's records do not end with a line break (the last one is cut short)")
    lines = text.split("\n")
    lines.pop()
    if len(lines) != count:
        raise BadReply(f"the sandbox returned {len(lines)} records for {count} items")
    return text, lines


def _shape(value: Any) -> Any:
    """The JSON types of a value, so that ``1`` and ``true`` (equal in Python) differ."""
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


def error_result(expected: Expected, code: str, message: str) -> ChunkResult:
    """A result giving every item of ``expected`` the error ``code``, written by the host.

    The record has the form :mod:`hermes_worker.processing` writes, and the provenance the
    sandbox's records would have had.
    """
    prov = encode_compact(expected.provenance)
    lines, errors = [], []
    for item in expected.items:
        line = item.line
        error = {"code": code, "message": message, "line": line}
        record = f'{{"id":{encode_compact(item.id)},"line":{line},"error":{encode_compact(error)},"provenance":{prov}}}'
        for raw, escaped in (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            record = record.replace(raw, escaped)
        lines.append(record + "\n")
        errors.append(ItemFailure(line, code, message))
    return ChunkResult(expected.chunk, "".join(lines), 0, len(lines), tuple(errors), expected.provenance)
