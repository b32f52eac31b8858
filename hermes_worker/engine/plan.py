"""A profile's plan: one look at a text decides whether any step has work; only those that do run.

Every step says when it may have work (:class:`~.steps.Work`): the characters it acts on, hints
(characters that mean work only if a test on their lines says so: mojibake for ftfy), the normal
form it produces, a few tests on the whole text (line ends, blank runs, the ends). A plan joins
the steps of a profile into one character class (with lone surrogates in it), the forms and the
tests. One scan with the class, a quick check per form and the tests decide whether any step has
work: when none has, the pass is over, and a clean prompt has cost one scan. When some step has,
the characters that scan found tell which ones: only those run, and after a step changed the
text the next ones are judged on the new text.

The same look is validation's certificate (:mod:`.normalize`): a text it finds idle is a fixed
point of the profile, and holds no character a step forbids (a step's forbidden characters are
characters it would change, so they are in the class) and, when the class is not empty, no lone
surrogate. A validation pass looks at the output of a pass: when the profile's last step is
idempotent, that output is already its fixed point, and the look leaves that step out.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from .ftfy_step import char_class
from .profiles import Profile
from .steps import STEPS, Work, ftfy_explain

__all__ = ["CHANGED", "IDLE", "IDLE_NO_SURROGATE", "UNCHANGED", "Plan", "plan_for"]

_SURROGATES = frozenset(range(0xD800, 0xE000))
_is_normalized = unicodedata.is_normalized

# Up to this length a look lists every class character it finds (to tell steps apart); a longer
# text could make that list take more memory than the text (a new str for each non-Latin-1 one).
FOUND_MAX = 1 << 16

# What a pass proved about its input (plain ints: an enum member costs a lookup each time).
IDLE_NO_SURROGATE = 0  # no step had work (the look said so), and the text holds no lone surrogate
IDLE = 1  # no step had work (the look said so); lone surrogates not looked for
UNCHANGED = 2  # steps ran and each returned its input: no character any of them forbids
CHANGED = 3  # some step changed the text (a later one may have changed it back)


class _Look:
    """Whether any of some steps has work on a text: one class, the hints' tests, the forms, the tests."""

    __slots__ = (
        "_findall",
        "_forms",
        "_hard",
        "_hinted",
        "_search",
        "_search_hard",
        "_search_hints",
        "_tests",
        "idle_code",
        "open",
    )

    def __init__(self, works: Iterable[Work | None]) -> None:
        hard: set[int] = set()
        hinted: dict[Callable[[str], bool], set[int]] = {}
        forms: dict[str, None] = {}
        tests: dict[Callable[[str], bool], None] = {}
        self.open = False  # some step may have work on any text: never idle
        for work in works:
            if work is None:
                self.open = True
                continue
            hard |= work.chars
            if work.hint_test is not None:
                hinted.setdefault(work.hint_test, set()).update(work.hints)
            if work.form is not None:
                forms[work.form] = None
            tests.update(dict.fromkeys(work.tests))
        looked_for = hard.union(*hinted.values())
        # With characters to look for, lone surrogates cost nothing more in the same class.
        pattern = re.compile(char_class(looked_for | _SURROGATES)) if looked_for else None
        self._findall = pattern.findall if pattern is not None else None
        self._search = pattern.search if pattern is not None else None
        self._hard = frozenset(map(chr, hard | _SURROGATES))
        self._hinted = tuple((frozenset(map(chr, chars)), test) for test, chars in hinted.items())
        # For long texts: a search for the hard characters, then one for each test's hints.
        self._search_hard = re.compile(char_class(hard | _SURROGATES)).search
        self._search_hints = tuple((re.compile(char_class(chars)).search, test) for test, chars in hinted.items())
        self.idle_code = IDLE_NO_SURROGATE if looked_for else IDLE
        self._forms: tuple[Any, ...] = tuple(forms)
        self._tests = tuple(tests)

    def found(self, text: str) -> list[str]:
        """Every character of the class in ``text`` (its steps' characters and hints, lone surrogates)."""
        return self._findall(text) if self._findall is not None else []

    def idle(self, text: str) -> bool:
        """True when no step has work on ``text``."""
        if not self._hinted:
            return (self._search is None or self._search(text) is None) and self.idle_given((), text)
        if len(text) <= FOUND_MAX:
            return self.idle_given(self.found(text), text)
        # A list of every class character of a long text could take more memory than the text:
        # a search for the hard ones, then one for each test's hints, stop at the first.
        if self.open or self._search_hard(text) is not None:
            return False
        for search, test in self._search_hints:
            if search(text) is not None and test(text):
                return False
        return self.idle_given((), text)

    def idle_given(self, found: list[str] | tuple[()], text: str) -> bool:
        """True when no step has work on ``text``, whose class characters are ``found``."""
        if self.open:
            return False
        if found:
            present = set(found)
            if not present.isdisjoint(self._hard):
                return False
            for chars, test in self._hinted:
                if not present.isdisjoint(chars) and test(text):
                    return False
        if self._forms and not text.isascii():
            for form in self._forms:
                if not _is_normalized(form, text):
                    return False
        for test in self._tests:  # noqa: SIM110  (a generator costs more than these tests on a short prompt)
            if test(text):
                return False
        return True


