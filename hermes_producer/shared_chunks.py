"""A shared input (``hermes batch --shared``) as chunks of whole lines, each with its byte range.

The producer still reads every byte once: it must find the line boundaries, and it keeps each
chunk's text for what only it does with one (splitting a chunk that keeps failing, running it
in-process when the cluster is gone, the ids of chunks a resumed batch skips). What it no longer
does is write the lines to Redis: a chunk travels as its :class:`ByteRange` and the SHA-256 of
its bytes, which the worker that reads them checks (:mod:`hermes_worker.shared_input`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from hermes_worker.contract import MAX_VALUE_BYTES
from hermes_worker.errors import EXIT_USAGE, HermesError
from hermes_worker.raw_lines import READ_BLOCK, InputFormat, RawChunk, _too_long
from hermes_worker.shared_input import ByteRange, range_lines

__all__ = ["SharedInputError", "shared_chunks", "shared_path"]


class SharedInputError(HermesError):
    """``--shared`` asked for an input workers cannot be told to read."""

    exit_code = EXIT_USAGE


def shared_path(input_path: str, root: Path | None) -> str:
    """The input's resolved absolute path, which workers are sent, once it is under ``root``.

    Raises:
        SharedInputError: no root is set, the input is standard input or not a regular file,
            or it lies outside the root.
    """
    fix = "set HERMES_SHARED_ROOT to a directory every worker can read, and put the input under it"
    if root is None:
        raise SharedInputError("--shared needs HERMES_SHARED_ROOT (the directory workers read)", fix=fix)
    if input_path == "-":
        raise SharedInputError("--shared needs a file input, not standard input")
    real, base = os.path.realpath(input_path), os.path.realpath(root)
    if not os.path.isfile(real):
        raise SharedInputError(f"--shared needs a regular file; {input_path} is not one")
    if os.path.commonpath([real, base]) != base:
        raise SharedInputError(f"--shared: {input_path} is outside HERMES_SHARED_ROOT ({base})", fix=fix)
    return real


def shared_chunks(
    source: BinaryIO, path: str, fmt: InputFormat, max_prompt_bytes: int, chunk_size: int
) -> Iterator[RawChunk]:
    """A :class:`RawChunk` per chunk of ``chunk_size`` lines of ``source`` (the file at ``path``, read
    from its start), with its byte range as ``source`` and no ``utf8``; the records are those of
    :func:`reader.read_chunks`.

    Memory stays bounded by one range (:data:`MAX_VALUE_BYTES`, which is all a range may hold): a
    chunk whose lines would hold more ends early, at its last whole line; a line longer than that
    is skipped through, not held, and travels as a chunk of its own with no range, its
    ``too_large`` error record made here (as the reader does for an over-long line).
    """
    read = getattr(source, "read1", source.read)
    pending = bytearray()
    scanned, found, offset, first = 0, 0, 0, 1  # bytes of pending searched, newlines found in them
    while True:
        block = read(READ_BLOCK)
        pending += block
        while True:
            cut = _after_lines(pending, scanned, chunk_size - found)
            if cut > MAX_VALUE_BYTES or (cut < 0 and len(pending) > MAX_VALUE_BYTES):
                cut = pending.rfind(b"\n", 0, MAX_VALUE_BYTES) + 1  # end early, at the last whole line
                if cut == 0:  # one line longer than a range: skipped through, a chunk of its own
                    size = yield from _skipped_line(read, pending, first, max_prompt_bytes)
                    offset, first, scanned, found = offset + size, first + 1, 0, 0
                    continue
            if cut < 0:
                scanned, found = len(pending), found + pending.count(b"\n", scanned)
                break
            data = bytes(pending[:cut])
            del pending[:cut]
            lines, chunk = _chunk(data, path, offset, first, fmt, max_prompt_bytes)
            yield chunk
            offset, first, scanned, found = offset + cut, first + lines, 0, 0
        if not block:
            break
    if pending:
        yield _chunk(bytes(pending), path, offset, first, fmt, max_prompt_bytes)[1]


def _skipped_line(
    read: Any, pending: bytearray, first: int, max_prompt_bytes: int
) -> Generator[RawChunk, None, int]:
    """Read past the line that ``pending`` starts with (its newline included), holding none of it;
    yield its chunk (no range: an error record); return its size. ``pending`` keeps what follows."""
    newline = pending.find(b"\n")
    if newline >= 0:
        size = newline + 1
        del pending[:size]
    else:
        size = len(pending)
        pending.clear()
        while block := read(READ_BLOCK):
            newline = block.find(b"\n")
            if newline >= 0:
                size += newline + 1
                pending += block[newline + 1 :]
                break
            size += len(block)
    yield RawChunk(first, "", [[0, *_too_long(size, max_prompt_bytes)]], b"", 1)
    return size


def _after_lines(data: bytearray, start: int, wanted: int) -> int:
    """The offset just past the ``wanted``-th newline of ``data`` after ``start``, or -1."""
    position = start - 1
    for _ in range(wanted):
        position = data.find(b"\n", position + 1)
        if position < 0:
            return -1
    return position + 1


def _chunk(
    data: bytes, path: str, offset: int, first: int, fmt: InputFormat, max_prompt_bytes: int
) -> tuple[int, RawChunk]:
    """How many lines ``data`` holds, and its chunk."""
    count, text, bad = range_lines(data, fmt, max_prompt_bytes)
    where = ByteRange(path, offset, offset + len(data), hashlib.sha256(data).hexdigest())
    return count, RawChunk(first, text, bad, None, count, where)
