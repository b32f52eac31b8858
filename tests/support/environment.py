"""Where the tests run: the repository, free ports, and what to do when a service is missing."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
