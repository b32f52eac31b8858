"""Input lines -> contract items: the one parser, run wherever the chunk is processed.

A producer ships chunks of raw input lines (see :mod:`hermes_worker.contract`); whoever runs
the chunk (an in-process pool, a Celery worker, the sandbox server) turns each line into an
item ``[line, id, prompt, error]`` here, so every path does the same work and the producer
only splits lines. A line that cannot be read (malformed JSON, no prompt, a bad id, a prompt
over the limit) becomes an item that already carries its error.

Standard library and the contract only: this module ships inside the sandbox image.
"""

from __future__ import annotations

import json
from typing import Any

from . import contract

__all__ = ["DEFAULT_ID", "items_from_text", "json_type", "parse_json_item"]

# In a chunk result's ``ids``: this item's id is its line number (it gave none).
DEFAULT_ID = True

_loads = json.loads


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def parse_json_item(text: str) -> tuple[Any, Any]:
    """Return ``(id or None, prompt)`` of one JSONL line, or raise ValueError(code, message[, id]).

    >>> parse_json_item('{"id": "a", "prompt": "hi"}')
    ('a', 'hi')
    """
    try:
        obj = _loads(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            raise ValueError(contract.MALFORMED_JSON, "line is blank: expected a JSON object with a 'prompt'") from None
        raise ValueError(contract.MALFORMED_JSON, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise ValueError(contract.MALFORMED_JSON, "invalid JSON: nested too deeply") from None
    if type(obj) is not dict:
        raise ValueError(
            contract.NOT_AN_OBJECT, f"expected a JSON object with a 'prompt', got a JSON {json_type(obj)}"
        )
    if "prompt" not in obj:
        raise ValueError(contract.MISSING_PROMPT, "object has no 'prompt' field", obj.get("id"))
    item_id = obj.get("id")
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, str | int)):
        raise ValueError(contract.BAD_ID, f"'id' must be a string or an integer, got a JSON {json_type(item_id)}")
    prompt = obj["prompt"]
    if type(prompt) is not str:
        # The id is good: the error record carries it, so the item can be found by its id.
        raise ValueError(
            contract.PROMPT_NOT_STRING, f"'prompt' must be a string, got a JSON {json_type(prompt)}", item_id
        )
    return item_id, prompt


def _too_large(prompt: str, max_bytes: int) -> list[Any] | None:
    # Only long prompts pay for the exact byte count (UTF-8 takes at most 4 bytes a character).
    if len(prompt) * 4 > max_bytes:
        size = len(prompt.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return [contract.TOO_LARGE, f"prompt is {size:,} bytes; the limit is {max_bytes:,} bytes"]
    return None


def items_from_text(
    text: str, first: int, fmt: str, max_bytes: int, bad: dict[int, list[Any]] | None = None
) -> tuple[list[list[Any]], list[Any] | None]:
    """The items of a chunk of raw lines, and the ids the producer's duplicate guard checks.

    Args:
        text: the chunk's lines joined by ``"\\n"`` (a line's own ``"\\r"`` is still on it).
        first: the line number of the first line.
        fmt: ``jsonl`` or ``text`` (a prompt per line; its id is its line number).
        max_bytes: prompts larger than this become ``too_large`` items.
        bad: lines the producer could not ship (index in the chunk -> ``[code, message]``).

    Returns:
        ``(items, ids)``. ``ids`` (``None`` for plain text, whose ids are unique by construction)
        has one entry per item: the explicit id, :data:`DEFAULT_ID` when the line number is the
        id, or ``None`` for an item that failed before its id counted.

    >>> items_from_text('{"id": 7, "prompt": "a"}\\n{"prompt": "b"}\\nnope', 5, "jsonl", 100)[1]
    [7, True, None]
    """
    bad = bad or {}
    items: list[list[Any]] = []
    ids: list[Any] | None = [] if fmt == "jsonl" else None
    for index, raw in enumerate(text.split("\n")):
        line = first + index
        if raw and raw[-1] == "\r":
            raw = raw[:-1]
        if line == 1 and raw.startswith("\ufeff"):
            raw = raw[1:]  # a UTF-8 byte-order mark, as Windows editors write
        if index in bad:
            items.append([line, line, None, bad[index]])
            if ids is not None:
                ids.append(None)
            continue
        if ids is None:
            items.append([line, line, raw, _too_large(raw, max_bytes)])
            if items[-1][3] is not None:
                items[-1][2] = None
            continue
        try:
            explicit, prompt = parse_json_item(raw)
        except ValueError as exc:
            code, message, *known = exc.args
            item_id: Any = line
            if known and isinstance(known[0], str | int) and not isinstance(known[0], bool):
                item_id = known[0]
            items.append([line, item_id, None, [code, message]])
            ids.append(None)
            continue
        error = _too_large(prompt, max_bytes)
        items.append([line, line if explicit is None else explicit, None if error else prompt, error])
        ids.append(DEFAULT_ID if explicit is None else explicit)
    return items, ids
