"""The function every peer runs: the engine's ``compact`` profile, one prompt or a chunk.

Workers find their Redis in ``BENCH_PEER_REDIS_URL`` (set by :mod:`bench.peers.runner`).
"""

from __future__ import annotations

import os

from hermes_worker.engine import BUILTIN_PROFILES, apply_profile

__all__ = ["REDIS_URL", "compact", "compact_many"]

COMPACT = BUILTIN_PROFILES["compact"]
REDIS_URL = os.environ.get("BENCH_PEER_REDIS_URL", "redis://127.0.0.1:1/0")


def compact(text: str) -> str:
    """One prompt through the ``compact`` profile (NFKC, whitespace runs to one space).

    >>> compact("ﬁne \\n\\n  day")
    'fine day'
    """
    return apply_profile(text, COMPACT)


def compact_many(texts: list[str]) -> list[str]:
    """A chunk of prompts through the ``compact`` profile, in order."""
    return [apply_profile(text, COMPACT) for text in texts]
