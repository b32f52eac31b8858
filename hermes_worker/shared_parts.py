"""Shared-storage results (``hermes batch --shared``): a chunk's records as a part file, not a Redis value.

With a shared input, the lines of a chunk no longer cross Redis (:mod:`.shared_input`); this
module keeps its records off Redis too, so that the producer moves O(chunks), not O(prompts),
through it. The producer makes the batch's part directory, ``HERMES_SHARED_ROOT/.hermes-parts/
BATCH`` (:meth:`PartDir.create`) and says so in each shared chunk's request (``parts``); a
worker so told that finds it there writes the chunk's records to a file of its own in it
(:func:`write_part`) and posts only a :class:`PartRef` (name, size,
SHA-256) on the result stream, where the records would have gone. The producer reads the part
back through a handle on its directory (:meth:`PartDir.load`), checks size, SHA-256 and UTF-8,
and writes the records exactly as if they had come through Redis.

Nothing depends on the part files being there: a worker that cannot write the directory (a
read-only mount, another user's directory, no room) posts the records through Redis as
always; a part the producer cannot read back, or whose bytes are not the ones the worker
hashed (a file planted or changed meanwhile), counts as a malformed result, and the chunk goes
again. The producer deletes a chunk's part once the chunk is written, and the directory with
whatever is left (parts of duplicate deliveries) when the batch ends. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import MAX_VALUE_BYTES, ContractError
from .shared_input import NO_FOLLOW, open_regular

__all__ = ["PARTS_DIR", "PartDir", "PartRef", "parts_path", "remove_part", "write_part"]

# Under HERMES_SHARED_ROOT: one directory a batch, named by its batch id (16 or 32 hex digits).
PARTS_DIR = ".hermes-parts"
_NAME = re.compile(r"(0|[1-9][0-9]{0,18})-[0-9a-f]{32}\.jsonl")  # any chunk number (MAX_CHUNK_NUMBER)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The records are the prompts: the batch's directory is the producer's and its group's at most
# (the umask may narrow it further), never every user's. Its parts stay readable by all who
# reach them, the producer included when it is not the workers' user (workers running as root).
_DIR_MODE, _PART_MODE = 0o770, 0o644


@dataclass(frozen=True, slots=True)
class PartRef:
    """A part file of the batch's directory: its ``name``, ``size`` in bytes and ``sha256``.

    On a result stream, the ``p`` field: ``{"name": "7-<32 hex>.jsonl", "size": 123, "sha256": "..."}``.

    >>> PartRef.from_wire({"name": "../x", "size": 1, "sha256": "0" * 64})
    Traceback (most recent call last):
    ...
    hermes_worker.contract.ContractError: a result's part: 'name' must be CHUNK-<32 hex digits>.jsonl
    """

    name: str
    size: int
    sha256: str

    def to_wire(self) -> str:
        return json.dumps({"name": self.name, "size": self.size, "sha256": self.sha256})

    @classmethod
    def from_wire(cls, value: Any) -> PartRef:
        """Raises: ContractError: naming the field that is wrong."""
        if not isinstance(value, dict) or set(value) != {"name", "size", "sha256"}:
            raise ContractError("a result's part must be an object with exactly name, size and sha256")
        name, size, digest = value["name"], value["size"], value["sha256"]
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise ContractError("a result's part: 'name' must be CHUNK-<32 hex digits>.jsonl")
        if type(size) is not int or not 0 <= size <= MAX_VALUE_BYTES:
            raise ContractError(f"a result's part: 'size' must be an integer from 0 to {MAX_VALUE_BYTES}")
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise ContractError("a result's part: 'sha256' must be 64 lowercase hex digits")
        return cls(name, size, digest)


def parts_path(root: Path | str, batch: str) -> str:
    """Where the parts of batch ``batch`` go, under ``root`` resolved (the batch id is hex: no
    separator, no dot can come from it)."""
    return os.path.join(os.path.realpath(root), PARTS_DIR, batch)


def _open_dirs(root: Path | str, batch: str, *, make: bool = False) -> tuple[int, int] | None:
    """Handles on the parts directory and the batch's part directory in it (made first if
    ``make``), walked one component at a time from the root without following a link: a link
    planted in the place of either directory is neither followed nor written through. None if
    there is no such directory."""
    fds: list[int] = []
    try:
        fds.append(os.open(os.path.realpath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for name, mode in ((PARTS_DIR, 0o777), (batch, _DIR_MODE)):
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, mode, dir_fd=fds[-1])  # never through a link: mkdir does not follow one
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY | NO_FOLLOW, dir_fd=fds[-1]))
    except OSError:
        for fd in fds:
            os.close(fd)
        return None
    os.close(fds[0])
    return fds[1], fds[2]


def _open_dir(root: Path | str, batch: str) -> int | None:
    """A handle on the batch's part directory, as :func:`_open_dirs` walks to it."""
    fds = _open_dirs(root, batch)
    if fds is None:
        return None
    os.close(fds[0])
    return fds[1]


