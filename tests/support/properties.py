"""How many examples the suite's property tests (Hypothesis) try.

All of them in CI (``CI=true``) and with ``HERMES_TEST_THOROUGH=1``; a third, at least 25, in a
developer's run, whose quick tier (``-m "not cluster and not docker and not chaos"``) should stay
under a minute on two cores: the properties are the same, explored less deeply between pushes.
Hypothesis' own practice (a ``ci`` profile), with the counts kept next to each test.
"""

from __future__ import annotations

import os

__all__ = ["THOROUGH", "examples"]

THOROUGH = os.environ.get("CI") == "true" or os.environ.get("HERMES_TEST_THOROUGH") == "1"


def examples(count: int) -> int:
    """``count`` examples in a thorough run, a third (at least 25, at most ``count``) otherwise."""
    return count if THOROUGH else min(count, max(25, count // 3))
