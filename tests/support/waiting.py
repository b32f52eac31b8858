"""Waiting for a condition: the one polling loop of the suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.1, message: str | Callable[[], str] = "a condition"
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy; return that.

    Fails the test, saying it was waiting for ``message``, when ``timeout`` seconds pass first;
    ``message`` may be a function, called then (to show a log as it is at the end).
    ``predicate`` may itself fail the test (a process that died while we waited) or raise:
    either ends the wait at once. The predicate is called once more at the deadline, so a
    condition met in the last interval is never reported as a timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_call = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if last_call:
            pytest.fail(f"timed out after {timeout:g} s waiting for {message() if callable(message) else message}")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
