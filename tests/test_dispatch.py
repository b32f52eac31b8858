"""Where a command's chunks run (hermes_producer/dispatch.py), decided without Redis or workers.

The rules: a broker that refuses us is a usage error (exit 2), never a reason to run elsewhere;
no broker means in-process (``--no-fallback``: exit 3); with a broker, a live worker of the
isolation asked for means the cluster, ``auto`` prefers container workers and makes do with
local ones; with none, wait up to ``--wait-for-workers`` seconds, then in-process for ``auto``
and ``local`` (``--no-fallback``: exit 3), never for ``container``.

Each test hands ``choose_executor`` a cluster view whose live workers it chooses: the real
:class:`~hermes_producer.cluster.Cluster` routing, over a registry the test writes instead of
Redis. Its Redis client points at a port where nothing listens, so the producer's metrics are
dropped as they are when Redis is away. The outcome is read as a placement (where, in which
mode) or an exit code, not as exception classes or messages, which other work may reshape.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hermes_producer.cluster import FALLBACK_MESSAGE, Cluster, ClusterRefused, ClusterUnavailable
from hermes_producer.context import Context
from hermes_producer.dispatch import Placement, choose_executor
from hermes_producer.executors import InProcessExecutor
from hermes_worker.contract import QUEUE_CONTAINER, QUEUE_LOCAL
from hermes_worker.registry import WorkerInfo
from hermes_worker.settings import Settings

NO_DOCKER = "unix:///nonexistent/docker.sock"  # the Docker probe fails at once: no engine is asked


def worker(name: str, tag: str, consuming: bool = True) -> WorkerInfo:
    """A live worker as the registry knows it; ``consuming=False``: registered, taking no queue
    (a container worker whose Docker engine went away)."""
    queue = QUEUE_CONTAINER if tag == "container" else QUEUE_LOCAL
    return WorkerInfo(f"{tag}@{name}", tag, 1, [queue] if consuming else [], "host", 1, {}, {})


class FakeCluster(Cluster):
    """A connected cluster whose registry holds what the test says: one list of live workers per
    look, the last one repeated (a worker that starts while the producer waits is a later list)."""

    def __init__(self, settings: Settings, *looks: list[WorkerInfo]) -> None:
        nowhere = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        super().__init__(settings, nowhere)
        self.looks: Iterator[list[WorkerInfo]] = iter(looks or ([],))
        self.seen: list[WorkerInfo] = []
        self.looked = 0

    def live_workers(self) -> list[WorkerInfo]:
        self.looked += 1
        self.seen = next(self.looks, self.seen)
        return list(self.seen)


def connected(*looks: list[WorkerInfo]) -> Callable[[Settings], Cluster]:
    return lambda settings: FakeCluster(settings, *looks)


def failing(error: Exception) -> Callable[[Settings], Cluster]:
    def connect(settings: Settings) -> Cluster:
        raise error

    return connect


NO_BROKER = failing(ClusterUnavailable("Redis at redis://127.0.0.1:1/0 is not answering (refused)"))
REFUSED = failing(ClusterRefused("Redis at redis://127.0.0.1:6379/0 refused the connection: wrong password"))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Defaults, as a user has them (isolation auto, no waiting, fallback allowed); no Docker engine."""
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)
    return Settings(home=tmp_path / "hermes-home")


@dataclass(frozen=True)
class Decision:
    """Where the work went: ``("cluster", tag)``, ``("in-process", mode)`` or ``("exit", code)``;
    and what the user was told on the way (notices, the error)."""

    where: tuple[str, object]
    told: str


def place(
    settings: Settings,
    connect: Callable[[Settings], Cluster],
    isolation: str | None = None,
    no_fallback: bool | None = None,
    wait_s: float | None = None,
) -> Decision:
    """What ``choose_executor`` decides for this placement (the command-line options; None: the settings')."""
    ctx = Context(settings, logging.getLogger("hermes.test.dispatch"), quiet=False)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            executor = choose_executor(ctx, Placement(isolation, no_fallback, wait_s), 1, connect=connect)
    except (SystemExit, Exception) as exc:  # an exit code, however it is carried
        code = getattr(exc, "exit_code", getattr(exc, "code", None))
        if not isinstance(code, int):
            raise
        return Decision(("exit", code), f"{stderr.getvalue()}{exc}")
    kind = "in-process" if isinstance(executor, InProcessExecutor) else "cluster"
    return Decision((kind, executor.mode), stderr.getvalue())


# Rule 0: a broker that refuses us -------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["auto", "local", "container"])
def test_a_broker_that_refuses_us_is_a_usage_error_never_a_reason_to_run_elsewhere(
    settings: Settings, isolation: str
) -> None:
    decision = place(settings, REFUSED, isolation, no_fallback=False)
    assert decision.where == ("exit", 2)
    assert "wrong password" in decision.told


# Rule 1: no broker ------------------------------------------------------------------------------


def test_without_a_broker_local_isolation_runs_in_process(settings: Settings) -> None:
    decision = place(settings, NO_BROKER, "local")
    assert decision.where == ("in-process", "local")
    assert "is not answering" in decision.told  # the user is told why


def test_without_a_broker_no_fallback_exits_3(settings: Settings) -> None:
    for isolation in ("auto", "local", "container"):
        assert place(settings, NO_BROKER, isolation, no_fallback=True).where == ("exit", 3)


