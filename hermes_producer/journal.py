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

__all__ = ["Journal", "JournalError", "ResumePoint", "input_identity"]


class JournalError(Exception):
    """The journal cannot be used to resume; the message says why and what to do."""


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


class Journal:
    """Append-only journal of a batch being written to ``partial``."""

    def __init__(self, partial: Path) -> None:
        self.path = partial.with_name(partial.name + ".journal")
        self._handle: TextIO | None = None

    def start(self, header: dict[str, Any]) -> None:
        """Begin a new journal (a fresh batch)."""
        self._handle = self.path.open("w", encoding="utf-8")
        self._write({"header": header})

    def resume(self, header: dict[str, Any]) -> ResumePoint:
        """Read the journal of an interrupted batch that matches ``header``.

        Raises:
            JournalError: no journal, or one made for another input or other options.
        """
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise JournalError(f"nothing to resume: {self.path} does not exist (run without --resume)") from None
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a torn last line: the write it describes may not have completed
        if not records or "header" not in records[0]:
            raise JournalError(f"{self.path} is not a Hermes journal; run without --resume to start over")
        old = records[0]["header"]
        for key in ("input", "options"):
            if old.get(key) != header.get(key):
                raise JournalError(
                    f"cannot resume: the {key} changed since the batch started "
                    f"(was {old.get(key)}, now {header.get(key)}); run without --resume to start over"
                )
        point = ResumePoint(batch_id=old["batch_id"], chunks_done=0, output_size=0)
        for entry in records[1:]:
            point.chunks_done += 1
            point.output_size = entry["o"]
            point.ok += entry["ok"]
            point.failed += entry["failed"]
            point.errors_by_code.update(entry.get("codes", {}))
            point.records_by_worker.update(entry.get("workers", {}))
            point.records_by_mode.update(entry.get("modes", {}))
        self._handle = self.path.open("a", encoding="utf-8")
        return point

    def chunk_written(self, output_size: int, result: dict[str, Any]) -> None:
        count = result["ok"] + result["failed"]
        provenance = result["provenance"]
        codes = Counter(code for _line, code, _message in result["errors"])
        self._write(
            {
                "c": result["chunk"],
                "o": output_size,
                "ok": result["ok"],
                "failed": result["failed"],
                "codes": codes,
                "workers": {provenance["worker"]: count},
                "modes": {provenance["mode"]: count},
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self, remove: bool) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if remove:
            self.path.unlink(missing_ok=True)
