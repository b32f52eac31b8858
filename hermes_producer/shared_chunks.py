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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from hermes_worker.errors import EXIT_USAGE, HermesError
from hermes_worker.raw_lines import READ_BLOCK, InputFormat
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
) -> Iterator[tuple[int, str, list[list[Any]], ByteRange]]:
    """``(first line, text, bad lines, byte range)`` per chunk of ``chunk_size`` lines of ``source``
    (the file at ``path``, read from its start); the text is what :func:`reader.read_chunks` makes.
    """
    read = getattr(source, "read1", source.read)
    pending = bytearray()
    scanned, found, offset, first = 0, 0, 0, 1  # bytes of pending searched, newlines found in them
    while True:
        block = read(READ_BLOCK)
        if block:
            pending += block
        while True:
            cut = _after_lines(pending, scanned, chunk_size - found)
            if cut < 0:
                scanned, found = len(pending), found + pending.count(b"\n", scanned)
                break
            data = bytes(pending[:cut])
            del pending[:cut]
            yield _chunk(data, path, offset, first, fmt, max_prompt_bytes)
            offset, first, scanned, found = offset + cut, first + chunk_size, 0, 0
        if not block:
            break
    if pending:
        yield _chunk(bytes(pending), path, offset, first, fmt, max_prompt_bytes)


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
) -> tuple[int, str, list[list[Any]], ByteRange]:
    _count, text, bad = range_lines(data, fmt, max_prompt_bytes)
    where = ByteRange(path, offset, offset + len(data), hashlib.sha256(data).hexdigest())
    return first, text, bad, where
