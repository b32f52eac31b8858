"""HERMES_HOME is private: directories 0700, files 0600, whatever the umask.

The task store holds prompts and their results, the log says what ran where: on a shared
machine neither is anyone else's business. Hermes creates its directories 0700 and its files
0600 (``os.open`` with an explicit mode: the umask can only take bits away, never add them),
and tightens files of its own that an older version left readable. A directory the operator
chose (``HERMES_HOME`` itself) is not changed behind their back: if others can get into it,
a warning says so and how to fix it. Symbolic links are never followed when tightening, so a
link planted in place of a file cannot make Hermes chmod something else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

__all__ = ["DIR_MODE", "FILE_MODE", "check_dir", "make_dir", "open_file", "open_to_read", "tighten"]

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS = stat.S_IRWXG | stat.S_IRWXO
_warned: set[str] = set()


def make_dir(path: Path, *, ours: bool) -> None:
    """Create ``path`` and any missing parents 0700.

    Args:
        path: the directory.
        ours: the directory is Hermes' own (``HERMES_HOME/log``): an existing one is tightened
            too. Otherwise (``HERMES_HOME``, chosen by the operator) it is left as it is.

    Raises:
        OSError: the directory cannot be created.
    """
    path = Path(path)
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another hermes process was quicker
            directory.mkdir(mode=DIR_MODE)
    if ours:
        tighten(path, DIR_MODE)


def check_dir(path: Path) -> str | None:
    """A warning if people other than the owner can get into ``path`` (printed once a process).

    Returns:
        The warning, or None.
    """
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not info.st_mode & _OTHERS:
        return None
    warning = (
        f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}) and holds prompts: chmod 700 {path}"
    )
    if str(path) not in _warned:
        _warned.add(str(path))
        print(f"hermes: warning: {warning}", file=sys.stderr)
    return warning


def tighten(path: Path, mode: int = FILE_MODE) -> None:
    """Take group and other permissions away from a file or directory of ours, if it has any.

    Never through a symbolic link, never on something that is not a regular file or directory
    (``/dev/null`` stays as it is), never on what another user owns; errors are ignored: a
    file we cannot tighten is still usable.
    """
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        kind_ok = stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)
        if kind_ok and info.st_uid == os.geteuid() and info.st_mode & _OTHERS:
            os.chmod(path, mode)


def open_file(path: Path, flags: int, *, follow_links: bool = False) -> int:
    """``os.open`` that creates the file 0600 and tightens an existing one; returns the descriptor.

    Only a regular file is opened: a FIFO planted in its place would block the open (and every
    ``hermes`` command with it) for ever, a device would swallow or feed anything. A symbolic
    link is not followed unless ``follow_links`` (a link planted in place of the log would make
    Hermes append to whatever it names).

    Raises:
        OSError: the file cannot be opened, is a link (``ELOOP``) or is not a regular file.
    """
    nofollow = 0 if follow_links else os.O_NOFOLLOW
    # O_NONBLOCK: opening a FIFO for writing with no reader returns at once instead of waiting.
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | nofollow, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise OSError(errno.EINVAL, "not a regular file", str(path)) from None
        if exc.errno == errno.ELOOP and not follow_links:
            raise OSError(errno.ELOOP, "a symbolic link, not followed", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    if info.st_uid == os.geteuid() and info.st_mode & _OTHERS:
        with contextlib.suppress(OSError):
            os.fchmod(fd, FILE_MODE)
    return fd


def open_to_read(path: Path) -> BinaryIO | None:
    """``path`` open for reading if it is a regular file (not a link, a FIFO or a device), else None.

    What reads Hermes' own files (``hermes log``) must not hang on a FIFO or read a device
    for ever either.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")
