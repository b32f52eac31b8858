"""Shared-storage chunks (``hermes batch --shared``): a chunk is a byte range of an input file
every worker can read, not lines written to Redis.

:class:`ByteRange` is the range on the wire (a chunk request's ``range``): the file's absolute
path, the bytes ``[start, end)`` and the SHA-256 the producer computed of them; its decode checks
every field. :func:`read_range` is what a worker does with one: refuse a path outside
``HERMES_SHARED_ROOT`` (after resolving links), a range that is not on line boundaries, and bytes
that are not the ones the producer read (a file changed under the batch), each naming the
problem; else the chunk's text exactly as the producer's reader makes it (:func:`range_lines`,
the same :mod:`hermes_worker.raw_lines`), so both modes write the same records.
Standard library only.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import MAX_VALUE_BYTES, ContractError, shown
from .raw_lines import InputFormat, _max_line, read_chunks

__all__ = ["MAX_PATH_CHARS", "MAX_RANGE_END", "ByteRange", "range_lines", "read_range"]

MAX_PATH_CHARS = 4096
MAX_RANGE_END = 1 << 50  # a petabyte: past any real file, far below what JSON numbers lose
_HEX = frozenset("0123456789abcdef")
# Opening a shared file never follows a link in its last component, nor leaks into a child.
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _path_problem(path: Any) -> str | None:
    """Why ``path`` cannot name a shared input, or None."""
    if not isinstance(path, str) or not path:
        return f"'path' must be a non-empty string, got {shown(path)}"
    if len(path) > MAX_PATH_CHARS:
        return f"'path' is longer than {MAX_PATH_CHARS} characters"
    if not path.isprintable():
        return "'path' holds control characters"
    if not path.startswith("/"):
        return f"'path' {shown(path)} is not absolute"
    if any(part in (".", "..") for part in path.split("/")) or "//" in path or os.path.normpath(path) != path:
        return f"'path' {shown(path)} is not normalized (no '.', '..' or '//' parts)"
    return None


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[start, end)`` of the shared file ``path``, whose SHA-256 is ``sha256``.

    On the wire: ``{"path": "/shared/in.jsonl", "start": 0, "end": 123456, "sha256": "9f..."}``.

    >>> ByteRange.from_wire({"path": "/d/x", "start": 0, "end": -1, "sha256": "0" * 64})
    Traceback (most recent call last):
    ...
    hermes_worker.contract.ContractError: chunk payload: 'range' end -1 must be an integer from 1 to 1125899906842624
    """

    path: str
    start: int
    end: int
    sha256: str

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "start": self.start, "end": self.end, "sha256": self.sha256}

    @classmethod
    def from_wire(cls, value: Any) -> ByteRange:
        """Raises: ContractError: naming the field that is wrong."""
        if not isinstance(value, dict) or set(value) != {"path", "start", "end", "sha256"}:
            raise ContractError("chunk payload: 'range' must be an object with exactly path, start, end and sha256")
        problem = _path_problem(value["path"])
        if problem is not None:
            raise ContractError(f"chunk payload: 'range' {problem}")
        start, end, digest = value["start"], value["end"], value["sha256"]
        if type(start) is not int or not 0 <= start < MAX_RANGE_END:
            bound = MAX_RANGE_END - 1
            raise ContractError(f"chunk payload: 'range' start {shown(start)} must be an integer from 0 to {bound}")
        if type(end) is not int or not 1 <= end <= MAX_RANGE_END:
            raise ContractError(f"chunk payload: 'range' end {shown(end)} must be an integer from 1 to {MAX_RANGE_END}")
        if not start < end <= start + MAX_VALUE_BYTES:
            raise ContractError(
                f"chunk payload: 'range' [{start}, {end}) must hold 1 to {MAX_VALUE_BYTES:,} bytes")
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
            raise ContractError("chunk payload: 'range' sha256 must be 64 lowercase hex digits")
        return cls(value["path"], start, end, digest)


