"""Golden-data tests for the engine, in the style of ftfy's own test suite.

``tests/golden/steps.json`` holds cases for single steps and ``tests/golden/profiles.json``
cases for whole profiles: ``{"label", "step" | "profile", "input", "expected"}``, with an
optional ``"xfail": "reason"`` for a known gap (run as ``xfail(strict=True)``, so a gap that
closes fails loudly and the case must be promoted). Invisible characters are written as
``\\u`` escapes so the files stay readable.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.engine import BUILTIN_PROFILES, STEPS, apply_profile, normalize

GOLDEN = Path(__file__).parent / "golden"


def _load(filename: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((GOLDEN / filename).read_text(encoding="utf-8"))
    return cases


STEP_CASES = _load("steps.json")
PROFILE_CASES = _load("profiles.json")


def _params(cases: list[dict[str, Any]], *, skip_xfail: bool = False) -> list[Any]:
    params = []
    for case in cases:
        if "xfail" in case:
            if skip_xfail:
                continue
            marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)]
        else:
            marks = []
        params.append(pytest.param(case, id=case["label"], marks=marks))
    return params


# --- the data itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cases", "kind", "known"),
    [(STEP_CASES, "step", STEPS), (PROFILE_CASES, "profile", BUILTIN_PROFILES)],
    ids=["steps.json", "profiles.json"],
)
def test_golden_files_are_well_formed(cases: list[dict[str, Any]], kind: str, known: Any) -> None:
    labels = Counter(case["label"] for case in cases)
    assert not [label for label, n in labels.items() if n > 1], "labels are test ids and must be unique"
    for case in cases:
        assert {"label", kind, "input", "expected"} <= set(case) <= {"label", kind, "input", "expected", "xfail"}, case
        assert all(isinstance(case[key], str) for key in case), case["label"]
        assert case["label"].isascii(), "labels are test ids: keep them ASCII"
        assert case[kind] in known, case["label"]
        assert case["label"].startswith(f"{case[kind]}: "), case["label"]
    # Every step and every built-in profile has golden cases.
    assert {case[kind] for case in cases} == set(known)


def test_golden_files_are_big_enough() -> None:
    assert len(STEP_CASES) + len(PROFILE_CASES) >= 80
    prompt_cases = [case for case in PROFILE_CASES if case["profile"] == "prompt"]
    assert len(prompt_cases) >= 50


# --- steps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _params(STEP_CASES))
def test_step_golden(case: dict[str, Any]) -> None:
    step = STEPS[case["step"]]
    out = step.apply(case["input"])
    assert out == case["expected"]
    if step.forbids is not None:
        assert step.forbids.search(out) is None


@pytest.mark.parametrize("case", _params(STEP_CASES, skip_xfail=True))
def test_step_golden_output_is_a_fixed_point(case: dict[str, Any]) -> None:
    assert STEPS[case["step"]].apply(case["expected"]) == case["expected"]


# --- profiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _params(PROFILE_CASES))
def test_profile_golden(case: dict[str, Any]) -> None:
    result = normalize(case["input"], BUILTIN_PROFILES[case["profile"]], max_validation=3)
    assert result.text == case["expected"]
    assert result.converged is True
    assert result.violations == ()
    assert result.changed == (case["input"] != case["expected"])


@pytest.mark.parametrize("case", _params(PROFILE_CASES, skip_xfail=True))
def test_profile_golden_output_is_a_fixed_point(case: dict[str, Any]) -> None:
    assert apply_profile(case["expected"], BUILTIN_PROFILES[case["profile"]]) == case["expected"]


@pytest.mark.parametrize("case", _params(PROFILE_CASES, skip_xfail=True))
def test_profile_golden_explain_gives_the_same_text(case: dict[str, Any]) -> None:
    profile = BUILTIN_PROFILES[case["profile"]]
    result = normalize(case["input"], profile, max_validation=3, explain=True)
    assert result.text == case["expected"]
    assert result.explanation is not None
    assert bool(result.explanation) == result.changed
