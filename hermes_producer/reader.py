"""Read batch input (JSONL or plain text), streaming: as chunks of raw lines, or as items.

``hermes batch`` ships chunks of raw lines (:func:`read_chunks`); whoever runs a chunk parses
them with :mod:`hermes_worker.lines`. :func:`read_items` parses here, for callers that want
items. Either way every line becomes exactly one item ``[line, id, prompt, error]``: a line that cannot be read
(invalid UTF-8, malformed JSON, no prompt, a duplicate id, far too long) becomes an item that
already carries its error, so it still gets its record, in order. Memory stays bounded: lines
are read with a size cap, and an over-long line is skipped through without being held.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, Literal

from hermes_worker import contract
from hermes_worker.lines import parse_json_item

from .seen_ids import SeenIds

__all__ = ["InputFormat", "detect_format", "read_chunks", "read_items"]

InputFormat = Literal["jsonl", "text"]

_BLOCK = 1 << 20
# JSON may spell one character as a 6-byte \uXXXX escape, so a JSONL line holding a prompt at
# the size limit can be up to six times longer, plus the id and the keys.
_JSON_EXPANSION = 6
_LINE_SLACK = 64 * 1024


def detect_format(name: str, stream: BinaryIO) -> InputFormat:
    """Guess the input format from the file name, else from the first byte that is not blank."""
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".txt"):
        return "text"
    peek = getattr(stream, "peek", None)
    head = peek(4096) if peek is not None else b""
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "text"


def _bounded_lines(stream: BinaryIO, max_line: int) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield ``(line number, line without its newline or None if longer than max_line, size)``.

    Reads blocks and splits them in C rather than calling ``readline`` per line (several times
    faster for short prompts); an over-long line is skipped through without being held, so
    memory stays within one block plus ``max_line`` whatever the input holds.
    """
    read = getattr(stream, "read1", stream.read)
    line_no = 0
    pending = b""  # the start of a line whose newline has not been read yet
    skipping = -1  # bytes seen of an over-long line being skipped, or -1
    while True:
        block = read(_BLOCK)
        if not block:
            break
        if skipping >= 0:
            newline = block.find(b"\n")
            if newline < 0:
                skipping += len(block)
                continue
            line_no += 1
            yield line_no, None, skipping + newline + 1
            skipping = -1
            block = block[newline + 1 :]
        parts = block.split(b"\n")
        parts[0] = pending + parts[0]
        pending = parts.pop()
        for raw in parts:
            line_no += 1
            yield line_no, (raw if len(raw) <= max_line else None), len(raw) + 1
        if len(pending) > max_line:
            skipping, pending = len(pending), b""
    if skipping >= 0:
        yield line_no + 1, None, skipping
    elif pending:
        yield line_no + 1, (pending if len(pending) <= max_line else None), len(pending)


def _decode(raw: bytes, line_no: int) -> str:
    text = raw.decode("utf-8")
    if line_no == 1 and text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark, as Windows editors write
    return text[:-1] if text.endswith("\r") else text


def _parse_json_item(text: str) -> tuple[Any, Any]:
    return parse_json_item(text)


def _max_line(fmt: InputFormat, max_prompt_bytes: int) -> int:
    return max_prompt_bytes * (_JSON_EXPANSION if fmt == "jsonl" else 1) + _LINE_SLACK


def _too_long(size: int, max_prompt_bytes: int) -> list[Any]:
    return [contract.TOO_LARGE, f"line is {size:,} bytes; the prompt limit is {max_prompt_bytes:,} bytes"]


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> list[Any]:
    bad = raw[exc.start : exc.start + 1].hex()
    return [contract.INVALID_UTF8, f"not valid UTF-8: byte 0x{bad} at offset {exc.start}"]


def _line_batches(stream: BinaryIO, max_line: int) -> Iterator[list[bytes | int]]:
    """The lines of ``stream`` (without newlines), a block's worth at a time.

    Like :func:`_bounded_lines`, but a list per block and no Python code per line: an over-long
    line is skipped through without being held and shows up as its size (an int) instead.
    """
    read = getattr(stream, "read1", stream.read)
    pending = b""  # the start of a line whose newline has not been read yet
    skipping = -1  # bytes seen of an over-long line being skipped, or -1
    while True:
        block = read(_BLOCK)
        if not block:
            break
        out: list[bytes | int] = []
        if skipping >= 0:
            newline = block.find(b"\n")
            if newline < 0:
                skipping += len(block)
                continue
            out.append(skipping + newline + 1)
            skipping = -1
            block = block[newline + 1 :]
        parts: list[Any] = block.split(b"\n")
        parts[0] = pending + parts[0]
        pending = parts.pop()
        if parts and max(map(len, parts)) > max_line:
            parts = [raw if len(raw) <= max_line else len(raw) + 1 for raw in parts]
        out += parts
        if len(pending) > max_line:
            skipping, pending = len(pending), b""
        if out:
            yield out
    if skipping >= 0:
        yield [skipping]
    elif pending:
        yield [pending if len(pending) <= max_line else len(pending)]


