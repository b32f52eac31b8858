"""The resume journal: which chunks of a batch are safely in the output, and where it ends.

It lives next to the partial output as ``OUTPUT.partial.journal``: a header line (what the
batch is: input identity, options, batch id) and one line per chunk written (its number, the
output size after it, its counts). Output is flushed before its journal line, so after a crash
the journal never claims more than the output holds; ``--resume`` truncates the output to the
last journalled size and carries on from the next chunk.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hermes_worker.contract import BATCH_ID
from hermes_worker.errors import EXIT_USAGE, HermesError
from hermes_worker.wire import ChunkResult

__all__ = ["Journal", "JournalError", "ResumePoint", "input_identity"]


class JournalError(HermesError):
    """The journal cannot be used to resume; the message says why and what to do (exit 2: the
    batch has not started, and the command line or the files need changing)."""

    exit_code = EXIT_USAGE


def input_identity(path: str) -> dict[str, Any]:
    """Enough to tell whether an input file is the one a journal was made for."""
    stat = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass(slots=True)
class ResumePoint:
    """Where a resumed batch starts, and what the finished part already counted."""

    batch_id: str
    chunks_done: int
    output_size: int
    ok: int = 0
    failed: int = 0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    records_by_worker: Counter[str] = field(default_factory=Counter)
    records_by_mode: Counter[str] = field(default_factory=Counter)


# A batch id names Redis keys (the result stream, the chunks' lines, its entry on the board): a
# journal edited by hand must not be able to aim a resumed batch at arbitrary keys, nor give it
# an id that workers or readers of the board refuse. Ids are contract.BATCH_ID's: 32 hex digits
# (16 in journals of in-process batches before the board took those too).
_COUNTS = ("c", "o", "ok", "failed")


class Journal:
    """Append-only journal of a batch being written to the partial output.

    The file itself is opened by :class:`~hermes_producer.output.BatchOutput` (exclusively,
    never through a link); the journal only reads and writes lines on that handle.
    """

    def __init__(self, handle: TextIO, name: str) -> None:
        self._handle: TextIO | None = handle
        self.name = name

    def start(self, header: dict[str, Any]) -> None:
        """Begin a new journal (a fresh batch)."""
        self._write({"header": header})

    def resume(self, header: dict[str, Any], output_fd: int) -> ResumePoint:
        """Read the journal of an interrupted batch that matches ``header``.

        Every chunk line is checked against the partial output: chunks in order from the
        first, and each chunk's records really there (as many lines between its offsets as it
        counts). A journal that claimed chunks the output does not hold made the resumed batch
        skip their input lines: records lost, and a summary counting them anyway.

        Args:
            header: what this batch is (input identity and options), to compare.
            output_fd: the partial output, open for reading: the journal may not claim more.

        Raises:
            JournalError: a journal made for another input or other options, or one that is
                damaged (then the message names the line).
        """
        assert self._handle is not None
        self._handle.seek(0)
        records = []
        for line in self._handle:
            try:
                records.append(json.loads(line))
            except (ValueError, RecursionError):
                break  # a torn last line: the write it describes may not have completed
        first = records[0] if records else None
        old = first.get("header") if isinstance(first, dict) else None
        if not isinstance(old, dict):
            raise JournalError(f"{self.name} is not a Hermes journal; run without --resume to start over")
        for key in ("input", "options"):
            if old.get(key) != header.get(key):
                raise JournalError(
                    f"cannot resume: the {key} changed since the batch started "
                    f"(was {old.get(key)}, now {header.get(key)}); run without --resume to start over"
                )
        batch_id = old.get("batch_id")
        if not isinstance(batch_id, str) or not BATCH_ID.fullmatch(batch_id):
            raise JournalError(f"{self.name}: the batch id is damaged; run without --resume to start over")
        point = ResumePoint(batch_id=batch_id, chunks_done=0, output_size=0)
        output_size = os.fstat(output_fd).st_size
        for number, entry in enumerate(records[1:], start=2):
            problem = _entry_problem(entry, point.chunks_done, point.output_size, output_size) or _lines_problem(
                entry, output_fd, point.output_size
            )
            if problem:
                raise JournalError(f"{self.name}, line {number}: {problem}; run without --resume to start over")
            point.chunks_done += 1
            point.output_size = entry["o"]
            point.ok += entry["ok"]
            point.failed += entry["failed"]
            point.errors_by_code.update(entry.get("codes", {}))
            point.records_by_worker.update(entry.get("workers", {}))
            point.records_by_mode.update(entry.get("modes", {}))
        self._handle.seek(0, 2)
        return point

    def chunk_written(self, output_size: int, result: ChunkResult) -> None:
        count = result.count
        provenance = result.provenance
        codes = Counter(error.code for error in result.errors)
        self._write(
            {
                "c": result.chunk,
                "o": output_size,
                "ok": result.ok,
                "failed": result.failed,
                "codes": codes,
                "workers": {provenance["worker"]: count},
                "modes": {provenance["mode"]: count},
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _entry_problem(entry: Any, chunk: int, previous_size: int, output_size: int) -> str | None:
    """What is wrong with one chunk line of a journal (the ``chunk``-th), or None."""
    if not isinstance(entry, dict):
        return "not a chunk entry"
    for key in _COUNTS:
        value = entry.get(key)
        if type(value) is not int or value < 0:
            return f"{key!r} is not a count"
    if entry["c"] != chunk:
        return f"names chunk {entry['c']:,} where chunk {chunk:,} was written"
    if not previous_size <= entry["o"] <= output_size:
        return f"claims {entry['o']:,} bytes of output; the partial output holds {output_size:,}"
    for key in ("codes", "workers", "modes"):
        counts = entry.get(key, {})
        if not isinstance(counts, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in counts.items()
        ):
            return f"{key!r} is not a table of counts"
    return None


_READ_BLOCK = 1 << 20


def _lines_problem(entry: dict[str, Any], output_fd: int, start: int) -> str | None:
    """Whether the output holds, between the previous chunk's end and this one's, its records.

    One record is one line, so the bytes there must hold exactly ``ok + failed`` newlines.
    """
    claimed = entry["ok"] + entry["failed"]
    found = 0
    position = start
    while position < entry["o"]:
        block = os.pread(output_fd, min(_READ_BLOCK, entry["o"] - position), position)
        if not block:
            break
        found += block.count(b"\n")
        position += len(block)
    if found != claimed or claimed == 0:
        return (
            f"claims {claimed:,} records for chunk {entry['c']:,}; "
            f"the partial output holds {found:,} lines there"
        )
    return None
