"""Where the duplicate-id guard keeps what no longer fits its memory: a Bloom filter, fingerprints
on disk, and every chunk's ids on disk.

- :class:`IdLog`: each chunk's ids as the guard received them, appended to an anonymous
  temporary file (``marshal``: written and read back only by this process), so that a
  fingerprint match can be confirmed against the real id of the line it names.
- :class:`SpilledFingerprints`: the fingerprints the guard moved out of memory, with the line
  of each: a Bloom filter of fixed size in memory (one bit per fingerprint, 2**28 bits: 1 in
  256 false matches at a million spilled ids, 1 in 27 at ten million), and on disk a private
  SQLite database of fingerprints grouped by 1,024 parts, so that a lookup reads one part.

Both are bulk-written (a chunk, or a whole spill, at a time, by C code) and read only when an id
may be a duplicate. Both files vanish when the guard is closed or the process ends.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import struct
import tempfile
import weakref
from array import array
from bisect import bisect_right
from collections import deque
from itertools import accumulate, chain, compress, repeat
from operator import and_, itemgetter, or_, rshift, setitem
from typing import Any

__all__ = ["IdLog", "SpilledFingerprints"]

_LANES = (1, 2, 4, 8, 16, 32, 64, 128)
_FP = struct.Struct("=q")  # a fingerprint (or a line) as the arrays below store it


def _gather(table: bytearray, positions: list[int]) -> tuple[int, ...]:
    """``table[p]`` for every position, by C code (itemgetter of one position returns a scalar)."""
    if len(positions) == 1:
        return (table[positions[0]],)
    return itemgetter(*positions)(table) if positions else ()


class IdLog:
    """Every chunk's ids, on disk, by line; the last few records read back are kept decoded.

    Chunks on consecutive lines are gathered into records of at least :attr:`RECORD` ids
    before they are written, so the index (16 bytes a record) stays small however small the
    chunks are (``--chunk-size 1``).
    """

    RECORD = 1024
    _CACHED = 8

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="hermes-ids-")  # noqa: SIM115 - closed by close()
        self.close = weakref.finalize(self, self._file.close)  # at the latest when the log goes
        self._firsts = array("q")
        self._offsets = array("q", [0])
        self._cache: dict[int, list[Any]] = {}
        self._pending: list[Any] = []  # ids not written yet, of lines from _pending_first on
        self._pending_first = 0
        self._end = 0  # the line after the last one kept

    def append(self, first: int, ids: list[Any]) -> None:
        """Keep ``ids``, the ids of lines ``first``, ``first + 1``, ...

        Raises:
            ValueError: ``first`` is a line before the end of what is kept already.
        """
        if first < self._end:
            raise ValueError(f"line {first} comes after line {self._end - 1}: lines must keep increasing")
        self._end = first + len(ids)
        if self._pending and first != self._pending_first + len(self._pending):
            self._write()
        if not self._pending:
            self._pending_first = first
        self._pending += ids
        if len(self._pending) >= self.RECORD:
            self._write()

    def _write(self) -> None:
        data = marshal.dumps(self._pending)
        self._file.write(data)
        self._firsts.append(self._pending_first)
        self._offsets.append(self._offsets[-1] + len(data))
        self._pending = []

    def id_at(self, line: int) -> Any:
        """The id the chunk holding ``line`` gave for it, as it was appended."""
        if self._pending and line >= self._pending_first:
            return self._pending[line - self._pending_first]
        index = bisect_right(self._firsts, line) - 1
        ids = self._cache.get(index)
        if ids is None:
            self._file.flush()
            start = self._offsets[index]
            ids = marshal.loads(os.pread(self._file.fileno(), self._offsets[index + 1] - start, start))
            if len(self._cache) >= self._CACHED:
                del self._cache[next(iter(self._cache))]
            self._cache[index] = ids
        return ids[line - self._firsts[index]]


class SpilledFingerprints:
    """Fingerprints moved out of memory, each with its line; fingerprints must be unique here.

    Args:
        bits: the fingerprints' width (see :class:`~.fingerprints.Fingerprints`).
        bloom_bits: size of the Bloom filter, a power of two (at least 8).
        parts: how many parts the fingerprints on disk are grouped in, a power of two.
    """

    _MERGE_AT = 8  # rows a part may gather before a lookup merges them into one

    def __init__(self, bits: int, bloom_bits: int = 1 << 28, parts: int = 1024) -> None:
        self._bloom = bytearray(bloom_bits // 8)
        self._byte_mask = bloom_bits // 8 - 1
        self._lane_shift = max(bits - 3, 0)  # the top 3 bits choose the bit within the byte
        self._part_shift = max(bits - (parts.bit_length() - 1), 0)  # a part: the top bits
        self._part_mask = parts - 1
        self._db = sqlite3.connect("")  # a private temporary database, deleted when closed
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        # A row: a part's fingerprints from one spill, then their lines (int64 each).
        self._db.execute("CREATE TABLE parts (part INTEGER NOT NULL, pairs BLOB NOT NULL)")
        self._db.execute("CREATE INDEX parts_part ON parts (part)")
        self.count = 0
        self.close = weakref.finalize(self, self._db.close)  # at the latest when the guard goes

    # --- the Bloom filter ---------------------------------------------------------------------

    def _probe(self, fps: list[int]) -> tuple[list[int], list[int], tuple[int, ...]]:
        positions = list(map(and_, fps, repeat(self._byte_mask)))
        lanes = list(map(_LANES.__getitem__, map(rshift, fps, repeat(self._lane_shift))))
        return positions, lanes, _gather(self._bloom, positions)

    def may_hold(self, fp: int) -> bool:
        """False when ``fp`` is certainly not here."""
        _positions, lanes, found = self._probe([fp])
        return bool(found[0] & lanes[0])

    def remember(self, fps: list[int]) -> list[int]:
        """Set the Bloom filter's bits of ``fps``; return the indexes of those that may have been here."""
        positions, lanes, found = self._probe(fps)
        self._set(positions, lanes, found)
        return list(compress(range(len(fps)), map(and_, found, lanes)))

    def _set(self, positions: list[int], lanes: list[int], found: tuple[int, ...]) -> None:
        bloom = self._bloom
        deque(map(setitem, repeat(bloom), positions, map(or_, found, lanes)), 0)
        if not all(map(and_, _gather(bloom, positions), lanes)):
            # Two fingerprints shared a byte: the second write undid the first one's bit.
            for position, lane in zip(positions, lanes, strict=True):
                bloom[position] |= lane

    # --- the fingerprints on disk -------------------------------------------------------------

    def store(self, fps: list[int], lines: list[int]) -> None:
        """Move ``fps`` (in the Bloom filter already, none of them on disk), first used on ``lines``, to disk."""
        # One list per part gets its fingerprints, then their lines: [f1, ..., fk, l1, ..., lk].
        parts: list[list[int]] = [[] for _ in range(self._part_mask + 1)]
        owners = list(map(parts.__getitem__, map(rshift, fps, repeat(self._part_shift))))
        deque(map(list.append, owners, fps), 0)
        deque(map(list.append, owners, lines), 0)
        data = array("q", chain.from_iterable(parts)).tobytes()
        ends = list(accumulate(map(len, parts)))
        rows = [(part, data[start * 8 : end * 8]) for part, start, end in zip(range(len(parts)), [0, *ends], ends,
                                                                          strict=False) if end > start]  # fmt: skip
        self._db.executemany("INSERT INTO parts VALUES (?, ?)", rows)
        self.count += len(fps)

    def line_of(self, fp: int) -> int | None:
        """The line ``fp`` was first used on, or None if it is not here."""
        return self.stored_line(fp) if self.may_hold(fp) else None

    def stored_line(self, fp: int) -> int | None:
        """:meth:`line_of` without asking the Bloom filter first (it said yes already)."""
        part = fp >> self._part_shift
        rows = self._db.execute("SELECT pairs FROM parts WHERE part = ?", (part,)).fetchall()
        if len(rows) > self._MERGE_AT:
            self._merge(part, [row[0] for row in rows])
        needle = _FP.pack(fp)
        for (pairs,) in rows:
            half = len(pairs) // 2
            at = pairs.find(needle, 0, half)
            while at >= 0 and at % _FP.size:
                at = pairs.find(needle, at + 1, half)
            if at >= 0:
                return int(_FP.unpack_from(pairs, half + at)[0])
        return None

    def _merge(self, part: int, rows: list[bytes]) -> None:
        """One row for ``part`` instead of ``rows``: later lookups read one."""
        halves = [(pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :]) for pairs in rows]
        merged = b"".join(f for f, _ in halves) + b"".join(at for _, at in halves)
        with self._db:
            self._db.execute("DELETE FROM parts WHERE part = ?", (part,))
            self._db.execute("INSERT INTO parts VALUES (?, ?)", (part, merged))
