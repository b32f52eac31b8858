"""Hermes from a plain Celery client (issue 14): the public task ``hermes.normalize``.

Real Redis, real ``hermes worker`` processes, and a client that knows only the broker and
result-backend URLs: ``Celery(broker=URL, backend=URL)``, no Hermes import, no routing of its own.
Records come back through Celery's result backend; ``group``, ``chord`` and ``chain`` work; wrong
arguments and hostile messages end as error results (or refusals) while the worker keeps serving.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from kombu import Connection, Exchange, Producer  # type: ignore[attr-defined]

from hermes_producer import normalize

from .support.environment import needs_module
from .support.fixture_types import WorkerFactory
from .support.inputs import make_signing_files
from .support.processes import WorkerProcess, registry_entry
from .support.redis_server import RedisServer
from .support.waiting import wait_until

pytestmark = pytest.mark.cluster

RESULT_TTL = 600  # HERMES_RESULT_TTL of the workers: results expire


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Celery]:
    """A Celery client as a Celery user writes it: the two URLs, nothing else."""
    app = Celery(broker=redis_server.url(), backend=redis_server.url())
    yield app
    app.close()


@pytest.fixture
def worker(start_worker: WorkerFactory) -> WorkerProcess:
    return start_worker("w1", env={"HERMES_RESULT_TTL": str(RESULT_TTL)})


def error_of(result: Any, timeout: float = 30) -> BaseException:
    """The exception ``result.get()`` raises: the task's error result."""
    with pytest.raises(Exception) as caught:
        result.get(timeout=timeout)
    return caught.value


def test_send_task_by_name_returns_one_record_per_prompt(
    client: Celery, worker: WorkerProcess, redis_server: RedisServer
) -> None:
    """Given a local worker; when a plain client sends hermes.normalize; then it gets the records."""
    prompts = ["a  b", "ﬁne\u00a0print", "cafÃ©  "]
    result = client.send_task("hermes.normalize", args=[prompts], kwargs={"profile": "compact"})
    records = result.get(timeout=30)
    assert [r["text"] for r in records] == [normalize(p, profile="compact").text for p in prompts]
    assert [(r["id"], r["line"]) for r in records] == [(1, 1), (2, 2), (3, 3)]
    assert {(r["provenance"]["mode"], r["provenance"]["worker"], r["provenance"]["profile"]) for r in records} == {
        ("local", "local@w1", "compact")}  # fmt: skip
    # Through Celery's own result backend, and it expires.
    assert 0 < redis_server.client().ttl(f"celery-task-meta-{result.id}") <= RESULT_TTL
    # The worker serves both queues, and says so in the registry.
    assert registry_entry(redis_server.client(), "local@w1")["queues"] == ["hermes.local", "celery"]  # type: ignore[index]


def test_group_chord_and_chain_of_the_public_task(
    client: Celery, worker: WorkerProcess, redis_server: RedisServer
) -> None:
    normalize_task = client.signature("hermes.normalize")
    prompts = ["x  y", "ﬁne", "cafÃ©"]
    # group: one list of records per task, in order
    lists = group(normalize_task.clone(args=[[p]]) for p in prompts)().get(timeout=30)
    assert [[r["text"] for r in records] for records in lists] == [["x  y"], ["fine"], ["café"]]
    # chord: the body (the public task too) gets the header's records, in order, as its prompts
    header = [normalize_task.clone(args=[[p]], kwargs={"profile": "prompt"}) for p in prompts]
    both = chord(header)(normalize_task.clone(kwargs={"profile": "compact"})).get(timeout=30)
    assert [(r["line"], r["text"]) for r in both] == [(1, "x y"), (2, "fine"), (3, "café")]
    # chain: each step's records are the next step's prompts
    steps = chain(normalize_task.clone(args=[["cafÃ©  ﬁ"]], kwargs={"profile": "prompt"}),
                  normalize_task.clone(kwargs={"profile": "compact"}))  # fmt: skip
    assert [r["text"] for r in steps().get(timeout=30)] == ["café fi"]
    # Every key Celery wrote for them (results, the chord's group keys) expires.
    redis = redis_server.client()
    written = [key for key in redis.scan_iter(match="celery-*")]
    assert any(key.startswith(b"celery-taskset-meta-") for key in written)
    assert all(0 < redis.ttl(key) <= RESULT_TTL for key in written), {key: redis.ttl(key) for key in written}


