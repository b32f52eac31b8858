"""Checks on what goes into the engine (one prompt) and what comes out (a profile's promises)."""

from __future__ import annotations

import re

from .errors import ItemError
from .profiles import Profile
from .steps import STEPS

__all__ = ["DEFAULT_MAX_PROMPT_BYTES", "check_prompt", "find_violations", "lone_surrogate"]

DEFAULT_MAX_PROMPT_BYTES = 1024 * 1024

# In a Python str decoded from UTF-8 or JSON, surrogate pairs are already combined: any code
# point in this range is a lone surrogate, which cannot be written as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_prompt(prompt: str, max_bytes: int = DEFAULT_MAX_PROMPT_BYTES) -> None:
    """Reject prompts no profile should touch.

    Raises:
        ItemError: ``empty_prompt``, ``too_large``, ``nul_byte`` or ``lone_surrogate``, with a
            message that says where the problem is.

    >>> check_prompt("fine")
    >>> check_prompt("a\\x00b")
    Traceback (most recent call last):
    hermes_worker.engine.errors.ItemError: prompt contains a NUL character at offset 1: binary data is not a prompt
    """
    if not prompt:
        raise ItemError("empty_prompt", "prompt is empty")
    # A str of n code points takes at most 4n bytes in UTF-8: only long prompts pay for encoding.
    if len(prompt) * 4 > max_bytes:
        size = len(prompt.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ItemError("too_large", f"prompt is {size:,} bytes; the limit is {max_bytes:,} bytes")
    nul = prompt.find("\x00")
    if nul >= 0:
        raise ItemError("nul_byte", f"prompt contains a NUL character at offset {nul}: binary data is not a prompt")
    surrogate = None if prompt.isascii() else _first_surrogate(prompt)
    if surrogate is not None:
        raise ItemError(
            "lone_surrogate",
            f"prompt contains a lone surrogate U+{ord(surrogate.group()):04X} at offset {surrogate.start()}: "
            "it is not valid Unicode text",
        )


def _first_surrogate(text: str) -> re.Match[str] | None:
    # UTF-8 cannot encode a surrogate: encoding is the cheapest test there is (C, no regex, half
    # the time of the search), and only a text that fails it is searched for the offset.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.search(text)
    return None


def lone_surrogate(text: str) -> tuple[str, ...]:
    """The first lone surrogate in ``text``, described as :func:`find_violations` describes it.

    >>> lone_surrogate("ok"), lone_surrogate("a\\ud800")
    ((), ('lone surrogate U+D800 at offset 1',))
    """
    surrogate = None if text.isascii() else _first_surrogate(text)
    if surrogate is None:
        return ()
    return (f"lone surrogate U+{ord(surrogate.group()):04X} at offset {surrogate.start()}",)


def find_violations(text: str, profile: Profile) -> list[str]:
    """Characters in ``text`` that ``profile`` promises are absent, described for people.

    >>> from .profiles import BUILTIN_PROFILES
    >>> find_violations("a\\u200bb", BUILTIN_PROFILES["prompt"])
    ['U+200B at offset 1 (forbidden by step strip_invisible)']
    """
    problems = list(lone_surrogate(text))
    for name in profile.steps:
        forbids = STEPS[name].forbids
        if forbids is None:
            continue
        hit = forbids.search(text)
        if hit is not None:
            problems.append(f"U+{ord(hit.group()):04X} at offset {hit.start()} (forbidden by step {name})")
    return problems
