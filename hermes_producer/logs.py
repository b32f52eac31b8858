"""Hermes' own structured log: one JSON object a line in ``log_dir/hermes.log``, rotated.

Written through the standard ``logging`` module (logger ``hermes`` and its children), read
back by ``hermes log`` and ``hermes debug``. A line looks like::

    {"ts": "2026-11-27T08:00:00.123Z", "level": "INFO", "event": "batch.finished",
     "message": "117869 prompts", "pid": 4242, "ok": 117868, "failed": 1}

Several ``hermes`` processes may write the same file; each reopens it when another one has
rotated it, so nobody keeps writing into ``hermes.log.1``.

What the log holds: what ran (commands with their option names, the values only where their
type makes them harmless: numbers, choices, paths), where, how it ended, counts, chunk and
line numbers, error codes, and the reasons infrastructure gave (Redis, Docker). Never a prompt,
an id or an item's error message (those quote input: they are in the output records), never a
secret: every record is redacted when written (:func:`hermes_worker.redact.redact`: message,
every field, the traceback) and again when read, for logs written before that. The directory
is 0700 and the files 0600 (:mod:`.privacy`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from io import TextIOWrapper
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any, BinaryIO

import click

from hermes_worker.redact import redact, redact_data
from hermes_worker.timestamps import utc_iso

from . import privacy

__all__ = ["LOGGER_NAME", "LOG_FILE", "command_line", "configure", "event", "follow", "format_record", "read"]

LOGGER_NAME = "hermes"
LOG_FILE = "hermes.log"
MAX_BYTES = 5 * 1024 * 1024
BACKUP_COUNT = 5
_BLOCK = 64 * 1024
_RESERVED = ("ts", "level", "event", "message", "pid")


# -- writing -------------------------------------------------------------------------------


def configure(
    log_dir: Path, level: str = "DEBUG", *, max_bytes: int = MAX_BYTES, backup_count: int = BACKUP_COUNT
) -> logging.Logger:
    """Send the ``hermes`` logger to ``log_dir/hermes.log``, rotated at ``max_bytes``.

    Calling it again with the same arguments changes nothing; with other arguments it replaces
    the previous file handler. The logger never propagates to the root logger, so libraries'
    logging setup cannot duplicate or swallow Hermes' lines.

    If the directory cannot be created or the file opened, Hermes runs without a log: one
    warning goes to stderr, and nothing raises.

    Returns:
        The ``hermes`` logger.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    path = Path(log_dir) / LOG_FILE
    wanted = (str(path.absolute()), max_bytes, backup_count)
    ours = [h for h in logger.handlers if getattr(h, "hermes_config", None) is not None]
    if any(getattr(h, "hermes_config", None) == wanted for h in ours):
        return logger
    for handler in ours:
        logger.removeHandler(handler)
        handler.close()

    new: logging.Handler
    try:
        privacy.make_dir(path.parent, ours=True)
        for old in _log_files(path.parent)[1:]:  # rotated files an older Hermes left readable
            privacy.tighten(old)
        new = _Handler(path, max_bytes=max_bytes, backup_count=backup_count)
    except OSError as exc:
        print(f"hermes: warning: cannot write the log in {path.parent} ({exc}); running without a log", file=sys.stderr)
        # Without any handler, logging would fall back to printing warnings on stderr.
        new = logging.NullHandler()
    # Marks the handler as ours, and what it was configured with, for the next call.
    new.hermes_config = wanted  # type: ignore[union-attr]
    new.setFormatter(_JsonFormatter())
    logger.addHandler(new)
    return logger


