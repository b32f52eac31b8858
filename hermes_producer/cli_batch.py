"""`hermes batch`: a whole file through the pipeline, resumable, with a summary."""

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

from . import logs
from .batch import BatchOptions, BatchSummary, ChunkExecutor, run_batch
from .celery_executor import CeleryExecutor
from .cli_common import (
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    Context,
    fail,
    load_profile,
    pass_context,
    placement_options,
    profile_options,
)
from .dispatch import Placement, choose_executor
from .executors import ExecutorError
from .journal import Journal, JournalError, input_identity
from .junit import JUnitReport
from .reader import InputFormat, detect_format


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
def stdout_sink() -> Iterator[TextIO]:
    sink = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n", write_through=False)
    try:
        yield sink
    finally:
        sink.flush()
        sink.detach()


def summary_text(summary: BatchSummary, how: str) -> str:
    text = (
        f"{summary.total:,} prompts in {summary.seconds:.2f} s ({summary.rate:,.0f}/s): "
        f"{summary.ok:,} ok, {summary.failed:,} failed"
    )
    if summary.errors_by_code:
        text += " [" + ", ".join(f"{code} {n:,}" for code, n in summary.errors_by_code.most_common()) + "]"
    if len(summary.records_by_worker) > 1 or len(summary.records_by_mode) > 1:
        text += "; by worker: " + ", ".join(f"{w} {n:,}" for w, n in summary.records_by_worker.most_common())
        text += "; by mode: " + ", ".join(f"{m} {n:,}" for m, n in summary.records_by_mode.most_common())
    return f"{text}; {how}"


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


def _report(ctx: Context, summary: BatchSummary, how: str, summary_json: Path | None) -> None:
    report = summary.to_dict()
    level = logging.WARNING if summary.failed else logging.INFO
    logs.event(ctx.log, level, "batch.finished", summary_text(summary, how), **report)
    for line, code, message in summary.first_errors:
        logs.event(ctx.log, logging.DEBUG, "item.failed", message, line=line, code=code)
    ctx.notice(summary_text(summary, how))
    if not ctx.quiet:
        for line, code, message in summary.first_errors:
            click.echo(f"  line {line}: {code}: {message}", err=True)
        more = summary.failed - len(summary.first_errors)
        if more > 0:
            click.echo(f"  ... and {more:,} more error records in the output", err=True)
    if summary_json is not None:
        summary_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", "output_path", required=True, help="Output JSONL file; '-' is standard output.")
@profile_options
@placement_options
@click.option(
    "--format",
    "input_format",
    type=click.Choice(["auto", "jsonl", "text"]),
    default="auto",
    show_default=True,
    help="Input format: JSONL objects with 'prompt' (and 'id'), or one prompt a line.",
)
@click.option("--explain", is_flag=True, help="Add to each record the steps that changed it.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Prompts per chunk (default 1024).")
@click.option(
    "--processes", type=click.IntRange(min=1), default=None, help="In-process: processes to use (default: every core)."
)
@click.option(
    "--max-prompt-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Larger prompts are item errors (default 1 MiB).",
)
@click.option("--resume", is_flag=True, help="Finish an interrupted batch into the same OUTPUT.")
@click.option(
    "--summary-json",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the summary as JSON to this file.",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a JUnit XML report: one test case per chunk, failures naming their items.",
)
@pass_context
def batch(
    ctx: Context,
    input_path: str,
    output_path: str,
    profile_name: str | None,
    profile_file: Path | None,
    max_validation: int | None,
    isolation: str | None,
    no_fallback: bool | None,
    wait_for_workers: float | None,
    input_format: str,
    explain: bool,
    chunk_size: int | None,
    processes: int | None,
    max_prompt_bytes: int | None,
    resume: bool,
    summary_json: Path | None,
    junit_path: Path | None,
) -> None:
    """Normalize every line of INPUT into one JSONL record per line, in input order.

    INPUT is JSONL ({"id": ..., "prompt": ...}; id defaults to the line number) or plain text
    (one prompt a line); '-' reads standard input. Bad lines get error records, never a crash.
    With a broker and live workers the chunks fan out over the cluster; otherwise they run
    in-process on every core.

    \b
    Examples:
      hermes batch examples/prompts.jsonl -o cleaned.jsonl
      cat prompts.txt | hermes batch - -o - --format text --profile compact
      hermes batch big.jsonl -o out.jsonl --isolation container --wait-for-workers 60
      hermes batch big.jsonl -o out.jsonl --resume        # after Ctrl-C or a crash
      hermes batch prompts.jsonl -o out.jsonl --junit report.xml   # CI: a test case per chunk
    """
    settings = ctx.settings.with_overrides(
        chunk_size=chunk_size, processes=processes, max_prompt_bytes=max_prompt_bytes
    )
    profile = load_profile(ctx, profile_name, profile_file)
    if resume and (output_path == "-" or input_path == "-"):
        fail("--resume needs a file input and a file output (not '-')")
    target = Path(output_path)
    if output_path != "-" and input_path != "-" and target.exists() and target.resolve() == Path(input_path).resolve():
        fail(f"output {output_path} is the input file: write somewhere else")

    with open_input(input_path) as (name, source):
        fmt: InputFormat = detect_format(name, source) if input_format == "auto" else input_format  # type: ignore[assignment]
        options = BatchOptions(
            profile=profile,
            input_format=fmt,
            explain=explain,
            chunk_size=settings.chunk_size,
            max_validation=settings.max_validation if max_validation is None else max_validation,
            max_prompt_bytes=settings.max_prompt_bytes,
            item_time_budget=settings.item_time_budget,
        )
        placement = Placement(isolation, no_fallback, wait_for_workers)
        junit = JUnitReport(Path(name).name) if junit_path is not None else None
        if output_path == "-":
            executor = choose_executor(ctx, placement, settings.processes)
            with stdout_sink() as sink:
                summary, how = _run(
                    ctx,
                    executor,
                    name,
                    output_path,
                    fmt,
                    profile.name,
                    lambda progress: run_batch(
                        source, sink, options, executor, progress, on_written=junit.add if junit else None
                    ),
                )
        else:
            summary, how = _run_to_file(
                ctx, target, input_path, source, name, fmt, options, settings.processes, resume, placement, junit
            )
    if junit is not None and junit_path is not None:
        junit.write(junit_path, summary.seconds)
    _report(ctx, summary, how, summary_json)
    sys.exit(summary.exit_code)


