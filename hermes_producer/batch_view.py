"""The running batches as text: the table of ``hermes batches`` and the detail of one batch.

Pure: entries and the time in, lines out. Every string an entry carries came from whoever could
write to Redis, so each passes through :func:`.terminal.printable` (controls shown, never
obeyed) and is cut to its column; numbers were checked when the entry was read
(:class:`~hermes_worker.batch_status.BatchStatus`).
"""

from __future__ import annotations

import time
from typing import Any

from hermes_worker.batch_status import BatchStatus, Board
from hermes_worker.redact import redact

from .terminal import printable

__all__ = ["batch_detail", "batch_table", "duration", "size"]

_HEADER = f"{'BATCH':12}  {'INPUT':24}  {'RECORDS':>9}  {'DONE':>15}  {'RATE':>8}  {'ETA':>8}  {'ERRORS':>7}  WORKERS"


def _shown(text: str, width: int | None = None) -> str:
    """Safe on a terminal, and at most ``width`` columns (an ellipsis says it was cut)."""
    text = printable(redact(text))
    if width is not None and len(text) > width:
        return text[: width - 1] + "…"
    return text


def size(count: float) -> str:
    """Bytes for people: ``size(9_812_345)`` is ``'9.8 MB'``.

    >>> size(512), size(9_812_345), size(3 * 10**9)
    ('512 B', '9.8 MB', '3.0 GB')
    """
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """A duration for people; ``-`` when not known.

    >>> duration(None), duration(4.2), duration(125), duration(7_380)
    ('-', '4 s', '2 min 5 s', '2 h 3 min')
    """
    if seconds is None:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _done(status: BatchStatus) -> str:
    fraction = status.fraction
    if fraction is None or status.size is None:
        return "-"
    return f"{fraction:.0%} of {size(status.size)}"


def _workers(status: BatchStatus) -> list[str]:
    """The workers holding a chunk now, then those that made records, most first."""
    named = list(status.holding)
    named += [w for w in sorted(status.workers, key=lambda w: -status.workers[w]) if w not in status.holding]
    return named


def batch_table(board: Board) -> list[str]:
    """One line a running batch, under a header; a line saying so when none runs."""
    lines = []
    if not board.batches:
        lines.append("no batch is running on this cluster (a batch run where no broker answers is on no board)")
    else:
        lines.append(_HEADER)
    for s in board.batches:
        workers = _workers(s)
        more = f" +{len(workers) - 3}" if len(workers) > 3 else ""
        shown_workers = ", ".join(_shown(w, 40) for w in workers[:3]) + more
        lines.append(
            f"{s.batch[:12]:12}  {_shown(s.input, 24):24}  {s.records:>9,}  {_done(s):>15}  {s.rate:>6,.0f}/s  "
            f"{duration(s.eta_s):>8}  {s.failed:>7,}  {shown_workers or '-'}"
        )
    lines += _footer(board)
    return lines


def _footer(board: Board) -> list[str]:
    notes = []
    if board.truncated:
        notes.append(f"(only the first {len(board.batches)} batches are shown)")
    if board.unreadable:
        entries = "entry" if board.unreadable == 1 else "entries"
        notes.append(f"(skipped {board.unreadable} unreadable {entries} under hermes:batch:, not a Hermes producer's)")
    return notes


def batch_detail(s: BatchStatus, now: float | None = None) -> list[str]:
    """Everything one entry says, a line a subject."""
    now = time.time() if now is None else now
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started))
    what = f"{_shown(s.input)}" + (f" ({size(s.size)})" if s.size else "")
    progress = f"{s.records:,} records"
    if s.size:
        progress += f", {size(s.read)} of {size(s.size)} ({s.fraction:.0%})"
    progress += f", {s.rate:,.0f} records/s, ETA {duration(s.eta_s)}"
    errors = ", ".join(f"{code} {count:,}" for code, count in sorted(s.errors.items(), key=lambda kv: -kv[1]))
    workers = ", ".join(
        f"{_shown(w, 80)} {s.workers.get(w, 0):,}" + (" (holding a chunk)" if w in s.holding else "")
        for w in _workers(s)
    )
    return [
        f"batch {s.batch}",
        f"  input     {what}, profile {_shown(s.profile)}, queue {_shown(s.queue)}",
        f"  producer  {_shown(s.producer)} (pid {s.pid}), started {started} ({duration(max(now - s.started, 0))} ago), "
        f"updated {duration(max(now - s.updated, 0))} ago",
        f"  progress  {progress}",
        f"  errors    {s.failed:,}" + (f": {errors}" if errors else ""),
        f"  workers   {workers or '-'}",
    ]


def as_json(s: BatchStatus) -> dict[str, Any]:
    """The entry for ``--json``: its fields, and the fraction done."""
    from dataclasses import asdict

    return asdict(s) | {"holding": list(s.holding), "fraction": s.fraction}
