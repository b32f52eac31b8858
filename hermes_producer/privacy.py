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
import os
import stat
import sys
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "check_dir", "make_dir", "open_file", "tighten"]

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


def open_file(path: Path, flags: int) -> int:
    """``os.open`` that creates the file 0600 and tightens an existing one; returns the descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    with contextlib.suppress(OSError):
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & _OTHERS:
            os.fchmod(fd, FILE_MODE)
    return fd