def _run(
    ctx: Context, executor: ChunkExecutor, name: str, output: str, fmt: str, profile: str, work: Any
) -> tuple[BatchSummary, str]:
    how = executor.describe()
    ctx.notice(f"batch {name} ({fmt}, profile {profile!r}) {how}")
    logs.event(
        ctx.log,
        logging.INFO,
        "batch.started",
        f"batch {name} -> {output}",
        input=name,
        output=output,
        profile=profile,
        mode=executor.mode,
        executor=how,
    )
    try:
        with executor, progress_bar(ctx) as progress:
            summary: BatchSummary = work(progress)
    except KeyboardInterrupt:
        logs.event(ctx.log, logging.WARNING, "batch.interrupted", f"interrupted; partial output of {output} kept")
        fail(f"interrupted: rerun with --resume to finish {output}", EXIT_INTERRUPTED)
    except ExecutorError as exc:
        logs.event(ctx.log, logging.ERROR, "batch.failed", str(exc))
        fail(f"{exc}; rerun with --resume to finish {output}", EXIT_INFRA)
    return summary, how


def _run_to_file(
    ctx: Context,
    target: Path,
    input_path: str,
    source: BinaryIO,
    name: str,
    fmt: InputFormat,
    options: BatchOptions,
    processes: int,
    resume: bool,
    placement: Placement,
    junit: JUnitReport | None,
) -> tuple[BatchSummary, str]:
    """Write to ``OUTPUT.partial`` with a journal; rename to OUTPUT when the batch is complete."""
    partial = target.with_name(target.name + ".partial")
    journal = Journal(partial)
    header_options = {
        "profile": options.profile.spec(),
        "format": fmt,
        "chunk_size": options.chunk_size,
        "max_validation": options.max_validation,
        "explain": options.explain,
        "max_prompt_bytes": options.max_prompt_bytes,
    }
    try:
        identity = input_identity(input_path) if input_path != "-" else {"path": "<stdin>"}
    except OSError as exc:
        fail(f"cannot read input {input_path}: {exc.strerror or exc}")
    summary = BatchSummary()
    skip = 0
    batch_id = None
    try:
        if resume:
            point = journal.resume({"input": identity, "options": header_options})
            skip, batch_id = point.chunks_done, point.batch_id
            summary = BatchSummary(
                total=point.ok + point.failed,
                ok=point.ok,
                failed=point.failed,
                errors_by_code=point.errors_by_code,
                records_by_worker=point.records_by_worker,
                records_by_mode=point.records_by_mode,
                carried=point.ok + point.failed,
            )
            sink = partial.open("r+", encoding="utf-8", newline="\n")
            sink.truncate(point.output_size)
            sink.seek(point.output_size)
            ctx.notice(f"resuming after {point.chunks_done:,} chunk(s) ({summary.total:,} records already written)")
        else:
            sink = partial.open("w", encoding="utf-8", newline="\n")
    except JournalError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write output {target}: {exc.strerror or exc}")

    executor = choose_executor(ctx, placement, processes, batch_id=batch_id)
    if not resume:
        journal.start(
            {
                "input": identity,
                "options": header_options,
                "batch_id": getattr(executor, "batch_id", None) or os.urandom(8).hex(),
            }
        )

    def written(result: dict[str, Any]) -> None:
        journal.chunk_written(sink.tell(), result)
        if junit is not None:
            junit.add(result)

    with sink:
        outcome = _run(
            ctx,
            executor,
            name,
            str(target),
            fmt,
            options.profile.name,
            lambda progress: run_batch(
                source, sink, options, executor, progress, summary=summary, skip_chunks=skip, on_written=written
            ),
        )
    journal.close(remove=True)
    os.replace(partial, target)
    if isinstance(executor, CeleryExecutor):
        executor.finish()
    return outcome