def test_hostile_arguments_are_error_results_and_the_worker_keeps_serving(
    client: Celery, worker: WorkerProcess, redis_server: RedisServer
) -> None:
    send = client.send_task
    # Not a list, ten million prompts, an unknown profile: each an error result naming the problem.
    assert "the prompts must be a list of strings, got str" in str(error_of(send("hermes.normalize", args=["a  b"])))
    huge = error_of(send("hermes.normalize", args=[[""] * 10_000_000]), timeout=90)
    assert "at most 1,048,576 prompts a task, got 10,000,000" in str(huge)
    assert type(huge).__name__ == "BadArguments"
    unknown = error_of(send("hermes.normalize", args=[["a"]], kwargs={"profile": "promt"}))
    assert "unknown profile 'promt' (did you mean 'prompt'?)" in str(unknown)
    # A prompt that is not a string is that prompt's error record; its neighbours are fine.
    records = send("hermes.normalize", args=[["ok", 42, {"prompt": "x"}]]).get(timeout=30)
    assert records[0]["text"] == "ok" and [r["error"]["code"] for r in records[1:]] == ["prompt_not_string"] * 2
    # What the worker would act on for the sender is refused before it runs, with the reason as the result.
    eta = error_of(send("hermes.normalize", args=[["a"]], countdown=3600))
    assert type(eta).__name__ == "NotRun" and "ETA or countdown" in str(eta)
    errback = error_of(send("hermes.normalize", args=[["a"]], link_error=client.signature("app.alert")))
    assert "errbacks" in str(errback)
    callback = error_of(send("hermes.normalize", args=[["a"]], link=client.signature("app.exfiltrate")))
    assert "names another task" in str(callback)
    # A pickled message is never decoded: refused, no result, and the worker goes on.
    with Connection(redis_server.url()) as conn:
        Producer(conn.channel(), exchange=Exchange("celery", type="direct"), routing_key="celery").publish(
            [[["pickled"]], {}, {}], headers={"task": "hermes.normalize", "id": "pickled-1"}, serializer="pickle",
            declare=[])  # fmt: skip
    wait_until(lambda: "Refusing to deserialize untrusted content of type pickle" in worker.log, 20, 0.1,
               lambda: f"the refusal:\n{worker.log[-3000:]}")  # fmt: skip
    assert client.AsyncResult("pickled-1").state == "PENDING"
    assert worker.process.poll() is None
    assert [r["text"] for r in send("hermes.normalize", args=[["still  fine"]]).get(timeout=30)] == ["still  fine"]


def test_no_prompt_reaches_the_workers_log_or_its_task_events(client: Celery, worker: WorkerProcess) -> None:
    """Flower shows task events: they carry a summary of the arguments and no record."""
    secret = f"SECRET-{uuid.uuid4().hex}"
    events: list[dict[str, Any]] = []
    with client.connection_for_read() as conn:
        receiver = client.events.Receiver(conn, handlers={"*": events.append})
        listening = threading.Thread(target=receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True)
        listening.start()
        try:
            wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in events), 20, 0.1, "the events to flow")
            # Task events flow once a monitor asks for them, as Flower does (HERMES_TASK_EVENTS)
            assert client.control.broadcast("enable_events", reply=True, timeout=10)
            result = client.send_task("hermes.normalize", args=[[secret, secret + "  x"]])
            assert [r["text"] for r in result.get(timeout=30)] == [secret, secret + "  x"]
            done = ("task-succeeded", result.id)
            wait_until(lambda: any((e["type"], e.get("uuid")) == done for e in events), 20, 0.1, "task-succeeded")
        finally:
            receiver.should_stop = True
            listening.join(timeout=10)
    received = next(e for e in events if (e["type"], e.get("uuid")) == ("task-received", result.id))
    assert received["args"] == "(2 prompts)"
    assert secret not in json.dumps(events, default=str) and secret not in worker.log


def test_isolation_container_never_runs_on_a_local_worker(client: Celery, worker: WorkerProcess) -> None:
    """Given only a local worker; a task asking isolation container is an error; auto runs locally."""
    refused = error_of(client.send_task("hermes.normalize", args=[["a"]], kwargs={"isolation": "container"}))
    assert "no live container worker" in str(refused) and "never runs outside a container" in str(refused)
    records = client.send_task("hermes.normalize", args=[["a"]], kwargs={"isolation": "auto"}).get(timeout=30)
    assert records[0]["provenance"]["mode"] == "local"


