"""One batch from an input to standard output or to a file: what `hermes batch` and
:meth:`hermes_producer.Client.batch` run.

To a file, it writes ``OUTPUT.partial`` with a resume journal next to it and renames it into
place once complete; a resumed batch finds its options unchanged (the journal's header) and
goes on after the last chunk the journal vouches for.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

from hermes_worker.contract import new_batch_id
from hermes_worker.errors import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_USAGE, HermesError
from hermes_worker.wire import ChunkResult

from . import logs
from .batch import BatchOptions, BatchSummary, run_batch
from .batch_board import input_position, input_size
from .context import Context
from .dispatch import Placement, choose_executor
from .executors import ChunkExecutor, ExecutorError
from .journal import Journal, JournalError, ResumePoint, input_identity
from .junit import JUnitReport
from .output import JOURNAL_SUFFIX, LOCK_SUFFIX, PARTIAL_SUFFIX, BatchOutput

__all__ = ["BatchError", "BatchJob", "refuse_input_as_output"]


class BatchError(HermesError):
    """A batch could not go on (interrupted, the cluster or the disk failed); its message says
    how to finish it (``--resume``), its exit code what kind of failure it was."""


@contextlib.contextmanager
def _no_progress(ctx: Context, source: BinaryIO) -> Iterator[None]:
    yield None


def refuse_input_as_output(
    source: BinaryIO, input_path: str, output: BatchOutput
) -> dict[tuple[int, int, str], str]:
    """Raise if the output, or one of its siblings (partial, journal, lock), is the input file;
    else the identities of those files, by what writes them (to compare other outputs with).

    Raises:
        BatchError: naming the clash (exit 2).
    """
    try:
        source_stat: os.stat_result | None = os.fstat(source.fileno())
    except (OSError, ValueError):
        source_stat = None
    seen: dict[tuple[int, int, str], str] = {}
    for suffix in ("", PARTIAL_SUFFIX, JOURNAL_SUFFIX, LOCK_SUFFIX):
        name = output.target.sibling(suffix)
        if output.target.same_file(source_stat, name):
            if not suffix:
                problem = f"output {output.target.path} is the input file"
            else:
                problem = f"the input {input_path} is {output.describe(name)}, which -o writes"
            raise BatchError(f"{problem}: write somewhere else", exit_code=EXIT_USAGE)
        seen[(*output.target.identity[:2], name)] = f"-o {output.target.path}" + (f" ({suffix})" if suffix else "")
    return seen


@dataclass(slots=True)
class BatchJob:
    """One ``hermes batch`` once its input, outputs and options are checked.

    Whether the records go to standard output or to a file, the batch runs through one place
    (:meth:`_run`): the notices, the log events and what a failure says are the same.
    """

    ctx: Context
    source: BinaryIO
    name: str  # the input as notices name it ("<stdin>" for '-')
    input_path: str
    options: BatchOptions
    placement: Placement
    processes: int
    junit: JUnitReport | None = None
    # What shows progress while the batch runs (the CLI's progress line); nothing by default.
    progress: Callable[[Context, BinaryIO], AbstractContextManager[Callable[[int, int | None], None] | None]] = (
        _no_progress
    )
    shared: str | None = None  # --shared: the input's path, which workers read chunks' byte ranges from

    def to_stream(self, sink: TextIO, name: str = "-") -> tuple[BatchSummary, str]:
        """Write records to ``sink`` as chunks finish (no journal: nothing to resume)."""
        batch_id = new_batch_id()
        executor = choose_executor(self.ctx, self.placement, self.processes, batch_id=batch_id, board=True)
        outcome = self._run(executor, batch_id, sink, name, on_written=self.junit.add if self.junit else None)
        executor.finish()
        return outcome

    def to_file(self, output: BatchOutput, resume: bool) -> tuple[BatchSummary, str]:
        """Write to ``OUTPUT.partial`` with a journal; rename to OUTPUT when the batch is complete."""
        try:
            identity = input_identity(self.input_path) if self.input_path != "-" else {"path": "<stdin>"}
        except OSError as exc:
            reason = f"cannot read input {self.input_path}: {exc.strerror or exc}"
            raise BatchError(reason, exit_code=EXIT_USAGE) from None
        header = {"input": identity, "options": self.options.header()}
        summary, skip = BatchSummary(), 0
        if resume:
            sink, journal, point = _resume(output, header)
            skip, summary, batch_id = point.chunks_done, _carried(point), point.batch_id
            self.ctx.notice(
                f"resuming after {point.chunks_done:,} chunk(s) ({summary.total:,} records already written)"
            )
            executor = choose_executor(self.ctx, self.placement, self.processes, batch_id=batch_id, board=True)
        else:
            batch_id = new_batch_id()
            executor = choose_executor(self.ctx, self.placement, self.processes, batch_id=batch_id, board=True)
            sink, journal = _start(self.ctx, output, header | {"batch_id": batch_id})

        def written(result: ChunkResult) -> None:
            journal.chunk_written(sink.tell(), result)
            if self.junit is not None:
                self.junit.add(result)

        with sink, contextlib.closing(journal):
            outcome = self._run(executor, batch_id, sink, output.target.path, summary=summary, skip=skip,
                                on_written=written)  # fmt: skip
        output.commit()
        executor.finish()
        return outcome

    def _run(
        self,
        executor: ChunkExecutor,
        batch_id: str,
        sink: TextIO,
        output: str,
        *,
        summary: BatchSummary | None = None,
        skip: int = 0,
        on_written: Callable[[ChunkResult], None] | None = None,
    ) -> tuple[BatchSummary, str]:
        """The batch through ``executor`` into ``sink``; a failure is exit 3 (130 interrupted)
        saying how to finish ``output``.

        Its id comes first on stderr (and in the log), so that it can be followed while it runs
        (``hermes batches ID``, when it is on the board) and found afterwards.
        """
        ctx, profile, how = self.ctx, self.options.profile.name, executor.describe()
        follow = f"; follow it with: hermes batches {batch_id[:8]}" if executor.on_board else ""
        ctx.notice(f"batch {batch_id}: {self.name} ({self.options.input_format}, profile {profile!r}) {how}{follow}")
        logs.event(ctx.log, logging.INFO, "batch.started", f"batch {batch_id}: {self.name} -> {output}",
                   batch=batch_id, input=self.name, output=output, profile=profile, mode=executor.mode,
                   executor=how, on_board=executor.on_board)  # fmt: skip
        finish = f"rerun with --resume to finish {output}"
        executor.follow_input(self.name, input_size(self.source), input_position(self.source))
        try:
            with executor, self.progress(ctx, self.source) as progress:
                done = run_batch(self.source, sink, self.options, executor, progress, summary=summary,
                                 skip_chunks=skip, on_written=on_written, shared=self.shared)  # fmt: skip
        except KeyboardInterrupt:
            logs.event(ctx.log, logging.WARNING, "batch.interrupted", f"interrupted; partial output of {output} kept")
            raise BatchError(f"interrupted: {finish}", exit_code=EXIT_INTERRUPTED) from None
        except ExecutorError as exc:
            logs.event(ctx.log, logging.ERROR, "batch.failed", str(exc))
            raise BatchError(f"{exc}; {finish}", exit_code=EXIT_INFRA) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # standard output closed by its reader: see guard.py
                raise
            # A full disk, a file size limit, an I/O error: the records written so far are safe.
            where = f" ({exc.filename})" if exc.filename else ""
            logs.event(ctx.log, logging.ERROR, "batch.failed", f"{exc.strerror or exc}{where}")
            raise BatchError(f"cannot go on: {exc.strerror or exc}{where}; {finish}", exit_code=EXIT_INFRA) from None
        done.batch = batch_id
        return done, how


def _carried(point: ResumePoint) -> BatchSummary:
    """The counts of the records an interrupted run already wrote."""
    return BatchSummary(
        total=point.ok + point.failed,
        ok=point.ok,
        failed=point.failed,
        errors_by_code=point.errors_by_code,
        records_by_worker=point.records_by_worker,
        records_by_mode=point.records_by_mode,
        carried=point.ok + point.failed,
    )


def _resume(output: BatchOutput, header: dict[str, Any]) -> tuple[TextIO, Journal, ResumePoint]:
    """Reopen an interrupted batch's output and journal, cut back to the last chunk the journal vouches for."""
    sink, journal_handle = output.reopen()
    journal = Journal(journal_handle, output.describe(output.journal))
    try:
        point = journal.resume(header, sink.fileno())
    except JournalError:
        sink.close()
        journal.close()
        raise
    sink.truncate(point.output_size)
    sink.seek(point.output_size)
    return sink, journal, point


def _start(ctx: Context, output: BatchOutput, header: dict[str, Any]) -> tuple[TextIO, Journal]:
    """Create the output's partial file and a journal whose header says what would make a resume
    valid (and the batch's id, which a resumed run keeps)."""
    if output.had_unfinished():
        ctx.notice(f"starting over: the unfinished {output.describe(output.partial)} of an earlier run is discarded")
    sink, journal_handle = output.create()
    journal = Journal(journal_handle, output.describe(output.journal))
    journal.start(header)
    return sink, journal
