"""Shared fixtures: a private HERMES_HOME and a way to run the real `hermes` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.fixtures_cluster", "tests.fixtures_docker"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture
def hermes_env(tmp_path: Path) -> dict[str, str]:
    """An environment with its own HERMES_HOME and no HERMES_* settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    env["HERMES_HOME"] = str(tmp_path / "hermes-home")
    # No broker unless a test asks for one: port 1 refuses at once, so commands run in-process.
    env["HERMES_BROKER_URL"] = "redis://127.0.0.1:1/0"
    # In-process runs stay local unless a test asks for isolation: the engine and the CLI are
    # what most tests are about, and a sandbox session per command would only slow them down.
    env["HERMES_ISOLATION"] = "local"
    from tests.fixtures_docker import TEST_DEPLOYMENT  # (a plugin: imported once pytest has registered it)

    env["HERMES_DEPLOYMENT"] = TEST_DEPLOYMENT  # sandbox containers of this test run, and only those
    return env


HermesRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def hermes(hermes_env: dict[str, str], tmp_path: Path) -> HermesRunner:
    """Run `hermes ARGS...` as a real subprocess; returns the completed process (text mode)."""

    def run(
        *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(hermes_env, **(env or {}))
        if isinstance(input, bytes):
            done = subprocess.run(
                [sys.executable, "-m", "hermes_producer", *args],
                input=input,
                capture_output=True,
                env=full_env,
                cwd=tmp_path,
                timeout=timeout,
            )
            return subprocess.CompletedProcess(
                done.args,
                done.returncode,
                done.stdout.decode("utf-8", "replace"),
                done.stderr.decode("utf-8", "replace"),
            )
        return subprocess.run(
            [sys.executable, "-m", "hermes_producer", *args],
            input=input,
            text=True,
            capture_output=True,
            env=full_env,
            cwd=tmp_path,
            timeout=timeout,
            encoding="utf-8",
        )

    return run


@pytest.fixture
def chermes(hermes: HermesRunner, cluster_env: dict[str, str]) -> HermesRunner:
    """`hermes` pointed at the private cluster."""

    def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = dict(cluster_env, **kwargs.pop("env", {}))
        return hermes(*args, env=env, **kwargs)

    return run


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every JSONL record of an output file, in order."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]
