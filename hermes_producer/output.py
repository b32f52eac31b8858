"""Files Hermes writes at paths the user names: checked before any work, never written through a link.

The rules (README, "Output files"), for ``batch -o``, ``--summary-json``, ``--junit`` and
``history --export``:

- ``-`` is standard output. Any other path must name a regular file or nothing yet, in a
  directory that exists: a directory, a device, a FIFO or a socket is refused before any work.
- A symbolic link is refused too, dangling or not: following it would let whoever can create
  names in the directory (``/tmp``, a shared checkout) point Hermes' output at a file of theirs
  choosing, and replacing it would silently turn the user's link into a file. Give the real path.
- Nothing is ever written at the final name: data goes to a file Hermes creates itself
  (``O_CREAT | O_EXCL | O_NOFOLLOW``) in the same directory, renamed into place when complete.
  ``rename`` replaces a name, never what a link there points to.
- Every operation goes through a descriptor of the output's directory (``openat`` and friends),
  so a directory swapped for a link halfway through cannot redirect the rest.

``hermes batch -o FILE`` adds a lock (``FILE.lock``, ``flock``: one writer per output, the
second is refused naming the first's pid) and the resumable ``FILE.partial`` with its journal
``FILE.partial.journal``. The partial becomes the output, so it is created with mode
``0o666`` minus the umask, like any file a shell redirection creates; the journal and the lock
are Hermes' own and private (``0o600``). ``--resume`` reopens the partial and the journal only
if they are regular files owned by the user, without following links.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from hermes_worker.errors import EXIT_USAGE, HermesError

__all__ = ["BatchOutput", "OutputError", "OutputPath", "check_output", "write_file"]

PARTIAL_SUFFIX = ".partial"
JOURNAL_SUFFIX = ".partial.journal"
LOCK_SUFFIX = ".lock"
# The longest name Hermes derives from an output's name (a temporary file: ".NAME.xxxxxxxx.tmp").
_LONGEST_SUFFIX = max(len(JOURNAL_SUFFIX), len(".") + len(".xxxxxxxx.tmp"))

_OPEN_NEW = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a name Hermes expects must not hang the command.
_OPEN_EXISTING = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class OutputError(HermesError):
    """An output cannot be written; the message names the path and the problem (exit 2)."""

    exit_code = EXIT_USAGE


def _kind(mode: int) -> str | None:
    """What a file that cannot be an output is, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    return "is not a regular file"


