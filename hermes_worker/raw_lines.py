"""Raw input lines -> chunks of text, bounded: the one splitter of batch input into lines.

``hermes batch`` reads its input through it (:mod:`hermes_producer.reader`), and a worker
reading a byte range of a shared input (:mod:`hermes_worker.shared_input`) makes the same text
from the same bytes, so both modes ship the same lines. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, Literal, NamedTuple

from hermes_worker import contract

__all__ = ["READ_BLOCK", "InputFormat", "RawChunk", "read_chunks"]

InputFormat = Literal["jsonl", "text"]


class RawChunk(NamedTuple):
    """A chunk of input lines as read: ``text`` is what travels, the rest is known on the way.

    ``utf8`` is ``text`` as UTF-8, joined from the input's own bytes (the producer ships it as it
    is instead of encoding ``text`` back), or None where it is not kept (a shared input's chunk
    travels as its ``source``, a byte range: :mod:`hermes_producer.shared_chunks`); ``lines`` is
    how many lines it holds, known without counting.
    """

    first: int
    text: str
    bad: list[list[Any]]
    utf8: bytes | None
    lines: int
    source: Any = None

# Bytes read at a time: reading is at most this far ahead of the last chunk handed out.
READ_BLOCK = 1 << 20
# JSON may spell one character as a 6-byte \uXXXX escape, so a JSONL line holding a prompt at
# the size limit can be up to six times longer, plus the id and the keys.
_JSON_EXPANSION = 6
_LINE_SLACK = 64 * 1024


def _max_line(fmt: InputFormat, max_prompt_bytes: int) -> int:
    return max_prompt_bytes * (_JSON_EXPANSION if fmt == "jsonl" else 1) + _LINE_SLACK


def _too_long(size: int, max_prompt_bytes: int) -> list[Any]:
    return [contract.TOO_LARGE, f"line is {size:,} bytes; the prompt limit is {max_prompt_bytes:,} bytes"]


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> list[Any]:
    bad = raw[exc.start : exc.start + 1].hex()
    return [contract.INVALID_UTF8, f"not valid UTF-8: byte 0x{bad} at offset {exc.start}"]


def _line_batches(stream: BinaryIO, max_line: int) -> Iterator[list[bytes | int]]:
    """The lines of ``stream`` (without newlines), a block's worth at a time.

    A list per block and no Python code per line: an over-long line is skipped through without
    being held and shows up as its size (an int) instead.
    """
    read = getattr(stream, "read1", stream.read)
    pending = b""  # the start of a line whose newline has not been read yet
    skipping = -1  # bytes seen of an over-long line being skipped, or -1
    while True:
        block = read(READ_BLOCK)
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
) -> Iterator[RawChunk]:
    """Group input lines into chunks (:class:`RawChunk`): first line number, lines joined by "\\n", bad lines.

    No line is parsed here: the worker does that (:mod:`hermes_worker.lines`). Only what cannot
    travel as text is caught: a line that is not UTF-8 or is far too long is shipped as an empty
    line, and ``bad`` holds ``[index in the chunk, code, message]`` for its error record.

    >>> import io
    >>> [chunk] = read_chunks(io.BytesIO(b'{"prompt": "a"}\\n\\xff\\n'), "jsonl", 100, 1000)
    >>> chunk.text, chunk.bad, chunk.lines
    ('{"prompt": "a"}\\n', [[1, 'invalid_utf8', 'not valid UTF-8: byte 0xff at offset 0']], 2)
    """
    pending: list[bytes | int] = []
    first = 1
    for batch in _line_batches(stream, _max_line(fmt, max_prompt_bytes)):
        pending += batch
        # Walk an offset and drop the used lines once: slicing off each chunk copied the rest of
        # the block every time, quadratic in lines a block (1M empty lines took 2.3 s, 190 s for
        # 400,000 with --chunk-size 1).
        start = 0
        while len(pending) - start >= chunk_size:
            yield _chunk(first, pending[start : start + chunk_size], max_prompt_bytes)
            start += chunk_size
            first += chunk_size
        del pending[:start]
    if pending:
        yield _chunk(first, pending, max_prompt_bytes)


def _chunk(first: int, lines: list[bytes | int], max_prompt_bytes: int) -> RawChunk:
    """The lines as one string and as its UTF-8, and the lines that could not be part of it
    (empty in both)."""
    try:
        utf8 = b"\n".join(lines)  # type: ignore[arg-type]
        # The decode is the UTF-8 check (and the text a chunk run in-process gets); the bytes are
        # what travels, as they came.
        return RawChunk(first, utf8.decode("utf-8"), [], utf8, len(lines))
    except (TypeError, UnicodeDecodeError):
        pass  # an over-long line (its size stands in for it) or one that is not UTF-8
    bad: list[list[Any]] = []
    texts, kept = [], []
    for index, raw in enumerate(lines):
        if isinstance(raw, int):
            bad.append([index, *_too_long(raw, max_prompt_bytes)])
            texts.append("")
            kept.append(b"")
            continue
        try:
            texts.append(raw.decode("utf-8"))
            kept.append(raw)  # valid UTF-8 decodes and encodes back to the same bytes
        except UnicodeDecodeError as exc:
            bad.append([index, *_not_utf8(raw, exc)])
            texts.append("")
            kept.append(b"")
    return RawChunk(first, "\n".join(texts), bad, b"\n".join(kept), len(lines))
