"""The linear-time rewrites of issue 11 change no output byte: each one against the code it replaced.

Every step rewritten for linear time keeps its former implementation here, copied from 2c90978,
as the reference: ``rstrip_lines`` (a regex that restarted inside whitespace runs),
``collapse_blank_lines`` and ``trim_blank_edges`` (repeated groups), the four Unicode forms
(``unicodedata.normalize``, which sorts combining marks by insertion) and ``ftfy`` (which called
``ftfy.fix_and_explain`` on every line). New and old must agree on every golden case, every
example and on generated text made of the hostile pieces of ``test_hostile_time.py``. ftfy is also
compared with ``ftfy.fix_text`` itself. The one allowed difference is documented in
:func:`hermes_worker.engine.steps.fix_with_ftfy`: a line whose repairs would go on past its work
budget; the tests check that no golden case or example comes near it, and count it when generated.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ftfy
import ftfy.badness
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hermes_worker.engine import (
    BUILTIN_PROFILES,
    STEPS,
    Profile,
    apply_profile,
    ftfy_bounded,
    normal_forms,
    normalize,
    steps,
)
from hermes_worker.engine.steps import fix_with_ftfy, ftfy_explain

from .support.properties import examples

REPO = Path(__file__).resolve().parent.parent
FORMS = ("NFC", "NFD", "NFKC", "NFKD")

# --- the former implementations, as they were at 2c90978 -------------------------------------

_OLD_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_OLD_BLANK_RUN = re.compile(r"\n(?:[^\S\n]*\n){2,}")
_OLD_LEADING_BLANK_RUN = re.compile(r"\A(?:[^\S\n]*\n){2,}")
_OLD_LEADING_BLANK_LINES = re.compile(r"\A(?:[^\S\n]*\n)+")


def old_rstrip_lines(text: str) -> str:
    if _OLD_TRAILING_SPACE.search(text) is None:
        return text
    return _OLD_TRAILING_SPACE.sub("", text)


def old_collapse_blank_lines(text: str) -> str:
    if _OLD_BLANK_RUN.search(text) is None and _OLD_LEADING_BLANK_RUN.match(text) is None:
        return text
    return _OLD_BLANK_RUN.sub("\n\n", _OLD_LEADING_BLANK_RUN.sub("\n", text))


def old_trim_blank_edges(text: str) -> str:
    trimmed = text.rstrip()
    if trimmed and trimmed[0].isspace():
        trimmed = _OLD_LEADING_BLANK_LINES.sub("", trimmed)
    return trimmed


def old_unicode_form(form: Any) -> Callable[[str], str]:
    def apply(text: str) -> str:
        if text.isascii() or unicodedata.is_normalized(form, text):
            return text
        return unicodedata.normalize(form, text)

    return apply


_FTFY_CONFIG = ftfy.TextFixerConfig(explain=False)
_FTFY_EXPLAIN_CONFIG = ftfy.TextFixerConfig(explain=True)


def _old_untouched_by_ftfy(segment: str) -> bool:
    if steps._FTFY_TOUCHABLE.search(segment) is not None:
        return False
    if segment.isascii():
        return True
    if steps._MOJIBAKE_REQUIRED is not None and steps._MOJIBAKE_REQUIRED.search(segment) is None:
        return unicodedata.is_normalized("NFC", segment)
    return not ftfy.badness.is_bad(segment) and unicodedata.is_normalized("NFC", segment)


def _old_ftfy_segments(text: str, config: ftfy.TextFixerConfig) -> Iterator[tuple[str, ftfy.TextFixerConfig]]:
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


def old_fix_with_ftfy(text: str) -> str:
    if steps._FTFY_TOUCHABLE.search(text) is None and (
        text.isascii()
        or (
            steps._MOJIBAKE_REQUIRED is not None
            and steps._MOJIBAKE_REQUIRED.search(text) is None
            and unicodedata.is_normalized("NFC", text)
        )
    ):
        return text
    out = []
    untouched = True
    for segment, config in _old_ftfy_segments(text, _FTFY_CONFIG):
        if _old_untouched_by_ftfy(segment):
            out.append(segment)
        else:
            untouched = False
            out.append(ftfy.fix_and_explain(segment, config).text)
    return text if untouched else "".join(out)


def old_ftfy_explain(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for segment, segment_config in _old_ftfy_segments(text, _FTFY_EXPLAIN_CONFIG):
        if _old_untouched_by_ftfy(segment):
            continue
        explanation = ftfy.fix_and_explain(segment, segment_config).explanation or []
        for action, parameter in explanation:
            seen.setdefault(f"{action}:{parameter}", None)
    return list(seen)


OLD_STEPS: dict[str, Callable[[str], str]] = {
    "rstrip_lines": old_rstrip_lines,
    "collapse_blank_lines": old_collapse_blank_lines,
    "trim_blank_edges": old_trim_blank_edges,
    "nfc": old_unicode_form("NFC"),
    "nfd": old_unicode_form("NFD"),
    "nfkc": old_unicode_form("NFKC"),
    "nfkd": old_unicode_form("NFKD"),
    "ftfy": old_fix_with_ftfy,
}
# Every step the fix rewrote has its former self above; the others did not change.
assert set(OLD_STEPS) < set(STEPS)


def old_apply_profile(text: str, profile: Profile) -> str:
    for name in profile.steps:
        text = OLD_STEPS.get(name, STEPS[name].apply)(text)
    return text


def ftfy_finishes(text: str) -> bool:
    """True when ftfy's repairs of every line of ``text`` fit in their work budget."""
    return all(
        steps._untouched_by_ftfy(segment) or ftfy_bounded.fix_within_budget(segment, config)[1]
        for segment, config in steps._ftfy_segments(text, _FTFY_CONFIG)
    )


