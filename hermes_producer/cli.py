"""The ``hermes`` command line: thin commands over the batch pipeline, store and log.

Exit codes: 0 all ok, 1 some items failed, 2 usage error, 3 infrastructure or internal error,
130 interrupted. Commands let Hermes errors (hermes_worker.errors) through, each with its exit
code; guard.py prints them, and no traceback ever reaches the user.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from hermes_worker import __version__
from hermes_worker.engine import BUILTIN_PROFILES, STEPS
from hermes_worker.settings import Settings
from hermes_worker.wire import Item

from . import logs
from .batch import BatchOptions, chunk_requests
from .cli_common import (
    EXIT_ITEMS_FAILED,
    Context,
    fail,
    load_profile,
    pass_context,
    placement_options,
    profile_options,
    read_prompt,
)
from .dispatch import Placement, choose_executor
from .guard import GuardedGroup
from .terminal import printable, printable_json


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="hermes")
@click.option("--quiet", "-q", is_flag=True, help="No notices or summaries on stderr (errors still show).")
@click.pass_context
def main(click_ctx: click.Context, quiet: bool) -> None:
    """Hermes cleans LLM prompts safely and reproducibly.

    \b
    Examples:
      hermes run --prompt 'The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.'
      hermes batch examples/prompts.jsonl -o cleaned.jsonl
      hermes profiles
    """
    settings = Settings.from_env()  # a SettingsError names the variable (exit 2)
    log = logs.configure(settings.log_dir, settings.log_level)
    logs.event(
        log, logging.DEBUG, "cli.invoked", "command line", argv=logs.command_line(sys.argv[1:], click_ctx.command)
    )
    click_ctx.obj = Context(settings=settings, log=log, quiet=quiet)


@main.command()
@click.option("--prompt", "prompt", required=True, help="The prompt text; '-' reads it from standard input.")
@profile_options
@placement_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, changed, validation, provenance.")
@click.option("--explain", is_flag=True, help="Say which steps changed the text, in order.")
@pass_context
def run(
    ctx: Context,
    prompt: str,
    profile_name: str | None,
    profile_file: Path | None,
    max_validation: int | None,
    isolation: str | None,
    no_fallback: bool | None,
    wait_for_workers: float | None,
    as_json: bool,
    explain: bool,
) -> None:
    """Normalize one prompt and print it (on a worker when the cluster has one, else in-process).

    \b
    Examples:
      hermes run --prompt 'ﬁrst “quoted” line  '
      echo 'cafÃ©' | hermes run --prompt - --json --explain
    """
    profile = load_profile(ctx, profile_name, profile_file)
    prompt = read_prompt(prompt, ctx.settings.max_prompt_bytes)
    options = BatchOptions(
        profile=profile,
        input_format="text",
        max_validation=ctx.settings.max_validation if max_validation is None else max_validation,
        explain=explain,
        max_prompt_bytes=ctx.settings.max_prompt_bytes,
        item_time_budget=ctx.settings.item_time_budget,
    )
    executor = choose_executor(ctx, Placement(isolation, no_fallback, wait_for_workers), processes=1)
    payload = next(chunk_requests(iter([Item(1, 1, prompt)]), options))
    with executor:  # an ExecutorError: exit 3 naming what failed
        result = next(iter(executor.map_ordered([payload])))
    executor.finish()
    record = json.loads(result.record_lines()[0])
    logs.event(ctx.log, logging.DEBUG, "run.finished", "one prompt", ok="error" not in record, profile=profile.name)
    if "error" in record:
        fail(f"{record['error']['code']}: {record['error']['message']}", EXIT_ITEMS_FAILED)
    if as_json:
        record.pop("id", None)
        record.pop("line", None)
        click.echo(printable_json(record, indent=2))
        return
    if sys.stdout.isatty():  # the text came from input: shown, never obeyed
        click.echo(printable(record["text"], keep_newlines=True))
    else:  # the exact text for a pipe or file (click would strip what looks like colour codes)
        click.echo(record["text"], color=True)
    if explain:
        for entry in record.get("explain", []):
            detail = f" ({', '.join(entry['detail'])})" if entry.get("detail") else ""
            click.echo(f"explain: round {entry['round']}: {entry['step']}{detail}", err=True)


@main.command()
@pass_context
def profiles(ctx: Context) -> None:
    """List the built-in profiles and every step.

    \b
    Example:
      hermes profiles
    """
    for profile in BUILTIN_PROFILES.values():
        click.echo(f"{profile.name:10} {' > '.join(profile.steps)}")
        click.echo(f"{'':10} {profile.description}")
    click.echo("\nsteps:")
    for step in STEPS.values():
        click.echo(f"  {step.name:22} {step.summary}")


def _register() -> None:
    from hermes_worker.image_cli import image
    from hermes_worker.worker_cli import worker

    from .cli_batch import batch
    from .cli_cluster import doctor, metrics, status, workers
    from .cli_flower import flower
    from .cli_logs import debug, log_command
    from .cli_tasks import history, queue, task

    for command in (batch, task, queue, history, log_command, debug, worker, workers, status, doctor, flower, metrics):
        main.add_command(command)
    main.add_command(image)


_register()
