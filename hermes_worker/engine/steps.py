"""Normalization steps: each one a pure ``str -> str`` function, registered by name.

Every step is cheap on text it has nothing to do with: it first proves, with one C-speed scan,
that the text holds nothing it would change, and returns the very same string object. Profiles
(:mod:`.profiles`) are ordered lists of these names.

Every step also says when it may have work (:class:`Work`): the characters it acts on, the
normal form it produces, and a few tests on the whole text (line ends, blank runs, the ends). A
profile (:mod:`.plan`) joins them into one look at a text: when it finds nothing, no step has
work and the text is the profile's output as it is.

A step may declare ``forbids``: a regular expression matching characters that can never be in
its output. Validation (:mod:`.validate`) uses it to check a profile's promises.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from . import normal_forms
from .ftfy_step import (
    FTFY_TOUCHABLE,
    FTFY_TOUCHABLE_CHARS,
    MOJIBAKE_REQUIRED,
    MOJIBAKE_REQUIRED_CHARS,
    fix_with_ftfy,
    ftfy_explain,
    ftfy_segments,
    mojibake_possible,
    untouched_by_ftfy,
)

__all__ = ["STEPS", "Step", "Work", "ftfy_explain"]


@dataclass(frozen=True, slots=True)
class Work:
    """When a step may change a text. Sound: if none of it holds, the step returns its input.

    Attributes:
        chars: code points whose presence may give the step work.
        form: a Unicode normal form; non-ASCII text not in it may give the step work.
        tests: further tests on the whole text, each True when the step may have work (line
            ends, blank runs, the ends). Shared functions: a profile runs each one once.
        hints: code points that give the step work only if ``hint_test`` says so: found by the
            same scan as ``chars``, then ``hint_test(text)`` decides (ftfy: 'é' or 'Ã' in a text
            is mojibake only if ftfy's mojibake test flags its line).
        hint_test: True when a text holding hints may give the step work.
    """

    chars: frozenset[int] = frozenset()
    form: normal_forms.Form | None = None
    tests: tuple[Callable[[str], bool], ...] = ()
    hints: frozenset[int] = frozenset()
    hint_test: Callable[[str], bool] | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """A named text transformation.

    Attributes:
        name: the name profiles use.
        apply: the pure function.
        summary: one line for ``hermes profiles`` and the docs.
        forbids: characters this step guarantees are absent from its output, or None.
        work: when the step may have work; None: it may have work on any text.
        idempotent: its output is always a fixed point of it (``apply(apply(t)) == apply(t)``).

    No step turns a text without lone surrogates into one with (``normalize(checked=True)``
    relies on it; ``tests/test_engine_plan.py`` checks it).
    """

    name: str
    apply: Callable[[str], str]
    summary: str
    forbids: re.Pattern[str] | None = None
    work: Work | None = None
    idempotent: bool = False


# --- ftfy: see .ftfy_step -------------------------------------------------------------------

# The names the identity tests of issue 11 read.
_FTFY_TOUCHABLE = FTFY_TOUCHABLE
_MOJIBAKE_REQUIRED = MOJIBAKE_REQUIRED
_untouched_by_ftfy = untouched_by_ftfy
_ftfy_segments = ftfy_segments


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
_CONTROL_CHARS = frozenset([*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)])
# Zero-width space, word joiner, byte-order mark. ZWNJ (U+200C) and ZWJ (U+200D) are kept on
# purpose: emoji sequences, Persian, Arabic and Indic scripts need them.
_INVISIBLES = re.compile("[\u200b\u2060\ufeff]")
_INVISIBLE_CHARS = frozenset({0x200B, 0x2060, 0xFEFF})


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
# The same characters as one class: re scans for a class at C speed, and tries every branch of
# an alternation at every position (2.2 µs a prompt on the bench corpus, for nothing to do).
_LINE_BREAK_CHARS = re.compile("[\r\u2028\u2029\x85]")
_LINE_BREAK_CODES = frozenset({0x0D, 0x2028, 0x2029, 0x85})
# A line break followed by two or more blank lines (whitespace only, each ended by LF); the
# literal LF in front keeps the scan fast. A run at the very start has no LF in front of it.
# Written without a repeated group: "(?:[^\S\n]*\n){2,}" matched the same strings, but re keeps
# a frame per repetition, and a run of a million blank lines took 170 ms where 10,000 took 0.2.
# Here the greedy \s* takes the whole whitespace run once and gives back to its last LF.
_BLANK_RUN = re.compile(r"\n[^\S\n]*\n\s*\n")
_LEADING_BLANK_RUN = re.compile(r"\A[^\S\n]*\n\s*\n")
_LEADING_BLANK_LINES = re.compile(r"\A\s*\n")
# Whitespace at the end of a line: a single character and what follows it, linear.
_LINE_END_SPACE = re.compile(r"[^\S\n](?:\n|\Z)")
# str.isspace, re's \s and str.split agree on these; none lies beyond the BMP (a test checks).
_WHITESPACE = frozenset(c for c in range(0x10000) if chr(c).isspace())


# Tests for Work: each True when the step that names it may have work.
def _ends_with_space(text: str) -> bool:
    return text[-1:].isspace()


def _starts_with_space(text: str) -> bool:
    return text[:1].isspace()


def _space_or_tab_ends_a_line(text: str) -> bool:
    # Two substring searches cost a quarter of one regex scan for [^\S\n] before a line end; the
    # other whitespace characters are rare, and rstrip_lines looks for them in the profile's class.
    return " \n" in text or "\t\n" in text or text[-1:].isspace()


def _blank_run(text: str) -> bool:
    return _BLANK_RUN.search(text) is not None or _LEADING_BLANK_RUN.match(text) is not None


def _leading_blank_lines(text: str) -> bool:
    return text[:1].isspace() and _LEADING_BLANK_LINES.match(text) is not None


def _double_space(text: str) -> bool:
    return "  " in text


def unify_newlines(text: str) -> str:
    r"""CRLF, CR, NEL, U+2028 and U+2029 all become ``\n``.

    >>> unify_newlines("a\r\nb\rc\u2028d")
    'a\nb\nc\nd'
    """
    if _LINE_BREAK_CHARS.search(text) is None:
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
    if _LINE_END_SPACE.search(text) is None:
        return text
    return "\n".join([line.rstrip() for line in text.split("\n")])


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
    trimmed = text.rstrip()  # the very same string when nothing is stripped
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
    collapsed = " ".join(text.split())
    return text if collapsed == text else collapsed


# --- The registry -----------------------------------------------------------------------------

_FTFY_WORK = (
    Work(FTFY_TOUCHABLE_CHARS, "NFC", hints=MOJIBAKE_REQUIRED_CHARS, hint_test=mojibake_possible)
    if MOJIBAKE_REQUIRED_CHARS is not None
    else Work(FTFY_TOUCHABLE_CHARS, "NFC", (lambda text: not text.isascii(),))  # no mojibake shortcut
)
_STEP_LIST = (
    Step(
        "ftfy",
        fix_with_ftfy,
        "ftfy's default repairs: mojibake, HTML entities, quotes, ligatures, widths, line breaks, NFC",
        work=_FTFY_WORK,
    ),
    Step("nfc", _unicode_form("NFC"), "Unicode normalization form C", work=Work(form="NFC"), idempotent=True),
    Step("nfd", _unicode_form("NFD"), "Unicode normalization form D", work=Work(form="NFD"), idempotent=True),
    Step("nfkc", _unicode_form("NFKC"), "Unicode normalization form KC", work=Work(form="NFKC"), idempotent=True),
    Step("nfkd", _unicode_form("NFKD"), "Unicode normalization form KD", work=Work(form="NFKD"), idempotent=True),
    Step(
        "strip_terminal_escapes",
        strip_terminal_escapes,
        "remove whole terminal escape sequences (CSI, OSC, ...), not just their ESC",
        work=Work(frozenset({0x1B})),
    ),
    Step(
        "strip_controls",
        strip_controls,
        "remove C0/C1 control characters except TAB and LF",
        _CONTROLS,
        Work(_CONTROL_CHARS),
        idempotent=True,
    ),
    Step(
        "strip_invisible",
        strip_invisible,
        "remove zero-width space, word joiner and BOM (ZWJ/ZWNJ are kept)",
        _INVISIBLES,
        Work(_INVISIBLE_CHARS),
        idempotent=True,
    ),
    Step(
        "unify_newlines",
        unify_newlines,
        "CRLF, CR, NEL, U+2028, U+2029 become LF",
        _LINE_BREAK_CHARS,
        Work(_LINE_BREAK_CODES),
        idempotent=True,
    ),
    Step(
        "rstrip_lines",
        rstrip_lines,
        "remove trailing whitespace on every line",
        work=Work(_WHITESPACE - {ord(" "), ord("\t"), ord("\n")}, tests=(_space_or_tab_ends_a_line,)),
        idempotent=True,
    ),
    Step(
        "collapse_blank_lines",
        collapse_blank_lines,
        "at most one blank line in a row",
        work=Work(tests=(_blank_run,)),
    ),
    Step(
        "trim_blank_edges",
        trim_blank_edges,
        "remove leading blank lines and trailing whitespace",
        work=Work(tests=(_ends_with_space, _leading_blank_lines)),
        idempotent=True,
    ),
    Step(
        "strip",
        strip,
        "remove whitespace at both ends",
        work=Work(tests=(_starts_with_space, _ends_with_space)),
        idempotent=True,
    ),
    Step(
        "collapse_whitespace",
        collapse_whitespace,
        "every whitespace run becomes one space; ends stripped",
        re.compile(r"[^\S ]"),
        Work(_WHITESPACE - {ord(" ")}, tests=(_double_space, _starts_with_space, _ends_with_space)),
        idempotent=True,
    ),
)

STEPS: Mapping[str, Step] = MappingProxyType({step.name: step for step in _STEP_LIST})
