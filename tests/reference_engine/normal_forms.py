"""Unicode normalization forms in linear time, byte-identical to :func:`unicodedata.normalize`.

CPython puts combining marks in canonical order with an insertion sort, so a long run of marks
out of order costs the square of its length: ``"a" + "\\u0301" * k + "\\u0316" * k`` takes 11 s in
``unicodedata.normalize("NFD", ...)`` at k = 40,000, and minutes at 1 MiB. Normalization is
defined as: decompose every character on its own, stable-sort each run of non-starters by
combining class, then (NFC, NFKC) compose. So when a text holds a long run, this module does the
first two steps itself (the decomposition in short pieces, the sort with :func:`sorted`) and hands
CPython a text already decomposed and in order: its sort then only confirms the order, in one
pass, and its composition gives the very same result.

``unicodedata.is_normalized`` needs no such help. Its quick check answers "no" at the first mark
out of order, and every character whose decomposition could put marks out of order (U+0344,
U+0F73 and the like, and every compatibility decomposition for NFKC) is a quick-check "no" too:
when it is unsure and normalizes the text, the decomposition is in order but for the two or three
marks each precomposed letter brings, and its sort is linear. ``tests/test_hostile_time.py`` runs
it on every hostile input through the steps' fast paths.

>>> normalize("NFC", "e\\u0301")
'é'
>>> normalize("NFD", "a" + "\\u0301\\u0316" * 2) == "a\\u0316\\u0316\\u0301\\u0301"
True
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

__all__ = ["Form", "normalize"]

Form = Literal["NFC", "NFD", "NFKC", "NFKD"]

# Every character with a non-zero combining class lies below U+20000 in the Unicode versions
# Python knows (14.0 to 15.1); above it, only CJK compatibility ideographs decompose, into
# starters. A test checks this against a scan of all of Unicode, so a newer Python that breaks
# it fails the test rather than silently losing the linear bound (the output stays right either
# way: this table only chooses the path).
_SCAN_LIMIT = 0x20000

# Runs shorter than this go to CPython as they are: its sort costs at most _LONG_RUN² per run
# there (18 characters a decomposition at most), and prompts in real scripts (Vietnamese,
# Arabic with vowel marks, Devanagari, Tibetan stacks) have runs of a handful of characters.
_LONG_RUN = 32
# A long run is decomposed by CPython in pieces of this many characters.
_PIECE = 64


def _char_class(codepoints: list[int]) -> str:
    ranges: list[list[int]] = []
    for cp in codepoints:
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


def _tables(limit: int) -> tuple[list[int], list[int]]:
    """(Non-starters, characters whose decomposition holds a non-starter), below ``limit``."""
    nonstarters = []
    contributors = []
    for cp in range(limit):
        char = chr(cp)
        if unicodedata.combining(char):
            nonstarters.append(cp)
            contributors.append(cp)
        elif unicodedata.decomposition(char) and any(
            unicodedata.combining(part) for part in unicodedata.normalize("NFKD", char)
        ):
            contributors.append(cp)  # 'é', and U+0F73 (a starter made of two non-starters)
    return nonstarters, contributors


_NONSTARTERS, _CONTRIBUTORS = _tables(_SCAN_LIMIT)
# A run in a decomposed text: two or more non-starters in a row.
_NONSTARTER_RUN = re.compile(f"[{_char_class(_NONSTARTERS)}]{{2,}}")
# Characters that may add to a run of non-starters once decomposed. A character outside this
# set decomposes into starters only, so it ends every run: no run of the decomposed text spans
# one of them, and the text can be decomposed piece by piece around them.
_LONG_CONTRIBUTING_RUN = re.compile(f"[{_char_class(_CONTRIBUTORS)}]{{{_LONG_RUN},}}")
# The same without the characters above U+FFFF, for text that has none: re checks a class of
# BMP characters with one table lookup, and one with astral ranges range by range (13 × slower).
_LONG_BMP_RUN = re.compile(f"[{_char_class([cp for cp in _CONTRIBUTORS if cp <= 0xFFFF])}]{{{_LONG_RUN},}}")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _long_runs(text: str) -> re.Pattern[str]:
    return _LONG_BMP_RUN if _ASTRAL.search(text) is None else _LONG_CONTRIBUTING_RUN


def _sort_run(match: re.Match[str]) -> str:
    # Stable, like CPython's insertion sort: equal classes keep their order.
    return "".join(sorted(match.group(), key=unicodedata.combining))


def _decompose_run(run: str, form: Form) -> str:
    # Each piece comes back decomposed and sorted within itself; a run of non-starters may span
    # pieces, and sorting it again as a whole gives what sorting the whole decomposition gives.
    pieces = "".join(unicodedata.normalize(form, run[i : i + _PIECE]) for i in range(0, len(run), _PIECE))
    return _NONSTARTER_RUN.sub(_sort_run, pieces)


def _decompose(text: str, form: Form) -> str:
    """``unicodedata.normalize(form, text)`` for a decomposition form, in linear time."""
    parts = []
    pos = 0
    for run in _long_runs(text).finditer(text):
        parts.append(unicodedata.normalize(form, text[pos : run.start()]))
        parts.append(_decompose_run(run.group(), form))
        pos = run.end()
    parts.append(unicodedata.normalize(form, text[pos:]))
    return "".join(parts)


def normalize(form: Form, text: str) -> str:
    """The same string as ``unicodedata.normalize(form, text)``, in time linear in its length."""
    # Already normalized (most text): one quick pass. Then the scan for long runs, which costs
    # more than CPython's quick check, only for text that needs work.
    if unicodedata.is_normalized(form, text) or _long_runs(text).search(text) is None:
        return unicodedata.normalize(form, text)
    decomposition: Form = "NFKD" if form in ("NFKC", "NFKD") else "NFD"
    decomposed = _decompose(text, decomposition)
    if form == decomposition:
        return decomposed
    # Already decomposed and in canonical order: CPython decomposes it to itself, finds it
    # sorted in one pass, and composes it exactly as it would have composed its own.
    return unicodedata.normalize(form, decomposed)
