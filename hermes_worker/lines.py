"""Input lines -> contract items: the one parser, run wherever the chunk is processed.

A producer ships chunks of raw input lines (see :mod:`hermes_worker.contract`); whoever runs
the chunk (an in-process pool, a Celery worker, the sandbox server) turns each line into an
item (:class:`~hermes_worker.wire.Item`) here, so every path does the same work and the producer
only splits lines. A line that cannot be read (malformed JSON, no prompt, a bad id, a prompt
over the limit) becomes an item that already carries its error: nothing one line holds can
make this module raise (huge numbers, deep nesting, lone surrogates, duplicate keys...).

An id reaches every output record and the producer's duplicate guard, so it must be writable
as UTF-8 JSON and small: a string of at most :data:`MAX_ID_CHARS` characters without lone
surrogates, or an integer of at most :data:`MAX_ID_DIGITS` digits (any 64-bit integer).

Standard library (orjson where :mod:`hermes_worker.fast_json` may use it), the contract and the
engine's errors only: this module ships inside the sandbox image.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import contract, fast_json
from .engine.errors import ItemError
from .wire import Item

__all__ = [
    "DEFAULT_ID",
    "MAX_ID_CHARS",
    "MAX_ID_DIGITS",
    "id_problem",
    "items_from_text",
    "json_type",
    "parse_json_item",
]

# In a chunk result's ``ids``: this item's id is its line number (it gave none).
DEFAULT_ID = True

# Bounds on explicit ids (README, "Input"). 20 digits hold every signed and unsigned 64-bit
# integer; longer ones lose precision in most JSON readers (JavaScript: above 2**53 already)
# and Python refuses to parse integers of over 4,300 digits at all. 1,024 characters hold any
# UUID, hash, path or ordinary URL; every id is echoed in its record and kept by the guard.
MAX_ID_DIGITS = 20
MAX_ID_CHARS = 1024

# In a str decoded from UTF-8 or JSON, surrogate pairs are already combined: any code point in
# this range is a lone surrogate (JSON's "\ud800"), which cannot be written as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


class _HugeInt(str):
    """An integer literal too long to be an id, kept as its digits: converting it would take
    quadratic time, and Python refuses past 4,300 digits (``sys.set_int_max_str_digits``)."""


def _parse_int(digits: str) -> int | _HugeInt:
    return int(digits) if len(digits) <= MAX_ID_DIGITS + 1 else _HugeInt(digits)


class _Ambiguous(dict[str, Any]):
    """An object that names a key twice: JSON parsers disagree on which value wins."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        seen: set[str] = set()
        self.repeated: set[str] = set()
        for key, _value in pairs:
            (self.repeated if key in seen else seen).add(key)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else _Ambiguous(pairs)


_loads = json.JSONDecoder(parse_int=_parse_int, object_pairs_hook=_object).decode


# The only other way to spell a letter of "prompt" or "id" in a JSON key: a \u escape of a
# lowercase letter (U+0061..U+007A; escapes of controls, "\u001b", and of emoji pairs do not match).
_LETTER_ESCAPE = re.compile(r"\\u00[67][0-9a-fA-F]")


