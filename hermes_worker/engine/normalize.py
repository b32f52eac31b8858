"""Run a profile over one text, validate the result, and explain what changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .plan import CHANGED, IDLE_NO_SURROGATE, plan_for
from .profiles import Profile
from .validate import find_violations, lone_surrogate

__all__ = ["Normalized", "apply_profile", "normalize"]


class Normalized(NamedTuple):
    """The outcome of :func:`normalize`: immutable, read by attribute.

    A named tuple rather than a frozen dataclass: it is built once for every prompt, and a
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` a field) cost more than the whole
    ``nfc`` profile on a clean prompt.

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


# Every field given, in order: the tuple constructor itself, without NamedTuple's __new__.
_new = tuple.__new__


def apply_profile(text: str, profile: Profile, between_steps: Callable[[], None] | None = None) -> str:
    """One pass of every step of ``profile``, in order, calling ``between_steps`` after each that runs.

    Steps with nothing to do on the text do not run (:mod:`.plan`): their output would be their input.

    >>> from .profiles import BUILTIN_PROFILES
    >>> apply_profile(" caf\\u0065\\u0301 \\n\\n\\n\\n ok  ", BUILTIN_PROFILES["prompt"])
    ' café\\n\\n ok'
    """
    return plan_for(profile).run(text, between_steps)[0]


def normalize(
    text: str,
    profile: Profile,
    max_validation: int = 1,
    explain: bool = False,
    between_steps: Callable[[], None] | None = None,
    checked: bool = False,
) -> Normalized:
    """Normalize ``text`` with ``profile`` and check that the result is stable.

    After the first pass, up to ``max_validation`` validation passes run the profile again on
    its own output. A pass that changes nothing proves a fixed point (``converged``); a pass
    that changes something replaces the output and counts as another round. ``between_steps``,
    if given, is called after every step that runs (:mod:`.budget` checks its deadline there).

    Validation is a certificate, not a second run where it can be: a validation pass starts
    with the plan's look (:meth:`.Plan.idle`), and an output it finds idle is a fixed point with
    no forbidden character, proven by one scan. Only an output the look cannot clear goes through
    its steps again, and only one whose pass changed something is searched for violations.
    ``checked``: the caller has passed ``text`` through :func:`.check_prompt`, so it holds no
    lone surrogate; no step makes one (:class:`.steps.Step`), so no output needs a test for one.

    >>> from .profiles import BUILTIN_PROFILES
    >>> r = normalize("ﬁne\\u200b", BUILTIN_PROFILES["prompt"])
    >>> (r.text, r.changed, r.rounds, r.converged)
    ('fine', True, 1, True)
    """
    if max_validation < 0:
        raise ValueError("max_validation must be >= 0")
    plan = plan_for(profile)
    log: list[dict[str, Any]] | None = [] if explain else None
    out, proved = plan.run(text, between_steps, log)
    if not max_validation:
        return _new(Normalized, (out, out != text, 1, None, (), tuple(log) if log is not None else None))
    rounds = 1
    # A pass that changed nothing proved its input a fixed point (every step is a pure function),
    # and running it again could only repeat it. Most prompts take this path.
    converged = out == text
    if not converged:
        for _ in range(max_validation):
            again, proved = plan.run(out, between_steps, log, rounds + 1, after_pass=True)
            if again == out:
                converged = True
                break
            out = again
            rounds += 1
    if not converged or proved == CHANGED:  # (CHANGED: steps changed it and others changed it back)
        violations = tuple(find_violations(out, profile))
    elif proved == IDLE_NO_SURROGATE or checked or out.isascii():
        violations = ()
    else:  # no step has work on ``out``: none of their forbidden characters; a lone surrogate?
        try:
            out.encode("utf-8")  # UTF-8 cannot encode a surrogate: the cheapest test there is
            violations = ()
        except UnicodeEncodeError:
            violations = lone_surrogate(out)
    return _new(Normalized, (out, out != text, rounds, converged, violations, tuple(log) if log is not None else None))
