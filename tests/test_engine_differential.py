"""The engine's every result is the one the frozen reference engine gives (issue 13: 0 differences).

``tests/reference_engine`` is ``hermes_worker/engine`` as it was before the speed work (its README
names the commit). For each input, every built-in profile, ``max_validation`` 0 to 3 and with and
without ``explain``, every field of ``normalize()``'s result must be equal: text, changed,
rounds, converged, violations, explanation. Inputs: the golden files, ftfy's own test cases,
Unicode's NormalizationTest (a sample with every argument, all of it with batches' arguments), the bench corpus (slow,
when it has been built), and generated text for built-in and random custom profiles; each also
with ``checked=True`` (as batches call it after ``check_prompt``) for the texts that pass it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hermes_worker.engine import BUILTIN_PROFILES, STEPS, ItemError, Profile, check_prompt
from tests.support import differential
from tests.support.differential import compare

from .support.properties import THOROUGH, examples

PROFILES = [BUILTIN_PROFILES[name] for name in sorted(BUILTIN_PROFILES)]
PROPERTY = settings(
    max_examples=examples(200), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def assert_no_mismatch(texts: Sequence[str], profiles: list[Profile] = PROFILES, **arguments: Any) -> None:
    """No difference, and none either when the engine is told the prompts passed check_prompt.

    ``arguments`` narrow what :func:`compare` varies (every ``max_validation`` 0-3, with and
    without ``explain``, unless told otherwise).
    """
    count, first = compare(texts, profiles, **arguments)
    assert count == 0, f"{count} mismatches; the first ones:\n" + "\n".join(map(str, first))
    count, first = compare([text for text in texts if _passes_check(text)], profiles, checked=True, **arguments)
    assert count == 0, f"{count} mismatches with checked=True; the first ones:\n" + "\n".join(map(str, first))


def _passes_check(text: str) -> bool:
    try:
        check_prompt(text)
    except ItemError:
        return False
    return True


# --- the comparison itself --------------------------------------------------------------------


def test_a_changed_result_is_reported_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an engine that gets one field wrong, the comparison names that field and both values."""
    real = differential.normalize

    def off_by_one_round(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        return type(result)(result.text, result.changed, result.rounds + 1, result.converged, result.violations)

    monkeypatch.setattr(differential, "normalize", off_by_one_round)
    count, first = compare(["caf\u00c3\u00a9"], [BUILTIN_PROFILES["prompt"]], max_validations=(1,), explain=(False,))
    assert count == 1
    assert (first[0].field, first[0].live, first[0].reference) == ("rounds", 2, 1)


def test_the_checked_in_inputs_are_all_there() -> None:
    # NormalizationTest 15.0: 19,000 cases of 5 columns, 36,482 distinct strings; ftfy 6.3.1: 170 examples.
    assert len(differential.normalization_test_texts()) > 36_000
    assert len(differential.ftfy_case_texts()) > 250
    assert len(differential.golden_texts()) > 200


# --- fixed inputs -----------------------------------------------------------------------------


def test_the_golden_files_give_the_reference_results() -> None:
    assert_no_mismatch(differential.golden_texts())


def test_ftfys_own_test_cases_give_the_reference_results() -> None:
    assert_no_mismatch(differential.ftfy_case_texts())


def test_a_sample_of_normalization_test_gives_the_reference_results() -> None:
    assert_no_mismatch(differential.normalization_test_texts()[::40])


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES, ids=lambda profile: profile.name)
def test_normalization_test_gives_the_reference_results_as_batches_call_the_engine(profile: Profile) -> None:
    # The default max_validation, no explanation; the sample above varies both, and one pass of
    # the reference engine costs 30 µs a string. All 36,482 strings in a thorough run, every 4th
    # in a developer's quick one.
    texts = differential.normalization_test_texts()
    assert_no_mismatch(texts if THOROUGH else texts[::4], [profile], max_validations=(1,), explain=(False,))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("profile", PROFILES, ids=lambda profile: profile.name)
def test_the_bench_corpus_gives_the_reference_results(profile: Profile) -> None:
    texts = differential.corpus_texts()
    if texts is None:
        pytest.skip("the bench corpus is not built (python -m bench.corpus); bench reports differential_mismatches")
    # All of it in a thorough run (some 3 minutes); every 25th prompt in a developer's quick one.
    assert_no_mismatch(texts if THOROUGH else texts[::25], [profile])


# --- generated text ---------------------------------------------------------------------------

# Characters each step acts on or looks at, and the neighbours that make them matter.
_PIECES = [
    *"\t\n\r\x0b\x0c\x1b\x1c\x7f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000",  # whitespace, breaks, ESC
    *"\x00\x01\x08\x0e\x1f\x80\x81\x8d\x90\x9d\x9f",  # C0 and C1 controls
    *"\u200b\u200c\u200d\u2060\ufeff\u00ad",  # invisibles (ZWJ/ZWNJ kept)
    *"\u0301\u0316\u0323\u0307\u0344\u0f73\u1100\u1161\u11a8\uac00",  # marks and jamo that reorder or compose
    *"ﬁﬂĳＡｚ０！，：（）\uff61\uff76\uff9e²½™①ſ",  # ligatures, widths, compatibility characters
    *"‘’‚‛“”„‟ʼ«»",  # quotes
    *"&<>;#'\"aeAZ09 éÃÂâðŸ€",  # entity and mojibake material
    "\ud800",  # a lone surrogate: normalize() is a library function and may be given one
    "\U0001f600",
    "\U0001d400",
    "&amp;",
    "&lt;",
    "&eacute;",
    "&#233;",
    "&#x2014;",
    "&amp;amp;",
    "<b>",
    "\x1b[31m",
    "\x1b[?25l",
    "\x1b]0;title\x07",
    "\r\n",
    " \n",
    "\t\n",
    "\n  \n",
    "\n\n\n",
    "  ",
    "Ã©",
    "Ã\xa0",
    "â€™",
    "â€\x9d",
    "Ã¢â‚¬â„¢",
    "ðŸ˜€",
    "Ð¿Ñ€",
    "æ—¥æœ¬",
    "caf\u00c3\u200b\u00a9",
]
texts = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.characters(codec="utf-8")), max_size=25).map("".join),
)
custom_profiles = st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=6).map(
    lambda steps: Profile("custom", tuple(steps))
)


@PROPERTY
@given(text=texts)
@example(text="caf\u00c3\u200b\u00a9")
@example(text="\u00e4\x8f\u00e2\u20ac\u2039\u00a8\u0178")
@example(text=" \n\n \n x \u3000")
def test_generated_text_gives_the_reference_results_for_every_builtin_profile(text: str) -> None:
    assert_no_mismatch([text])


@PROPERTY
@given(text=texts, profile=custom_profiles)
@example(text="e\u0301", profile=Profile("custom", ("nfd", "nfc")))
@example(text="a\u2028 \nb", profile=Profile("custom", ("rstrip_lines", "unify_newlines")))
@example(text="x\u200b\n\u200b\n\n", profile=Profile("custom", ("collapse_blank_lines", "strip_invisible")))
def test_generated_text_gives_the_reference_results_for_custom_profiles(text: str, profile: Profile) -> None:
    assert_no_mismatch([text], [profile])
