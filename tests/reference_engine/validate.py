"""Checks on what goes into the engine (one prompt) and what comes out (a profile's promises)."""

from __future__ import annotations

import re

from .errors import EMPTY_PROMPT, LONE_SURROGATE, NUL_BYTE, TOO_LARGE, ItemError
from .profiles import Profile
from .steps import STEPS

__all__ = ["DEFAULT_MAX_PROMPT_BYTES", "check_prompt", "find_violations"]

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
        raise ItemError(EMPTY_PROMPT, "prompt is empty")
    # A str of n code points takes at most 4n bytes in UTF-8: only long prompts pay for encoding.
    if len(prompt) * 4 > max_bytes:
        size = len(prompt.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ItemError(TOO_LARGE, f"prompt is {size:,} bytes; the limit is {max_bytes:,} bytes")
    nul = prompt.find("\x00")
    if nul >= 0:
        raise ItemError(NUL_BYTE, f"prompt contains a NUL character at offset {nul}: binary data is not a prompt")
    surrogate = _SURROGATE.search(prompt)
    if surrogate is not None:
        raise ItemError(
            LONE_SURROGATE,
            f"prompt contains a lone surrogate U+{ord(surrogate.group()):04X} at offset {surrogate.start()}: "
            "it is not valid Unicode text",
        )


def find_violations(text: str, profile: Profile) -> list[str]:
    """Characters in ``text`` that ``profile`` promises are absent, described for people.

    >>> from .profiles import BUILTIN_PROFILES
    >>> find_violations("a\\u200bb", BUILTIN_PROFILES["prompt"])
    ['U+200B at offset 1 (forbidden by step strip_invisible)']
    """
    problems = []
    surrogate = _SURROGATE.search(text)
    if surrogate is not None:
        problems.append(f"lone surrogate U+{ord(surrogate.group()):04X} at offset {surrogate.start()}")
    for name in profile.steps:
        forbids = STEPS[name].forbids
        if forbids is None:
            continue
        hit = forbids.search(text)
        if hit is not None:
            problems.append(f"U+{ord(hit.group()):04X} at offset {hit.start()} (forbidden by step {name})")
    return problems
