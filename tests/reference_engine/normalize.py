"""Run a profile over one text, validate the result, and explain what changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .profiles import Profile
from .steps import STEPS, ftfy_explain
from .validate import find_violations

__all__ = ["Normalized", "apply_profile", "normalize"]


@dataclass(frozen=True, slots=True)
class Normalized:
    """The outcome of :func:`normalize`.

    Attributes:
        text: the normalized text.
        changed: whether ``text`` differs from the input.
        rounds: how many passes of the profile produced the kept text (1 unless validation
            found the first pass was not a fixed point and ran it again).
        converged: True if the last validation pass changed nothing, False if the rounds ran
            out first, None if validation was off (``max_validation=0``).
        violations: characters the profile forbids that are still present (validation only).
        explanation: with ``explain=True``, the steps that changed the text, in order.
    """

    text: str
    changed: bool
    rounds: int
    converged: bool | None
    violations: tuple[str, ...] = ()
    explanation: tuple[dict[str, Any], ...] | None = None


@lru_cache(maxsize=256)
def _pipeline(steps: tuple[str, ...]) -> tuple[Callable[[str], str], ...]:
    return tuple(STEPS[name].apply for name in steps)


def apply_profile(text: str, profile: Profile, between_steps: Callable[[], None] | None = None) -> str:
    """One pass of every step of ``profile``, in order, calling ``between_steps`` after each.

    >>> from .profiles import BUILTIN_PROFILES
    >>> apply_profile(" caf\\u0065\\u0301 \\n\\n\\n\\n ok  ", BUILTIN_PROFILES["prompt"])
    ' café\\n\\n ok'
    """
    if between_steps is None:
        for step in _pipeline(profile.steps):
            text = step(text)
        return text
    for step in _pipeline(profile.steps):
        text = step(text)
        between_steps()
    return text


def _apply_explained(
    text: str, profile: Profile, round_no: int, log: list[dict[str, Any]], between_steps: Callable[[], None] | None
) -> str:
    for name, step in zip(profile.steps, _pipeline(profile.steps), strict=True):
        after = step(text)
        if between_steps is not None:
            between_steps()
        if after != text:
            entry: dict[str, Any] = {"round": round_no, "step": name}
            if name == "ftfy":
                entry["detail"] = ftfy_explain(text)
            log.append(entry)
        text = after
    return text


def normalize(
    text: str,
    profile: Profile,
    max_validation: int = 1,
    explain: bool = False,
    between_steps: Callable[[], None] | None = None,
) -> Normalized:
    """Normalize ``text`` with ``profile`` and check that the result is stable.

    After the first pass, up to ``max_validation`` validation passes run the profile again on
    its own output. A pass that changes nothing proves a fixed point (``converged``); a pass
    that changes something replaces the output and counts as another round. ``between_steps``,
    if given, is called after every step (:mod:`.budget` checks its deadline there).

    >>> from .profiles import BUILTIN_PROFILES
    >>> r = normalize("ﬁne\\u200b", BUILTIN_PROFILES["prompt"])
    >>> (r.text, r.changed, r.rounds, r.converged)
    ('fine', True, 1, True)
    """
    if max_validation < 0:
        raise ValueError("max_validation must be >= 0")
    log: list[dict[str, Any]] | None = [] if explain else None

    def one_pass(current: str, round_no: int) -> str:
        if log is None:
            return apply_profile(current, profile, between_steps)
        return _apply_explained(current, profile, round_no, log, between_steps)

    out = one_pass(text, 1)
    rounds = 1
    converged: bool | None = None
    violations: tuple[str, ...] = ()
    if max_validation and out == text:
        # Every step is a pure function: a pass that changed nothing has proven its input a
        # fixed point, and running it again could only repeat it. Most prompts take this path.
        converged = True
    elif max_validation:
        converged = False
        for _ in range(max_validation):
            again = one_pass(out, rounds + 1)
            if again == out:
                converged = True
                break
            out = again
            rounds += 1
    if max_validation:
        violations = tuple(find_violations(out, profile))
    return Normalized(
        text=out,
        changed=out != text,
        rounds=rounds,
        converged=converged,
        violations=violations,
        explanation=tuple(log) if log is not None else None,
    )