def test_a_worker_without_the_public_task_leaves_the_celery_queue_alone(
    start_worker: WorkerFactory, client: Celery, redis_server: RedisServer
) -> None:
    start_worker("w1", env={"HERMES_PUBLIC_TASK": "0"})
    assert registry_entry(redis_server.client(), "local@w1")["queues"] == ["hermes.local"]  # type: ignore[index]
    client.send_task("hermes.normalize", args=[["a"]])
    time.sleep(3)
    assert redis_server.client().llen("celery") == 1  # waiting for a worker that takes it


@pytest.fixture
def signing(tmp_path: Path) -> dict[str, str]:
    needs_module("cryptography", reason="message signing needs hermes-prompts[signing]")
    key, cert = make_signing_files(tmp_path / "hermes", "hermes")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "hermes.pem").write_bytes(cert.read_bytes())
    return {"HERMES_SIGNING_KEY": str(key), "HERMES_SIGNING_CERT": str(cert), "HERMES_SIGNING_CERTS": str(trusted)}


def test_with_signed_messages_a_plain_client_is_refused_and_a_signing_one_is_served(
    start_worker: WorkerFactory, client: Celery, cluster_env: dict[str, str], signing: dict[str, str],
    redis_server: RedisServer
) -> None:  # fmt: skip
    from hermes_worker.celeryconfig import make_celery
    from hermes_worker.settings import Settings

    worker = start_worker("w1", env=signing)
    unsigned = client.send_task("hermes.normalize", args=[["a"]])
    wait_until(lambda: "untrusted content of type json" in worker.log, 20, 0.1,
               lambda: f"the refusal:\n{worker.log[-3000:]}")  # fmt: skip
    assert unsigned.state == "PENDING"
    signer = make_celery(Settings.from_env(cluster_env | signing), main="signed-client")
    signer.conf.result_backend = redis_server.url()
    try:
        records = signer.send_task("hermes.normalize", args=[["a  b"]], kwargs={"profile": "compact"}).get(timeout=30)
    finally:
        signer.close()
    assert [r["text"] for r in records] == ["a b"]


@pytest.mark.docker
def test_tasks_run_where_their_isolation_says_sent_on_to_that_queue(
    start_worker: WorkerFactory, client: Celery, sandbox_image: Any, cluster_env: dict[str, str]
) -> None:
    """Given a container worker and a local worker, only the local one taking from `celery`: auto and
    container tasks are sent on to hermes.container and run in the sandbox, local ones run here."""
    label = f"hermes-test={uuid.uuid4().hex}"
    box_env = {"HERMES_SANDBOX_IMAGE": sandbox_image.tag, "HERMES_CONTAINER_LABELS": label, "HERMES_PUBLIC_TASK": "0"}
    start_worker("c1", mode="container", env=box_env, expect_tag="container")
    start_worker("l1")
    sent = {isolation: [client.send_task("hermes.normalize", args=[[f"{isolation} {n}"]],
                                         kwargs={"isolation": isolation}) for n in range(3)]
            for isolation in ("auto", "container", "local")}  # fmt: skip
    ran = {isolation: {tuple(r.get(timeout=60)[0]["provenance"][k] for k in ("mode", "worker")) for r in results}
           for isolation, results in sent.items()}  # fmt: skip
    assert ran == {"auto": {("container", "container@c1")}, "container": {("container", "container@c1")},
                   "local": {("local", "local@l1")}}  # fmt: skip
    hermes_log = (Path(cluster_env["HERMES_HOME"]) / "log" / "hermes.log").read_text(encoding="utf-8")
    for isolation in ("auto", "container"):
        for result in sent[isolation]:
            assert f"hermes.normalize[{result.id}] sent on to hermes.container (isolation {isolation})" in hermes_log
    # A chord whose header and body are sent on keeps its task ids: the body runs once, after both.
    boxed = client.signature("hermes.normalize", kwargs={"isolation": "container"})
    header = [boxed.clone(args=[[p]]) for p in ("a  b", "ﬁne")]
    body = boxed.clone(kwargs={"isolation": "container", "profile": "compact"})
    merged = chord(header)(body).get(timeout=60)
    assert [(r["text"], r["provenance"]["mode"]) for r in merged] == [("a b", "container"), ("fine", "container")]
