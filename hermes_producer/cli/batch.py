"""`hermes batch`: a whole file through the pipeline, resumable, with a summary."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import click

from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import Profile
from hermes_worker.settings import option_help

from .. import logs
from ..batch import BatchOptions, BatchSummary
from ..batch_board import input_position, input_size
from ..batch_job import BatchJob, refuse_input_as_output
from ..dispatch import Placement
from ..junit import JUnitReport
from ..output import (
    BatchOutput,
    OutputError,
    OutputPath,
    check_output,
    write_file,
)
from ..reader import InputFormat, detect_format
from ..shared_chunks import shared_path
from ..terminal import TerminalSink, printable
from .common import Context, fail, pass_context, std_stream
from .options import setting_number, with_chunk_options, with_placement, with_profile


@contextmanager
def open_input(path: str) -> Iterator[tuple[str, BinaryIO]]:
    if path == "-":
        yield "<stdin>", std_stream("stdin").buffer
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        fail(f"cannot read input {path}: {exc.strerror or exc}")
    with handle:
        yield path, handle


def checked_output(path: str, what: str) -> OutputPath:
    """``path`` checked as an output (see :mod:`.output`); an OutputError names it and the problem."""
    return check_output(path, what)


@contextmanager
def stdout_sink() -> Iterator[TextIO]:
    """Standard output for records; on a terminal, ids and texts from input are shown, not obeyed."""
    stdout = std_stream("stdout")
    sink = io.TextIOWrapper(stdout.buffer, encoding="utf-8", newline="\n", write_through=False)
    try:
        yield TerminalSink(sink) if stdout.isatty() else sink  # type: ignore[misc]
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
    return f"{text}; {summary.ran_where(how)}"


@contextmanager
def progress_bar(ctx: Context, source: BinaryIO) -> Iterator[Callable[[int, int | None], None] | None]:
    """A progress line on a terminal: records (of the input's lines, once the reader has reached
    its end), their rate, and an ETA over the input's size for a file, over its line count for
    a stream once that is known. Nothing at all when stderr is not a terminal, or with --quiet.

    While it shows, notices (:meth:`Context.notice`) are printed above it, not into it.
    """
    if ctx.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    size, position = input_size(source), input_position(source)
    columns: list[ProgressColumn | str] = [SpinnerColumn(), TextColumn("{task.fields[records]:,}{task.fields[of]} "
                                                                    "records, {task.fields[rate]:,.0f}/s")]  # fmt: skip
    columns += [BarColumn(), DownloadColumn()] if size is not None else [BarColumn()]
    columns += [TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn()]
    started = time.monotonic()
    # stderr: standard output may be the records themselves (-o -).
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("batch", total=size, records=0, rate=0.0, of="")

        def update(records: int, lines: int | None) -> None:
            rate = records / max(time.monotonic() - started, 1e-6)
            of = f" of {lines:,}" if lines is not None else ""
            if size is not None:  # the bar and the ETA go by bytes read of the file
                bar.update(task, completed=position(), records=records, rate=rate, of=of)
            else:  # by records of the lines, once their number is known (a pulsing bar until then)
                bar.update(task, total=lines, completed=records, records=records, rate=rate, of=of)

        ctx.above = bar.console  # notices go above the line while it shows
        try:
            yield update
        finally:
            ctx.above = None


def _report(ctx: Context, summary: BatchSummary, how: str, summary_json: Report | None) -> None:
    report = summary.to_dict()
    level = logging.WARNING if summary.failed else logging.INFO
    logs.event(ctx.log, level, "batch.finished", summary_text(summary, how), **report)
    for line, code, _message in summary.first_errors:
        # Not the message: it may quote the input (an id, part of a line); the output has it.
        logs.event(ctx.log, logging.DEBUG, "item.failed", f"line {line}: {code}", line=line, code=code)
    ctx.notice(summary_text(summary, how))
    if not ctx.quiet:
        for line, code, message in summary.first_errors:
            click.echo(printable(f"  line {line}: {code}: {message}"), err=True)
        more = summary.failed - len(summary.first_errors)
        if more > 0:
            click.echo(f"  ... and {more:,} more error records in the output", err=True)
    if summary_json is not None:
        summary_json.write(json.dumps(report, indent=2) + "\n", "the summary")


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", "output_path", default="-", help="Output JSONL file (default '-': standard output).")
@with_profile
@with_chunk_options()
@with_placement
@click.option(
    "--format",
    "input_format",
    type=click.Choice(["auto", "jsonl", "text"]),
    default="auto",
    show_default=True,
    help="Input format: JSONL objects with 'prompt' (and 'id'), or one prompt a line.",
)
@click.option(
    "--chunk-size", type=setting_number("HERMES_CHUNK_SIZE"), default=None, help=option_help("HERMES_CHUNK_SIZE")
)
@click.option(
    "--processes", type=setting_number("HERMES_PROCESSES"), default=None, help=option_help("HERMES_PROCESSES")
)
@click.option("--resume", is_flag=True, help="Finish an interrupted batch into the same OUTPUT.")
@click.option("--shared", is_flag=True,
              help="Workers read INPUT themselves (it must be under HERMES_SHARED_ROOT, readable by every worker): "
              "chunks travel as byte ranges, not lines through Redis.")  # fmt: skip
@click.option(
    "--summary-json",
    "summary_path",
    metavar="FILE",
    default=None,
    help="Also write the summary as JSON to this file ('-': standard output).",
)
@click.option(
    "--junit",
    "junit_path",
    metavar="FILE",
    default=None,
    help="Write a JUnit XML report: one test case per chunk, failures naming their items.",
)
@pass_context
def batch(
    ctx: Context,
    input_path: str,
    output_path: str,
    profile: Profile,
    chunk: ChunkOptions,
    placement: Placement,
    input_format: str,
    chunk_size: int | None,
    processes: int | None,
    resume: bool,
    shared: bool,
    summary_path: str | None,
    junit_path: str | None,
) -> None:
    """Normalize every line of INPUT into one JSONL record per line, in input order.

    INPUT is JSONL ({"id": ..., "prompt": ...}; id defaults to the line number) or plain text
    (one prompt a line); '-' reads standard input. Bad lines get error records, never a crash.
    With a broker and live workers the chunks fan out over the cluster; otherwise they run
    in-process on every core.

    \b
    Examples:
      hermes batch examples/prompts.jsonl -o cleaned.jsonl
      hermes batch examples/prompts.jsonl | jq -r .text
      cat examples/prompts.txt | hermes batch - --format text --profile compact
      hermes batch big.jsonl -o out.jsonl --isolation container --wait-for-workers 60
      hermes batch big.jsonl -o out.jsonl --resume        # after Ctrl-C or a crash
      hermes batch prompts.jsonl -o out.jsonl --junit report.xml   # CI: a test case per chunk
    """
    settings = ctx.settings.with_overrides(chunk_size=chunk_size, processes=processes)
    _check_streams(resume, input_path, output_path, summary_path, junit_path)
    where = shared_path(input_path, settings.shared_root) if shared else None
    with ExitStack() as stack, open_input(input_path) as (name, source):
        output, summary_json, junit_file = _open_outputs(stack, source, input_path, output_path, summary_path,
                                                         junit_path)  # fmt: skip
        if resume and not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            fail(f"--resume needs a regular file as input; {input_path} is not one")
        options = BatchOptions(profile, _input_format(name, source, input_format), chunk, settings.chunk_size)
        junit = JUnitReport(Path(name).name) if junit_file is not None else None
        job = BatchJob(ctx, source, name, input_path, options, placement, settings.processes, junit, progress_bar,
                       shared=where)  # fmt: skip
        if output is None:
            with stdout_sink() as sink:
                summary, how = job.to_stream(sink)
        else:
            summary, how = job.to_file(output, resume)
        if junit is not None and junit_file is not None:
            junit_file.write(junit.render(summary.seconds), "the JUnit report")
        _report(ctx, summary, how, summary_json)
    sys.exit(summary.exit_code)


def _input_format(name: str, source: BinaryIO, asked: str) -> InputFormat:
    """``--format``, or for ``auto`` what the input's name and first bytes say."""
    if asked != "auto":
        return asked  # type: ignore[return-value]
    try:
        return detect_format(name, source)
    except OSError as exc:  # the first read: /proc/self/mem, a device or a disk that fails
        fail(f"cannot read input {name}: {exc.strerror or exc}")


