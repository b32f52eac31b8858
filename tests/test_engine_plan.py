"""What the engine's shortcuts rest on (issue 13): each one sound, from the tables it derives from.

A profile's plan skips a step when the step's :class:`~hermes_worker.engine.steps.Work` says it
has nothing to do, and validation trusts an idempotent last step: both must hold for every text,
not only for the corpus. The ftfy step repairs a line with one round of ftfy's character fixers
when it can prove the rest of ftfy idle, and tests ftfy's mojibake regex one alternative at a
time: the tables behind that are checked here against ftfy itself.
"""

from __future__ import annotations

import sys
import unicodedata

import ftfy
import ftfy.badness
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hermes_worker.engine import BUILTIN_PROFILES, STEPS, apply_profile, check_prompt, ftfy_step, normalize
from hermes_worker.engine.budget import normalize_within_budget
from hermes_worker.engine.plan import FOUND_MAX, Plan, plan_for
from hermes_worker.engine.steps import Work
from tests.support.differential import compare

from .support.properties import examples

PROPERTY = settings(
    max_examples=examples(300), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
STEP_NAMES = sorted(STEPS)

_PIECES = [
    *"\t\n\r\x0b\x0c\x1b\x1c\x1f\x7f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000 ",
    *"\x00\x08\x0e\x80\x8d\x9d\x9f\u200b\u2060\ufeff\u00ad\u200d",
    *"\u0301\u0316\u0344\u0f73\u1100\u1161\u11a8ﬁĳＡ，：²½ſ‘’“”ʼ&<;#aeÃÂâðŸ€Œœ×°",
    "\ud800",
    "&amp;",
    "&lt;",
    "&#x2014;",
    "\x1b[31m",
    "\x1b]0;t\x07",
    "\r\n",
    " \n",
    "\t\n",
    "\n \n",
    "\n\n\n",
    "  ",
    "Ã©",
    "â€™",
    "Ð¿Ñ€",
]
texts = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.characters(codec="utf-8")), max_size=20).map("".join),
)


# --- every step's Work is sound ---------------------------------------------------------------


def test_every_step_says_when_it_may_have_work() -> None:
    assert all(isinstance(step.work, Work) for step in STEPS.values())


@PROPERTY
@given(text=texts, name=st.sampled_from(STEP_NAMES))
@example(text="a\xa0\n", name="rstrip_lines")
@example(text="\u3000x", name="strip")
@example(text="x\n\n \n", name="collapse_blank_lines")
def test_a_step_the_look_finds_idle_returns_its_input(text: str, name: str) -> None:
    """Given a one-step plan that finds a text idle, when the step runs, then it returns that text."""
    if Plan((name,)).idle(text):
        assert STEPS[name].apply(text) == text


@PROPERTY
@given(text=texts, name=st.sampled_from([name for name in STEP_NAMES if STEPS[name].idempotent]))
@example(text=" \n  \n x", name="trim_blank_edges")
@example(text="\n\n\u0301", name="collapse_whitespace")
def test_a_step_called_idempotent_is(text: str, name: str) -> None:
    once = STEPS[name].apply(text)
    assert STEPS[name].apply(once) == once


@PROPERTY
@given(text=texts.filter(lambda text: "\ud800" not in text), name=st.sampled_from(STEP_NAMES))
@example(text="&#xd800; &#55296; \u00ed\u00a0\u0080", name="ftfy")
def test_no_step_makes_a_lone_surrogate(text: str, name: str) -> None:
    """normalize(checked=True) skips the lone-surrogate test on every output: no step may make one."""
    assert not [c for c in STEPS[name].apply(text) if "\ud800" <= c <= "\udfff"]


@PROPERTY
@given(text=texts, name=st.sampled_from(sorted(BUILTIN_PROFILES)))
def test_a_profile_skips_only_steps_without_work(text: str, name: str) -> None:
    """The plan's pass gives what running every step in order gives."""
    out = text
    for step in BUILTIN_PROFILES[name].steps:
        out = STEPS[step].apply(out)
    assert apply_profile(text, BUILTIN_PROFILES[name]) == out


