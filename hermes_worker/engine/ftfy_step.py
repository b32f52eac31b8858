"""The ``ftfy`` step: ftfy's default repairs, byte-identical to ``ftfy.fix_text``, for the work a text needs.

ftfy splits a text into lines (its segments) and repeats a round of fixes on each until it stops
changing: unescape HTML entities, repair the encoding (mojibake), then eight character fixers
(C1 controls, ligatures, widths, quotes, line breaks, surrogates, terminal escapes, control
characters) and NFC. Almost every line of real text needs none of it, and what the rest needs is
nearly always one character fixer. Each shortcut here proves, from ftfy's own tables and
regular expressions, that ftfy would do exactly the same:

- a text holding none of the characters any fix acts on (:data:`FTFY_TOUCHABLE`), none of the
  characters every piece of mojibake must contain (:data:`MOJIBAKE_REQUIRED`, derived from
  ftfy's mojibake regex), and in NFC is returned as it is, after one scan and a quick check;
- otherwise only the lines holding such a character are looked at, found by the same scan;
- a line with no HTML entity and no possible mojibake gets its one round of character fixers
  (each only if one of its characters is there) and NFC; when nothing in the result could be
  fixed again, ftfy's second round would change nothing, and that result is ftfy's;
- everything else goes to :mod:`.ftfy_bounded` (ftfy's own control flow, with a work budget).

The differential tests compare this with ``ftfy.fix_text`` and with the engine as it was.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

import ftfy
import ftfy.badness
import ftfy.chardata
import ftfy.fixes

from . import ftfy_bounded, normal_forms

__all__ = [
    "FTFY_CONFIG",
    "FTFY_TOUCHABLE",
    "FTFY_TOUCHABLE_CHARS",
    "MOJIBAKE_REQUIRED",
    "MOJIBAKE_REQUIRED_CHARS",
    "char_class",
    "fix_with_ftfy",
    "ftfy_explain",
    "ftfy_segments",
    "looks_bad",
    "mojibake_possible",
    "untouched_by_ftfy",
]

FTFY_CONFIG = ftfy.TextFixerConfig(explain=False)
_NO_HTML_CONFIG = FTFY_CONFIG._replace(unescape_html=False)
_EXPLAIN_CONFIG = ftfy.TextFixerConfig(explain=True)


def char_class(codepoints: Iterable[int]) -> str:
    """A regular-expression character class matching exactly ``codepoints`` (ranges merged).

    >>> char_class([0x61, 0x62, 0x63, 0x78])
    '[a-cx]'
    """
    ranges: list[list[int]] = []
    for cp in sorted(set(codepoints)):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    body = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    return f"[{body}]"


def _finite_chars(op: Any, arg: Any) -> set[int] | None:
    """The code points one regex element matches, or None if the set is open-ended."""
    if str(op) == "LITERAL":
        return {arg}
    if str(op) != "IN":
        return None
    found: set[int] = set()
    for kind, value in arg:
        if str(kind) == "LITERAL":
            found.add(value)
        elif str(kind) == "RANGE":
            found.update(range(value[0], value[1] + 1))
        else:
            return None  # a category or a negation: not a finite set
    return found


def _parsed(pattern: re.Pattern[str]) -> Any:
    import re._parser as re_parser  # type: ignore[import-not-found]  # the parser re itself uses

    if pattern.flags & re.IGNORECASE:
        raise ValueError("a literal would also match its other cases")
    return re_parser.parse(pattern.pattern, pattern.flags)


def _first_chars(pattern: re.Pattern[str]) -> set[int]:
    """The characters a match of ``pattern`` can start with, when its first element is a finite set."""
    tree = _parsed(pattern)
    found = _finite_chars(*tree.data[0]) if tree.data else None
    if found is None:
        raise ValueError(f"no finite first character in {pattern.pattern!r}")
    return found


# --- what each of ftfy's fixes acts on ----------------------------------------------------------


def _fixer_chars() -> dict[str, frozenset[int]]:
    """For each character fixer of a round, the characters without which it returns its input.

    From ftfy's own tables and patterns, so it follows the pinned version; fix_line_breaks is a
    chain of ``str.replace`` calls, its characters are written out (``tests`` check them all).
    """
    chars = {
        "fix_c1_controls": _first_chars(ftfy.chardata.C1_CONTROL_RE),
        "fix_latin_ligatures": set(ftfy.chardata.LIGATURES),
        "fix_character_width": set(ftfy.chardata.WIDTH_MAP),
        "uncurl_quotes": _first_chars(ftfy.chardata.SINGLE_QUOTE_RE) | _first_chars(ftfy.chardata.DOUBLE_QUOTE_RE),
        "fix_line_breaks": {ord(c) for c in "\r\u2028\u2029\x85"},
        "fix_surrogates": _first_chars(ftfy.fixes.SURROGATE_RE),
        "remove_terminal_escapes": _first_chars(ftfy.fixes.ANSI_RE),
        "remove_control_chars": set(ftfy.chardata.CONTROL_CHARS),
    }
    if set(chars) != set(ftfy_bounded._OUTER_FIXERS):
        raise ValueError("ftfy's fixers are not the ones this module knows")
    return {name: frozenset(chars[name]) for name in ftfy_bounded._OUTER_FIXERS}


_FIXER_CHARS = _fixer_chars()
# Every character a fix acts on: the fixers', and "&" for HTML entities.
FTFY_TOUCHABLE_CHARS = frozenset({ord("&")}.union(*_FIXER_CHARS.values()))
FTFY_TOUCHABLE = re.compile(char_class(FTFY_TOUCHABLE_CHARS))
_FIXABLE = re.compile(char_class(set().union(*_FIXER_CHARS.values())))
# (name, ftfy's own function, its characters): a round's character fixers in ftfy's order.
_FIXERS = tuple(
    (name, ftfy.FIXERS[name], re.compile(char_class(chars))) for name, chars in _FIXER_CHARS.items() if chars
)
_ROUND_OF_DEFAULTS = all(getattr(FTFY_CONFIG, name) for name in _FIXER_CHARS) and FTFY_CONFIG.normalization == "NFC"


def _rarity(chars: AbstractSet[int]) -> tuple[int, int, int]:
    letters = sum(1 for c in chars if unicodedata.category(chr(c)).startswith("L"))
    return (sum(c < 0x80 for c in chars), letters, len(chars))


def _mojibake_required_chars() -> frozenset[int] | None:
    """A character class every match of ftfy's mojibake regex must touch, or None.

    ftfy's ``is_bad`` is one regex of a few dozen alternatives that ``re`` tries at every
    position: nearly all of the ftfy step's time on clean text. Each alternative needs, at a
    fixed place in its sequence, one character out of a small finite set (mostly rare symbols,
    'Ã', 'Â', C1 controls). A text holding none of the union of those sets cannot match, and
    one C-level scan proves it. Derived from the compiled regex of the pinned ftfy, so it
    follows ftfy; anything unexpected turns the shortcut off rather than guessing.
    """
    try:
        tree = _parsed(ftfy.badness.BADNESS_RE)
        if len(tree.data) != 1 or str(tree.data[0][0]) != "BRANCH":
            return None
        union: set[int] = set()
        for branch in tree.data[0][1][1]:
            # Only top-level elements of the sequence: each one is in every match of it.
            sets = [found for op, arg in branch.data if (found := _finite_chars(op, arg))]
            if not sets:
                return None
            # The rarest set: no ASCII, then as few letters as possible (á, ö, ł are common in
            # clean text; ¦, ¤, Ã are not), then the smallest.
            union |= min(sets, key=_rarity)
        return frozenset(union)
    except Exception:  # a private parser that changed: run without the shortcut
        return None


MOJIBAKE_REQUIRED_CHARS = _mojibake_required_chars()
MOJIBAKE_REQUIRED = re.compile(char_class(MOJIBAKE_REQUIRED_CHARS)) if MOJIBAKE_REQUIRED_CHARS is not None else None


def _badness_branches() -> tuple[re.Pattern[str], dict[str, int], tuple[tuple[int, re.Pattern[str]], ...]] | None:
    """ftfy's mojibake regex taken apart: each alternative compiled alone, with what it needs.

    ``is_bad`` is true when any alternative matches anywhere: the same as when one of them,
    searched alone, matches. Each alternative needs one character of each of its fixed non-ASCII
    sets ('Ã' then a C1 control, a box-drawing character then a currency sign...); a text lacking
    one of them cannot match it, and most text lacks them all. Returns (a class of every such
    character, each character's bits, and per alternative the bits it needs and its pattern), or
    None when the regex is not what this expects.
    """
    import re._compiler as re_compiler  # type: ignore[import-not-found]  # re's own compiler

    try:
        pattern = ftfy.badness.BADNESS_RE
        tree = _parsed(pattern)
        if len(tree.data) != 1 or str(tree.data[0][0]) != "BRANCH" or pattern.groups:
            return None
        bits_of: dict[str, int] = {}
        branches = []
        bit = 1
        for branch in tree.data[0][1][1]:
            needs = 0
            for op, arg in branch.data:
                found = _finite_chars(op, arg)
                if not found or min(found) < 0x80:
                    continue  # open-ended, or ASCII: in most text, no help
                for cp in found:
                    bits_of[chr(cp)] = bits_of.get(chr(cp), 0) | bit
                needs |= bit
                bit <<= 1
            if not needs:
                return None
            branches.append((needs, re_compiler.compile(branch, pattern.flags)))
        return re.compile(char_class(map(ord, bits_of))), bits_of, tuple(branches)
    except Exception:  # a private parser or compiler that changed: use is_bad itself
        return None


_BADNESS = _badness_branches()


def looks_bad(segment: str) -> bool:
    """``ftfy.badness.is_bad(segment)``: only the alternatives whose characters are there are searched.

    >>> looks_bad("sÃ³"), looks_bad("café, à bientôt")
    (True, False)
    """
    if _BADNESS is None:
        return bool(ftfy.badness.is_bad(segment))
    chars, bits_of, _ = _BADNESS
    present = 0
    for char in set(chars.findall(segment)):
        present |= bits_of[char]
    if not present:
        return False
    return any(branch.search(segment) is not None for branch in _searched(present))


@functools.lru_cache(maxsize=4096)
def _searched(present: int) -> tuple[re.Pattern[str], ...]:
    """The alternatives whose every needed character set is among the ``present`` bits."""
    assert _BADNESS is not None
    return tuple(branch for needs, branch in _BADNESS[2] if needs & present == needs)


# One scan for the whole text: a character some fix acts on, or one that every piece of mojibake
# holds. None when the mojibake regex could not be taken apart.
_LOOK = (
    re.compile(char_class(FTFY_TOUCHABLE_CHARS | MOJIBAKE_REQUIRED_CHARS))
    if MOJIBAKE_REQUIRED_CHARS is not None
    else None
)
_is_normalized = unicodedata.is_normalized


# --- segments -----------------------------------------------------------------------------------


def untouched_by_ftfy(segment: str) -> bool:
    """True when ftfy's default fixes provably return ``segment`` unchanged.

    Three scans instead of ftfy's two rounds of a dozen passes: no character any fix acts on,
    nothing that looks like mojibake (ftfy's own ``is_bad`` test, which is exactly when its
    encoding fixer gives up), and already in NFC.
    """
    if FTFY_TOUCHABLE.search(segment) is not None:
        return False
    if segment.isascii():
        return True
    if MOJIBAKE_REQUIRED is not None and MOJIBAKE_REQUIRED.search(segment) is None:
        return _is_normalized("NFC", segment)
    return not looks_bad(segment) and _is_normalized("NFC", segment)


def ftfy_segments(text: str, config: ftfy.TextFixerConfig) -> Iterator[tuple[str, ftfy.TextFixerConfig]]:
    """Split text the way :func:`ftfy.fix_text` does, yielding each segment with its config.

    Mirrors ftfy exactly, including its rule that once a segment contains ``<`` (so the text
    looks like HTML), HTML entities are no longer unescaped in that or any later segment.
    """
    pos = 0
    limit = config.max_decode_length
    while pos < len(text):
        textbreak = text.find("\n", pos) + 1
        if textbreak == 0:
            textbreak = len(text)
        if textbreak - pos > limit:
            textbreak = pos + limit
        segment = text[pos:textbreak]
        if config.unescape_html == "auto" and "<" in segment:
            config = config._replace(unescape_html=False)
        yield segment, config
        pos = textbreak


def mojibake_possible(text: str) -> bool:
    """False when no line of ``text`` looks like mojibake to ftfy (its ``is_bad``, line by line).

    Only the lines holding a character every piece of mojibake needs are tested.

    >>> mojibake_possible("café\\nà bientôt"), mojibake_possible("ok\\ncafÃ©")
    (False, True)
    """
    if MOJIBAKE_REQUIRED is None or len(text) > FTFY_CONFIG.max_decode_length:
        return True  # no shortcut, or ftfy cuts long lines into pieces: assume the worst
    look = MOJIBAKE_REQUIRED.search(text)
    while look is not None:
        start = text.rfind("\n", 0, look.start()) + 1
        end = text.find("\n", look.start()) + 1 or len(text)
        if looks_bad(text[start:end]):
            return True
        look = MOJIBAKE_REQUIRED.search(text, end)
    return False


def _no_entity_or_mojibake(segment: str, config: ftfy.TextFixerConfig) -> bool:
    """True when a round's HTML and encoding repairs leave ``segment`` as it is.

    ``unescape_html`` only replaces matches of ftfy's entity pattern; the encoding repair gives
    up at once on ASCII and on text ftfy's ``is_bad`` does not flag (ftfy's own first test).
    """
    if config.unescape_html and "&" in segment and ftfy.chardata.HTML_ENTITY_RE.search(segment) is not None:
        return False
    if segment.isascii():
        return True
    if MOJIBAKE_REQUIRED is not None and MOJIBAKE_REQUIRED.search(segment) is None:
        return True
    return not looks_bad(segment)


def _round_leaves(segment: str, config: ftfy.TextFixerConfig) -> bool:
    """True when one round of ftfy's fixes provably returns ``segment`` unchanged."""
    return (
        _FIXABLE.search(segment) is None
        and (segment.isascii() or _is_normalized("NFC", segment))
        and _no_entity_or_mojibake(segment, config)
    )


