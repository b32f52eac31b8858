"""The worker app is built from the settings it is given, and its runtime state is its own.

No broker is needed: building an app, its task and a process's chunk handler opens no
connection. Real workers started from these apps are in test_cluster.py and the chaos tests.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from celery import signals

from hermes_worker.app import create_app
from hermes_worker.celeryconfig import make_celery
from hermes_worker.contract import TASK_NORMALIZE, TASK_NORMALIZE_CHUNK
from hermes_worker.identity import Identity
from hermes_worker.runtime import WorkerRuntime
from hermes_worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(home=tmp_path).with_overrides(**changes)


def test_an_app_is_built_from_the_settings_it_is_given(tmp_path: Path) -> None:
    # Given settings that name a broker and a time limit no environment holds
    given = settings(tmp_path, broker_url="redis://127.0.0.1:1/7", chunk_time_limit_s=123.0)
    # When an app is built from them
    app = create_app(given, Identity("local", {"reason": "decided before"}))
    # Then Celery is configured from them, its only tasks are Hermes' own, run by a runtime that has them
    assert app.conf.broker_url == "redis://127.0.0.1:1/7" and app.conf.task_time_limit == 123.0
    assert sorted(app.tasks) == [TASK_NORMALIZE, TASK_NORMALIZE_CHUNK]
    assert app.tasks[TASK_NORMALIZE].runtime is app.tasks[TASK_NORMALIZE_CHUNK].runtime
    # and the public task's results go to the result Redis, expiring after HERMES_RESULT_TTL
    assert app.conf.result_backend == given.result_backend and app.conf.result_expires == given.result_ttl_s
    runtime = app.tasks[TASK_NORMALIZE_CHUNK].runtime
    assert isinstance(runtime, WorkerRuntime) and runtime.settings is given
    assert runtime.identity.probe == {"reason": "decided before"}


def test_two_apps_in_one_process_keep_their_own_task_and_runtime(tmp_path: Path) -> None:
    first, second = create_app(settings(tmp_path)), create_app(settings(tmp_path, concurrency=3))
    one, two = first.tasks[TASK_NORMALIZE_CHUNK], second.tasks[TASK_NORMALIZE_CHUNK]
    assert one is not two and one.runtime is not two.runtime and two.runtime.settings.concurrency == 3
    # An app made later (a producer's client) does not get the worker's task
    assert TASK_NORMALIZE_CHUNK not in make_celery(settings(tmp_path)).tasks


def test_building_an_app_starts_nothing_until_its_worker_initialises(tmp_path: Path) -> None:
    # Given the receivers of the worker signals before an app is built
    watched = (signals.worker_ready, signals.worker_process_init, signals.task_received, signals.worker_shutdown)
    before = [len(signal.receivers) for signal in watched]
    # When an app is built / Then only its celeryd_init receiver was added, for its own worker
    create_app(settings(tmp_path))
    assert [len(signal.receivers) for signal in watched] == before


def _child_handler_is_new(runtime: WorkerRuntime, parent_id: int, answer: Connection) -> None:
    answer.send(id(runtime.handler()) != parent_id and runtime.handler() is runtime.handler())


def test_each_process_gets_its_own_chunk_handler(tmp_path: Path) -> None:
    # Given a runtime whose handler the parent made (a Redis client and a runner of its own)
    runtime = WorkerRuntime(settings(tmp_path), Identity("local"))
    parent = runtime.handler()
    assert runtime.handler() is parent and parent.runner.mode == "local"
    # When a process forked from it (a pool process) asks / Then it gets a handler of its own
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_child_handler_is_new, args=(runtime, id(parent), send))
    child.start()
    assert receive.poll(30) and receive.recv() is True
    child.join(30)
    assert runtime.handler() is parent


MODULE_APP = """
import hermes_worker.app as module
print("imported")
try:
    module.app
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_the_module_app_reads_the_environment_when_first_asked_for_not_on_import(tmp_path: Path) -> None:
    # Given an environment with a bad setting
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    env |= {"HERMES_HOME": str(tmp_path), "HERMES_CONCURRENCY": "lots"}
    # When hermes_worker.app is imported, then its app asked for (as `celery -A hermes_worker.app` does)
    done = subprocess.run([sys.executable, "-c", MODULE_APP], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    # Then the import succeeds (create_app reads nothing), and the app names the bad variable
    lines = done.stdout.splitlines()
    assert lines[0] == "imported" and lines[1].startswith("SettingsError") and "HERMES_CONCURRENCY" in lines[1], done


def test_each_queue_has_its_own_exchange_and_routing_key() -> None:
    """Declared bare, both queues took the default exchange and key (hermes.local): a message
    published through that exchange reached both, and a container worker's banner said so."""
    from hermes_worker.celeryconfig import make_celery
    from hermes_worker.settings import Settings

    app = make_celery(Settings.from_env({}))
    assert {(q.name, q.exchange.name, q.routing_key) for q in app.amqp.queues.values()} == {
        ("hermes.local", "hermes.local", "hermes.local"),
        ("hermes.container", "hermes.container", "hermes.container"),
        ("celery", "celery", "celery"),  # the public task's (Celery's default queue)
    }


@pytest.mark.parametrize("node", ["local@a b", "local@" + "x" * 300, "local@\x1b[2J"], ids=["space", "long", "escape"])
def test_a_celery_worker_whose_name_no_registry_reader_would_take_does_not_start(
    node: str, hermes_env: dict[str, str]
) -> None:
    """`celery -A hermes_worker.app worker -n NAME`: a name every reader of the registry refuses
    would make a worker that consumes chunks while producers see none; it stops at once instead."""
    env = hermes_env | {"HERMES_WORKER_MODE": "local", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "hermes_worker.app", "worker", "-n", node],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "cannot be registered" in done.stderr, done.stderr[-2000:]
    assert "\x1b" not in done.stderr and "Traceback" not in done.stderr
