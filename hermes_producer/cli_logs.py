"""`hermes log` and `hermes debug`: read Hermes' own structured log."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import logs
from .cli_common import Context, pass_context

F = TypeVar("F", bound=Callable[..., Any])


def _show(ctx: Context, count: int, min_level: str, errors_only: bool, follow: bool, as_json: bool) -> None:
    def emit(record: dict[str, object]) -> None:
        click.echo(json.dumps(record, ensure_ascii=False) if as_json else logs.format_record(record))

    # Start following before reading, so nothing written in between is missed.
    tail = logs.follow(ctx.settings.log_dir, "ERROR" if errors_only else min_level) if follow else None
    for record in logs.read(ctx.settings.log_dir, count, min_level, errors_only):
        emit(record)
    if tail is not None:
        try:
            for record in tail:
                emit(record)
        except KeyboardInterrupt:
            pass


def log_options(default_n: int) -> Callable[[F], F]:
    def wrap(command: F) -> F:
        command = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON records.")(command)
        command = click.option("--follow", "-f", is_flag=True, help="Keep printing new records (Ctrl-C stops).")(
            command
        )
        return click.option(
            "-n",
            "count",
            type=click.IntRange(min=0),
            default=default_n,
            show_default=True,
            help="How many of the latest records to show.",
        )(command)

    return wrap


@click.command("log")
@log_options(50)
@pass_context
def log_command(ctx: Context, count: int, follow: bool, as_json: bool) -> None:
    """Show Hermes' log: what ran, where, and what happened (INFO and above).

    \b
    Examples:
      hermes log -n 50
      hermes log -n 50 | grep -i "using local"
      hermes log --follow
    """
    _show(ctx, count, "INFO", False, follow, as_json)


@click.command()
@log_options(100)
@click.option("--error", "errors_only", is_flag=True, help="Only errors, with their tracebacks.")
@pass_context
def debug(ctx: Context, count: int, follow: bool, as_json: bool, errors_only: bool) -> None:
    """Show everything in Hermes' log, debug records included.

    \b
    Examples:
      hermes debug -n 100
      hermes debug --error -n 100 | grep -i docker
    """
    _show(ctx, count, "DEBUG", errors_only, follow, as_json)
