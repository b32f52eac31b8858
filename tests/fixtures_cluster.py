"""Fixtures for cluster tests: a private Redis server, and real `hermes worker` processes.

The ladder: a session-scoped :class:`RedisServer`, an environment pointing at it (flushed for
each test), a factory of workers stopped after the test. A missing redis-server skips these
tests on a laptop, with the reason; with CI=true it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.fixture_types import WorkerFactory
from .support.processes import WorkerProcess, start_worker_process, wait_registered, worker_options
from .support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of the test session's own, on a free port, keeping nothing on disk."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def cluster_env(hermes_env: dict[str, str], redis_server: RedisServer) -> dict[str, str]:
    """The `hermes` environment pointed at a freshly flushed private Redis, fast heartbeats."""
    redis_server.flush()
    env = dict(hermes_env)
    env["HERMES_BROKER_URL"] = redis_server.url()
    env["HERMES_HEARTBEAT"] = "1"
    env["HERMES_CONCURRENCY"] = "1"
    env["HERMES_ISOLATION"] = "auto"  # the default, as users have it
    return env


@pytest.fixture
def start_worker(cluster_env: dict[str, str], redis_server: RedisServer, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start `hermes worker` processes (``start(name, mode, concurrency, env, expect_tag, wait)``),
    by default waiting until ``expect_tag@name`` registers; each is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(name: str, mode: str = "local", concurrency: int = 1, env: dict[str, str] | None = None,
              expect_tag: str | None = "local", wait: bool = True) -> WorkerProcess:  # fmt: skip
        worker = start_worker_process(dict(cluster_env, **(env or {})), tmp_path / f"worker-{name}.log", name,
                                      *worker_options(mode, concurrency))  # fmt: skip
        started.append(worker)
        if wait and expect_tag is not None:
            wait_registered(worker, f"{expect_tag}@{name}", redis_server.client, timeout=60)
        return worker

    yield start
    for worker in started:
        worker.halt()
