"""What-if variants of the engine, measured next to it: evidence for a fix, not Hermes code.

Two ideas, each checked for identical output on the whole corpus before its speed counts:

1. *Skip the validation round when the first pass changed nothing.* Every step is a pure
   function, so ``f(t) == t`` already proves ``t`` is a fixed point; today ``normalize`` runs
   the whole profile a second time anyway.
2. *A one-scan prefilter for ftfy's mojibake test.* Nearly all of the ftfy step's time is
   ``ftfy.badness.is_bad``: a 37-branch regex that Python's ``re`` tries at every position. Every
   branch needs at least one character from a small set (mostly symbols such as ``¦¤¨¬``, ``Ã``,
   ``Â``, C1 controls); when a text holds none of them no branch can match, and one C-level
   character-class scan proves it. The set is derived from the compiled regex itself, so it
   follows the pinned ftfy version.
"""

from __future__ import annotations

import re
import re._parser as re_parser
import unicodedata
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

import ftfy.badness

from hermes_worker.engine import BUILTIN_PROFILES, STEPS, Profile, find_violations, steps
from hermes_worker.engine.steps import fix_with_ftfy

__all__ = ["WHAT_IFS", "ftfy_prefiltered"]

_MAX_SEGMENT = ftfy.TextFixerConfig().max_decode_length


def _finite_set(op: Any, av: Any) -> set[int] | None:
    """The code points one regex element can match, or None if open-ended (negated, categories)."""
    if str(op) == "LITERAL":
        return {av}
    if str(op) != "IN":
        return None
    found: set[int] = set()
    for kind, value in av:
        if str(kind) == "LITERAL":
            found.add(value)
        elif str(kind) == "RANGE":
            found.update(range(value[0], value[1] + 1))
        else:
            return None
    return found


def _required_chars(pattern: re.Pattern[str]) -> re.Pattern[str] | None:
    """A character class that every match of ``pattern`` must touch, or None if none can be proven.

    From each top-level branch, one element that every match of that branch contains, chosen to
    be as rare as possible (no ASCII, few letters); the class is the union over all branches.
    """
    tree = re_parser.parse(pattern.pattern, pattern.flags)
    if len(tree.data) != 1 or str(tree.data[0][0]) != "BRANCH":
        return None
    union: set[int] = set()
    for branch in tree.data[0][1][1]:
        sets: list[set[int]] = [found for op, av in branch.data if (found := _finite_set(op, av))]
        if not sets:
            return None

        def rarity(chars: AbstractSet[int]) -> tuple[int, int, int]:
            letters = sum(1 for c in chars if unicodedata.category(chr(c)).startswith("L"))
            return (sum(1 for c in chars if c < 0x80), letters, len(chars))

        union |= min(sets, key=rarity)
    return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(union)) + "]")


_CAN_BE_BAD = _required_chars(ftfy.badness.BADNESS_RE)
# The engine's own table of characters ftfy's fixes act on (private: if it is renamed, the
# what-if simply stops short-cutting instead of breaking the suite).
_FTFY_TOUCHABLE: re.Pattern[str] | None = getattr(steps, "_FTFY_TOUCHABLE", None)


def ftfy_prefiltered(text: str) -> str:
    """``fix_with_ftfy`` behind one scan proving that neither ftfy's fixes nor its mojibake test apply."""
    if (
        _CAN_BE_BAD is not None
        and _FTFY_TOUCHABLE is not None
        and len(text) <= _MAX_SEGMENT
        and _FTFY_TOUCHABLE.search(text) is None
        and _CAN_BE_BAD.search(text) is None
        and (text.isascii() or unicodedata.is_normalized("NFC", text))
    ):
        return text
    return fix_with_ftfy(text)


def _pipeline(profile: Profile, ftfy_step: Callable[[str], str]) -> Callable[[str], str]:
    steps = tuple(ftfy_step if name == "ftfy" else STEPS[name].apply for name in profile.steps)

    def apply(text: str) -> str:
        for step in steps:
            text = step(text)
        return text

    return apply


def _normalize_like(profile: Profile, ftfy_step: Callable[[str], str], skip_unchanged: bool) -> Callable[[str], str]:
    """``normalize(t, profile).text`` with max_validation=1, with the what-if changes."""
    one_pass = _pipeline(profile, ftfy_step)

    def run(text: str) -> str:
        out = one_pass(text)
        if not skip_unchanged or out != text:
            out = one_pass(out)  # normalize() keeps the second pass's output either way
        find_violations(out, profile)
        return out

    return run


_PROMPT = BUILTIN_PROFILES["prompt"]
WHAT_IFS: dict[str, tuple[str, Callable[[str], str]]] = {
    "what_if_ftfy_step_prefiltered": (
        "what-if: the ftfy step behind one character-class scan that ftfy's mojibake regex needs to match",
        ftfy_prefiltered,
    ),
    "what_if_prompt_skip_unchanged": (
        "what-if: `normalize(t, prompt)` without the validation round when pass 1 changed nothing",
        _normalize_like(_PROMPT, fix_with_ftfy, skip_unchanged=True),
    ),
    "what_if_prompt_both": (
        "what-if: both changes together",
        _normalize_like(_PROMPT, ftfy_prefiltered, skip_unchanged=True),
    ),
}
