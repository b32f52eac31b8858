"""The options every command that runs prompts shares, each group turned into one typed value.

Like rq's ``pass_cli_config``: a decorator adds a group of options to a command and hands the
command the value they make instead of the raw parameters:

- :func:`with_profile` gives ``profile`` (:class:`~hermes_worker.engine.Profile`) from
  ``--profile`` and ``--profile-file``;
- :func:`with_chunk_options` gives ``chunk``
  (:class:`~hermes_worker.chunk_options.ChunkOptions`): its flags are derived from the
  declarations of the options themselves, so a new chunk option gets its flag here for free;
- :func:`with_placement` gives ``placement`` (:class:`~hermes_producer.dispatch.Placement`).

A flag left out takes its ``HERMES_*`` setting. Numbers are checked like their variables (same
parser, bounds and message).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from hermes_worker.chunk_options import ChunkOptions, declarations
from hermes_worker.engine import Profile, load_profile_file, resolve_profile
from hermes_worker.settings import LIMITS, float_setting, int_setting, option_help

from ..batch import chunk_options
from ..context import Context
from ..dispatch import Placement
from ..terminal import printable

__all__ = [
    "SettingNumber",
    "chunk_options",
    "load_profile",
    "setting_number",
    "with_chunk_options",
    "with_lazy_profile",
    "with_placement",
    "with_profile",
]


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


def _option_group(
    target: str, options: list[Callable[[Any], Any]], names: list[str], make: Callable[[Context, dict[str, Any]], Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator that adds ``options`` to a command and passes it ``target=make(ctx, raw values)``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def with_value(*args: Any, **kwargs: Any) -> Any:
            raw = {name: kwargs.pop(name) for name in names}
            context = click.get_current_context().find_object(Context)
            assert context is not None, "a command of the hermes group"
            kwargs[target] = make(context, raw)
            return command(*args, **kwargs)

        for option in reversed(options):
            with_value = option(with_value)
        return with_value

    return decorate


def with_profile(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--profile`` and ``--profile-file``, passed as ``profile`` (a ProfileError is exit 2)."""
    return _profile_options(lazy=False)(command)


def with_lazy_profile(command: Callable[..., Any]) -> Callable[..., Any]:
    """As :func:`with_profile`, but ``profile`` is a function that loads it: for a command that
    needs a profile for only some of what it does (``hermes task --list`` must not fail on a
    profile it does not use)."""
    return _profile_options(lazy=True)(command)


def _profile_options(lazy: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    options = [
        click.option("--profile", "-p", "profile_name", default=None, help=option_help("HERMES_PROFILE")),
        click.option(
            "--profile-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help=option_help("HERMES_PROFILE_FILE"),
        ),
    ]

    def make(ctx: Context, raw: dict[str, Any]) -> Any:
        load = functools.partial(load_profile, ctx, raw["profile_name"], raw["profile_file"])
        return load if lazy else load()

    return _option_group("profile", options, ["profile_name", "profile_file"], make)


def with_chunk_options(only: Iterable[str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The flags of the chunk options (every one, or those named in ``only``), passed as ``chunk``.

    Each flag comes from its option's declaration (hermes_worker.chunk_options): a number takes
    its setting's parser and help, a switch its own help. Left out, a number is its setting's
    value and a switch is off.
    """
    chosen = [(name, declared) for name, declared in declarations() if declared.flag and (only is None or name in only)]
    options = []
    for name, declared in chosen:
        assert declared.flag is not None
        if declared.setting is None:
            options.append(click.option(declared.flag, name, is_flag=True, default=False, help=declared.help))
        else:
            help_text = option_help(declared.setting)
            options.append(click.option(declared.flag, name, type=setting_number(declared.setting), help=help_text))

    def make(ctx: Context, raw: dict[str, Any]) -> ChunkOptions:
        return chunk_options(ctx.settings, **{name: value for name, value in raw.items() if value is not None})

    return _option_group("chunk", options, [name for name, _ in chosen], make)


def with_placement(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--isolation``, ``--no-fallback`` and ``--wait-for-workers``: where chunks may run, passed as ``placement``."""
    options = [
        click.option(
            "--isolation",
            type=click.Choice(["auto", "container", "local"]),
            default=None,
            help=option_help("HERMES_ISOLATION"),
        ),
        click.option("--no-fallback/--fallback", "no_fallback", default=None, help=option_help("HERMES_NO_FALLBACK")),
        click.option(
            "--wait-for-workers",
            type=setting_number("HERMES_WAIT_FOR_WORKERS"),
            default=None,
            metavar="SECONDS",
            help=option_help("HERMES_WAIT_FOR_WORKERS"),
        ),
    ]
    make = lambda ctx, raw: Placement(raw["isolation"], raw["no_fallback"], raw["wait_for_workers"])  # noqa: E731
    return _option_group("placement", options, ["isolation", "no_fallback", "wait_for_workers"], make)(command)
