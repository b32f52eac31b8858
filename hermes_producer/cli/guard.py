"""What reaches the user when a command does not end normally: one line, never a traceback.

:class:`GuardedGroup` is the ``hermes`` group's class. Its :meth:`~GuardedGroup.main` (what both
the ``hermes`` script and ``python -m hermes_producer`` call) runs the command in click's
non-standalone mode and decides every ending itself:

- usage errors (bad options, values out of range): click's message, exit 2, as before;
- a Hermes error (:class:`~hermes_worker.errors.HermesError`), raised anywhere, by the library
  or by a command's ``fail()``: ``hermes: error: REASON`` (and ``hermes: fix: FIX`` when it has
  one), exit with the error's code: the one place where errors become exit codes;
- Ctrl-C or click's ``Abort`` anywhere, even before a command has set up its own handling:
  ``hermes: interrupted``, exit 130 (click alone would print "Aborted!" and exit 1);
- standard output closed by the reader (``hermes log | head``): silence, exit 141 like any
  command killed by SIGPIPE;
- anything else is a bug in Hermes, not a problem with the input: one line naming the
  exception, the traceback in Hermes' log (``hermes debug --error``), exit 3.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import sys
from typing import Any, NoReturn

import click

from hermes_worker.errors import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_USAGE, HermesError
from hermes_worker.redact import redact

from .. import logs
from ..terminal import printable

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERNAL", "GuardedGroup"]

# Not the input's fault: the same code as an infrastructure error, so scripts that retry or
# page someone on 3 do the same here (README, "Exit codes").
EXIT_INTERNAL = EXIT_INFRA
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a command killed by SIGPIPE


class GuardedGroup(click.Group):
    """A click group whose :meth:`main` never lets a traceback reach the user."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:  # a caller that handles endings itself (tests with CliRunner)
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        _fill_closed_std_fds()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except SystemExit:
            raise
        except (KeyboardInterrupt, click.Abort):
            _say("hermes: interrupted")
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as exc:
            _show_click_error(exc)
        except HermesError as exc:
            _show_error(exc)
        except Exception as exc:  # the last line of defence: everything else is a bug
            _internal_error(exc)
        # Non-standalone mode returns the command's return value (None) or ctx.exit()'s code.
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        # Here, not in main(): click's main() turns a broken pipe into a silent exit 1, which
        # Hermes reserves for "some items failed".
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            _quiet_broken_pipe()


def _fill_closed_std_fds() -> None:
    """Put /dev/null on a standard descriptor the caller closed (``2>&-``).

    Otherwise the next file Hermes opens takes that number, and what Python then writes to
    "stderr" lands in it: notices in the middle of an output file. ``sys.stdin`` and
    ``sys.stdout`` stay None (Python saw them closed), so commands that need them refuse
    (:func:`~hermes_producer.cli_common.std_stream`); messages to a closed stderr are dropped.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - /dev/null now, for the life of the process


def _say(line: str) -> None:
    # If stderr itself is gone, the exit code still tells.
    with contextlib.suppress(Exception):
        click.echo(line, err=True)


def _show_click_error(exc: click.ClickException) -> NoReturn:
    # Click quotes the user's arguments (a file name from a glob can hold escape sequences).
    shown = io.StringIO()
    exc.show(file=shown)
    _say(printable(shown.getvalue().rstrip("\n"), keep_newlines=True))
    # A plain ClickException exits 1 in click, which Hermes reserves for "some items failed".
    sys.exit(exc.exit_code if isinstance(exc, click.UsageError) else EXIT_USAGE)


def _show_error(exc: HermesError) -> NoReturn:
    # Reasons quote ids, file names, values and library errors: secrets masked, control
    # characters shown, never obeyed by the terminal.
    _say(f"hermes: error: {printable(redact(exc.reason), keep_newlines=True)}")
    if exc.fix:
        _say(f"hermes: fix: {printable(redact(exc.fix), keep_newlines=True)}")
    sys.exit(exc.exit_code)


def _quiet_broken_pipe() -> NoReturn:
    # Python would complain again when it flushes stdout at exit: point it at /dev/null.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(EXIT_BROKEN_PIPE)


def _internal_error(exc: BaseException) -> NoReturn:
    logger = logging.getLogger(logs.LOGGER_NAME)
    logged = any(isinstance(h, logging.FileHandler) for h in logger.handlers)
    try:
        logs.event(logger, logging.ERROR, "cli.crashed", f"internal error: {type(exc).__name__}", exc_info=True)
    except Exception:  # a log that cannot be written must not hide the message
        logged = False
    where = "details: hermes debug --error" if logged else "no log to hold the details: check HERMES_HOME"
    message = str(exc).splitlines()[0] if str(exc) else ""
    _say(printable(f"hermes: error: internal error: {type(exc).__name__}: {message[:500]} ({where})"))
    sys.exit(EXIT_INTERNAL)