@pytest.mark.parametrize(
    "piece",
    ["clean text, à bientôt. ", "caf\u00c3\u00a9 ", "width，", "a\u200bb ", "line  \n", "\x1b[1mbold ", "e\u0301 "],
)
def test_a_long_text_is_looked_at_without_listing_its_characters_and_gives_the_same_results(piece: str) -> None:
    """Past FOUND_MAX characters the look searches instead of listing: the same results, all fields."""
    text = "Plain words and nothing else. " * (FOUND_MAX // 30) + piece * 50
    assert len(text) > FOUND_MAX
    count, first = compare([text], [BUILTIN_PROFILES[name] for name in sorted(BUILTIN_PROFILES)], explain=(False,))
    assert count == 0, first


def test_whitespace_ends_in_the_basic_multilingual_plane() -> None:
    # steps.py lists whitespace from the BMP only (rstrip_lines, collapse_whitespace).
    assert not [c for c in range(0x10000, sys.maxunicode + 1) if chr(c).isspace()]


def test_a_clean_prompt_is_idle_and_a_dirty_one_is_not() -> None:
    plan = plan_for(BUILTIN_PROFILES["prompt"])
    assert plan.idle("Summarize this text in three bullet points.\n\nThe text:\n    code()")
    for dirty in ("a\r\nb", "a \nb", "x\n\n\n\ny", "caf\u00c3\u00a9", "e\u0301", "a\u200bb", "&amp;", "\x1b[1m", "a "):
        assert not plan.idle(dirty), dirty


# --- validation: the certificate --------------------------------------------------------------


def test_a_clean_prompt_converges_without_a_second_run_of_its_steps() -> None:
    """Given a prompt with nothing to do, normalize() calls no step at all, and still proves convergence."""
    calls: list[None] = []
    result = normalize("Plain and clean.", BUILTIN_PROFILES["prompt"], between_steps=lambda: calls.append(None))
    assert (result.changed, result.rounds, result.converged, result.violations) == (False, 1, True, ())
    assert calls == []


def test_the_validation_of_a_repaired_prompt_runs_no_step_when_its_output_is_idle() -> None:
    calls: list[None] = []
    result = normalize("donâ€™t  \r\n", BUILTIN_PROFILES["prompt"], between_steps=lambda: calls.append(None))
    assert (result.text, result.rounds, result.converged) == ("don't", 1, True)
    steps_run = len(calls)
    assert steps_run < len(BUILTIN_PROFILES["prompt"].steps)  # only the steps with work ran, once


@pytest.mark.parametrize("text", ["a\ud800b", "\ud800", "\u00e9\ud800"])
@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_a_lone_surrogate_is_still_reported_or_repaired(text: str, name: str) -> None:
    """Lone surrogates are no step's forbidden characters: a clean look must not hide one."""
    result = normalize(text, BUILTIN_PROFILES[name])
    if "ftfy" in BUILTIN_PROFILES[name].steps:
        assert "\ufffd" in result.text and result.violations == ()  # ftfy replaces it
    else:
        assert [v for v in result.violations if v.startswith("lone surrogate U+D800")]


@pytest.mark.parametrize("text", ["plain", "caf\u00e9 \u2014 ok", "caf\u00c3\u00a9  \r\n", "e\u0301"])
@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_checked_changes_nothing_but_the_work(text: str, name: str) -> None:
    """A caller that ran check_prompt says so; the result is the same, through the budget too."""
    check_prompt(text)
    expected = normalize(text, BUILTIN_PROFILES[name])
    assert normalize(text, BUILTIN_PROFILES[name], checked=True) == expected
    assert normalize_within_budget(text, BUILTIN_PROFILES[name], checked=True) == expected


# --- the ftfy step's tables -------------------------------------------------------------------


def test_the_characters_ftfy_acts_on_are_the_ones_the_engine_has_always_used() -> None:
    expected = {ord(c) for c in "&\x1b\r\u2028\u2029\x85\u02bc"}
    expected.update(range(0x80, 0xA0), range(0x2018, 0x2020), range(0xD800, 0xE000))
    for table in (ftfy.chardata.CONTROL_CHARS, ftfy.chardata.LIGATURES, ftfy.chardata.WIDTH_MAP):
        expected.update(table)
    assert expected == ftfy_step.FTFY_TOUCHABLE_CHARS


@pytest.mark.parametrize("fixer", sorted(ftfy_step._FIXER_CHARS))
def test_each_fixer_leaves_every_character_it_does_not_list(fixer: str) -> None:
    """Every code point on its own (and after a letter): a fixer changes only the characters it lists."""
    listed = ftfy_step._FIXER_CHARS[fixer]
    fix = ftfy.FIXERS[fixer]
    limit = sys.maxunicode + 1 if fixer == "fix_line_breaks" else 0x10000
    changed = [c for c in range(limit) if c not in listed and fix("a" + chr(c)) != "a" + chr(c)]
    assert changed == []


@PROPERTY
@given(text=texts)
@example(text="sÃ³")
@example(text="ÃƒÂ©")
@example(text="Menu: Ã  la carte")
def test_looks_bad_is_ftfys_is_bad(text: str) -> None:
    assert ftfy_step.looks_bad(text) == ftfy.badness.is_bad(text)


@PROPERTY
@given(text=texts)
def test_the_ftfy_step_is_ftfy_fix_text(text: str) -> None:
    assert ftfy_step.fix_with_ftfy(text) == ftfy.fix_text(text)


def test_the_ftfy_step_repairs_only_the_lines_that_need_it() -> None:
    text = "clean line\nwidth，line\n" + "x" * 50 + "\ncafÃ©\n<b>&amp;</b>\n&amp;"
    assert ftfy_step.fix_with_ftfy(text) == ftfy.fix_text(text)
    assert ftfy_step.fix_with_ftfy("already NFC: é\n") == "already NFC: é\n"
    decomposed = unicodedata.normalize("NFD", "é, ，\n")
    assert ftfy_step.fix_with_ftfy(decomposed) == ftfy.fix_text(decomposed)
