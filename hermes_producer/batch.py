"""The batch pipeline: input lines -> chunks -> an executor -> records written in input order.

Streaming end to end: the reader, the executor's window and the writer each hold a bounded
amount, so memory does not grow with the input. Every input line yields exactly one record.
"""

from __future__ import annotations

import codecs
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any, BinaryIO, TextIO

from hermes_worker.chunk_options import ChunkOptions, declarations
from hermes_worker.contract import DUPLICATE_ID
from hermes_worker.engine import Profile
from hermes_worker.processing import request_items, with_errors
from hermes_worker.raw_lines import RawChunk
from hermes_worker.settings import Settings
from hermes_worker.wire import ChunkRequest, ChunkResult, Item, ReadPayload

from .executors import ChunkExecutor
from .notices import StreamedResult
from .reader import InputFormat, read_chunks
from .seen_ids import SeenIds
from .shared_chunks import shared_chunks

__all__ = ["BatchOptions", "BatchSummary", "chunk_requests", "guard_duplicates", "run_batch",
           "text_chunk_requests"]

FIRST_ERRORS_KEPT = 10
# The worker name in the provenance of records made in-process (embedded@HOST).
EMBEDDED_PREFIX = "embedded@"


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """What to do with every item of a batch: what the producer needs, and what travels to workers.

    ``chunk`` (:class:`~hermes_worker.chunk_options.ChunkOptions`) goes in every chunk request;
    the rest is the producer's. Every field changes the records a batch writes, so every field is
    in the resume header (:meth:`header`): a resumed batch must find them all unchanged.
    """

    profile: Profile
    input_format: InputFormat
    chunk: ChunkOptions = field(default_factory=ChunkOptions)
    chunk_size: int = 1024

    def request(self, number: int, **body: Any) -> dict[str, Any]:
        """Chunk request ``number`` with these options and ``body`` (``items``, or ``text`` and its fields)."""
        return ChunkRequest(chunk=number, profile=self.profile.spec(), options=self.chunk, **body).to_payload()

    def header(self) -> dict[str, Any]:
        """These options as the resume journal's header keeps them: every field, derived from the
        dataclasses (a field added to either is compared on ``--resume`` without more code).

        >>> from hermes_worker.engine import resolve_profile
        >>> sorted(BatchOptions(resolve_profile("nfc"), "text").header())  # doctest: +NORMALIZE_WHITESPACE
        ['chunk_size', 'explain', 'format', 'item_time_budget', 'max_prompt_bytes', 'max_validation',
         'profile']
        """
        header: dict[str, Any] = {}
        for each in fields(self):
            value = getattr(self, each.name)
            if isinstance(value, ChunkOptions):
                header |= value.to_wire()
            elif isinstance(value, Profile):
                header["profile"] = value.spec()
            else:
                header[_HEADER_NAMES.get(each.name, each.name)] = value
        return header


# Header keys that journals have always used under another name than the field's.
_HEADER_NAMES = {"input_format": "format"}


def chunk_options(settings: Settings, **given: Any) -> ChunkOptions:
    """Chunk options: those ``given``, the rest from the setting of the same name (or their default).

    Checked as a worker would check them (a value out of bounds is a ContractError naming the
    option, before any work starts); a name no option has is a TypeError.
    """
    names = {name for name, _ in declarations()}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"unknown options: {', '.join(unknown)}")
    values = dict(given)
    for name, declared in declarations():
        if name not in values and declared.setting is not None:
            values[name] = getattr(settings, name)  # the setting of the same name (a test checks it)
    return ChunkOptions.from_wire(ChunkOptions(**values).to_wire())


@dataclass(slots=True)
class BatchSummary:
    """Counts for the summary line, the log and ``--json`` reports."""

    total: int = 0
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    records_by_worker: Counter[str] = field(default_factory=Counter)
    records_by_mode: Counter[str] = field(default_factory=Counter)
    first_errors: list[tuple[int, str, str]] = field(default_factory=list)
    carried: int = 0  # records written by an earlier, interrupted run of the same batch
    batch: str | None = None  # the batch's id (`hermes batches ID`, the log), once it ran

    @property
    def rate(self) -> float:
        """Prompts per second of this run (a resumed run counts only what it did itself)."""
        return (self.total - self.carried) / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every item succeeded, 1 when some failed."""
        return 1 if self.failed else 0

    def add(self, result: ChunkResult) -> None:
        count = result.count
        self.total += count
        self.ok += result.ok
        self.failed += result.failed
        self.records_by_worker[result.provenance["worker"]] += count
        self.records_by_mode[result.provenance["mode"]] += count
        for error in result.errors:
            self.errors_by_code[error.code] += 1
            if len(self.first_errors) < FIRST_ERRORS_KEPT:
                self.first_errors.append((error.line, error.code, error.message))

    def ran_where(self, planned: str) -> str:
        """Where the records were made: ``planned`` (the executor's own description) unless the
        records' provenance shows both workers and in-process runs (a cluster that lost its
        workers mid-batch), which it then names from the records themselves."""
        workers = sorted(w for w in self.records_by_worker if not w.startswith(EMBEDDED_PREFIX))
        here = sum(n for w, n in self.records_by_worker.items() if w.startswith(EMBEDDED_PREFIX))
        if not (workers and here):
            return planned
        noun = "worker" if len(workers) == 1 else "workers"
        return f"on {len(workers)} {noun} ({', '.join(workers)}) and in-process ({here:,} records)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "prompts_per_second": round(self.rate, 1),
            "errors_by_code": dict(self.errors_by_code),
            "records_by_worker": dict(self.records_by_worker),
            "records_by_mode": dict(self.records_by_mode),
        }


def chunk_requests(items: Iterator[Item], options: BatchOptions, first_number: int = 0) -> Iterator[dict[str, Any]]:
    """Group parsed items into chunk request payloads of ``options.chunk_size`` items.

    Chunks are numbered from ``first_number``; numbers must be unique within one executor.
    """
    for number in range(first_number, 1 << 62):
        chunk = list(islice(items, options.chunk_size))
        if not chunk:
            return
        yield options.request(number, items=chunk)


def text_chunk_requests(
    chunks: Iterable[RawChunk],
    options: BatchOptions,
    skip: int = 0,
    on_skipped: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Chunk request payloads carrying raw input lines (see :func:`reader.read_chunks`).

    The first ``skip`` chunks are not yielded (a resumed batch has them in its output already);
    each is handed to ``on_skipped`` instead, so their ids still reach the duplicate guard. A
    chunk of a shared input (:mod:`.shared_chunks`) carries its byte range too: its lines then
    travel as that range (:class:`~hermes_worker.shared_input.ByteRange`), not through Redis.
    """
    for number, raw in enumerate(chunks):
        wire = options.request(
            number, text=raw.text, first=raw.first, format=options.input_format, bad=raw.bad, source=raw.source
        )
        payload = ReadPayload(wire, raw.lines, raw.utf8)  # spares counting and encoding the lines again
        if number < skip:
            if on_skipped is not None:
                on_skipped(payload)
            continue
        yield payload


