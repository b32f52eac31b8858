"""The ``hermes`` command line: thin commands over the batch pipeline, store and log.

Exit codes: 0 all ok, 1 some items failed, 2 usage error, 3 infrastructure or internal error,
130 interrupted. Commands let Hermes errors (hermes_worker.errors) through, each with its exit
code; guard.py prints them, and no traceback ever reaches the user.

One module a group of commands (run.py, batch.py, tasks.py, cluster.py, log_commands.py, flower.py; the
worker and image commands live with the worker, in hermes_worker); common.py is what they all
share, options.py the option groups of the commands that run prompts.
"""

from __future__ import annotations

import logging
import sys

import click

from hermes_worker import __version__
from hermes_worker.redact import url_secrets
from hermes_worker.settings import Settings, SettingsError

from .. import logs
from .common import Context, fail
from .guard import GuardedGroup

__all__ = ["main"]


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="hermes")
@click.option("--quiet", "-q", is_flag=True, help="No notices or summaries on stderr (errors still show).")
@click.option(
    "--broker",
    metavar="URL",
    help="The broker, for this command (HERMES_BROKER_URL); one with a password is refused: every user "
    "of the machine can read a command line, so put that one in HERMES_BROKER_URL.",
)
@click.pass_context
def main(click_ctx: click.Context, quiet: bool, broker: str | None) -> None:
    """Hermes cleans LLM prompts safely and reproducibly.

    \b
    Examples:
      hermes run 'The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.'
      hermes batch examples/prompts.jsonl -o cleaned.jsonl
      hermes --broker redis://10.0.0.5:6379/0 workers
      hermes profiles
    """
    settings = _settings(broker)
    log = logs.configure(settings.log_dir, settings.log_level)
    logs.event(
        log, logging.DEBUG, "cli.invoked", "command line", argv=logs.command_line(sys.argv[1:], click_ctx.command)
    )
    click_ctx.obj = Context(settings=settings, log=log, quiet=quiet)


def _settings(broker: str | None) -> Settings:
    """The settings, with ``--broker`` read as HERMES_BROKER_URL (exit 2 naming whichever is wrong)."""
    if broker is None:
        return Settings.from_env()
    if not broker.strip():  # an unset shell variable, not a wish for the default broker
        fail("--broker is empty: give the broker's URL, or leave the option out")
    if url_secrets(broker):
        fail("--broker carries a password, which every user of this machine can read (ps): set HERMES_BROKER_URL")
    try:
        return Settings.from_env(given={"HERMES_BROKER_URL": broker})
    except SettingsError as exc:
        if exc.reason.startswith("HERMES_BROKER_URL"):  # the value came from --broker: say so
            raise SettingsError("--broker" + exc.reason.removeprefix("HERMES_BROKER_URL")) from None
        raise


def _register() -> None:
    from hermes_worker.image_cli import image
    from hermes_worker.worker_cli import worker

    from .batch import batch
    from .cluster import doctor, metrics, status, workers
    from .flower import flower
    from .log_commands import debug, log_command
    from .run import profiles, run
    from .tasks import history, queue, task

    commands = (run, profiles, batch, task, queue, history, log_command, debug, worker, workers, status, doctor, flower)
    for command in (*commands, metrics, image):
        main.add_command(command)


_register()
