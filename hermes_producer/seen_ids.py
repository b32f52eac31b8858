"""A duplicate-id guard whose memory stays bounded however many ids a batch has.

Lines without an explicit id use their line number, so those ids are one bit each in a bitmap.
Explicit ids live in a dict; past ``spill_at`` they move to a temporary SQLite file, fronted by
a fixed-size Bloom filter so that the common case (a new id) rarely touches disk.

The dict is keyed by each id's string form (``i5`` for the integer, ``s5`` for the string), never
by the id itself: CPython hashes an integer n as n mod (2**61 - 1), so ids k·(2**61 - 1) all
collide and 100,000 of them made every insert scan all the others (quadratic: minutes for one
batch). Strings hash with SipHash under a key chosen per process, which input cannot aim at.
"""

from __future__ import annotations

import sqlite3
import tempfile
from typing import Any

__all__ = ["SeenIds"]

_BLOOM_BITS = 1 << 27  # 16 MiB: about 1% false positives at 20 million spilled ids
_MASK = _BLOOM_BITS - 1


class SeenIds:
    """Remembers ids and the line that first used each one.

    >>> seen = SeenIds()
    >>> seen.check_and_add("a", 1) is None, seen.check_and_add("a", 7)
    (True, 1)
    >>> seen.check_default(3) is None, seen.check_and_add(3, 9)
    (True, 3)
    """

    def __init__(self, spill_at: int = 100_000) -> None:
        self._default_lines = bytearray()
        self._recent: dict[str, int] = {}  # _key(id) -> line
        self._spill_at = spill_at
        self._db: sqlite3.Connection | None = None
        self._bloom: bytearray | None = None

    @staticmethod
    def _key(item_id: Any) -> str:
        # JSON tells 5 from "5": so does the key.
        return f"i{item_id}" if isinstance(item_id, int) else f"s{item_id}"

    def _positions(self, key: str) -> tuple[int, int, int]:
        h = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        return h & _MASK, (h >> 27) & _MASK, ((h >> 54) | (h << 10)) & _MASK

    def _bloom_has(self, key: str) -> bool:
        bloom = self._bloom
        assert bloom is not None
        return all(bloom[p >> 3] & (1 << (p & 7)) for p in self._positions(key))

    def _spill(self) -> None:
        if self._db is None:
            handle = tempfile.NamedTemporaryFile(prefix="hermes-ids-", suffix=".db", delete=True)  # noqa: SIM115
            self._tmp = handle  # removed when this guard is garbage-collected
            self._db = sqlite3.connect(handle.name)
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("CREATE TABLE ids (key TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
            self._bloom = bytearray(_BLOOM_BITS // 8)
        bloom = self._bloom
        assert bloom is not None
        rows = []
        for key, line in self._recent.items():
            for p in self._positions(key):
                bloom[p >> 3] |= 1 << (p & 7)
            rows.append((key, line))
        self._db.executemany("INSERT INTO ids VALUES (?, ?)", rows)
        self._recent.clear()

    def _default_used(self, line: int) -> bool:
        byte = line >> 3
        return byte < len(self._default_lines) and bool(self._default_lines[byte] & (1 << (line & 7)))

    def check_default(self, line: int) -> int | None:
        """Record that ``line`` uses its line number as id; return the line that used it first."""
        first = self._lookup(self._key(line))
        if first is not None:
            return first
        byte = line >> 3
        if byte >= len(self._default_lines):
            self._default_lines.extend(bytes(max(byte + 1 - len(self._default_lines), 4096)))
        self._default_lines[byte] |= 1 << (line & 7)
        return None

    def check_and_add(self, item_id: Any, line: int) -> int | None:
        """Record explicit ``item_id`` as used on ``line``; if it was used before, return that line."""
        if isinstance(item_id, int) and 0 < item_id < line and self._default_used(item_id):
            return item_id
        key = self._key(item_id)
        first = self._lookup(key)
        if first is not None:
            return first
        self._recent[key] = line
        if len(self._recent) >= self._spill_at:
            self._spill()
        return None

    def check_chunk(self, first: int, ids: list[Any]) -> dict[int, int]:
        """Check a chunk's ids in order; return ``{index: line that used the id first}`` of its duplicates.

        ``ids`` has an entry per line from line ``first`` on: an explicit id, ``True`` for a
        line whose id is its line number, or ``None`` for a line whose id does not count.

        >>> seen = SeenIds()
        >>> seen.check_chunk(1, ["a", True, None, "b"]), seen.check_chunk(5, ["b", 2, None])
        ({}, {0: 4, 1: 2})
        """
        if self._db is None and not self._default_lines and True not in ids and None not in ids:
            # The common case, at C speed: explicit ids, none seen before, none repeated.
            batch = dict(zip(map(self._key, ids), range(first, first + len(ids)), strict=True))
            if len(batch) == len(ids) and self._recent.keys().isdisjoint(batch):
                self._recent.update(batch)
                if len(self._recent) >= self._spill_at:
                    self._spill()
                return {}
        duplicates: dict[int, int] = {}
        for index, item_id in enumerate(ids):
            if item_id is None:
                continue
            line = first + index
            found = self.check_default(line) if item_id is True else self.check_and_add(item_id, line)
            if found is not None:
                duplicates[index] = found
        return duplicates

    def _lookup(self, key: str) -> int | None:
        first = self._recent.get(key)
        if first is not None:
            return first
        if self._db is not None and self._bloom_has(key):
            row = self._db.execute("SELECT line FROM ids WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return int(row[0])
        return None
