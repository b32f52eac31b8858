"""Keyed fingerprints of item ids: what the duplicate-id guard keeps instead of the ids themselves.

A fingerprint is a number of ``bits`` bits (61 by default) computed from an id with a key drawn
at random for each guard, so input cannot aim ids at one fingerprint, nor at one slot of the
structures that hold them. Two ids that are the same id (see :func:`identity`) always have the
same fingerprint; two different ids rarely do (about one pair in 2**61), and when they do, the
guard compares the ids themselves: a shared fingerprint never makes a duplicate.

- Integers: ``x = hi * 2**60 + lo`` gives ``hash(lo * a + hi * b)``, ``a`` and ``b`` secret.
  CPython hashes an integer as its value modulo the prime 2**61 - 1, so this is
  ``lo * a + hi * b mod (2**61 - 1)``: two different ids (at most 20 digits) share it for one
  key in 2**61, and no slot of a structure can be aimed at without the key (never ``hash(x)``
  alone: ids k·(2**61 - 1) would all collide, in public). For ``0 <= x < 2**60`` it is ``x * a``.
- Strings: CPython's string hash, SipHash-1-3 under a 128-bit key the interpreter draws at
  start-up (one batch is one process). When ``PYTHONHASHSEED`` fixes that key, a random prefix
  per guard keys it instead (a copy of the string: slower, still linear).

Both are computed a chunk at a time by C code (``map`` over builtins), a few tens of
nanoseconds an id.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterable
from itertools import repeat
from operator import add, and_, mul, rshift
from typing import Any

__all__ = ["Fingerprints", "identity"]

_PRIME = (1 << 61) - 1  # CPython's modulus for integer hashes
_LOW = (1 << 60) - 1


def _process_key_is_random() -> bool:
    """True when this interpreter drew its string-hash key at random (PYTHONHASHSEED unset or ``random``)."""
    return bool(sys.flags.hash_randomization) and os.environ.get("PYTHONHASHSEED", "random") == "random"


def identity(item_id: Any, line: int) -> str:
    """What makes two ids the same id: ``5`` is not ``"5"``, ``-0`` is ``0``, and ``True`` (an item
    without an id) is its line number.

    >>> identity(5, 9), identity("5", 9), identity(True, 9)
    ('i5', 's5', 'i9')
    """
    if item_id is True:
        return f"i{line}"
    return f"i{item_id}" if isinstance(item_id, int) else f"s{item_id}"


class Fingerprints:
    """The keyed fingerprint function of one guard.

    Args:
        bits: fingerprint width; tests narrow it to make different ids share fingerprints.
        salt_strings: key the string hash with a random prefix (default: only when
            ``PYTHONHASHSEED`` fixed the interpreter's key).
    """

    def __init__(self, bits: int = 61, salt_strings: bool | None = None) -> None:
        if not 1 <= bits <= 61:
            raise ValueError("fingerprints have 1 to 61 bits")
        self.bits = bits
        self.mask = (1 << bits) - 1
        self._a = 2 + secrets.randbelow(_PRIME - 3)
        self._b = 2 + secrets.randbelow(_PRIME - 3)
        salt = (not _process_key_is_random()) if salt_strings is None else salt_strings
        self._salt = secrets.token_hex(16) if salt else None

    def of_ints(self, values: list[int]) -> list[int]:
        """Fingerprints of integers (exactly ``int``, never ``bool``): ``(lo * a + hi * b) mod (2**61 - 1)``
        of ``x = hi * 2**60 + lo``, which is ``x * a`` for ``0 <= x < 2**60``."""
        if not values:
            return []
        a, mask = repeat(self._a), repeat(self.mask)
        if min(values) >= 0 and max(values) <= _LOW:
            return list(map(and_, map(hash, map(mul, values, a)), mask))
        low = map(mul, map(and_, values, repeat(_LOW)), a)
        high = map(mul, map(rshift, values, repeat(60)), repeat(self._b))
        return list(map(and_, map(hash, map(add, low, high)), mask))

    def of_strs(self, values: Iterable[str]) -> list[int]:
        """Fingerprints of strings (exactly ``str``)."""
        if self._salt is not None:
            values = map(self._salt.__add__, values)
        return list(map(and_, map(hash, values), repeat(self.mask)))

    def of(self, item_id: Any, line: int) -> int:
        """The fingerprint of any id, consistent with :func:`identity`: same identity, same fingerprint."""
        if item_id is True:
            return self.of_ints([line])[0]
        if type(item_id) is int:
            return self.of_ints([item_id])[0]
        if isinstance(item_id, int):  # an int subclass (False from a forged result): its own kind
            return self.of_strs(["\x00" + identity(item_id, line)])[0]
        # Anything else is the same id as the string it prints as, as identity() says.
        return self.of_strs([item_id if type(item_id) is str else str(item_id)])[0]