# --- what real text looks like: the golden cases and the examples -----------------------------


def _corpus() -> list[str]:
    texts = []
    for name in ("steps.json", "profiles.json"):
        texts += [case["input"] for case in json.loads((REPO / "tests" / "golden" / name).read_text("utf-8"))]
        texts += [case["expected"] for case in json.loads((REPO / "tests" / "golden" / name).read_text("utf-8"))]
    with (REPO / "examples" / "prompts.jsonl").open(encoding="utf-8") as handle:
        texts += [json.loads(line)["prompt"] for line in handle if line.strip()]
    texts += (REPO / "examples" / "prompts.txt").read_text("utf-8").split("\n")
    return texts


CORPUS = _corpus()


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) > 300


@pytest.mark.parametrize("name", sorted(OLD_STEPS))
def test_every_rewritten_step_gives_the_old_output_on_the_golden_data_and_examples(name: str) -> None:
    new = STEPS[name].apply
    differences = [text for text in CORPUS if new(text) != OLD_STEPS[name](text)]
    assert differences == []


@pytest.mark.parametrize("profile", sorted(BUILTIN_PROFILES))
def test_every_builtin_profile_gives_the_old_output_on_the_golden_data_and_examples(profile: str) -> None:
    differences = [
        text
        for text in CORPUS
        if apply_profile(text, BUILTIN_PROFILES[profile]) != old_apply_profile(text, BUILTIN_PROFILES[profile])
    ]
    assert differences == []


def test_ftfy_equals_ftfy_fix_text_and_never_runs_out_of_budget_on_real_text() -> None:
    assert [text for text in CORPUS if not ftfy_finishes(text)] == []
    assert [text for text in CORPUS if fix_with_ftfy(text) != ftfy.fix_text(text)] == []
    assert [text for text in CORPUS if ftfy_explain(text) != old_ftfy_explain(text)] == []


# --- generated text from the hostile alphabet -------------------------------------------------

PIECES = [
    # whitespace and invisibles the profiles touch
    " ", "\t", "\x0b", "\x0c", "\r", "\x1c", "\x85", "\u00a0", "\u1680", "\u2000", "\u2003", "\u200a",
    "\u2028", "\u2029", "\u202f", "\u3000", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",
    # line breaks and blank-ish lines
    "\n", "\n", "\r\n", " \n", "\n \n", "\t\n",
    # combining marks, in and out of canonical order, and what decomposes into them
    "\u0301", "\u0316", "\u0327", "\u0344", "\u0f71", "\u0f72", "\u0f73", "\u1e09", "\u00e9", "e", "\ufdfa", "\u1100",
    "\u1161", "\uac00", "\U0001f600", "\U0001d165", "\U0001d167", "\U0001e94a",
    # mojibake-looking pairs, C1 controls, what ftfy peels one at a time
    "\u00c3\u00a9", "\u00e2\u20ac", "\u00c3", "\u00c2", "\u00a9", "\u00c3\x82", "\x9d", "\x81", "\u00c0\x80",
    "\u00ed\u00a0\u00bd", "\u00ed\u00b8\u008d", "\u65e5", "\u0420\u045f",
    # terminal escapes
    "\x1b", "\x1b[", "\x1b]", "1;", "m", "\x07",
    # HTML entities, nested
    "&", "amp;", "&amp;", "#38;", "lt;", "<",
    "x", "a",
]  # fmt: skip
_piece = st.sampled_from(PIECES)
# Runs matter: the slow paths start at 32 combining marks in a row, or a long chain.
_run = st.tuples(_piece, st.integers(2, 48)).map(lambda pair: pair[0] * pair[1])
hostile_text = st.lists(st.one_of(_piece, _run, st.characters(codec="utf-8")), max_size=24).map("".join)

