"""The duplicate-id guard: the first line to use an id keeps it, any later one is a duplicate.

Ids compare as JSON tells them apart (:func:`.fingerprints.identity`): ``5`` is not ``"5"``, and a
line without an id uses its line number. The guard is exact, runs in time linear in the ids, and
keeps its memory bounded however many ids a batch has (about 60 MB at most, reached at the first
spill, for ten million ids as for one; nothing for a numbered file). It holds:

- **runs of consecutive integers** (``[lo, hi)``, first used on lines ``lo + off`` ...): the ids
  of a numbered file, or lines without an id, cost one entry per run, whatever their number;
- **fingerprints** (:mod:`.fingerprints`, 61 bits, keyed at random) of every other id: the last
  ``spill_at`` in a dict with their lines, the older ones in a Bloom filter with, on disk, their
  lines (:class:`.id_store.SpilledFingerprints`);
- **every chunk's ids on disk** (:class:`.id_store.IdLog`), read only to confirm a fingerprint
  match: an id whose fingerprint was taken by a different id is kept by its identity in a dict
  of its own (rare: about one pair of ids in 2**61 share a fingerprint).

A chunk whose ids are all new and distinct is settled by C code a chunk at a time (dicts, maps,
itemgetter; on a 2-core VM about 0.05 µs an id in runs, 0.3 µs for other ids in memory and
about 1.2 µs once they spill: bench/producer.py). Anything else (a repeated id, an id of an odd
type from a forged result) goes through the exact path, id by id; ids the Bloom filter may
hold are looked up on disk one by one.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from itertools import compress, repeat
from operator import is_, is_not
from typing import Any

from .fingerprints import Fingerprints, identity
from .id_store import IdLog, SpilledFingerprints

__all__ = ["SeenIds"]

_NONE = type(None)
_BULK_TYPES = frozenset({int, str, bool, _NONE})
MIN_RUN = 128  # a chunk of consecutive integers shorter than this starts no run of its own


class SeenIds:
    """Remembers ids and the line that first used each one.

    Args:
        spill_at: fingerprints kept in memory with their lines before they move to the Bloom
            filter and disk.
        fingerprint_bits: fingerprint width; tests narrow it so that different ids collide.
        bloom_bits: Bloom filter size (a power of two).
        parts: how many parts the fingerprints on disk are grouped in (a power of two).
        salt_strings: see :class:`~.fingerprints.Fingerprints`.

    >>> seen = SeenIds()
    >>> seen.check_and_add("a", 1) is None, seen.check_and_add("a", 7)
    (True, 1)
    >>> seen.check_default(8) is None, seen.check_and_add(8, 9)
    (True, 8)
    """

    def __init__(
        self,
        spill_at: int = 100_000,
        *,
        fingerprint_bits: int = 61,
        bloom_bits: int = 1 << 28,
        parts: int = 1024,
        salt_strings: bool | None = None,
    ) -> None:
        self._fp = Fingerprints(fingerprint_bits, salt_strings)
        self._spill_at = spill_at
        self._bloom_bits, self._parts = bloom_bits, parts
        self._recent: dict[int, int] = {}  # fingerprint -> line
        self._spilled: SpilledFingerprints | None = None
        self._others: dict[str, int] = {}  # identity -> line, for ids whose fingerprint another id has
        self._log = IdLog()
        # Runs of consecutive integers [lo, hi), value v first used on line v + off; sorted, disjoint.
        self._run_lo, self._run_hi, self._run_off = array("q"), array("q"), array("q")
        # The smallest and largest integer (or line-number id) kept as a fingerprint.
        self._ints: tuple[int, int] | None = None

    def close(self) -> None:
        """Remove the guard's files now (they go anyway when the process ends)."""
        self._log.close()
        if self._spilled is not None:
            self._spilled.close()

    # --- the public API -----------------------------------------------------------------------

    def check_chunk(self, first: int, ids: list[Any]) -> dict[int, int]:
        """Check a chunk's ids in order; return ``{index: line that used the id first}`` of its duplicates.

        ``ids`` has an entry per line from line ``first`` on: an explicit id, ``True`` for a
        line whose id is its line number, or ``None`` for a line whose id does not count.

        >>> seen = SeenIds()
        >>> seen.check_chunk(1, ["a", True, None, "b"]), seen.check_chunk(5, ["b", 2, None])
        ({}, {0: 4, 1: 2})
        """
        if not ids:
            return {}
        types = set(map(type, ids))
        if self._as_run(first, ids, types):
            return {}
        found_at_once = self._at_once(first, ids, types)
        if found_at_once is not None:
            return found_at_once
        self._log.append(first, ids)
        duplicates: dict[int, int] = {}
        for index, item_id in enumerate(ids):
            if item_id is not None:
                found = self._check_one(item_id, first + index)
                if found is not None:
                    duplicates[index] = found
        self._spill_if_full()
        return duplicates

    def check_default(self, line: int) -> int | None:
        """Record that ``line`` uses its line number as id; return the line that used it first."""
        return self.check_and_add(True, line)

    def check_and_add(self, item_id: Any, line: int) -> int | None:
        """Record explicit ``item_id`` as used on ``line``; if it was used before, return that line.

        Lines (here and in :meth:`check_chunk`) come in increasing order, as a batch reads them.
        """
        self._log.append(line, [item_id])
        found = self._check_one(item_id, line)
        self._spill_if_full()
        return found

    # --- runs of consecutive integers ---------------------------------------------------------

    def _run_at(self, value: int) -> int | None:
        """The line that used integer ``value`` if a run holds it."""
        index = bisect_right(self._run_lo, value) - 1
        if index >= 0 and value < self._run_hi[index]:
            return value + self._run_off[index]
        return None

    def _runs_touch(self, lo: int, hi: int) -> bool:
        """Whether any run holds a value in ``[lo, hi]``."""
        index = bisect_right(self._run_lo, hi) - 1
        return index >= 0 and self._run_hi[index] > lo

    def _as_run(self, first: int, ids: list[Any], types: set[type]) -> bool:
        """Keep the chunk as a run if its ids are consecutive integers (or all line numbers), all new."""
        count = len(ids)
        if types == {bool} and not any(map(is_not, ids, repeat(True))):
            lo, off = first, 0
        elif types == {int} and ids == list(range(ids[0], ids[0] + count)):
            lo = ids[0]
            off = first - lo
        else:
            return False
        hi = lo + count
        if self._runs_touch(lo, hi - 1) or (self._ints is not None and self._ints[0] < hi and lo <= self._ints[1]):
            return False
        index = bisect_right(self._run_lo, lo) - 1
        if index >= 0 and self._run_hi[index] == lo and self._run_off[index] == off:
            self._run_hi[index] = hi  # the common case: the next chunk of a numbered file
        elif count >= MIN_RUN:
            self._run_lo.insert(index + 1, lo)
            self._run_hi.insert(index + 1, hi)
            self._run_off.insert(index + 1, off)
        else:
            return False
        return True

    # --- a whole chunk at once ----------------------------------------------------------------

    def _fingerprints(self, first: int, ids: list[Any], types: set[type]) -> tuple[list[int], list[int], list[int]]:
        """The chunk's fingerprints, their lines and the integer values among them (ids of bulk types only)."""
        lines = range(first, first + len(ids))
        if types == {int}:
            return self._fp.of_ints(ids), list(lines), ids
        if types == {str}:
            return self._fp.of_strs(ids), list(lines), []
        kinds = list(map(type, ids))
        fps: list[int] = []
        at: list[int] = []
        ints: list[int] = []
        for kind in (int, str, bool):
            if kind in types:
                chosen = list(map(is_, kinds, repeat(kind)))
                values = list(compress(lines if kind is bool else ids, chosen))
                fps += self._fp.of_strs(values) if kind is str else self._fp.of_ints(values)
                at += compress(lines, chosen)
                if kind is not str:
                    ints += values
        return fps, at, ints

    def _at_once(self, first: int, ids: list[Any], types: set[type]) -> dict[int, int] | None:
        """Record the chunk by C code; return its duplicates, or None when only the exact path can tell.

        It can when the chunk's fingerprints are distinct, none is in memory and it has no
        integer a run may hold: then an id can only repeat one that left memory, and only the
        ids whose fingerprints the Bloom filter may hold are looked up.
        """
        if not types <= _BULK_TYPES or (bool in types and any(map(is_, ids, repeat(False)))):
            return None  # an id of another type, only from a forged result
        fps, lines, ints = self._fingerprints(first, ids, types)
        if not fps:
            return {}
        recent, spilled = self._recent, self._spilled
        low, high = (min(ints), max(ints)) if ints else (0, -1)
        if (ints and self._runs_touch(low, high)) or not recent.keys().isdisjoint(fps):
            return None
        size = len(recent)
        recent.update(zip(fps, lines, strict=True))
        if len(recent) != size + len(fps):  # a fingerprint repeats within the chunk
            for fp in fps:
                recent.pop(fp, None)
            return None
        self._log.append(first, ids)
        duplicates: dict[int, int] = {}
        for index in spilled.remember(fps) if spilled is not None else ():
            fp, line = fps[index], lines[index]
            taken = spilled.stored_line(fp)  # type: ignore[union-attr]
            if taken is None:
                continue  # the Bloom filter's false match: a new id after all
            del recent[fp]
            key = identity(ids[line - first], line)
            if identity(self._log.id_at(taken), taken) == key:
                duplicates[line - first] = taken
            elif key in self._others:
                duplicates[line - first] = self._others[key]
            else:
                self._others[key] = line  # the fingerprint is another id's
        if ints:
            self._widen_ints(low, high)
        self._spill_if_full()
        return duplicates

    # --- one id at a time ---------------------------------------------------------------------

    def _check_one(self, item_id: Any, line: int) -> int | None:
        value = line if item_id is True else item_id if type(item_id) is int else None
        if value is not None:
            found = self._run_at(value)
            if found is not None:
                return found
        key = identity(item_id, line)
        found = self._others.get(key)
        if found is not None:
            return found
        fp = self._fp.of(item_id, line)
        taken = self._recent.get(fp)
        if taken is None and self._spilled is not None:
            taken = self._spilled.line_of(fp)
        if taken is not None:
            if identity(self._log.id_at(taken), taken) == key:
                return taken
            self._others[key] = line  # the fingerprint is another id's
        else:
            self._recent[fp] = line
            if self._spilled is not None:
                self._spilled.remember([fp])
        if value is not None:
            self._widen_ints(value, value)
        return None

    def _widen_ints(self, low: int, high: int) -> None:
        """Integers from ``low`` to ``high`` may now be kept as fingerprints."""
        self._ints = (low, high) if self._ints is None else (min(low, self._ints[0]), max(high, self._ints[1]))

    def _spill_if_full(self) -> None:
        if len(self._recent) < self._spill_at:
            return
        fps, lines = list(self._recent), list(self._recent.values())
        if self._spilled is None:
            self._spilled = SpilledFingerprints(self._fp.bits, self._bloom_bits, self._parts)
            self._spilled.remember(fps)  # later ones enter the Bloom filter as they come
        self._spilled.store(fps, lines)
        self._recent = {}