def guard_duplicates(result: ChunkResult, seen: SeenIds) -> ChunkResult:
    """``result`` with every record whose id an earlier line used turned into a ``duplicate_id`` error.

    Chunks must come in input order: the first line to use an id keeps it, as it did when
    the producer parsed every line itself. Results without ``ids`` (plain text, whose ids are
    line numbers, and item requests) pass as they are.
    """
    ids, first = result.ids, result.first
    if not ids or first is None:
        return result
    duplicates = seen.check_chunk(first, ids)
    if not duplicates:
        return result
    replaced = {
        index: (
            DUPLICATE_ID,
            f"id {first + index if ids[index] is True else ids[index]!r} was already used on line {line}",
        )
        for index, line in duplicates.items()
    }
    return with_errors(result, replaced)


def _utf8_buffer(sink: TextIO) -> BinaryIO | None:
    """The bytes under ``sink`` when records may be written there as they came, UTF-8 (a file
    or stdout as the CLI opens them: UTF-8, ``\\n`` line ends); else None."""
    if type(sink) is io.TextIOWrapper and codecs.lookup(sink.encoding).name == "utf-8" and os.linesep == "\n":
        buffer: BinaryIO = sink.buffer
        return buffer
    return None


def _counted(chunks: Iterator[RawChunk], known: Callable[[int], None]) -> Iterator[RawChunk]:
    """``chunks`` as they come; once the reader has reached the end, ``known(lines in the input)``.

    >>> seen = []
    >>> chunks = [RawChunk(1, "a\\nb", [], b"a\\nb", 2), RawChunk(3, "c", [], b"c", 1)]
    >>> list(_counted(iter(chunks), seen.append)) and seen
    [3]
    """
    last = None
    for last in chunks:
        yield last
    known(0 if last is None else last.first + last.lines - 1)


def run_batch(
    source: BinaryIO,
    sink: TextIO,
    options: BatchOptions,
    executor: ChunkExecutor,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    summary: BatchSummary | None = None,
    skip_chunks: int = 0,
    on_written: Callable[[ChunkResult], None] | None = None,
    shared: str | None = None,
) -> BatchSummary:
    """Normalize every line of ``source`` and write one JSONL record per line to ``sink``.

    Args:
        source: the input, binary.
        sink: where records go, text; written in input order as chunks finish.
        options: profile, format and limits.
        executor: runs the chunks.
        progress: called with the number of records written after each chunk, and the number
            of lines in the input once the reader has reached its end (None until then).
        summary: counts carried over from an interrupted run being resumed.
        skip_chunks: how many leading chunks are already in the output (resume).
        on_written: called after each chunk's records are flushed (the resume journal).
        shared: the path workers read ``source`` at (``--shared``): chunks travel as byte ranges.
    """
    summary = summary if summary is not None else BatchSummary()
    started = time.perf_counter()
    seen = SeenIds()

    def skipped(payload: dict[str, Any]) -> None:
        # Already written by the interrupted run: only their ids matter, parsed here.
        _items, ids = request_items(ChunkRequest.from_payload(payload))
        if ids:
            seen.check_chunk(payload["first"], ids)

    lines: list[int] = []  # the input's line count, once known
    fmt, most = options.input_format, options.chunk.max_prompt_bytes
    chunks = _counted(read_chunks(source, fmt, most, options.chunk_size) if shared is None
                      else shared_chunks(source, shared, fmt, most, options.chunk_size), lines.append)  # fmt: skip
    binary = _utf8_buffer(sink)
    for result in executor.map_ordered(text_chunk_requests(chunks, options, skip=skip_chunks, on_skipped=skipped)):
        result = guard_duplicates(result, seen)
        raw = result.raw if isinstance(result, StreamedResult) else None
        if raw is not None and binary is not None:
            sink.flush()  # what the text layer holds goes first
            binary.write(raw)
        else:
            sink.write(result.records)
        summary.add(result)
        if on_written is not None:
            sink.flush()
            on_written(result)
        if progress is not None:
            progress(summary.total, lines[0] if lines else None)
    if progress is not None:  # the reader may have found the end only after the last chunk
        progress(summary.total, lines[0] if lines else None)
    sink.flush()
    summary.seconds = time.perf_counter() - started
    return summary