HYPOTHESIS = settings(
    max_examples=examples(300), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("name", sorted(set(OLD_STEPS) - {"ftfy"}))
@HYPOTHESIS
@given(text=hostile_text)
@example(text=" " * 40 + "x\n" + "\u0301" * 40 + "\u0316" * 40)
@example(text="\n" + " \n" * 40 + "\u00a0" * 40 + "\n\n")
def test_every_rewritten_step_gives_the_old_output_on_hostile_text(name: str, text: str) -> None:
    assert STEPS[name].apply(text) == OLD_STEPS[name](text)


@HYPOTHESIS
@given(text=hostile_text)
@example(text="\u00c2" * 20 + "\u00a9")
@example(text="&" + "amp;" * 13)
@example(text="\u65e5 " + "\u00c3\x82" * 12 + "\u00c2\u00a9\n" + "\u00c0\x80" * 30)
@example(text="\u00c2" * 60 + "\u00a9\n" + "&" + "amp;" * 30)  # past the budget
def test_ftfy_gives_the_old_output_on_hostile_text_within_its_budget(text: str) -> None:
    result = fix_with_ftfy(text)
    if ftfy_finishes(text):
        assert result == old_fix_with_ftfy(text) == ftfy.fix_text(text)
        assert ftfy_explain(text) == old_ftfy_explain(text)
    else:  # built to go on for longer than any real text: the documented exception
        assert isinstance(result, str)


def test_past_its_budget_a_line_comes_back_as_the_last_completed_pass_left_it() -> None:
    """The documented exception: ftfy would peel all 200 "Â" one pass at a time (quadratic)."""
    # Given a line built to make ftfy repeat itself far longer than any real text needs
    text = "\u00c2" * 200 + "\u00a9"
    # When the bounded ftfy repairs it
    result, finished = ftfy_bounded.fix_within_budget(text, _FTFY_CONFIG)
    # Then it stopped early, with what its completed passes made: fewer "Â", the same kind of text
    assert not finished and ftfy.fix_text(text) == "\u00a9"
    assert re.fullmatch("\u00c2+\u00a9", result.text) and len(result.text) < len(text)
    # And the result does not depend on anything but the text, and the profile says it is unfinished
    assert fix_with_ftfy(text) == fix_with_ftfy(text) == result.text
    normalized = normalize(text, BUILTIN_PROFILES["prompt"])
    assert normalized.converged is False and normalized.violations == ()


@pytest.mark.parametrize("profile", sorted(BUILTIN_PROFILES))
@HYPOTHESIS
@given(text=hostile_text)
def test_every_builtin_profile_gives_the_old_output_on_hostile_text(profile: str, text: str) -> None:
    if "ftfy" in BUILTIN_PROFILES[profile].steps and not ftfy_finishes(text):
        return  # the documented exception, covered above
    assert apply_profile(text, BUILTIN_PROFILES[profile]) == old_apply_profile(text, BUILTIN_PROFILES[profile])


@HYPOTHESIS
@given(text=hostile_text, form=st.sampled_from(FORMS))
def test_normal_forms_equal_unicodedata(text: str, form: Any) -> None:
    assert normal_forms.normalize(form, text) == unicodedata.normalize(form, text)


def test_the_character_tables_cover_all_of_unicode() -> None:
    """normal_forms scans below U+20000 at import; nothing above it may matter (a newer Python
    that adds combining marks there must extend the scan, or lose the linear bound)."""
    nonstarters, contributors = normal_forms._tables(0x110000)
    assert nonstarters == normal_forms._NONSTARTERS
    assert contributors == normal_forms._CONTRIBUTORS


_VARIANT_BYTES = [b"\xc0", b"\x80", b"\xed", b"\xa0", b"\xaf", b"\xb0", b"\xbf", b"\xbd", b"\x8d", b"a", b"\xc3"]


@HYPOTHESIS
@given(data=st.lists(st.sampled_from(_VARIANT_BYTES), max_size=40).map(b"".join))
@example(data=b"\xc0\x80" * 20)
@example(data=b"\xed\xa0\xbd\xed\xb8\x8d" * 5 + b"\xed")
def test_the_utf8_variants_decoder_equals_ftfys_codec(data: bytes) -> None:
    """Same text, and the same failures (ftfy catches UnicodeDecodeError and tries the next plan)."""
    try:
        expected: str | type[Exception] = data.decode("utf-8-variants")
    except UnicodeDecodeError:
        expected = UnicodeDecodeError
    try:
        got: str | type[Exception] = ftfy_bounded._decode_utf8_variants(data)
    except UnicodeDecodeError:
        got = UnicodeDecodeError
    assert got == expected