@dataclass(slots=True)
class OutputPath:
    """A checked output path: its directory held open, and the file's name in it.

    Attributes:
        path: the path as the user gave it (for messages).
        name: its last component.
        dir_fd: a descriptor of its directory; every operation goes through it.
        identity: ``(device, inode of the directory, name)``: the same output however spelled.
    """

    path: str
    name: str
    dir_fd: int
    identity: tuple[int, int, str] = field(default=(0, 0, ""))

    def sibling(self, suffix: str) -> str:
        return self.name + suffix

    def stat(self, name: str | None = None) -> os.stat_result | None:
        """``lstat`` of the output (or a sibling name) in its directory; None if it does not exist."""
        try:
            return os.stat(name or self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def same_file(self, other: os.stat_result | None, name: str | None = None) -> bool:
        """Whether the output (or a sibling ``name``) exists and is the file ``other`` describes."""
        mine = self.stat(name)
        return mine is not None and other is not None and (mine.st_dev, mine.st_ino) == (other.st_dev, other.st_ino)

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def check_output(path: str, what: str = "output") -> OutputPath:
    """Check that ``path`` may be written (see the module's rules) and hold its directory open.

    Args:
        path: the path the user gave (not ``-``: the caller handles standard output).
        what: how the user named it, for messages: ``output``, ``--junit``...

    Raises:
        OutputError: naming ``what``, the path and the problem.
    """
    where = f"cannot write {what} {path!r}" if path else f"cannot write {what}"
    if not path:
        raise OutputError(f"{where}: the path is empty")
    if "\0" in path:
        raise OutputError(f"{where}: a path cannot contain a NUL character")
    directory, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise OutputError(f"{where}: it is a directory; name a file")
    try:
        dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OutputError(f"{where}: the directory {directory!r} does not exist") from None
    except NotADirectoryError:
        raise OutputError(f"{where}: {directory!r} is not a directory") from None
    except OSError as exc:
        raise OutputError(f"{where}: cannot open the directory {directory or '.'!r}: {exc.strerror}") from None
    target = OutputPath(path, name, dir_fd)
    try:
        here = os.fstat(dir_fd)
        target.identity = (here.st_dev, here.st_ino, name)
        found = target.stat()
        if found is not None and (kind := _kind(found.st_mode)):
            if stat.S_ISLNK(found.st_mode):
                with contextlib.suppress(OSError):
                    kind += f" (to {os.readlink(name, dir_fd=dir_fd)!r})"
                kind += "; Hermes does not write through links: name the file itself"
            raise OutputError(f"{where}: it {kind}")
        if found is not None and found.st_uid != os.geteuid() and here.st_mode & stat.S_ISVTX and os.geteuid() != 0:
            # A sticky directory (/tmp) lets only a file's owner replace it: the rename at the end
            # would fail after all the work.
            raise OutputError(
                f"{where}: it belongs to user id {found.st_uid}, in a directory where only they can replace it"
            )
        if len(os.fsencode(name)) + _LONGEST_SUFFIX > os.fpathconf(dir_fd, "PC_NAME_MAX"):
            raise OutputError(f"{where}: the file name is too long (Hermes adds up to {_LONGEST_SUFFIX} characters)")
        if not os.access(".", os.W_OK | os.X_OK, dir_fd=dir_fd):
            raise OutputError(f"{where}: the directory {directory or '.'!r} is not writable")
    except OSError as exc:  # ENAMETOOLONG, EACCES, ...
        target.close()
        raise OutputError(f"{where}: {exc.strerror or exc}") from None
    except BaseException:
        target.close()
        raise
    return target


def _commit(target: OutputPath, temporary: str, keep_note: str) -> None:
    """Rename ``temporary`` to the output, unless something that is not a file took its name."""
    found = target.stat()
    if found is not None and not (stat.S_ISREG(found.st_mode) or stat.S_ISLNK(found.st_mode)):
        raise OutputError(f"{target.path!r} {_kind(found.st_mode)} now; {keep_note}")
    try:
        os.replace(temporary, target.name, src_dir_fd=target.dir_fd, dst_dir_fd=target.dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot rename to {target.path!r}: {exc.strerror}; {keep_note}") from None


def write_file(target: OutputPath, data: bytes) -> None:
    """Write ``data`` to a new file of Hermes' own next to the output, then rename it into place.

    Raises:
        OutputError: naming the path; nothing is left behind.
    """
    temporary = f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | _OPEN_NEW, 0o666, dir_fd=target.dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot write {target.path!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _commit(target, temporary, "nothing was written")
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=target.dir_fd)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {target.path!r}: {exc.strerror or exc}") from None
        raise


class BatchOutput:
    """The ``-o FILE`` of ``hermes batch``: locked, written to ``FILE.partial``, renamed when complete.

    Use :meth:`lock` first (before any work), then :meth:`create` or :meth:`reopen`, and
    :meth:`commit` at the end; :meth:`release` (also a context manager exit) drops the lock.
    """

    def __init__(self, target: OutputPath) -> None:
        self.target = target
        self.partial = target.sibling(PARTIAL_SUFFIX)
        self.journal = target.sibling(JOURNAL_SUFFIX)
        self.lock_name = target.sibling(LOCK_SUFFIX)
        self._lock_fd = -1
        self._cannot = f"cannot write output {target.path!r}"
        self._written: tuple[int, int] | None = None  # (device, inode) of the partial being written

    def __enter__(self) -> BatchOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def describe(self, name: str) -> str:
        """A sibling's path as the user would spell it."""
        return str(Path(self.target.path).with_name(name))

    # -- one writer ------------------------------------------------------------------------

    def lock(self) -> None:
        """Become the only writer of this output, or refuse naming the one that is.

        Raises:
            OutputError: another process holds the lock (its pid, when known), or the lock
                file is not a regular file of this user's.
        """
        dir_fd = self.target.dir_fd
        shown = self.describe(self.lock_name)
        while True:
            try:
                fd = os.open(self.lock_name, os.O_RDWR | os.O_CREAT | _OPEN_EXISTING, 0o600, dir_fd=dir_fd)
            except OSError as exc:
                raise OutputError(f"{self._cannot}: cannot create the lock file {shown!r}: {_explain(exc)}") from None
            try:
                mine = os.fstat(fd)
                _check_own_file(mine, shown, self._cannot)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    who = f"({holder}) " if holder else ""
                    raise OutputError(
                        f"another hermes batch {who}is writing {self.target.path!r}; wait for it to finish, "
                        "or write to another file"
                    ) from None
                # The holder may have finished and removed the lock file between our open and our
                # flock; then we hold a lock on a file nobody else will look at: start again.
                now = self.target.stat(self.lock_name)
                if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._lock_fd = fd
            return

    def release(self) -> None:
        """Drop the lock and remove the lock file (safe to call twice)."""
        if self._lock_fd < 0:
            return
        # Remove before unlocking: a waiter that opened the old file re-checks the name and
        # starts again (see lock()), so two writers never hold locks on different files.
        with contextlib.suppress(OSError):
            os.unlink(self.lock_name, dir_fd=self.target.dir_fd)
        os.close(self._lock_fd)
        self._lock_fd = -1

    # -- the partial output and its journal ------------------------------------------------

    def check_leftovers(self) -> None:
        """Refuse early what :meth:`create` could not clear away: a directory at a partial's name.

        Raises:
            OutputError: naming the directory.
        """
        for name in (self.partial, self.journal):
            found = self.target.stat(name)
            if found is not None and stat.S_ISDIR(found.st_mode):
                raise OutputError(f"{self._cannot}: {self.describe(name)!r} is a directory; Hermes needs that name")

    def had_unfinished(self) -> bool:
        """Whether an earlier, interrupted batch left a journal (a fresh start discards it)."""
        return self.target.stat(self.journal) is not None

    def create(self) -> tuple[TextIO, TextIO]:
        """Start afresh: remove what an earlier run left, create the partial and the journal anew.

        Returns:
            The partial output and the journal, open for writing.

        Raises:
            OutputError: a leftover cannot be removed (e.g. it is a directory), or a file cannot
                be created.
        """
        assert self._lock_fd >= 0, "lock() first"
        for name in (self.journal, self.partial):
            try:
                # unlink removes a link planted there, never what it points to.
                os.unlink(name, dir_fd=self.target.dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise OutputError(
                    f"{self._cannot}: cannot remove the leftover {self.describe(name)!r}: {_explain(exc)}"
                ) from None
        partial = self._open_new(self.partial, 0o666)
        self._remember(partial)
        try:
            journal = self._open_new(self.journal, 0o600)
        except BaseException:
            partial.close()
            raise
        return partial, journal

    def reopen(self) -> tuple[TextIO, TextIO]:
        """Open the partial output and the journal an interrupted batch left, for ``--resume``.

        Returns:
            The partial (read-write, at its start) and the journal (read, then append).

        Raises:
            OutputError: either is missing, a link, not a regular file, or not this user's.
        """
        assert self._lock_fd >= 0, "lock() first"
        journal = self._open_existing(self.journal, os.O_RDWR | os.O_APPEND)
        try:
            partial = self._open_existing(self.partial, os.O_RDWR)
            self._remember(partial)
        except BaseException:
            journal.close()
            raise
        return partial, journal

    def commit(self) -> None:
        """Rename the complete partial to the output and remove the journal.

        Raises:
            OutputError: the output's name is now taken by a directory (or another non-file);
                the partial and the journal are kept for ``--resume``.
        """
        note = (
            f"the records are kept in {self.describe(self.partial)!r}: move what is at {self.target.path!r} "
            "away, then rerun with --resume"
        )
        now = self.target.stat(self.partial)
        if now is None or (now.st_dev, now.st_ino) != self._written:
            # Someone removed our lock by hand and a second writer started over; renaming now would
            # publish its half-written file as ours.
            raise OutputError(f"{self.describe(self.partial)!r} was replaced while the batch ran; nothing was renamed")
        _commit(self.target, self.partial, note)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal, dir_fd=self.target.dir_fd)

    def _remember(self, partial: TextIO) -> None:
        found = os.fstat(partial.fileno())
        self._written = (found.st_dev, found.st_ino)

    def _open_new(self, name: str, mode: int) -> TextIO:
        try:
            fd = os.open(name, os.O_WRONLY | _OPEN_NEW, mode, dir_fd=self.target.dir_fd)
        except OSError as exc:
            raise OutputError(f"{self._cannot}: cannot create {self.describe(name)!r}: {_explain(exc)}") from None
        return os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def _open_existing(self, name: str, flags: int) -> TextIO:
        shown = self.describe(name)
        try:
            fd = os.open(name, flags | _OPEN_EXISTING, dir_fd=self.target.dir_fd)
        except FileNotFoundError:
            raise OutputError(f"nothing to resume: {shown!r} does not exist (run without --resume)") from None
        except OSError as exc:
            raise OutputError(f"cannot resume from {shown!r}: {_explain(exc)}") from None
        try:
            found = os.fstat(fd)
            _check_own_file(found, shown, "cannot resume")
            if found.st_nlink != 1:  # a hard link to some other file of the user's, planted under this name
                raise OutputError(f"cannot resume: {shown!r} has other hard links; remove it")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "r+", encoding="utf-8", newline="\n")
        except BaseException:
            os.close(fd)
            raise


def _check_own_file(found: os.stat_result, shown: str, cannot: str) -> None:
    if kind := _kind(found.st_mode):
        raise OutputError(f"{cannot}: {shown!r} {kind}; remove it")
    if found.st_uid != os.geteuid():
        raise OutputError(
            f"{cannot}: {shown!r} belongs to user id {found.st_uid}, not to you; remove it or write elsewhere"
        )


def _explain(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link; remove it (Hermes never writes through links)"
    if exc.errno == errno.EISDIR:
        return "it is a directory; remove it"
    return exc.strerror or str(exc)
