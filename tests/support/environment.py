"""Where the tests run: the repository, free ports, what to do when a service is missing, and
which tier a test is in."""

from __future__ import annotations

import importlib
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
ARTIFACTS = Path(os.environ.get("HERMES_TEST_ARTIFACTS", REPO / "artifacts"))
BASE_IMAGE = os.environ.get("HERMES_TEST_BASE_IMAGE", "hermes-base:bookworm")  # the sandbox image's base
# This test run's deployment: every container it starts carries it, and every reap or cleanup it
# does looks at nothing else, so runs of other checkouts on the same engine never meet ours.
TEST_DEPLOYMENT = f"test-{uuid.uuid4().hex[:12]}"


def missing(reason: str) -> None:
    """Skip on a developer machine; fail in CI (CI=true), where every service must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def needs_module(name: str, reason: str) -> Any:
    """The module ``name``, imported; where it is missing, :func:`missing` (a skip on a laptop, a
    failure in CI: everything the test extra installs must be there)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} cannot be imported: {reason}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The tiers: a test that needs a service says so with a mark (``cluster``: a private Redis, usually
# workers too; ``docker``: the engine and the sandbox image), so that
# ``pytest -m "not cluster and not docker and not chaos"`` needs no service at all. conftest checks
# the fixtures each test takes when it collects them, and sets ``running_marks`` before each test so
# that the starters of :mod:`.redis_server` and :mod:`.processes` can refuse a test that lacks its mark.
running_marks: frozenset[str] | None = None  # None: outside a test (the starters check nothing)


def needs_mark(mark: str, what: str) -> None:
    """Fail the running test unless it is marked ``mark``: it is about to start ``what``."""
    if running_marks is not None and mark not in running_marks:
        pytest.fail(f"this test starts {what} but is not marked {mark}: add @pytest.mark.{mark} "
                    "(the fast tier must need no service)", pytrace=False)  # fmt: skip