def event(
    logger: logging.Logger, level: int, event: str, message: str, *, exc_info: bool = False, **fields: Any
) -> None:
    """Log one structured event.

    Args:
        logger: the ``hermes`` logger or one of its children.
        level: a ``logging`` level, e.g. ``logging.INFO``.
        event: a dotted name scripts can match on, e.g. ``batch.finished``.
        message: a sentence for humans.
        exc_info: add the exception being handled as a ``traceback`` field.
        **fields: extra fields; values JSON cannot hold are written as their ``repr()``.
    """
    logger.log(
        level, "%s", message, exc_info=exc_info, stacklevel=2, extra={"hermes_event": event, "hermes_fields": fields}
    )


def command_line(argv: list[str], command: click.Command) -> list[str]:
    """A command line as the log may hold it: commands and option names, values only by size.

    An argument can hold a prompt (``hermes run --prompt ...``) or a secret, so each value is
    replaced by ``<N chars>``, except where the option's type makes it harmless: a choice, a
    number, a path (the operator's own file names say what ran). Unknown options are replaced
    whole: a mistyped option may be a pasted secret.

    Example:
        >>> @click.command()
        ... @click.option("--prompt")
        ... @click.option("--isolation", type=click.Choice(["auto", "local"]))
        ... @click.option("--json", is_flag=True)
        ... def run(prompt, isolation, json): pass
        >>> command_line(["--prompt", "sk-LIVE-SECRET-123", "--isolation=local", "--json", "--tok=x"], run)
        ['--prompt', '<18 chars>', '--isolation=local', '--json', '<7 chars>']
    """
    try:
        return _command_line(argv, command)
    except Exception:  # whatever the argv, the log line must not fail the command
        return [f"<{len(argv)} arguments>"]


def _command_line(argv: list[str], command: click.Command) -> list[str]:
    shape: list[str] = []
    current: click.Command = command
    positional: list[click.Argument] = []
    options_done = False
    pending: click.Parameter | None = None  # an option whose value comes next
    for token in argv:
        options = {opt: param for param in current.params if isinstance(param, click.Option) for opt in param.opts} | {
            opt: param for param in current.params if isinstance(param, click.Option) for opt in param.secondary_opts
        }
        if pending is not None:
            shape.append(_value(pending, token))
            pending = None
        elif not options_done and token == "--":
            shape.append(token)
            options_done = True
        elif not options_done and token.startswith("-") and len(token) > 1:
            name, eq, value = token.partition("=")
            option = options.get(name)
            attached = options.get(token[:2]) if option is None and not token.startswith("--") else None
            if token in ("-h", "--help"):
                shape.append(token)
            elif option is not None:
                takes_value = not (option.is_flag or option.count)
                shape.append(f"{name}={_value(option, value)}" if eq else name)
                pending = option if takes_value and not eq else None
            elif attached is not None and not (attached.is_flag or attached.count):
                shape.append(token[:2] + _value(attached, token[2:]))  # -pVALUE
            else:
                shape.append(f"<{len(token)} chars>")
        elif isinstance(current, click.Group) and not positional and token in current.commands:
            shape.append(token)
            current = current.commands[token]
            positional = [p for p in current.params if isinstance(p, click.Argument)]
        else:
            argument = positional[0] if positional else None
            if argument is not None and argument.nargs != -1:
                positional = positional[1:]
            shape.append(_value(argument, token) if argument is not None else f"<{len(token)} chars>")
    return shape


def _value(param: click.Parameter, value: str) -> str:
    """A value as the log may hold it: kept when its type makes it harmless, else its size."""
    kind = param.type
    raw: Any = value  # click's stubs type convert() by what each type accepts besides str
    # A parameter type may declare itself harmless too (cli.options.SettingNumber: a bounded number).
    harmless = getattr(kind, "loggable", False)
    if harmless or isinstance(kind, click.Path | click.Choice | click.types.IntParamType | click.types.FloatParamType):
        try:
            kind.convert(raw, param, None)
        except click.BadParameter:
            pass
        else:
            return value
    return f"<{len(value)} chars>"