def _character_round(segment: str) -> str:
    """One round of ftfy's character fixers and NFC, each only where one of its characters is."""
    for _name, fixer, chars in _FIXERS:
        if chars.search(segment) is not None:
            segment = fixer(segment)
    if segment.isascii():
        return segment
    return normal_forms.normalize("NFC", segment)


def _fix_segment(segment: str, config: ftfy.TextFixerConfig) -> str:
    """``ftfy.fix_and_explain(segment, config).text``, within :mod:`.ftfy_bounded`'s budget.

    Remembered for short segments: text made of a few lines repeated pays for each once.
    """
    if untouched_by_ftfy(segment):
        return segment
    if len(segment) <= _MEMO_MAX_LEN:
        return _fixed_short_segment(segment, config)
    return _fix_touched_segment(segment, config)


_MEMO_MAX_LEN = 256


@functools.lru_cache(maxsize=1024)
def _fixed_short_segment(segment: str, config: ftfy.TextFixerConfig) -> str:
    return _fix_touched_segment(segment, config)


def _fix_touched_segment(segment: str, config: ftfy.TextFixerConfig) -> str:
    if _ROUND_OF_DEFAULTS and _no_entity_or_mojibake(segment, config):
        # Round 1 is exactly the character round (nothing for the HTML and encoding repairs);
        # ftfy stops after it if it changed nothing, or after round 2 if that changes nothing.
        # Two rounds take a fifth of the segment's work budget: ftfy's loop cannot run out here.
        fixed = _character_round(segment)
        if fixed == segment or _round_leaves(fixed, config):
            return fixed
    return ftfy_bounded.fix_segment(segment, config)