def _check_streams(
    resume: bool, input_path: str, output_path: str, summary_path: str | None, junit_path: str | None
) -> None:
    """Exit 2 if ``--resume`` meets '-', or two outputs would write to standard output; else claim it."""
    if resume and (output_path == "-" or input_path == "-"):
        fail("--resume needs a file input and a file output (not '-')")
    to_stdout = [option for option, path in (("-o", output_path), ("--summary-json", summary_path),
                                             ("--junit", junit_path)) if path == "-"]  # fmt: skip
    if len(to_stdout) > 1:
        fail(f"{' and '.join(to_stdout)} cannot both write to standard output ('-')")
    if to_stdout:
        std_stream("stdout")


def _open_outputs(
    stack: ExitStack, source: BinaryIO, input_path: str, output_path: str, summary_path: str | None,
    junit_path: str | None,
) -> tuple[BatchOutput | None, Report | None, Report | None]:
    """Every output checked, and the batch's output locked, before any work starts (None: standard output)."""
    output = None
    if output_path != "-":
        target = checked_output(output_path, "output")
        stack.callback(target.close)  # after the lock is released: that needs the directory
        output = stack.enter_context(BatchOutput(target))
    summary_json = Report.open(stack, "--summary-json", summary_path)
    junit_file = Report.open(stack, "--junit", junit_path)
    _refuse_clashes(source, input_path, output, [r for r in (summary_json, junit_file) if r is not None])
    if output is not None:
        output.lock()
        output.check_leftovers()
    return output, summary_json, junit_file


@dataclass(slots=True)
class Report:
    """Where ``--summary-json`` or ``--junit`` goes: a checked file, or standard output."""

    option: str
    target: OutputPath | None  # None: standard output

    @classmethod
    def open(cls, stack: ExitStack, option: str, path: str | None) -> Report | None:
        if path is None:
            return None
        if path == "-":
            std_stream("stdout")
            return cls(option, None)
        target = checked_output(path, option)
        stack.callback(target.close)
        return cls(option, target)

    def write(self, text: str, what: str) -> None:
        if self.target is None:
            click.echo(text, nl=False)
            return
        try:
            write_file(self.target, text.encode("utf-8"))
        except OutputError as exc:
            fail(f"{what} was not written ({self.option}): {exc}")


def _refuse_clashes(source: BinaryIO, input_path: str, output: BatchOutput | None, reports: list[Report]) -> None:
    """Exit 2 if two outputs are the same file, or one of them is the input (or its partial)."""
    try:
        source_stat: os.stat_result | None = os.fstat(source.fileno())
    except (OSError, ValueError):
        source_stat = None
    seen = refuse_input_as_output(source, input_path, output) if output is not None else {}
    for report in reports:
        if report.target is None:
            continue
        if report.target.same_file(source_stat):
            fail(f"{report.option} {report.target.path} is the input file: write somewhere else")
        other = seen.get(report.target.identity)
        if other is not None:
            fail(f"{report.option} {report.target.path} is the same file as {other}: write somewhere else")
        seen[report.target.identity] = f"{report.option} {report.target.path}"