def read_chunks(
    stream: BinaryIO, fmt: InputFormat, max_prompt_bytes: int, chunk_size: int
) -> Iterator[tuple[int, str, list[list[Any]]]]:
    """Group input lines into chunks ``(first line number, lines joined by "\\n", bad lines)``.

    No line is parsed here: the worker does that (:mod:`hermes_worker.lines`). Only what cannot
    travel as text is caught: a line that is not UTF-8 or is far too long is shipped as an empty
    line, and ``bad`` holds ``[index in the chunk, code, message]`` for its error record.

    >>> import io
    >>> list(read_chunks(io.BytesIO(b'{"prompt": "a"}\\n\\xff\\n'), "jsonl", 100, 1000))
    [(1, '{"prompt": "a"}\\n', [[1, 'invalid_utf8', 'not valid UTF-8: byte 0xff at offset 0']])]
    """
    pending: list[bytes | int] = []
    first = 1
    for batch in _line_batches(stream, _max_line(fmt, max_prompt_bytes)):
        pending += batch
        while len(pending) >= chunk_size:
            lines, pending = pending[:chunk_size], pending[chunk_size:]
            yield (first, *_chunk_text(lines, max_prompt_bytes))
            first += chunk_size
    if pending:
        yield (first, *_chunk_text(pending, max_prompt_bytes))


def _chunk_text(lines: list[bytes | int], max_prompt_bytes: int) -> tuple[str, list[list[Any]]]:
    """The lines as one string, and the lines that could not be part of it (empty in the string)."""
    try:
        return b"\n".join(lines).decode("utf-8"), []  # type: ignore[arg-type]
    except (TypeError, UnicodeDecodeError):
        pass  # an over-long line (its size stands in for it) or one that is not UTF-8
    bad: list[list[Any]] = []
    texts = []
    for index, raw in enumerate(lines):
        if isinstance(raw, int):
            bad.append([index, *_too_long(raw, max_prompt_bytes)])
            texts.append("")
            continue
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad.append([index, *_not_utf8(raw, exc)])
            texts.append("")
    return "\n".join(texts), bad


def read_items(
    stream: BinaryIO, fmt: InputFormat, max_prompt_bytes: int, *, seen: SeenIds | None = None
) -> Iterator[list[Any]]:
    """Turn every input line into one contract item ``[line, id, prompt, error]``.

    Args:
        stream: the input, opened in binary mode.
        fmt: ``jsonl`` (objects with ``prompt`` and an optional ``id``) or ``text`` (a prompt
            per line; its id is its line number).
        max_prompt_bytes: prompts larger than this become ``too_large`` errors here, before
            they are sent anywhere.
        seen: the duplicate-id guard (a fresh one by default).

    >>> import io
    >>> list(read_items(io.BytesIO(b'{"id": "a", "prompt": "hi"}\\n{"prompt": 3}\\n'), "jsonl", 100))
    [[1, 'a', 'hi', None], [2, 2, None, ['prompt_not_string', "'prompt' must be a string, got a JSON number"]]]
    """
    max_line = _max_line(fmt, max_prompt_bytes)
    seen = seen if seen is not None else SeenIds()
    for line_no, raw, size in _bounded_lines(stream, max_line):
        item_id: Any = line_no
        if raw is None:
            yield [line_no, item_id, None, _too_long(size, max_prompt_bytes)]
            continue
        try:
            text = _decode(raw, line_no)
        except UnicodeDecodeError as exc:
            yield [line_no, item_id, None, _not_utf8(raw, exc)]
            continue
        explicit_id = None
        if fmt == "text":
            prompt = text
        else:
            try:
                explicit_id, prompt = _parse_json_item(text)
            except ValueError as exc:
                code, message, *known_id = exc.args
                if known_id and isinstance(known_id[0], str | int) and not isinstance(known_id[0], bool):
                    item_id = known_id[0]
                yield [line_no, item_id, None, [code, message]]
                continue
            if explicit_id is not None:
                item_id = explicit_id
        # Plain-text ids are line numbers, unique by construction: only JSONL needs the guard.
        first = None
        if fmt == "jsonl":
            first = (
                seen.check_default(line_no)
                if item_id == line_no and explicit_id is None
                else seen.check_and_add(item_id, line_no)
            )
        if first is not None:
            yield [line_no, item_id, None, [contract.DUPLICATE_ID, f"id {item_id!r} was already used on line {first}"]]
            continue
        # Only long prompts pay for the exact byte count (UTF-8 takes at most 4 bytes a character).
        if len(prompt) * 4 > max_prompt_bytes:
            size = len(prompt.encode("utf-8", "surrogatepass"))
            if size > max_prompt_bytes:
                yield [
                    line_no,
                    item_id,
                    None,
                    [contract.TOO_LARGE, f"prompt is {size:,} bytes; the limit is {max_prompt_bytes:,} bytes"],
                ]
                continue
        yield [line_no, item_id, prompt, None]
