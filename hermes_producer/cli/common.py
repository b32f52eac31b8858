"""What every `hermes` command shares: the context object, exit codes, errors, standard streams.

The options shared by the commands that run prompts are in :mod:`.options`.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, NoReturn

import click

from hermes_worker.errors import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_ITEMS_FAILED, EXIT_OK, EXIT_USAGE, HermesError

from ..context import Context

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


class CommandError(HermesError):
    """A command refuses to go on: the reason is for the user, the exit code the command's."""


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """End the command with ``hermes: error: MESSAGE`` and exit ``code`` (2 unless told).

    It raises, like every Hermes error: the entry point (:mod:`.guard`) prints and exits, after
    the command's ``with`` blocks have closed what they opened.
    """
    raise CommandError(message, exit_code=code)


def std_stream(name: str) -> Any:
    """``sys.stdin`` or ``sys.stdout``, or exit 2 if the caller closed it (``<&-``, ``>&-``).

    Reading a closed standard input as empty, or writing records into nothing, would look
    like success.
    """
    stream = getattr(sys, name)
    if stream is None:
        fail(f"standard {'input' if name == 'stdin' else 'output'} is closed")
    return stream


def read_prompt(value: str, limit: int, name: str = "TEXT") -> str:
    """The text of a prompt argument (``name``: TEXT, or --prompt): the value itself, or
    standard input for ``-``.

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
            fail(f"{name} is not valid Unicode text: a lone surrogate at offset {len(head)}")
        fail(f"{name} is not valid UTF-8: byte 0x{byte:02x} at offset {len(head)}")
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


pass_context = click.make_pass_decorator(Context)
