"""The live engine against the frozen reference (``tests/reference_engine``), field by field.

Every field of :func:`~hermes_worker.engine.normalize`'s result (text, changed, rounds,
converged, violations, explanation) must be equal for the same text, profile, ``max_validation``
and ``explain``. Also used by the bench (``differential_mismatches``), so it imports nothing from
pytest. The inputs it knows how to read: Unicode's NormalizationTest and ftfy's own test cases
(both checked in under ``tests/data``), the golden files, and the bench corpus when it is built.
"""

from __future__ import annotations

import bz2
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from hermes_worker.engine import Profile, normalize
from tests import reference_engine

__all__ = [
    "FIELDS",
    "MAX_VALIDATIONS",
    "Mismatch",
    "compare",
    "corpus_texts",
    "ftfy_case_texts",
    "golden_texts",
    "normalization_test_texts",
]

TESTS = Path(__file__).resolve().parent.parent
DATA = TESTS / "data"
FIELDS = ("text", "changed", "rounds", "converged", "violations", "explanation")
MAX_VALIDATIONS = (0, 1, 2, 3)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One input on which the live engine and the reference disagree."""

    profile: tuple[str, ...]
    max_validation: int
    explain: bool
    text: str
    field: str
    live: Any
    reference: Any

    def __str__(self) -> str:
        return (
            f"{self.field} differs for {self.text[:200]!a} (steps {list(self.profile)}, "
            f"max_validation={self.max_validation}, explain={self.explain}): "
            f"live {_short(self.live)}, reference {_short(self.reference)}"
        )


def _short(value: Any) -> str:
    text = ascii(value)
    return text if len(text) <= 300 else text[:299] + "…"


@lru_cache(maxsize=256)
def _reference_profile(steps: tuple[str, ...]) -> reference_engine.Profile:
    return reference_engine.Profile("reference", steps)


def compare(
    texts: Iterable[str],
    profiles: Iterable[Profile],
    max_validations: Sequence[int] = MAX_VALIDATIONS,
    explain: Sequence[bool] = (False, True),
    keep: int = 10,
    checked: bool = False,
) -> tuple[int, list[Mismatch]]:
    """How many (text, profile, max_validation, explain) cases differ, and the first ``keep`` of them.

    With ``checked``, the live engine is told the texts passed ``check_prompt`` (only give such texts).
    """
    texts = list(texts)
    count = 0
    kept: list[Mismatch] = []
    for profile in profiles:
        reference = _reference_profile(profile.steps)
        for validation in max_validations:
            for explained in explain:
                for text in texts:
                    live = normalize(text, profile, validation, explained, checked=checked)
                    old = reference_engine.normalize(text, reference, validation, explained)
                    for field in FIELDS:
                        if getattr(live, field) != getattr(old, field):
                            count += 1
                            if len(kept) < keep:
                                kept.append(
                                    Mismatch(
                                        profile.steps,
                                        validation,
                                        explained,
                                        text,
                                        field,
                                        getattr(live, field),
                                        getattr(old, field),
                                    )
                                )
                            break
    return count, kept


def _unique(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(texts))


@lru_cache(maxsize=1)
def normalization_test_texts() -> tuple[str, ...]:
    """Every column (source, NFC, NFD, NFKC, NFKD) of every case of NormalizationTest, once each."""
    texts = []
    with bz2.open(DATA / "NormalizationTest-15.0.0.txt.bz2", "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(("#", "@")) or not line.strip():
                continue
            columns = line.split(";")[:5]
            texts += ["".join(chr(int(code, 16)) for code in column.split()) for column in columns]
    return _unique(texts)


@lru_cache(maxsize=1)
def ftfy_case_texts() -> tuple[str, ...]:
    """ftfy's own examples: what it is given and what it should make of it."""
    cases = json.loads((DATA / "ftfy-6.3.1-test_cases.json").read_text(encoding="utf-8"))
    texts = []
    for case in cases:
        texts += [case[key] for key in ("original", "fixed", "fixed-encoding") if key in case]
    return _unique(texts)


@lru_cache(maxsize=1)
def golden_texts() -> tuple[str, ...]:
    """Inputs and expected outputs of ``tests/golden/*.json``."""
    texts = []
    for path in sorted((TESTS / "golden").glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            texts += [case["input"], case["expected"]]
    return _unique(texts)


def corpus_texts(cache: Path | None = None) -> list[str] | None:
    """The bench corpus (``bench/.cache/corpus.jsonl``), or None when it has not been built."""
    path = (cache or TESTS.parent / "bench" / ".cache") / "corpus.jsonl"
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["prompt"] for line in handle]
