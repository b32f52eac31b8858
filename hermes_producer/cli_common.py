"""What every `hermes` command shares: the context object, exit codes, errors, profile options."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from hermes_worker.contract import MAX_VALIDATION
from hermes_worker.engine import Profile, ProfileError, load_profile_file, resolve_profile
from hermes_worker.settings import Settings

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass(slots=True)
class Context:
    """What every command needs: settings, the log, and whether to speak."""

    settings: Settings
    log: logging.Logger
    quiet: bool

    def notice(self, message: str) -> None:
        """One line on stderr for people (unless --quiet), and the same in the log."""
        if not self.quiet:
            click.echo(f"hermes: {message}", err=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"hermes: error: {message}", err=True)
    sys.exit(code)


def load_profile(ctx: Context, name: str | None, profile_file: Path | None) -> Profile:
    try:
        custom = load_profile_file(profile_file) if profile_file else {}
        return resolve_profile(name or ctx.settings.profile, custom)
    except ProfileError as exc:
        fail(str(exc))


def profile_options(command: Any) -> Any:
    command = click.option(
        "--profile-file",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="HERMES_PROFILE_FILE",
        help="TOML file with custom profiles ([profiles.NAME] steps = [...]).",
    )(command)
    command = click.option(
        "--max-validation",
        type=click.IntRange(0, MAX_VALIDATION),
        default=None,
        help="Validation rounds after normalizing: check for a fixed point, re-run if needed (default 1).",
    )(command)
    return click.option("--profile", "-p", "profile_name", default=None, help="Profile name (default: prompt).")(
        command
    )


def placement_options(command: Any) -> Any:
    """--isolation, --no-fallback and --wait-for-workers: where chunks may run."""
    command = click.option(
        "--wait-for-workers",
        type=click.FloatRange(min=0),
        default=None,
        metavar="SECONDS",
        help="Wait this long for a live worker before falling back (default 0).",
    )(command)
    command = click.option(
        "--no-fallback/--fallback",
        "no_fallback",
        default=None,
        help="Exit 3 instead of processing in-process when the cluster cannot take the work.",
    )(command)
    return click.option(
        "--isolation",
        type=click.Choice(["auto", "container", "local"]),
        default=None,
        help="container: only in containers; local: no container; auto (default): containers when any.",
    )(command)


pass_context = click.make_pass_decorator(Context)
