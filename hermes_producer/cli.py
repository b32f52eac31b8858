"""The ``hermes`` command line: thin commands over the batch pipeline, store and log.

Exit codes: 0 all ok, 1 some items failed, 2 usage error, 3 infrastructure error, 130 interrupted.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import click

from hermes_worker import __version__
from hermes_worker.engine import BUILTIN_PROFILES, STEPS
from hermes_worker.settings import Settings, SettingsError

from . import logs
from .batch import BatchOptions, BatchSummary, chunk_requests, run_batch
from .cli_common import (
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    Context,
    fail,
    load_profile,
    pass_context,
    profile_options,
)
from .executors import ExecutorError, InProcessExecutor
from .reader import InputFormat, detect_format


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        fail(str(exc))
    log = logs.configure(settings.log_dir, settings.log_level)
    logs.event(log, logging.DEBUG, "cli.invoked", "command line", argv=sys.argv[1:])
    click_ctx.obj = Context(settings=settings, log=log, quiet=quiet)


@main.command()
@click.option("--prompt", "prompt", required=True, help="The prompt text; '-' reads it from standard input.")
@profile_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, changed, validation, provenance.")
@click.option("--explain", is_flag=True, help="Say which steps changed the text, in order.")
@pass_context
def run(
    ctx: Context,
    prompt: str,
    profile_name: str | None,
    profile_file: Path | None,
    max_validation: int | None,
    as_json: bool,
    explain: bool,
) -> None:
    """Normalize one prompt and print it.

    \b
    Examples:
      hermes run --prompt 'ﬁrst “quoted” line  '
      echo 'cafÃ©' | hermes run --prompt - --json --explain
    """
    profile = load_profile(ctx, profile_name, profile_file)
    if prompt == "-":
        prompt = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    options = BatchOptions(
        profile=profile,
        input_format="text",
        max_validation=ctx.settings.max_validation if max_validation is None else max_validation,
        explain=explain,
        max_prompt_bytes=ctx.settings.max_prompt_bytes,
    )
    executor = InProcessExecutor(processes=1)
    ctx.notice(f"processing {executor.describe()}")
    payload = next(chunk_requests(iter([[1, 1, prompt, None]]), options))
    with executor:
        result = next(executor.map_ordered([payload]))
    record = json.loads(result["lines"][0])
    logs.event(ctx.log, logging.DEBUG, "run.finished", "one prompt", ok="error" not in record, profile=profile.name)
    if "error" in record:
        fail(f"{record['error']['code']}: {record['error']['message']}", EXIT_ITEMS_FAILED)
    if as_json:
        record.pop("id", None)
        record.pop("line", None)
        click.echo(json.dumps(record, ensure_ascii=False, indent=2))
        return
    click.echo(record["text"])
    if explain:
        for entry in record.get("explain", []):
            detail = f" ({', '.join(entry['detail'])})" if entry.get("detail") else ""
            click.echo(f"explain: round {entry['round']}: {entry['step']}{detail}", err=True)


@contextmanager
def open_input(path: str) -> Iterator[tuple[str, BinaryIO]]:
    if path == "-":
        yield "<stdin>", sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        fail(f"cannot read input {path}: {exc.strerror or exc}")
    with handle:
        yield path, handle


@contextmanager
def open_output(path: str, input_path: str) -> Iterator[tuple[TextIO, str]]:
    """Yield a text sink; a file output is written to ``PATH.partial`` and renamed when complete."""
    if path == "-":
        sink = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n", write_through=False)
        try:
            yield sink, "<stdout>"
        finally:
            sink.flush()
            sink.detach()
        return
    target = Path(path)
    if input_path != "-" and target.exists() and target.resolve() == Path(input_path).resolve():
        fail(f"output {path} is the input file: write somewhere else")
    partial = target.with_name(target.name + ".partial")
    try:
        sink = open(partial, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
    except OSError as exc:
        fail(f"cannot write output {path}: {exc.strerror or exc}")
    try:
        with sink:
            yield sink, str(partial)
    except BaseException:
        # An interrupted or failed batch leaves PATH.partial for inspection, never a PATH that
        # looks complete.
        raise
    os.replace(partial, target)


def summary_text(summary: BatchSummary, how: str) -> str:
    text = (
        f"{summary.total:,} prompts in {summary.seconds:.2f} s ({summary.rate:,.0f}/s): "
        f"{summary.ok:,} ok, {summary.failed:,} failed"
    )
    if summary.errors_by_code:
        text += " [" + ", ".join(f"{code} {n:,}" for code, n in summary.errors_by_code.most_common()) + "]"
    return f"{text}; {how}"


@main.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", "output_path", required=True, help="Output JSONL file; '-' is standard output.")
@profile_options
@click.option(
    "--format",
    "input_format",
    type=click.Choice(["auto", "jsonl", "text"]),
    default="auto",
    show_default=True,
    help="Input format: JSONL objects with 'prompt' (and 'id'), or one prompt a line.",
)
@click.option("--explain", is_flag=True, help="Add to each record the steps that changed it.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Prompts per chunk (default 256).")
@click.option("--processes", type=click.IntRange(min=1), default=None, help="Processes to use (default: every core).")
@click.option(
    "--max-prompt-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Larger prompts are item errors (default 1 MiB).",
)
@click.option(
    "--summary-json",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the summary as JSON to this file.",
)
@pass_context
def batch(
    ctx: Context,
    input_path: str,
    output_path: str,
    profile_name: str | None,
    profile_file: Path | None,
    max_validation: int | None,
    input_format: str,
    explain: bool,
    chunk_size: int | None,
    processes: int | None,
    max_prompt_bytes: int | None,
    summary_json: Path | None,
) -> None:
    """Normalize every line of INPUT into one JSONL record per line, in input order.

    INPUT is JSONL ({"id": ..., "prompt": ...}; id defaults to the line number) or plain text
    (one prompt a line); '-' reads standard input. Bad lines get error records, never a crash.

    \b
    Examples:
      hermes batch examples/prompts.jsonl -o cleaned.jsonl
      cat prompts.txt | hermes batch - -o - --format text --profile compact
    """
    settings = ctx.settings.with_overrides(
        chunk_size=chunk_size, processes=processes, max_prompt_bytes=max_prompt_bytes
    )
    profile = load_profile(ctx, profile_name, profile_file)
    executor = InProcessExecutor(settings.processes)
    with open_input(input_path) as (name, source):
        fmt: InputFormat = detect_format(name, source) if input_format == "auto" else input_format  # type: ignore[assignment]
        options = BatchOptions(
            profile=profile,
            input_format=fmt,
            max_validation=settings.max_validation if max_validation is None else max_validation,
            explain=explain,
            chunk_size=settings.chunk_size,
            max_prompt_bytes=settings.max_prompt_bytes,
        )
        how = executor.describe()
        ctx.notice(f"processing {how}: {name} ({fmt}) with profile {profile.name!r}")
        logs.event(
            ctx.log,
            logging.INFO,
            "batch.started",
            f"batch {name} -> {output_path}",
            input=name,
            output=output_path,
            profile=profile.name,
            mode=executor.mode,
            executor=how,
        )
        written_to = output_path
        try:
            with open_output(output_path, input_path) as (sink, written_to), executor, progress_bar(ctx) as progress:
                summary = run_batch(source, sink, options, executor, progress)
        except KeyboardInterrupt:
            logs.event(ctx.log, logging.WARNING, "batch.interrupted", f"interrupted; partial output in {written_to}")
            fail(f"interrupted: partial output left in {written_to}", EXIT_INTERRUPTED)
        except ExecutorError as exc:
            logs.event(ctx.log, logging.ERROR, "batch.failed", str(exc))
            fail(str(exc), EXIT_INFRA)
    report = summary.to_dict()
    logs.event(
        ctx.log,
        logging.INFO if not summary.failed else logging.WARNING,
        "batch.finished",
        summary_text(summary, how),
        **report,
    )
    for line, code, message in summary.first_errors:
        logs.event(ctx.log, logging.DEBUG, "item.failed", message, line=line, code=code)
    ctx.notice(summary_text(summary, how))
    if not ctx.quiet:
        for line, code, message in summary.first_errors:
            click.echo(f"  line {line}: {code}: {message}", err=True)
        if summary.failed > len(summary.first_errors):
            click.echo(
                f"  ... and {summary.failed - len(summary.first_errors):,} more error records in the output", err=True
            )
    if summary_json is not None:
        summary_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    sys.exit(summary.exit_code)


@contextmanager
def progress_bar(ctx: Context) -> Iterator[Any]:
    """A rich progress line on a terminal; nothing at all otherwise."""
    if ctx.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # stderr: standard output may be the records themselves (-o -).
    with Progress(
        SpinnerColumn(),
        TextColumn("records"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("batch", total=None)
        yield lambda done: bar.update(task, completed=done)


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
    from .cli_logs import debug, log_command
    from .cli_tasks import history, queue, task

    for command in (task, queue, history, log_command, debug):
        main.add_command(command)


_register()
