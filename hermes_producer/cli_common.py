"""What every `hermes` command shares: the context object, exit codes, errors, profile options."""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from hermes_worker.engine import Profile, load_profile_file, resolve_profile
from hermes_worker.errors import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_ITEMS_FAILED, EXIT_OK, EXIT_USAGE, HermesError
from hermes_worker.redact import redact
from hermes_worker.settings import LIMITS, Settings, float_setting, int_setting, option_help

from .terminal import printable

__all__ = [
    "EXIT_INFRA",
    "EXIT_INTERRUPTED",
    "EXIT_ITEMS_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SQLITE_MAX_INT",
    "CommandError",
    "Context",
    "fail",
]

# The largest integer SQLite stores: task ids and counts that reach the task store.
SQLITE_MAX_INT = 2**63 - 1


@dataclass(slots=True)
class Context:
    """What every command needs: settings, the log, and whether to speak."""

    settings: Settings
    log: logging.Logger
    quiet: bool

    def notice(self, message: str) -> None:
        """One line on stderr for people (unless --quiet), and the same in the log."""
        if not self.quiet:
            click.echo(f"hermes: {printable(redact(message), keep_newlines=True)}", err=True)


class CommandError(HermesError):
    """A command refuses to go on: the reason is for the user, the exit code the command's."""


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """End the command with ``hermes: error: MESSAGE`` and exit ``code`` (2 unless told).

    It raises, like every Hermes error: the entry point (:mod:`.guard`) prints and exits, after
    the command's ``with`` blocks have closed what they opened.
    """
    raise CommandError(message, exit_code=code)


class SettingNumber(click.ParamType[Any]):
    """A number option checked like its ``HERMES_*`` variable: same parser, bounds and message.

    Unlike ``click.FloatRange``, NaN and infinity are refused (``nan`` compares false with every
    bound, so it passes any range check and then loops or overflows wherever it is used).
    """

    loggable = True  # a number within bounds: the log may keep it (logs.command_line)

    def __init__(self, setting: str, parse: Any) -> None:
        self.setting = setting
        self.parse = parse
        self.name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):  # a default, already a number
            return value
        try:
            return self.parse(value.strip())
        except ValueError as exc:
            self.fail(f"{printable(repr(value))} {exc}", param, ctx)


def setting_number(setting: str) -> SettingNumber:
    """The parameter type for an option that overrides the numeric setting ``setting``."""
    fractional = isinstance(LIMITS[setting][0], float)
    return SettingNumber(setting, float_setting(setting) if fractional else int_setting(setting))


def std_stream(name: str) -> Any:
    """``sys.stdin`` or ``sys.stdout``, or exit 2 if the caller closed it (``<&-``, ``>&-``).

    Reading a closed standard input as empty, or writing records into nothing, would look
    like success.
    """
    stream = getattr(sys, name)
    if stream is None:
        fail(f"standard {'input' if name == 'stdin' else 'output'} is closed")
    return stream


def read_prompt(value: str, limit: int) -> str:
    """The text of a ``--prompt`` option: the value itself, or standard input for ``-``.

    Exits 2 if it is not UTF-8 (an argument's undecodable bytes arrive as lone surrogates,
    which SQLite and JSON would then refuse with a traceback), or if standard input holds more
    than ``limit`` bytes (read no further: ``--prompt - < /dev/zero`` must not eat the memory).
    """
    if value == "-":
        data: bytes = std_stream("stdin").buffer.read(limit + 1)
        if len(data) > limit:
            fail(f"the prompt on standard input is larger than {limit:,} bytes (HERMES_MAX_PROMPT_BYTES)")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            fail(f"the prompt on standard input is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        head = value[: exc.start].encode("utf-8", "surrogateescape")
        try:
            byte = value[exc.start].encode("utf-8", "surrogateescape")[0]
        except UnicodeEncodeError:  # a surrogate that is not an undecodable byte
            fail(f"--prompt is not valid Unicode text: a lone surrogate at offset {len(head)}")
        fail(f"--prompt is not valid UTF-8: byte 0x{byte:02x} at offset {len(head)}")
    return value


def check_listen_address(option: str, address: str, port: int) -> None:
    """Exit 2 naming ``address`` unless it is an address (or host name) this machine can resolve.

    Checked before a server starts (or Flower is exec'd), so a typo is a usage error, not a
    traceback from the socket layer or from Flower's own process.
    """
    try:
        socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        fail(f"{option} {address!r} is not an address to listen on: {getattr(exc, 'strerror', None) or exc}")


def load_profile(ctx: Context, name: str | None, profile_file: Path | None) -> Profile:
    """The profile ``name`` (default: HERMES_PROFILE), among the built-ins and those of
    ``profile_file`` (default: HERMES_PROFILE_FILE).

    Raises:
        ProfileError: naming what is wrong (exit 2).
    """
    profile_file = profile_file or ctx.settings.profile_file
    custom = load_profile_file(profile_file) if profile_file else {}
    # An empty --profile is a mistake (an unset variable in a script), not a request for the default.
    return resolve_profile(ctx.settings.profile if name is None else name, custom)


def profile_options(command: Any) -> Any:
    command = click.option(
        "--profile-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help=option_help("HERMES_PROFILE_FILE"),
    )(command)
    command = click.option(
        "--max-validation",
        type=setting_number("HERMES_MAX_VALIDATION"),
        default=None,
        help=option_help("HERMES_MAX_VALIDATION"),
    )(command)
    return click.option("--profile", "-p", "profile_name", default=None, help=option_help("HERMES_PROFILE"))(command)


def placement_options(command: Any) -> Any:
    """--isolation, --no-fallback and --wait-for-workers: where chunks may run."""
    command = click.option(
        "--wait-for-workers",
        type=setting_number("HERMES_WAIT_FOR_WORKERS"),
        default=None,
        metavar="SECONDS",
        help=option_help("HERMES_WAIT_FOR_WORKERS"),
    )(command)
    command = click.option(
        "--no-fallback/--fallback",
        "no_fallback",
        default=None,
        help=option_help("HERMES_NO_FALLBACK"),
    )(command)
    return click.option(
        "--isolation",
        type=click.Choice(["auto", "container", "local"]),
        default=None,
        help=option_help("HERMES_ISOLATION"),
    )(command)


pass_context = click.make_pass_decorator(Context)