class Plan:
    """The steps of a profile, and the look that tells which of them have work on a text."""

    __slots__ = ("_again", "_direct", "_first", "_last_settles", "_steps", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        steps = [STEPS[name] for name in names]
        # (name, function, its Work with characters as strings; None: it may work on any text)
        self._steps = tuple(
            (
                step.name,
                step.apply,
                None
                if step.work is None
                else (
                    frozenset(map(chr, step.work.chars)),
                    frozenset(map(chr, step.work.hints)),
                    step.work.hint_test,
                    step.work.form,
                    step.work.tests,
                ),
            )
            for step in steps
        )
        self._first = _Look(step.work for step in steps)
        # The output of a pass is a fixed point of the last step when that step is idempotent.
        self._last_settles = steps[-1].idempotent
        self._again = _Look(step.work for step in steps[:-1]) if self._last_settles else self._first
        # With one step or fewer to look for characters, the characters the look found cannot
        # tell steps apart: each step's own fast path (one scan) decides, as cheaply.
        self._direct = sum(1 for step in steps if step.work is None or step.work.chars or step.work.hints) <= 1

    def idle(self, text: str, after_pass: bool = False) -> bool:
        """True when no step of the profile has work on ``text`` (sound, not complete).

        With ``after_pass``, ``text`` is the output of a pass of this profile.

        >>> from .profiles import BUILTIN_PROFILES
        >>> plan = plan_for(BUILTIN_PROFILES["prompt"])
        >>> plan.idle("Hello, world."), plan.idle("Hello,  world. "), plan.idle("caf\\u00c3\\u00a9")
        (True, False, False)
        """
        return (self._again if after_pass else self._first).idle(text)

    def run(
        self,
        text: str,
        between_steps: Callable[[], None] | None = None,
        log: list[dict[str, Any]] | None = None,
        round_no: int = 1,
        after_pass: bool = False,
    ) -> tuple[str, int]:
        """One pass of the profile over ``text``: the output, and what the pass proved.

        Only the steps with work run. ``between_steps`` is called after each of them; with
        ``log``, every step that changes the text is recorded there (round, step, and for ftfy
        the repairs it made). With ``after_pass``, ``text`` is the output of a pass of this profile
        (validation).
        """
        look = self._again if after_pass else self._first
        if self._direct or len(text) > FOUND_MAX:
            if look.idle(text):
                return text, look.idle_code
            return self._run_all(text, between_steps, log, round_no, after_pass)
        found = look.found(text)
        if look.idle_given(found, text):
            return text, look.idle_code
        present = set(found)
        scanned = text  # ``present`` holds the class characters of this text
        first = self._first
        proved = UNCHANGED
        last = len(self._steps) - 1
        for index, (name, step, work) in enumerate(self._steps):
            if work is not None:
                if scanned is not text:
                    present = set(first.found(text))
                    scanned = text
                chars, hints, hint_test, form, tests = work
                if (
                    present.isdisjoint(chars)
                    and (hint_test is None or present.isdisjoint(hints) or not hint_test(text))
                    and (form is None or text.isascii() or _is_normalized(form, text))
                    and not any(test(text) for test in tests)
                ):
                    continue  # no work for this step: it would return its input
            if index == last and after_pass and self._last_settles and proved == UNCHANGED:
                continue  # the input of the pass, a fixed point of this idempotent step
            after = step(text)
            if between_steps is not None:
                between_steps()
            if after is not text and after != text:
                proved = CHANGED
                if log is not None:
                    _record(log, round_no, name, text)
            text = after
        return text, proved

    def _run_all(
        self,
        text: str,
        between_steps: Callable[[], None] | None,
        log: list[dict[str, Any]] | None,
        round_no: int,
        after_pass: bool,
    ) -> tuple[str, int]:
        proved = UNCHANGED
        last = len(self._steps) - 1
        for index, (name, step, _work) in enumerate(self._steps):
            if index == last and after_pass and self._last_settles and proved == UNCHANGED:
                continue  # the input of the pass, a fixed point of this idempotent step
            after = step(text)
            if between_steps is not None:
                between_steps()
            if after is not text and after != text:
                proved = CHANGED
                if log is not None:
                    _record(log, round_no, name, text)
            text = after
        return text, proved


def _record(log: list[dict[str, Any]], round_no: int, name: str, before: str) -> None:
    entry: dict[str, Any] = {"round": round_no, "step": name}
    if name == "ftfy":
        entry["detail"] = ftfy_explain(before)
    log.append(entry)


_PLANS: dict[str, Plan] = {}


def plan_for(profile: Profile) -> Plan:
    """The plan of ``profile``, built once per list of steps (its digest names the list)."""
    plan = _PLANS.get(profile.digest)
    if plan is None:
        if len(_PLANS) >= 1024:  # custom profiles come in requests: keep the memory bounded
            _PLANS.clear()
        plan = _PLANS[profile.digest] = Plan(profile.steps)
    return plan