class _JsonFormatter(logging.Formatter):
    """One JSON object a line; secrets masked in the message, every field and the traceback.

    Callers are meant never to log a secret; this is the defence in depth for when a library's
    exception text quotes a URL with its password.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": utc_iso(record.created),
            "level": record.levelname,
            # Plain logger.info() calls still get an event: the logger's name.
            "event": getattr(record, "hermes_event", record.name),
            "message": redact(record.getMessage()),
            "pid": record.process,
        }
        fields = {
            # A field may not overwrite the fixed keys readers rely on.
            f"{key}_" if key in _RESERVED else key: _json_safe(value)
            for key, value in getattr(record, "hermes_fields", {}).items()
        }
        line.update(redact_data(fields))
        if record.exc_info and record.exc_info[0] is not None:
            line["traceback"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, allow_nan=False)


class _Handler(RotatingFileHandler):
    """A rotating handler that follows the file when another process has rotated it."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        # backslashreplace: a file name or argument that was not UTF-8 (surrogateescape) is written
        # as \udcff, which JSON reads back as the same text, instead of failing the whole line.
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", errors="backslashreplace"
        )
        self._failed = False

    def _open(self) -> TextIOWrapper:
        # 0600 whatever the umask; rotation renames the file, so rotated files keep it.
        fd = privacy.open_file(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is not None:
            try:
                now = os.stat(self.baseFilename)
                mine = os.fstat(self.stream.fileno())
                replaced = (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)
            except (OSError, ValueError):  # gone, or closed under us
                replaced = True
            if replaced:
                self.stream.close()
                self.stream = None  # the base class reopens it
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # One warning for a full disk or a vanished directory, not a traceback per line.
        if not self._failed:
            self._failed = True
            print(f"hermes: warning: cannot write the log {self.baseFilename} ({sys.exc_info()[1]})", file=sys.stderr)


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _json_safe(item) for key, item in value.items()}
    return repr(value)


# -- reading -------------------------------------------------------------------------------


def read(log_dir: Path, n: int, min_level: str = "INFO", errors_only: bool = False) -> list[dict[str, Any]]:
    """The last ``n`` records at ``min_level`` or above (ERROR or above if ``errors_only``).

    Reads ``hermes.log`` and then its rotated files backwards, a block at a time, stopping as
    soon as it has ``n`` records: a large log is never loaded whole. Lines that are not JSON
    objects (a torn write, a stray edit) are skipped.

    Returns:
        The records, oldest first.
    """
    keep = _level_filter(min_level, errors_only)
    found: list[dict[str, Any]] = []
    if n <= 0:
        return found
    for path in _log_files(Path(log_dir)):
        for line in _lines_backwards(path):
            record = _parse(line)
            if record is not None and keep(record):
                found.append(redact_data(record))  # a log written before redaction, or by hand
                if len(found) == n:
                    return found[::-1]
    return found[::-1]


