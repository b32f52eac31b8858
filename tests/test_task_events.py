"""Celery task events (HERMES_TASK_EVENTS): sent once a monitor asks for them, or from the start.

Task events (task-sent, -received, -started, -succeeded) feed Flower; publishing them was a fifth
of a worker's CPU at small chunks. So a worker sends them once a monitor asks (Flower broadcasts
``enable_events`` as it starts and every 5 s), and a producer sends no task-sent event, unless
HERMES_TASK_EVENTS=1. Worker heartbeats go either way. A real worker, a real private Redis, and
Celery's own event receiver listening on it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.celeryconfig import make_celery
from hermes_worker.settings import Settings

from .support.fixture_types import HermesRunner, WorkerFactory
from .support.waiting import wait_until

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Listener:
    """Every event on the cluster's event exchange, as Flower would receive it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.app = make_celery(Settings.from_env(env), main="hermes-test-events")
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Listener:
        self._thread.start()
        # Listening for sure once a worker's heartbeat has come through.
        wait_until(lambda: self.types() & {"worker-heartbeat", "worker-online"}, 30, 0.1, "a worker heartbeat")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)

    def types(self) -> set[str]:
        return {event["type"] for event in list(self.events)}

    def task_events(self) -> list[str]:
        return [event["type"] for event in list(self.events) if event["type"].startswith("task-")]


def _batch(chermes: HermesRunner, tmp_path: Path, name: str, env: dict[str, str] | None = None) -> None:
    done = chermes("batch", str(EXAMPLES / "prompts.jsonl"), "-o", str(tmp_path / f"{name}.jsonl"),
                   "--isolation", "local", "--chunk-size", "4", env=env or {})  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_worker_sends_task_events_once_a_monitor_asks_and_not_before(
    start_worker: WorkerFactory, chermes: HermesRunner, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    start_worker("l1")
    with Listener(cluster_env) as listening:
        # Given nobody asked for task events: a batch sends none, and its records are all there
        _batch(chermes, tmp_path, "quiet")
        assert listening.task_events() == []
        # When a monitor asks (what Flower does as it starts, then every 5 s)
        replies = listening.app.control.broadcast("enable_events", reply=True, timeout=10)
        assert replies and all("enabled" in str(reply) for reply in replies), replies
        # Then the worker sends them for the next batch: received, started, succeeded, chunk by chunk
        _batch(chermes, tmp_path, "watched")
        wait_until(lambda: listening.task_events().count("task-succeeded") >= 2, 30, 0.1, "task-succeeded events")
        assert {"task-received", "task-started", "task-succeeded"} <= set(listening.task_events())
        assert "task-sent" not in listening.task_events()  # producers send none by default


def test_with_hermes_task_events_on_workers_and_producers_send_them_from_the_start(
    start_worker: WorkerFactory, chermes: HermesRunner, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    start_worker("l1", env={"HERMES_TASK_EVENTS": "1"})
    with Listener(cluster_env) as listening:
        _batch(chermes, tmp_path, "from-the-start", env={"HERMES_TASK_EVENTS": "1"})
        wait_until(lambda: "task-succeeded" in listening.task_events(), 30, 0.1, "a task-succeeded event")
        assert {"task-sent", "task-received", "task-started"} <= set(listening.task_events())
