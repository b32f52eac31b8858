"""Read batch input (JSONL or plain text) as chunks of raw lines, streaming.

``hermes batch`` ships chunks of raw lines (:func:`read_chunks`); whoever runs a chunk parses
them with :mod:`hermes_worker.lines`, so every line becomes exactly one item, and one record:
a line that cannot be read (invalid UTF-8, malformed JSON, no prompt, far too long) carries its
error, in order. Memory stays bounded: lines are read with a size cap, and an over-long line is
skipped through without being held.
"""

from __future__ import annotations

from typing import BinaryIO

from hermes_worker.raw_lines import READ_BLOCK, InputFormat, RawChunk, read_chunks

__all__ = ["READ_BLOCK", "InputFormat", "RawChunk", "detect_format", "read_chunks"]


def detect_format(name: str, stream: BinaryIO) -> InputFormat:
    """Guess the input format from the file name, else from the first byte that is not blank."""
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".txt"):
        return "text"
    peek = getattr(stream, "peek", None)
    head = peek(4096) if peek is not None else b""
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "text"
