"""The one way Hermes writes a moment: ISO 8601, UTC, milliseconds, ``Z`` (cluster log, local log,
task store), so that timestamps from every source sort and compare as text."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["utc_iso"]


def utc_iso(timestamp: float | None = None) -> str:
    """``timestamp`` (Unix time; default now) as ISO 8601 UTC with milliseconds.

    >>> utc_iso(0)
    '1970-01-01T00:00:00.000Z'
    >>> utc_iso(1_796_000_000.5)
    '2026-11-30T00:53:20.500Z'
    """
    when = time.time() if timestamp is None else timestamp
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
