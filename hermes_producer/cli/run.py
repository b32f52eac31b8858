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
@click.argument("text", metavar="[TEXT]", required=False)
@click.option("--prompt", "prompt", metavar="TEXT", help="The prompt, as TEXT (kept for scripts that use it).")
@with_profile
@with_chunk_options()
@with_placement
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, changed, validation, provenance.")
@pass_context
def run(
    ctx: Context,
    text: str | None,
    prompt: str | None,
    profile: Profile,
    chunk: ChunkOptions,
    placement: Placement,
    as_json: bool,
) -> None:
    """Normalize TEXT and print it (on a worker when the cluster has one, else in-process).

    TEXT '-', or no TEXT, reads the prompt from standard input (the way for a private prompt:
    an argument is visible to every user of the machine). With --explain, the steps that
    changed it are listed on standard error.

    \b
    Examples:
      hermes run 'ﬁrst “quoted” line  '
      echo 'cafÃ©' | hermes run --json --explain
    """
    if text is not None and prompt is not None:
        fail("give the prompt once: as TEXT or as --prompt, not both")
    given = text if text is not None else prompt if prompt is not None else "-"
    if given == "-" and sys.stdin is not None and sys.stdin.isatty():
        fail("give the prompt: hermes run 'TEXT' (or pipe it in: echo TEXT | hermes run)")
    prompt = read_prompt(given, chunk.max_prompt_bytes, "TEXT" if prompt is None else "--prompt")
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
@click.option("--json", "as_json", is_flag=True, help="Print the profiles and steps as one JSON object.")
@pass_context
def profiles(ctx: Context, as_json: bool) -> None:
    """List the built-in profiles and every step.

    \b
    Examples:
      hermes profiles
      hermes profiles --json | jq '.profiles[].name'
    """
    if as_json:
        listed = [profile.spec() | {"description": profile.description} for profile in BUILTIN_PROFILES.values()]
        steps = [{"name": step.name, "summary": step.summary} for step in STEPS.values()]
        click.echo(printable_json({"profiles": listed, "steps": steps}, indent=2))
        return
    for profile in BUILTIN_PROFILES.values():
        click.echo(f"{profile.name:10} {' > '.join(profile.steps)}")
        click.echo(f"{'':10} {profile.description}")
    click.echo("\nsteps:")
    for step in STEPS.values():
        click.echo(f"  {step.name:22} {step.summary}")
