"""Property tests for the normalization engine (hypothesis).

Each property runs on two kinds of input: arbitrary Unicode text (every code point except
surrogates, which a ``str`` decoded from UTF-8 or JSON never holds), and text built from the
characters and fragments the steps care about: controls, mojibake-prone Latin-1 and cp1252,
zero-width characters, every kind of line break, combining marks, HTML entities, terminal escapes.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

import ftfy
import ftfy.bad_codecs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hermes_worker.engine import BUILTIN_PROFILES, STEPS, Profile, apply_profile, normalize
from hermes_worker.engine.steps import fix_with_ftfy

from .support.properties import examples

# No example database: the suite must not leave a .hypothesis directory in the repository.
# No deadline: ftfy's first call on a new kind of text is much slower than the rest.
FAST = settings(max_examples=examples(150), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(FAST, max_examples=examples(400))

PROFILE_NAMES = sorted(BUILTIN_PROFILES)

# --- strategies -------------------------------------------------------------------------------

# Every code point UTF-8 can encode: all of Unicode except the surrogates.
any_char = st.characters(codec="utf-8")
any_text = st.text(any_char, max_size=60)

_INTERESTING_CHARS = (
    [chr(c) for c in range(0x00, 0x20)]  # C0 controls, TAB, LF, CR
    + [chr(c) for c in range(0x7F, 0xA0)]  # DEL and C1 controls (NEL is U+0085)
    + [chr(c) for c in range(0xA0, 0x100)]  # Latin-1: the stuff UTF-8 mojibake is made of
    + list("€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ")  # cp1252's 0x80-0x9F
    + list("\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad\u180e\u202a\u202e\u206a")  # invisibles
    + list("\n\n\n\r\r\t \u2028\u2029\u3000\u2003\u00a0")  # line breaks and spaces
    + [chr(c) for c in range(0x300, 0x370)]  # combining diacritics
    + list("\u0323\u0307\u093c\u094d\u0bcd\u1161\u11a8\u1100")  # marks and jamo that reorder or compose
    + list("ﬁﬂﬀﬃﬄﬅﬆĳＡｚ０！＜＆ｶﾞ²½™①ſ")  # ligatures, widths, compatibility characters
    + list("&<>;#'\"`aeAZ09 éÃÂâðŸ")
    + ["\U0001f600", "\U0001f468", "\U0001f3fd", "\U0001f1eb", "\U000e0067", "\ufe0f", "\u20e3"]
)
_FRAGMENTS = [
    "&amp;",
    "&lt;",
    "&gt;",
    "&eacute;",
    "&#233;",
    "&#x2014;",
    "&nbsp;",
    "&amp;amp;",
    "<b>",
    "\x1b[31m",
    "\x1b[0m",
    "\x1b[?25l",
    "\r\n",
    "\n  \n",
    "\n\n\n",
    "Ã©",
    "Ã\xa0",
    "Ã ",
    "â€™",
    "â€œ",
    "â€\x9d",
    "â€‹",
    "Ã¢â‚¬â„¢",
    "ðŸ˜€",
    "Ð¿Ñ€",
    "РџСЂ",
    "æ—¥æœ¬",
    "\u0915\u094d\u200d\u0937",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
]
interesting_text = st.lists(
    st.one_of(st.sampled_from(_INTERESTING_CHARS), st.sampled_from(_FRAGMENTS), any_char),
    max_size=30,
).map("".join)


def _mojibake(text: str, codec: str) -> str:
    return text.encode("utf-8").decode(codec, errors="replace")


# Real mojibake: text encoded as UTF-8 and decoded with a legacy single-byte codec.
mojibake_text = st.builds(
    _mojibake,
    st.text(st.characters(codec="utf-8", max_codepoint=0x1FFFF), max_size=20),
    st.sampled_from(["latin-1", "sloppy-windows-1252", "sloppy-windows-1251", "windows-1253", "mac-roman"]),
)

texts = st.one_of(any_text, interesting_text, mojibake_text)


def _profile(name: str) -> Profile:
    return BUILTIN_PROFILES[name]


# --- never raises -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILE_NAMES)
@FAST
@given(text=texts)
def test_builtin_profiles_never_raise(name: str, text: str) -> None:
    profile = _profile(name)
    assert isinstance(apply_profile(text, profile), str)
    result = normalize(text, profile, max_validation=2, explain=True)
    assert isinstance(result.text, str)


@FAST
@given(text=texts)
def test_every_step_never_raises_and_returns_str(text: str) -> None:
    for step in STEPS.values():
        assert isinstance(step.apply(text), str), step.name


# --- idempotence ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILE_NAMES)
@THOROUGH
@given(text=texts)
# Found by fuzzing: each needs one more `prompt` round than the last (mojibake split by a
# zero-width space; then a zero-width space that is itself mojibake split by a C1 control).
@example(text="caf\u00c3\u200b\u00a9")
@example(text="\u00e4\x8f\u00e2\u20ac\u2039\u00a8\u0178")
def test_profiles_converge_to_a_fixed_point(name: str, text: str) -> None:
    profile = _profile(name)
    out = normalize(text, profile, max_validation=3)
    if out.converged:
        assert apply_profile(out.text, profile) == out.text
    assert out.converged is True, f"no fixed point after {out.rounds} rounds: {text!a} -> {out.text!a}"
    assert out.violations == ()
    assert out.changed == (out.text != text)


@pytest.mark.parametrize("name", ["nfc", "nfkc", "compact"])
@FAST
@given(text=texts)
def test_single_pass_profiles_are_idempotent(name: str, text: str) -> None:
    # Unlike `prompt` (where removing a character can expose new mojibake to ftfy), these
    # profiles reach their fixed point in one pass.
    profile = _profile(name)
    once = apply_profile(text, profile)
    assert apply_profile(once, profile) == once
    assert normalize(text, profile).rounds == 1


# --- ftfy fast paths --------------------------------------------------------------------------


@THOROUGH
@given(text=texts)
# Found by fuzzing: ftfy's badness test is not monotone, "\nÃ e" looks fine while "Ã e" does.
@example(text="\n\u00c3 e")
@example(text="Menu:\n\u00c3  la carte")
def test_fix_with_ftfy_is_identical_to_ftfy(text: str) -> None:
    assert fix_with_ftfy(text) == ftfy.fix_text(text)


@FAST
@given(lines=st.lists(st.one_of(texts, st.text(st.characters(max_codepoint=0x7F), max_size=20)), max_size=8))
def test_fix_with_ftfy_is_identical_to_ftfy_on_multiline_text(lines: list[str]) -> None:
    # Mixes clean ASCII lines (the fast path) with lines ftfy must see, and lines holding '<'
    # that switch HTML unescaping off for the rest of the text.
    text = "\n".join(lines)
    assert fix_with_ftfy(text) == ftfy.fix_text(text)


# --- what each profile promises ---------------------------------------------------------------

_FORBIDDEN_IN_PROMPT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff\u2028\u2029]")
_TRAILING_WHITESPACE = re.compile(r"[^\S\n]$", re.MULTILINE)


@THOROUGH
@given(text=texts)
def test_prompt_output_keeps_its_promises(text: str) -> None:
    out = normalize(text, _profile("prompt"), max_validation=3).text
    assert _FORBIDDEN_IN_PROMPT.search(out) is None
    assert "\r" not in out
    assert _TRAILING_WHITESPACE.search(out) is None
    assert "\n\n\n" not in out
    assert not out.startswith("\n")
    assert out == out.rstrip()
    assert unicodedata.is_normalized("NFC", out)


@THOROUGH
@given(text=texts)
def test_compact_output_is_single_spaced_and_stripped(text: str) -> None:
    out = normalize(text, _profile("compact")).text
    assert all(not ch.isspace() or ch == " " for ch in out)
    assert "  " not in out
    assert out == out.strip()
    assert unicodedata.is_normalized("NFKC", out)


@pytest.mark.parametrize("form", ["NFC", "NFKC"])
@THOROUGH
@given(text=texts)
def test_unicode_form_profiles_are_exactly_unicodedata(form: Literal["NFC", "NFKC"], text: str) -> None:
    assert normalize(text, _profile(form.lower())).text == unicodedata.normalize(form, text)


@pytest.mark.parametrize("form", ["NFC", "NFD", "NFKC", "NFKD"])
@FAST
@given(text=texts)
def test_unicode_form_steps_are_exactly_unicodedata(form: Literal["NFC", "NFD", "NFKC", "NFKD"], text: str) -> None:
    assert STEPS[form.lower()].apply(text) == unicodedata.normalize(form, text)


# --- explain ----------------------------------------------------------------------------------


def _replay(text: str, profile: Profile, max_validation: int) -> tuple[str, list[tuple[int, str]]]:
    """An independent oracle: run the steps one by one and note which ones changed the text."""
    changed: list[tuple[int, str]] = []

    def one_pass(current: str, round_no: int) -> str:
        for name in profile.steps:
            after = STEPS[name].apply(current)
            if after != current:
                changed.append((round_no, name))
            current = after
        return current

    out = one_pass(text, 1)
    for round_no in range(2, max_validation + 2):
        again = one_pass(out, round_no)
        if again == out:
            break
        out = again
    return out, changed


@pytest.mark.parametrize("name", PROFILE_NAMES)
@pytest.mark.parametrize("max_validation", [0, 2])
@FAST
@given(text=texts)
def test_explain_lists_exactly_the_steps_that_changed_the_text(name: str, max_validation: int, text: str) -> None:
    profile = _profile(name)
    plain = normalize(text, profile, max_validation=max_validation)
    explained = normalize(text, profile, max_validation=max_validation, explain=True)
    assert plain.explanation is None
    assert explained.explanation is not None
    assert explained.text == plain.text
    assert (explained.rounds, explained.converged) == (plain.rounds, plain.converged)

    expected_text, expected_steps = _replay(text, profile, max_validation)
    assert explained.text == expected_text
    assert [(entry["round"], entry["step"]) for entry in explained.explanation] == expected_steps
    for entry in explained.explanation:
        _check_entry(entry)


def _check_entry(entry: dict[str, Any]) -> None:
    if entry["step"] == "ftfy":
        detail = entry["detail"]
        assert detail, "an ftfy change must say which ftfy fixes it applied"
        assert all(isinstance(item, str) and ":" in item for item in detail)
    else:
        assert set(entry) == {"round", "step"}