def range_lines(data: bytes, fmt: InputFormat, max_prompt_bytes: int) -> tuple[int, str, list[list[Any]]]:
    """``(number of lines, text, bad lines)`` of ``data`` (whole lines), as the reader makes them.

    >>> range_lines(b'a\\n\\xff\\n', "text", 100)
    (2, 'a\\n', [[1, 'invalid_utf8', 'not valid UTF-8: byte 0xff at offset 0']])
    """
    if data and len(data) <= _max_line(fmt, max_prompt_bytes):
        # No line can be too long, so unless some line is not UTF-8 the text is the bytes
        # decoded, without the final newline: one decode, no line split and joined again.
        try:
            text = (data[:-1] if data.endswith(b"\n") else data).decode("utf-8")
        except UnicodeDecodeError:
            pass  # the reader's way finds which lines are not UTF-8
        else:
            return text.count("\n") + 1, text, []
    chunks = list(read_chunks(io.BytesIO(data), fmt, max_prompt_bytes, len(data) + 1))
    if len(chunks) != 1:
        return 0, "", []
    return chunks[0].lines, chunks[0].text, chunks[0].bad


def _within(root: Path | None, path: str) -> str:
    """``path`` resolved, if it lies under ``root`` (resolved too). Raises: ContractError."""
    if root is None:
        raise ContractError("this worker reads no shared input: HERMES_SHARED_ROOT is not set on it")
    real, base = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise ContractError(f"shared input {shown(path)} is outside HERMES_SHARED_ROOT ({base})")
    return real


def open_regular(name: str, path: str, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """A read handle on the regular file ``path`` (under the directory ``dir_fd``, if given) and its
    status: never through a link, never blocked on a FIFO. ``name`` says what it is in errors.

    Raises:
        ContractError: it cannot be opened, or it is not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NO_FOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        raise ContractError(f"{name} cannot be read: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ContractError(f"{name} is not a regular file")
    return fd, info


def read_range(
    root: Path | None, where: ByteRange, count: int, fmt: InputFormat, max_prompt_bytes: int
) -> tuple[str, list[list[Any]]]:
    """The text and bad lines of ``where``, checked against what the producer saw.

    Raises:
        ContractError: the path is outside ``root`` (or no root is set), not a regular file or
            unreadable; the range is not on line boundaries, does not hold ``count`` lines, or
            its bytes are not the producer's (the file changed under the batch).
    """
    real = _within(root, where.path)
    fd, info = open_regular(f"shared input {shown(where.path)}", real)
    try:
        if where.end > info.st_size:
            raise ContractError(f"shared input {shown(where.path)} is {info.st_size:,} bytes, shorter than the "
                                f"range [{where.start}, {where.end}): it changed under the batch")  # fmt: skip
        before = os.pread(fd, 1, where.start - 1) if where.start else b"\n"
        data = os.pread(fd, where.end - where.start, where.start)
    except OSError as exc:
        raise ContractError(f"shared input {shown(where.path)} cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return _checked(where, data, before, info.st_size, count, fmt, max_prompt_bytes)


def _checked(
    where: ByteRange, data: bytes, before: bytes, size: int, count: int, fmt: InputFormat, max_prompt_bytes: int
) -> tuple[str, list[list[Any]]]:
    name = f"shared input {shown(where.path)} range [{where.start}, {where.end})"
    if before != b"\n" or not (data.endswith(b"\n") or where.end == size):
        raise ContractError(f"{name} is not on line boundaries")
    if hashlib.sha256(data).hexdigest() != where.sha256:
        raise ContractError(f"{name}: its bytes are not the ones the producer read (the file changed under the batch)")
    lines, text, bad = range_lines(data, fmt, max_prompt_bytes)
    if lines != count:
        raise ContractError(f"{name} holds {lines} lines, the request says {count}")
    return text, bad
