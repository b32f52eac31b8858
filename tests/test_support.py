"""The test harness itself: waiting, the private Redis server the chaos tests break, and the tiers."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
import redis

from .support import environment
from .support.processes import start_worker_process
from .support.redis_server import RedisServer
from .support.waiting import wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = itertools.count(1)
    assert wait_until(lambda: max(0, next(calls) - 2), 5, 0.001, "the third call") == 1


def test_wait_until_fails_naming_what_it_waited_for_and_asks_once_more_at_the_deadline() -> None:
    calls = itertools.count(1)
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0\.05 s waiting for the log: empty"):
        wait_until(lambda: next(calls) < 0, 0.05, 0.01, lambda: "the log: empty")
    assert next(calls) >= 3  # at the start, between, and at the deadline


@pytest.mark.cluster
def test_a_private_redis_can_be_flushed_paused_killed_and_started_again_on_its_port(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        port = server.port
        server.client().set("k", "v")
        server.flush()
        assert server.client().get("k") is None
        # Paused: connections open, nothing answered
        server.pause()
        slow = redis.Redis.from_url(server.url(), socket_connect_timeout=0.5, socket_timeout=0.5)
        with pytest.raises(redis.TimeoutError):
            slow.ping()
        server.resume()
        assert server.client().ping()
        # Killed: refused; started again: the same port answers
        server.kill()
        with pytest.raises(redis.ConnectionError):
            server.client().ping()
        server.start()
        assert server.port == port and server.client().ping()


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    """Shared helpers live in tests/support, fixtures in the plugins conftest registers."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                names += [alias.name for alias in node.names] if not node.module else []
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            last = [name.rsplit(".", 1)[-1] for name in names]
            if any(part.startswith("test_") or part == "conftest" for part in last):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_the_service_starters_refuse_a_test_without_the_cluster_mark(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fast tier needs no service: a test not marked cluster starts no redis-server and no worker."""
    monkeypatch.setattr(environment, "running_marks", frozenset({"slow"}))
    with pytest.raises(pytest.fail.Exception, match="starts a redis-server but is not marked cluster"):
        RedisServer(tmp_path / "redis").start()
    with pytest.raises(pytest.fail.Exception, match="starts a hermes worker but is not marked cluster"):
        start_worker_process({}, tmp_path / "worker.log", "w1")
    assert not (tmp_path / "redis").exists() and not (tmp_path / "worker.log").exists()
