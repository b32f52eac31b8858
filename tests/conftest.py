"""Shared fixtures: a private HERMES_HOME and a way to run the real `hermes` command.

Every fixture module is registered here, once, for the whole suite; plain helpers are in
:mod:`tests.support`. Test modules import neither this file nor each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.support")  # helpers that assert: show the values when they fail

from .support import environment  # noqa: E402
from .support import zygote as zygotes  # noqa: E402
from .support.environment import REPO, TEST_DEPLOYMENT  # noqa: E402
from .support.fixture_types import HermesProcessFactory, HermesRunner  # noqa: E402
from .support.processes import Producer, run_hermes, start_hermes  # noqa: E402
from .support.properties import THOROUGH  # noqa: E402
from .support.zygote import Zygote  # noqa: E402

pytest_plugins = ["tests.fixtures_cluster", "tests.fixtures_docker", "tests.fixtures_chaos", "tests.fixtures_faults",
                  "tests.fixtures_hosts"]  # fmt: skip

SERVICE_MARKS = ("cluster", "docker", "chaos")
# The fixtures that start a service, by the mark a test taking them must carry: the fast tier,
# ``-m "not cluster and not docker and not chaos"``, must need no Redis, worker or Docker engine.
SERVICE_FIXTURES = {
    "cluster": {"redis_server", "cluster_env", "start_worker", "chermes", "redis_factory", "cluster_factory",
                "sentinel_factory", "lan"},
    "docker": {"docker_client", "sandbox_image", "sandbox_settings", "session_factory", "container_env",
               "private_dockerd"},
}  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Tests interrupt the commands they start as a terminal's Ctrl-C would. A run started in the
    background of a non-interactive shell (``bash -c 'pytest ... &'``) inherits SIGINT ignored,
    and so would every command it starts (an ignored signal stays ignored across exec), which
    then never sees the test's SIGINT: the tests run with SIGINT at its default instead."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a test process per core and one more, at most eight. Much of the suite's time is
    spent waiting for workers, Redis, Docker and timeouts, not computing; each process (a module's
    tests at a time, ``--dist loadfile``) has its own Redis servers, workers, containers and zygote.
    Two a core (4 here) was 10 % faster but, with other load on the machine, timing-sensitive
    cluster tests failed that pass at 3. The quick tier (``-m`` leaving out every service mark)
    waits for nothing but computes: one process a core, none starting up for nothing."""
    cores = os.cpu_count() or 1
    if quick_tier(config):
        return min(8, cores)
    return min(8, cores + 1)


def quick_tier(config: pytest.Config) -> bool:
    """Whether this run is the quick tier: ``-m`` leaves out every service mark."""
    expression = config.getoption("markexpr", "") or ""
    return all(f"not {mark}" in expression for mark in SERVICE_MARKS)


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a suite where a test takes a service's fixture without the service's mark.

    In a developer's quick tier, tests marked ``slow`` (seconds each: an install from the locked
    wheels, the bench corpus, a pool killed mid-batch) are skipped, and the summary says so: the
    whole suite runs them, and so does the quick tier with ``CI=true`` or
    ``HERMES_TEST_THOROUGH=1``. pytest documents the same recipe behind a ``--runslow`` option; here
    the quick tier's command stays the one ``-m`` expression the README gives."""
    if quick_tier(config) and not THOROUGH:
        skip = pytest.mark.skip(reason="slow: the whole suite runs it, and the quick tier with HERMES_TEST_THOROUGH=1")
        for item in items:
            if item.get_closest_marker("slow") is not None:
                item.add_marker(skip)
    unmarked = []
    for item in items:
        taken = set(getattr(item, "fixturenames", ()))
        for mark, fixtures in SERVICE_FIXTURES.items():
            if taken & fixtures and item.get_closest_marker(mark) is None:
                unmarked.append(f"{item.nodeid} takes {', '.join(sorted(taken & fixtures))} but is not marked {mark}")
    if unmarked:
        raise pytest.UsageError("tests that need a service must carry its mark:\n  " + "\n  ".join(unmarked))


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures are set up: they may start a service
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tell the service starters of tests/support which marks the test about to run carries."""
    environment.running_marks = frozenset(mark.name for mark in item.iter_markers())


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
    # One in-process process unless a test asks for a pool (`--processes 2`): a pool is a
    # forkserver interpreter per command, and the tests of the pool itself ask for it.
    env["HERMES_PROCESSES"] = "1"
    env["HERMES_DEPLOYMENT"] = TEST_DEPLOYMENT  # sandbox containers of this test run, and only those
    return env


@pytest.fixture(scope="session", autouse=True)
def zygote_for_the_session() -> Iterator[None]:
    """The zygote `hermes` commands fork from (tests/support/zygote.py): it takes the environment
    the session starts with, starts at the first command, and stops with the session."""
    zygotes.configure(os.environ, REPO)
    yield
    zygotes.stop_shared()


@pytest.fixture
def zygote() -> Zygote | None:
    """The session's zygote (started now if need be); None with HERMES_TEST_FRESH_PROCESSES=1."""
    return zygotes.shared()


@pytest.fixture
def hermes(hermes_env: dict[str, str], tmp_path: Path) -> HermesRunner:
    """Run `hermes ARGS...` as a real process (``run_hermes``); returns the completed process (text mode)."""

    def run(
        *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "hermes_producer", *args]
        data = input.encode("utf-8") if isinstance(input, str) else input
        code, out, err = run_hermes(list(args), dict(hermes_env, **(env or {})), tmp_path, data, timeout)
        if isinstance(input, bytes):
            out_text, err_text = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
            return subprocess.CompletedProcess(command, code, out_text, err_text)
        # Text mode, as subprocess.run(text=True, encoding="utf-8") decodes: strict, universal newlines.
        return subprocess.CompletedProcess(command, code, _text(out), _text(err))

    return run


def _text(data: bytes) -> str:
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


@pytest.fixture
def chermes(hermes: HermesRunner, cluster_env: dict[str, str]) -> HermesRunner:
    """`hermes` pointed at the private cluster."""

    def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = dict(cluster_env, **kwargs.pop("env", {}))
        return hermes(*args, env=env, **kwargs)

    return run


@pytest.fixture
def hermes_process(tmp_path: Path) -> Iterator[HermesProcessFactory]:
    """Start `hermes ARGS...` in the background (``start(*args, env=..., stdout=None)``), its
    standard error in a file; whatever still runs after the test is killed."""
    started: list[Producer] = []

    def start(*args: str, env: dict[str, str], stdout: Any = None) -> Producer:
        stderr_path = tmp_path / f"hermes-{len(started)}.err"
        started.append(start_hermes(list(args), env, tmp_path, stderr_path, stdout=stdout))
        return started[-1]

    yield start
    for process in started:
        if process.process.poll() is None:
            process.kill()
