"""Fixtures for cluster tests: a private Redis server, and real `hermes worker` processes.

A missing redis-server skips these tests on a laptop, with the reason; with CI=true it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis


def missing(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where every service must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def start_redis(port: int, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed (apt-get install redis-server)")
    assert binary is not None
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.2).ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"redis-server did not start on port {port}")
    raise AssertionError


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the test session's own, on a free port, keeping nothing on disk."""
    port = free_port()
    process = start_redis(port)
    yield RedisServer(port, process)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def cluster_env(hermes_env: dict[str, str], redis_server: RedisServer) -> dict[str, str]:
    """The `hermes` environment pointed at a freshly flushed private Redis, fast heartbeats."""
    redis_server.client().flushall()
    env = dict(hermes_env)
    env["HERMES_BROKER_URL"] = redis_server.url()
    env["HERMES_HEARTBEAT"] = "1"
    env["HERMES_CONCURRENCY"] = "1"
    env["HERMES_ISOLATION"] = "auto"  # the default, as users have it
    return env


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL the whole worker: the main process and its pool children."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


WorkerFactory = Callable[..., WorkerProcess]


def registry_entry(client: redis.Redis, node: str) -> dict[str, object] | None:
    raw = client.get(f"hermes:worker:{node}")
    return json.loads(raw) if raw else None


@pytest.fixture
def start_worker(cluster_env: dict[str, str], redis_server: RedisServer, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start `hermes worker` processes; each is stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[WorkerProcess] = []

    def start(name: str, mode: str = "local", concurrency: int = 1, env: dict[str, str] | None = None,
              expect_tag: str | None = "local", wait: bool = True) -> WorkerProcess:
        log_path = tmp_path / f"worker-{name}.log"
        full_env = dict(cluster_env, **(env or {}))
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "hermes_producer", "worker", "--mode", mode, "-c", str(concurrency),
                 "--name", name, "-l", "info"],
                env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        worker = WorkerProcess(name, process, log_path)
        started.append(worker)
        if wait and expect_tag is not None:
            node = f"{expect_tag}@{name}"
            deadline = time.monotonic() + 60
            while registry_entry(redis_server.client(), node) is None:
                if process.poll() is not None:
                    pytest.fail(f"worker {name} exited with {process.returncode}:\n{worker.log[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"worker {node} did not register within 60 s:\n{worker.log[-3000:]}")
                time.sleep(0.1)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            try:
                worker.stop(timeout=20)
            except Exception:
                worker.kill()
