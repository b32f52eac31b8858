"""Normalization steps: each one a pure ``str -> str`` function, registered by name.

Every step is cheap on text it has nothing to do with: it first proves, with one C-speed scan,
that the text holds nothing it would change, and returns the very same string object. Profiles
(:mod:`.profiles`) are ordered lists of these names.

A step may declare ``forbids``: a regular expression matching characters that can never be in
its output. Validation (:mod:`.validate`) uses it to check a profile's promises.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import ftfy
import ftfy.badness
import ftfy.chardata

from . import ftfy_bounded, normal_forms

__all__ = ["STEPS", "Step", "ftfy_explain"]


@dataclass(frozen=True, slots=True)
class Step:
    """A named text transformation.

    Attributes:
        name: the name profiles use.
        apply: the pure function.
        summary: one line for ``hermes profiles`` and the docs.
        forbids: characters this step guarantees are absent from its output, or None.
    """

    name: str
    apply: Callable[[str], str]
    summary: str
    forbids: re.Pattern[str] | None = None


# --- ftfy -------------------------------------------------------------------------------------

_FTFY_CONFIG = ftfy.TextFixerConfig(explain=False)
_FTFY_EXPLAIN_CONFIG = ftfy.TextFixerConfig(explain=True)


def _ftfy_touchable() -> re.Pattern[str]:
    """Every character that one of ftfy's default fixes (other than mojibake detection) acts on.

    Built from ftfy's own tables, so it follows the pinned ftfy version; a property test checks
    that the fast path stays byte-identical to ``ftfy.fix_text``.
    """
    codepoints = {ord(c) for c in "&\x1b\r\u2028\u2029\x85\u02bc"}  # entities, escapes, breaks
    codepoints.update(range(0x80, 0xA0))  # C1 controls (fix_c1_controls)
    codepoints.update(range(0x2018, 0x2020))  # curly quotes (uncurl_quotes)
    codepoints.update(range(0xD800, 0xE000))  # surrogates (fix_surrogates)
    for table in (ftfy.chardata.CONTROL_CHARS, ftfy.chardata.LIGATURES, ftfy.chardata.WIDTH_MAP):
        codepoints.update(table)
    return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(codepoints)) + "]")


_FTFY_TOUCHABLE = _ftfy_touchable()


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


def _rarity(chars: AbstractSet[int]) -> tuple[int, int, int]:
    letters = sum(1 for c in chars if unicodedata.category(chr(c)).startswith("L"))
    return (sum(c < 0x80 for c in chars), letters, len(chars))


def _mojibake_required_chars() -> re.Pattern[str] | None:
    """A character class every match of ftfy's mojibake regex must touch, or None.

    ftfy's ``is_bad`` is one regex of a few dozen alternatives that ``re`` tries at every
    position: nearly all of the ftfy step's time on clean text. Each alternative needs, at a
    fixed place in its sequence, one character out of a small finite set (mostly rare symbols,
    'Ã', 'Â', C1 controls). A text holding none of the union of those sets cannot match, and
    one C-level scan proves it. Derived from the compiled regex of the pinned ftfy, so it
    follows ftfy; anything unexpected turns the shortcut off rather than guessing.
    """
    try:
        import re._parser as re_parser  # type: ignore[import-not-found]  # the parser re itself uses

        pattern = ftfy.badness.BADNESS_RE
        if pattern.flags & re.IGNORECASE:
            return None  # a literal would then match its other cases too
        tree = re_parser.parse(pattern.pattern, pattern.flags)
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
        return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(union)) + "]")
    except Exception:  # a private parser that changed: run without the shortcut
        return None


_MOJIBAKE_REQUIRED = _mojibake_required_chars()


def _untouched_by_ftfy(segment: str) -> bool:
    """True when ftfy's default fixes provably return ``segment`` unchanged.

    Three scans instead of ftfy's two rounds of a dozen passes: no character any fix acts on,
    nothing that looks like mojibake (ftfy's own ``is_bad`` test, which is exactly when its
    encoding fixer gives up), and already in NFC.
    """
    if _FTFY_TOUCHABLE.search(segment) is not None:
        return False
    if segment.isascii():
        return True
    if _MOJIBAKE_REQUIRED is not None and _MOJIBAKE_REQUIRED.search(segment) is None:
        return unicodedata.is_normalized("NFC", segment)
    return not ftfy.badness.is_bad(segment) and unicodedata.is_normalized("NFC", segment)


def _ftfy_segments(text: str, config: ftfy.TextFixerConfig) -> Iterator[tuple[str, ftfy.TextFixerConfig]]:
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
    # Only per-character tests may judge the whole text at once. ftfy's badness test is not:
    # "Menu:\nÃ  la carte" looks fine as a whole while its second line looks bad, and ftfy judges
    # line by line, so the mojibake test must run on the same segments.
    if _FTFY_TOUCHABLE.search(text) is None and (
        text.isascii()
        or (
            _MOJIBAKE_REQUIRED is not None
            and _MOJIBAKE_REQUIRED.search(text) is None
            and unicodedata.is_normalized("NFC", text)
        )
    ):
        # No fix applies to any character, and no line can look like mojibake: nothing to do.
        return text
    out = []
    untouched = True
    for segment, config in _ftfy_segments(text, _FTFY_CONFIG):
        if _untouched_by_ftfy(segment):
            out.append(segment)
        else:
            untouched = False
            out.append(ftfy_bounded.fix_segment(segment, config))
    return text if untouched else "".join(out)


def ftfy_explain(text: str) -> list[str]:
    """The ftfy repairs that :func:`fix_with_ftfy` applies to ``text``, in order, deduplicated.

    >>> ftfy_explain("sÃ³")
    ['encode:latin-1', 'decode:utf-8']
    """
    seen: dict[str, None] = {}
    for segment, segment_config in _ftfy_segments(text, _FTFY_EXPLAIN_CONFIG):
        if _untouched_by_ftfy(segment):
            continue
        explanation = ftfy_bounded.fix_and_explain(segment, segment_config).explanation or []
        for action, parameter in explanation:
            seen.setdefault(f"{action}:{parameter}", None)
    return list(seen)


# --- Unicode normalization forms ----------------------------------------------------------------


def _unicode_form(form: normal_forms.Form) -> Callable[[str], str]:
    def apply(text: str) -> str:
        # ASCII is already in every normalization form; is_normalized is CPython's quick check
        # (linear: see normal_forms). normal_forms.normalize gives unicodedata's result in linear
        # time (CPython sorts long runs of combining marks in quadratic time).
        if text.isascii() or unicodedata.is_normalized(form, text):
            return text
        return normal_forms.normalize(form, text)

    apply.__name__ = form.lower()
    apply.__doc__ = f"Unicode normalization form {form}, and nothing else."
    return apply


# --- Character removal ------------------------------------------------------------------------

# C0 controls except TAB and LF, DEL, and the C1 block.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Zero-width space, word joiner, byte-order mark. ZWNJ (U+200C) and ZWJ (U+200D) are kept on
# purpose: emoji sequences, Persian, Arabic and Indic scripts need them.
_INVISIBLES = re.compile("[\u200b\u2060\ufeff]")


def _remover(pattern: re.Pattern[str]) -> Callable[[str], str]:
    def apply(text: str) -> str:
        if pattern.search(text) is None:
            return text
        return pattern.sub("", text)

    return apply


strip_controls = _remover(_CONTROLS)
strip_invisible = _remover(_INVISIBLES)


# --- Terminal escape sequences ----------------------------------------------------------------

# ECMA-48 sequences introduced by ESC: CSI (ESC [ params intermediates final), OSC and the other
# string commands (ESC ] P X ^ _ ... ended by BEL or ESC \), and two-character escapes. ftfy
# removes only CSI sequences made of digits and ';', and strip_controls only the ESC itself, which
# would leave "[?25l" or "]0;title" behind in the prompt.
_TERMINAL_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]"  # two-character escapes (with intermediates)
)


def strip_terminal_escapes(text: str) -> str:
    r"""Remove whole terminal escape sequences (colours, cursor moves, window titles).

    >>> strip_terminal_escapes("\x1b[?25lhidden\x1b]0;title\x07 text")
    'hidden text'
    """
    if "\x1b" not in text:
        return text
    return _TERMINAL_ESCAPES.sub("", text)


# --- Lines and whitespace ---------------------------------------------------------------------

_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
# A line break followed by two or more blank lines (whitespace only, each ended by LF); the
# literal LF in front keeps the scan fast. A run at the very start has no LF in front of it.
# Written without a repeated group: "(?:[^\S\n]*\n){2,}" matched the same strings, but re keeps
# a frame per repetition, and a run of a million blank lines took 170 ms where 10,000 took 0.2.
# Here the greedy \s* takes the whole whitespace run once and gives back to its last LF.
_BLANK_RUN = re.compile(r"\n[^\S\n]*\n\s*\n")
_LEADING_BLANK_RUN = re.compile(r"\A[^\S\n]*\n\s*\n")
_LEADING_BLANK_LINES = re.compile(r"\A\s*\n")


def unify_newlines(text: str) -> str:
    r"""CRLF, CR, NEL, U+2028 and U+2029 all become ``\n``.

    >>> unify_newlines("a\r\nb\rc\u2028d")
    'a\nb\nc\nd'
    """
    if _LINE_BREAKS.search(text) is None:
        return text
    return _LINE_BREAKS.sub("\n", text)


def rstrip_lines(text: str) -> str:
    r"""Remove whitespace at the end of every line; indentation is kept.

    >>> rstrip_lines("  a  \n\tb\t")
    '  a\n\tb'
    """
    # str.rstrip() strips exactly the characters re's [^\S\n] matched (str.isspace is re's \s),
    # and goes over each line once. The former pattern, [^\S\n]+$, restarted at every character
    # of a whitespace run that did not end its line: quadratic (9.5 s for 40,000 spaces and "x").
    # Splitting is also faster than any scan on text that has nothing to strip.
    stripped = "\n".join([line.rstrip() for line in text.split("\n")])
    return text if stripped == text else stripped


def collapse_blank_lines(text: str) -> str:
    r"""At most one blank line in a row (lines holding only spaces count as blank).

    >>> collapse_blank_lines("a\n\n\n\nb")
    'a\n\nb'
    >>> collapse_blank_lines("\n\n\na")
    '\na'
    """
    if _BLANK_RUN.search(text) is None and _LEADING_BLANK_RUN.match(text) is None:
        return text
    return _BLANK_RUN.sub("\n\n", _LEADING_BLANK_RUN.sub("\n", text))


def trim_blank_edges(text: str) -> str:
    r"""Remove blank lines at the start and all whitespace at the end.

    The first line's indentation is kept: a prompt that starts with an indented code block
    must keep its shape.

    >>> trim_blank_edges("\n \n    code()\n\n")
    '    code()'
    """
    trimmed = text.rstrip()
    if trimmed and trimmed[0].isspace():
        trimmed = _LEADING_BLANK_LINES.sub("", trimmed)
    return trimmed


def strip(text: str) -> str:
    """Remove all whitespace at both ends.

    >>> strip("  a b  ")
    'a b'
    """
    return text.strip()


def collapse_whitespace(text: str) -> str:
    r"""Every run of whitespace, newlines included, becomes one space; the ends are stripped.

    >>> collapse_whitespace(" a \n\n b\tc ")
    'a b c'
    """
    return " ".join(text.split())


# --- The registry -----------------------------------------------------------------------------

_STEP_LIST = (
    Step(
        "ftfy",
        fix_with_ftfy,
        "ftfy's default repairs: mojibake, HTML entities, quotes, ligatures, widths, line breaks, NFC",
    ),
    Step("nfc", _unicode_form("NFC"), "Unicode normalization form C"),
    Step("nfd", _unicode_form("NFD"), "Unicode normalization form D"),
    Step("nfkc", _unicode_form("NFKC"), "Unicode normalization form KC"),
    Step("nfkd", _unicode_form("NFKD"), "Unicode normalization form KD"),
    Step(
        "strip_terminal_escapes",
        strip_terminal_escapes,
        "remove whole terminal escape sequences (CSI, OSC, ...), not just their ESC",
    ),
    Step("strip_controls", strip_controls, "remove C0/C1 control characters except TAB and LF", _CONTROLS),
    Step(
        "strip_invisible",
        strip_invisible,
        "remove zero-width space, word joiner and BOM (ZWJ/ZWNJ are kept)",
        _INVISIBLES,
    ),
    Step(
        "unify_newlines", unify_newlines, "CRLF, CR, NEL, U+2028, U+2029 become LF", re.compile("[\r\u2028\u2029\x85]")
    ),
    Step("rstrip_lines", rstrip_lines, "remove trailing whitespace on every line"),
    Step("collapse_blank_lines", collapse_blank_lines, "at most one blank line in a row"),
    Step("trim_blank_edges", trim_blank_edges, "remove leading blank lines and trailing whitespace"),
    Step("strip", strip, "remove whitespace at both ends"),
    Step(
        "collapse_whitespace",
        collapse_whitespace,
        "every whitespace run becomes one space; ends stripped",
        re.compile(r"[^\S ]"),
    ),
)

STEPS: Mapping[str, Step] = MappingProxyType({step.name: step for step in _STEP_LIST})
