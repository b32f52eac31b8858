"""`hermes run` (one prompt) and `hermes profiles` (what the engine can do)."""

from __future__ import annotations

import json
import logging
import sys

import click

from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import BUILTIN_PROFILES, STEPS, Profile
from hermes_worker.wire import Item

from .. import logs
from ..batch import BatchOptions, chunk_requests
from ..dispatch import Placement, choose_executor
from ..terminal import printable, printable_json
from .common import EXIT_ITEMS_FAILED, Context, fail, pass_context, read_prompt
from .options import with_chunk_options, with_placement, with_profile


@click.command()
@click.option("--prompt", "prompt", required=True, help="The prompt text; '-' reads it from standard input.")
@with_profile
@with_chunk_options()
@with_placement
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, changed, validation, provenance.")
@pass_context
def run(
    ctx: Context, prompt: str, profile: Profile, chunk: ChunkOptions, placement: Placement, as_json: bool
) -> None:
    """Normalize one prompt and print it (on a worker when the cluster has one, else in-process).

    With --explain, the steps that changed it are listed on standard error.

    \b
    Examples:
      hermes run --prompt 'ﬁrst “quoted” line  '
      echo 'cafÃ©' | hermes run --prompt - --json --explain
    """
    prompt = read_prompt(prompt, chunk.max_prompt_bytes)
    options = BatchOptions(profile=profile, input_format="text", chunk=chunk)
    executor = choose_executor(ctx, placement, processes=1)
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
    if chunk.explain:
        for entry in record.get("explain", []):
            detail = f" ({', '.join(entry['detail'])})" if entry.get("detail") else ""
            click.echo(f"explain: round {entry['round']}: {entry['step']}{detail}", err=True)


@click.command()
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