def fix_with_ftfy(text: str) -> str:
    """ftfy's default repairs, byte-identical to ``ftfy.fix_text(text)``, with fast paths.

    Repairs mojibake, HTML entities (unless the text looks like HTML), curly quotes, Latin
    ligatures, full-width characters, line breaks, terminal escapes, and applies NFC.

    In linear time: ftfy repeats its fixes on a line until it stops changing, and text built for
    it (an entity escaped a hundred times, "Â" × k + "©", which ftfy peels one "Â" a pass) can
    make that as many passes as the line has characters. Each line (ftfy's segment) may spend
    :data:`~.ftfy_bounded.WORK_FACTOR` (20) times its length plus a small allowance (see
    :mod:`.ftfy_bounded`); real text needs a third of that at most, so its result is
    ``ftfy.fix_text``'s to the byte. Past the allowance (an entity escaped more than 13 times,
    over 20 "Â" before a "©") the line is returned as the last completed pass left it: partly
    repaired, and the profile's validation reports ``converged: false``.

    >>> fix_with_ftfy("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.")
    "The Mona Lisa doesn't have eyebrows."
    >>> fix_with_ftfy("Menu:\\nÃ  la carte")
    'Menu:\\nà la carte'
    """
    if _LOOK is None:  # no mojibake shortcut: only ASCII text can skip ftfy's tests
        if FTFY_TOUCHABLE.search(text) is None and text.isascii():
            return text
        return _fix_each_segment(text)
    # Only per-character tests may judge the whole text at once, and NFC: a line break is a
    # starter that nothing composes with, so a text in NFC has every line in NFC. ftfy's
    # badness test is not: "Menu:\nÃ  la carte" looks fine as a whole while its second line
    # looks bad, and ftfy judges line by line, so the mojibake test runs on the lines.
    look = _LOOK.search(text)
    in_nfc = text.isascii() or _is_normalized("NFC", text)
    if look is None and in_nfc:
        return text  # no fix applies to any character, and no line can look like mojibake
    if not in_nfc or len(text) > FTFY_CONFIG.max_decode_length:
        return _fix_each_segment(text)  # lines not in NFC, or ftfy cuts lines too long into pieces
    # Only the lines holding a character some fix acts on or mojibake needs: the others are
    # untouched. A line is repaired as ftfy repairs it: entities stay once a '<' was seen.
    first_tag = text.find("<")
    parts: list[str] = []
    done = 0
    while look is not None:
        start = text.rfind("\n", 0, look.start()) + 1
        end = text.find("\n", look.start()) + 1 or len(text)
        segment = text[start:end]
        config = _NO_HTML_CONFIG if 0 <= first_tag < end else FTFY_CONFIG
        fixed = _fix_segment(segment, config)
        if fixed != segment:
            parts += (text[done:start], fixed)
            done = end
        look = _LOOK.search(text, end)
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _fix_each_segment(text: str) -> str:
    out = []
    untouched = True
    for segment, config in ftfy_segments(text, FTFY_CONFIG):
        fixed = _fix_segment(segment, config)
        untouched = untouched and fixed == segment
        out.append(fixed)
    return text if untouched else "".join(out)


def ftfy_explain(text: str) -> list[str]:
    """The ftfy repairs that :func:`fix_with_ftfy` applies to ``text``, in order, deduplicated.

    >>> ftfy_explain("sÃ³")
    ['encode:latin-1', 'decode:utf-8']
    """
    seen: dict[str, None] = {}
    for segment, segment_config in ftfy_segments(text, _EXPLAIN_CONFIG):
        if untouched_by_ftfy(segment):
            continue
        explanation = ftfy_bounded.fix_and_explain(segment, segment_config).explanation or []
        for action, parameter in explanation:
            seen.setdefault(f"{action}:{parameter}", None)
    return list(seen)