def write_part(root: Path | None, batch: str, chunk: int, data: bytes, owner: int) -> PartRef | None:
    """Write ``data`` (a chunk's records) to a new file of the batch's part directory, which
    must belong to user ``owner`` (the producer's, who made it); its ref.

    None, and nothing written, when there is no such directory (a batch not using parts, or no
    shared root here), it is another user's (put in the place of the producer's by someone who
    can write the shared root, who would read the records there) or it cannot be written: the
    records then go through Redis.
    """
    if root is None:
        return None
    directory = _open_dir(root, batch)
    if directory is None:
        return None
    if os.fstat(directory).st_uid != owner:
        os.close(directory)
        return None
    name = f"{chunk}-{uuid.uuid4().hex}.jsonl"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, _PART_MODE, dir_fd=directory)
    except OSError:  # not made: a file of that name (not ours to remove), no permission, no room
        os.close(directory)
        return None
    try:
        try:
            with open(fd, "wb", closefd=False) as sink:
                sink.write(data)
        finally:
            os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=directory)
        return None
    finally:
        os.close(directory)
    return PartRef(name, len(data), hashlib.sha256(data).hexdigest())


def remove_part(root: Path | None, batch: str, ref: PartRef) -> None:
    """Delete a part nobody will read (its result was never posted); quietly."""
    directory = None if root is None else _open_dir(root, batch)
    if directory is not None:
        with contextlib.suppress(OSError):
            os.unlink(ref.name, dir_fd=directory)
        os.close(directory)


class PartDir:
    """The producer's side: the batch's part directory, made, read and removed through one handle."""

    def __init__(self, path: str, fd: int, parent: int) -> None:
        self.path = path
        self._fd = fd
        self.owner = os.getuid()  # the directory's (create checks it): workers write only to a directory of this user's
        # The parts directory it was made in: removing it goes through this handle, not its path,
        # in which a link may have been planted since.
        self._parent = parent

    @classmethod
    def create(cls, root: Path, batch: str) -> PartDir | None:
        """Make (or, resuming, reopen) the batch's part directory; None if that cannot be done
        safely: the workers then find no directory and post their records through Redis."""
        fds = _open_dirs(root, batch, make=True)
        if fds is None:
            return None
        if os.fstat(fds[1]).st_uid != os.getuid():  # someone else's directory, planted under the batch's name
            for fd in fds:
                os.close(fd)
            return None
        return cls(parts_path(root, batch), fds[1], fds[0])

    def load(self, ref: PartRef) -> bytes:
        """The part's bytes, checked against ``ref``.

        Raises:
            ContractError: the part is missing, not a regular file, or not the bytes the worker
                wrote (size or SHA-256), or not UTF-8.
        """
        where = f"part {ref.name}"
        fd, info = open_regular(where, ref.name, self._fd)
        try:
            if info.st_size != ref.size:
                raise ContractError(f"{where} is {info.st_size:,} bytes, not the {ref.size:,} the worker wrote")
            data = os.read(fd, ref.size + 1) if ref.size else b""
            while len(data) < ref.size and (more := os.read(fd, ref.size - len(data) + 1)):
                data += more
        except OSError as exc:
            raise ContractError(f"{where} cannot be read: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ContractError(f"{where}: its bytes are not the ones the worker wrote")
        return data

    def remove(self, ref: PartRef) -> None:
        """Delete a part whose records are written; quietly (the directory goes at the end anyway)."""
        with contextlib.suppress(OSError):
            os.unlink(ref.name, dir_fd=self._fd)

    def remove_all(self) -> None:
        """Delete the directory and every part left in it (duplicate deliveries, an unfinished batch)."""
        # Through the handles, never the path, in which a link may have been planted since. Parts
        # are files: each entry is unlinked (a planted link removed, never followed) or, if an
        # empty directory, removed; nothing is descended into (a tree planted deeper than
        # Python's recursion limit made shutil.rmtree raise RecursionError), so what such a tree
        # holds stays, and the directory with it.
        with contextlib.suppress(OSError):
            for name in os.listdir(self._fd):
                try:
                    os.unlink(name, dir_fd=self._fd)
                except OSError:  # a directory (EISDIR, EPERM), or gone
                    with contextlib.suppress(OSError):
                        os.rmdir(name, dir_fd=self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.basename(self.path), dir_fd=self._parent)
        with contextlib.suppress(OSError):
            os.close(self._parent)