def follow(
    log_dir: Path, min_level: str = "INFO", poll_s: float = 0.25, stop: Callable[[], bool] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield the records written from now on, like ``tail -F``.

    The starting point is fixed when ``follow`` is called, not when iteration begins, so
    ``read()`` followed by ``follow()`` misses nothing written in between iterations. It keeps
    going when the file is rotated (replaced) or truncated, and when it does not exist yet.

    Args:
        log_dir: the log directory.
        min_level: the lowest level yielded.
        poll_s: how long to wait when there is nothing new.
        stop: called between polls; iteration ends when it returns True. None: never ends.
    """
    keep = _level_filter(min_level, errors_only=False)
    path = Path(log_dir) / LOG_FILE
    handle: BinaryIO | None
    handle = privacy.open_to_read(path)
    if handle is not None:
        handle.seek(0, os.SEEK_END)
    return _follow(path, handle, keep, poll_s, stop or (lambda: False))


def _follow(
    path: Path,
    handle: BinaryIO | None,
    keep: Callable[[dict[str, Any]], bool],
    poll_s: float,
    stop: Callable[[], bool],
) -> Iterator[dict[str, Any]]:
    pending = b""  # a line whose newline has not been written yet

    def drain() -> Iterator[dict[str, Any]]:
        nonlocal pending
        assert handle is not None
        lines = (pending + handle.read()).split(b"\n")
        pending = lines.pop()
        for line in lines:
            record = _parse(line)
            if record is not None and keep(record):
                yield redact_data(record)

    try:
        while not stop():
            if handle is not None:
                before = handle.tell()
                yield from drain()
                if handle.tell() != before:
                    continue
            try:
                now = os.stat(path)
            except OSError:
                now = None
            if now is not None and handle is None:
                handle, pending = _reopen(path, None), b""
                if handle is not None:
                    continue
            if now is not None and handle is not None:
                mine = os.fstat(handle.fileno())
                if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                    # Rotated: the writer closed the old file before renaming it, so what we
                    # just drained is all of it.
                    handle, pending = _reopen(path, handle), b""
                    continue
                if now.st_size < handle.tell():  # truncated in place
                    handle.seek(0)
                    pending = b""
                    continue
            time.sleep(poll_s)
    finally:
        if handle is not None:
            handle.close()


def _reopen(path: Path, old: BinaryIO | None) -> BinaryIO | None:
    if old is not None:
        old.close()
    return privacy.open_to_read(path)


def format_record(record: dict[str, Any]) -> str:
    """One record as a line for humans; a traceback follows on indented lines.

    Example:
        >>> print(format_record({"ts": "2026-11-27T08:00:00.123Z", "level": "INFO",
        ...     "event": "batch.finished", "message": "done", "pid": 7, "ok": 3, "file": "a b.jsonl"}))
        2026-11-27T08:00:00.123Z INFO  batch.finished  done  ok=3 file="a b.jsonl"
    """
    head = (
        f"{record.get('ts', '?')} {record.get('level', '?'):<5} {record.get('event', '?')}  {record.get('message', '')}"
    )
    extras = " ".join(
        f"{key}={_show(value)}" for key, value in record.items() if key not in (*_RESERVED, "traceback", "stack")
    )
    text = f"{head}  {extras}" if extras else head.rstrip()
    for key in ("traceback", "stack"):
        if isinstance(record.get(key), str):
            text += "\n" + "\n".join("    " + line for line in record[key].rstrip("\n").splitlines())
    return text


def _show(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _level_filter(min_level: str, errors_only: bool) -> Callable[[dict[str, Any]], bool]:
    threshold = logging.getLevelName(min_level.upper())
    if not isinstance(threshold, int):
        raise ValueError(f"unknown log level {min_level!r}")
    if errors_only:
        threshold = max(threshold, logging.ERROR)

    def keep(record: dict[str, Any]) -> bool:
        level = logging.getLevelName(str(record.get("level", "")))
        return isinstance(level, int) and level >= threshold

    return keep


def _log_files(log_dir: Path) -> list[Path]:
    """``hermes.log`` then ``hermes.log.1``, ``.2``, ...: newest first."""
    rotated = []
    for path in log_dir.glob(f"{LOG_FILE}.*"):
        suffix = path.name[len(LOG_FILE) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), path))
    return [log_dir / LOG_FILE, *(path for _, path in sorted(rotated))]


def _lines_backwards(path: Path, block: int = _BLOCK) -> Iterator[bytes]:
    """The lines of a file, last first, reading ``block`` bytes at a time from the end."""
    handle = privacy.open_to_read(path)
    if handle is None:
        return
    with handle:
        position = handle.seek(0, os.SEEK_END)
        carry = b""  # the start of a line whose beginning lies in an earlier block
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            lines = (handle.read(step) + carry).split(b"\n")
            carry = lines.pop(0)
            yield from reversed(lines)
        yield carry


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, nested too deeply
        return None
    return record if isinstance(record, dict) else None