def test_without_a_broker_no_fallback_from_the_settings_exits_3_and_the_option_can_lift_it(
    settings: Settings,
) -> None:
    strict = settings.with_overrides(no_fallback=True)
    assert place(strict, NO_BROKER, "local").where == ("exit", 3)
    assert place(strict, NO_BROKER, "local", no_fallback=False).where == ("in-process", "local")


def test_without_a_broker_auto_runs_locally_in_process_without_probing_docker(settings: Settings) -> None:
    decision = place(settings, NO_BROKER, "auto")
    assert decision.where == ("in-process", "local")
    assert FALLBACK_MESSAGE not in decision.told and "Docker" not in decision.told


def test_without_a_broker_or_docker_container_isolation_exits_3(settings: Settings) -> None:
    decision = place(settings, NO_BROKER, "container")
    assert decision.where == ("exit", 3)
    assert "Docker probe failed" in decision.told


def test_the_isolation_of_the_settings_applies_unless_the_option_says_otherwise(settings: Settings) -> None:
    container = settings.with_overrides(isolation="container")
    assert place(container, NO_BROKER).where == ("exit", 3)
    assert place(container, NO_BROKER, "local").where == ("in-process", "local")


# Rule 2: a broker and a live worker for the isolation asked for ----------------------------------


def test_auto_prefers_a_container_worker(settings: Settings) -> None:
    both = [worker("l1", "local"), worker("c1", "container")]
    assert place(settings, connected(both), "auto").where == ("cluster", "container")


def test_auto_with_only_local_workers_uses_them_and_says_docker_is_unavailable(settings: Settings) -> None:
    decision = place(settings, connected([worker("l1", "local")]), "auto")
    assert decision.where == ("cluster", "local")
    assert FALLBACK_MESSAGE in decision.told


def test_each_isolation_goes_to_workers_of_its_own_tag(settings: Settings) -> None:
    both = [worker("l1", "local"), worker("c1", "container")]
    assert place(settings, connected(both), "local").where == ("cluster", "local")
    assert place(settings, connected(both), "container").where == ("cluster", "container")


def test_a_container_worker_that_takes_no_queue_does_not_count(settings: Settings) -> None:
    """A container worker that lost its Docker engine stays registered, consuming nothing."""
    idle = [worker("c1", "container", consuming=False)]
    decision = place(settings, connected(idle), "container")
    assert decision.where == ("exit", 3) and "no live container worker" in decision.told
    assert place(settings, connected([*idle, worker("l1", "local")]), "auto").where == ("cluster", "local")


# Rule 3: a broker, no suitable worker ---------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["auto", "local"])
def test_no_live_worker_means_in_process_with_a_notice(settings: Settings, isolation: str) -> None:
    decision = place(settings, connected([]), isolation)
    assert decision.where == ("in-process", "local")
    assert "no live" in decision.told


@pytest.mark.parametrize("isolation", ["auto", "local", "container"])
def test_no_live_worker_and_no_fallback_exits_3(settings: Settings, isolation: str) -> None:
    assert place(settings, connected([]), isolation, no_fallback=True).where == ("exit", 3)


def test_local_isolation_does_not_use_container_workers(settings: Settings) -> None:
    assert place(settings, connected([worker("c1", "container")]), "local").where == ("in-process", "local")


def test_container_isolation_never_falls_back_to_local_workers_or_in_process(settings: Settings) -> None:
    # Whether or not Docker works here: the rule, not the probe, says no.
    for alive in ([worker("l1", "local")], []):
        decision = place(settings, connected(alive), "container", no_fallback=False)
        assert decision.where == ("exit", 3)
        assert "never runs prompts outside a container" in decision.told


def test_waiting_for_workers_takes_one_that_appears_during_the_wait(settings: Settings) -> None:
    # Given no worker at the first look, and one at the next
    cluster = FakeCluster(settings, [], [worker("late", "local")])
    # When the command may wait
    decision = place(settings, lambda _settings: cluster, "local", wait_s=5)
    # Then it said it waits, and runs on that worker
    assert decision.where == ("cluster", "local")
    assert cluster.looked == 2
    assert "waiting up to 5 s for a local worker" in decision.told


def test_without_waiting_one_look_decides(settings: Settings) -> None:
    cluster = FakeCluster(settings, [], [worker("late", "local")])
    decision = place(settings, lambda _settings: cluster, "local", wait_s=0)
    assert decision.where == ("in-process", "local")
    assert cluster.looked == 1 and "waiting up to" not in decision.told


def test_the_wait_of_the_settings_applies_unless_the_option_says_otherwise(settings: Settings) -> None:
    patient = settings.with_overrides(wait_for_workers_s=5.0)
    cluster = FakeCluster(patient, [], [worker("late", "local")])
    assert place(patient, lambda _settings: cluster, "local").where == ("cluster", "local")
    impatient = FakeCluster(patient, [], [worker("late", "local")])
    assert place(patient, lambda _settings: impatient, "local", wait_s=0).where == ("in-process", "local")


def test_a_wait_with_no_worker_ever_ends_in_process_or_exit_3(settings: Settings) -> None:
    assert place(settings, connected([]), "local", wait_s=0.2).where == ("in-process", "local")
    assert place(settings, connected([]), "local", no_fallback=True, wait_s=0.2).where == ("exit", 3)