def _decode(text: str) -> Any:
    """The line's JSON value, as ``_loads`` reads it. orjson keeps the last of two equal keys
    without a word, so a line that may name ``prompt`` or ``id`` twice is read by ``_loads``,
    whose hook marks it."""
    if (
        text.count('"prompt"') > 1
        or text.count('"id"') > 1
        or ("\\u" in text and _LETTER_ESCAPE.search(text) is not None)
    ):
        return _loads(text)
    return fast_json.loads(text, _loads)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | _HugeInt):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an item's id, or None when it can.

    >>> id_problem("a-1"), id_problem(-7), id_problem(True)
    (None, None, "'id' must be a string or an integer, got a JSON boolean")
    >>> id_problem(10**25)
    'id is an integer of 26 digits; integer ids may have at most 20 digits'
    """
    if isinstance(value, _HugeInt) or (type(value) is int and abs(value) >= 10**MAX_ID_DIGITS):
        digits = len(value.lstrip("-")) if isinstance(value, _HugeInt) else len(str(abs(value)))
        return f"id is an integer of {digits:,} digits; integer ids may have at most {MAX_ID_DIGITS} digits"
    if type(value) is int:
        return None
    if not isinstance(value, str):
        return f"'id' must be a string or an integer, got a JSON {json_type(value)}"
    if len(value) > MAX_ID_CHARS:
        return f"id is a string of {len(value):,} characters; string ids may have at most {MAX_ID_CHARS:,}"
    surrogate = None if value.isascii() else _SURROGATE.search(value)
    if surrogate is not None:
        return (
            f"id contains a lone surrogate U+{ord(surrogate.group()):04X} at offset {surrogate.start()}: "
            "it cannot be written as UTF-8"
        )
    return None


def parse_json_item(text: str) -> tuple[Any, Any]:
    """Return ``(id or None, prompt)`` of one JSONL line.

    Raises:
        ItemError: the line's error (code and message); its ``item_id`` is the line's id when
            that id is good and the error is about something else, so the record carries it.

    >>> parse_json_item('{"id": "a", "prompt": "hi"}')
    ('a', 'hi')
    """
    try:
        obj = _decode(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            raise ItemError(contract.MALFORMED_JSON, "line is blank: expected a JSON object with a 'prompt'") from None
        raise ItemError(contract.MALFORMED_JSON, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise ItemError(contract.MALFORMED_JSON, "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ItemError(
            contract.NOT_AN_OBJECT, f"expected a JSON object with a 'prompt', got a JSON {json_type(obj)}"
        )
    if isinstance(obj, _Ambiguous):
        for key in ("prompt", "id"):
            if key in obj.repeated:
                raise ItemError(
                    contract.MALFORMED_JSON,
                    f"the object names {key!r} more than once: JSON readers disagree on which one counts",
                )
    item_id = obj.get("id")
    problem = None if item_id is None else id_problem(item_id)
    if "prompt" not in obj:
        raise ItemError(contract.MISSING_PROMPT, "object has no 'prompt' field", None if problem else item_id)
    if problem is not None:
        raise ItemError(contract.BAD_ID, problem)
    prompt = obj["prompt"]
    if type(prompt) is not str:
        # The id is good: the error record carries it, so the item can be found by its id.
        raise ItemError(
            contract.PROMPT_NOT_STRING, f"'prompt' must be a string, got a JSON {json_type(prompt)}", item_id
        )
    return item_id, prompt


def _too_large(prompt: str, max_bytes: int) -> tuple[str, str] | None:
    # Only long prompts pay for the exact byte count (UTF-8 takes at most 4 bytes a character).
    if len(prompt) * 4 > max_bytes:
        size = len(prompt.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return contract.TOO_LARGE, f"prompt is {size:,} bytes; the limit is {max_bytes:,} bytes"
    return None


def items_from_text(
    text: str, first: int, fmt: str, max_bytes: int, bad: dict[int, tuple[str, str]] | None = None
) -> tuple[list[Item], list[Any] | None]:
    """The items of a chunk of raw lines, and the ids the producer's duplicate guard checks.

    Args:
        text: the chunk's lines joined by ``"\\n"`` (a line's own ``"\\r"`` is still on it).
        first: the line number of the first line.
        fmt: ``jsonl`` or ``text`` (a prompt per line; its id is its line number).
        max_bytes: prompts larger than this become ``too_large`` items.
        bad: lines the producer could not ship (index in the chunk -> ``(code, message)``).

    Returns:
        ``(items, ids)``. ``ids`` (``None`` for plain text, whose ids are unique by construction)
        has one entry per item: the explicit id, :data:`DEFAULT_ID` when the line number is the
        id, or ``None`` for an item that failed before its id counted.

    >>> items_from_text('{"id": 7, "prompt": "a"}\\n{"prompt": "b"}\\nnope', 5, "jsonl", 100)[1]
    [7, True, None]
    """
    bad = bad or {}
    items: list[Item] = []
    ids: list[Any] | None = [] if fmt == "jsonl" else None
    for index, raw in enumerate(text.split("\n")):
        line = first + index
        if raw and raw[-1] == "\r":
            raw = raw[:-1]
        if raw.startswith("\ufeff") and (line == 1 or ids is not None):
            # A UTF-8 byte-order mark, as Windows editors write; in JSONL also on a later line
            # (files joined with cat), where it can only be a mark: JSON never starts with one.
            raw = raw[1:]
        if index in bad:
            items.append(Item(line, line, None, bad[index]))
            if ids is not None:
                ids.append(None)
            continue
        if ids is None:
            error = _too_large(raw, max_bytes)
            items.append(Item(line, line, None if error else raw, error))
            continue
        try:
            explicit, prompt = parse_json_item(raw)
        except ItemError as exc:
            items.append(Item(line, line if exc.item_id is None else exc.item_id, None, (exc.code, exc.message)))
            ids.append(None)
            continue
        except Exception as exc:  # whatever one line does, it is that line's error
            # MemoryError from a line of a million nested arrays, or a parser failure nobody
            # foresaw: the message names the kind only (an exception's text may quote the line).
            error = (contract.MALFORMED_JSON, f"line cannot be parsed: {type(exc).__name__}")
            items.append(Item(line, line, None, error))
            ids.append(None)
            continue
        error = _too_large(prompt, max_bytes)
        items.append(Item(line, line if explicit is None else explicit, None if error else prompt, error))
        ids.append(DEFAULT_ID if explicit is None else explicit)
    return items, ids
