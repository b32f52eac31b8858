"""Isolation and the monitoring login (issue 11, class 4), against a real Flower and real workers.

A Flower login reads by default and changes nothing, whatever the endpoint, method or spelling of the
path; `--allow-control` opens Flower's API, and even then workers keep their queue, and a batch with
`--isolation container` never writes a record that ran anywhere but in a container.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flower.urls import handlers as flower_handlers

from .support.environment import free_port, missing
from .support.fixture_types import HermesRunner, WorkerFactory
from .support.inputs import make_signing_files, read_records
from .support.processes import registry_entry, start_flower_process
from .support.redis_server import RedisServer
from .support.waiting import wait_until

pytestmark = pytest.mark.cluster

USER, PASSWORD = "ops", "s3cret-flower"
ARTIFACTS = Path(os.environ.get("HERMES_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


class Flower:
    """A running `hermes flower`, and raw HTTP to it: any method, any path, exactly as written."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: str | None = None, auth: bool = True) -> tuple[int, str]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def workers(self) -> dict[str, Any]:
        status, text = self.call("GET", "/api/workers?refresh=1")
        return json.loads(text) if status == 200 else {}


FlowerFactory = Callable[..., Flower]


@pytest.fixture
def start_flower(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[FlowerFactory]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Flower:
        flower = Flower(free_port())
        full_env = dict(cluster_env, HERMES_FLOWER_USER=USER, HERMES_FLOWER_PASSWORD=PASSWORD, **(env or {}))
        processes.append(start_flower_process(full_env, flower.port, tmp_path / f"flower-{flower.port}.log", *args))
        return flower

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


# The Flower handlers that only read (Flower 2.2): everything else changes something.
READING = {
    "WorkersView", "WorkerView", "TaskView", "TasksView", "TasksDataTable", "BrokerView", "ListWorkers", "ListTasks",
    "ListTaskTypes", "GetQueueLengths", "TaskInfo", "TaskResult", "Metrics", "Healthcheck", "StaticFileHandler",
    "LoginHandler", "LogoutHandler", "NotFoundErrorHandler",
}  # fmt: skip


def control_endpoints() -> list[tuple[str, str]]:
    """``(handler name, a path it serves)`` for every Flower handler that does more than read."""
    found = []
    for handler in flower_handlers:
        pattern, target = (handler.regex.pattern, handler.handler_class) if hasattr(handler, "regex") else handler[:2]
        if target.__name__ in READING:
            continue
        path = re.sub(r"\(\.[+*]\)", "local@w1", pattern.rstrip("$"))
        found.append((target.__name__, path))
    return found


def test_flower_lets_through_only_the_handlers_that_read() -> None:
    """The read-only list is exactly the reading handlers; the endpoints the issue names are outside it."""
    from hermes_producer.flower_main import READ_ONLY

    assert {handler.__name__ for handler in READ_ONLY} == READING
    names = {name for name, _path in control_endpoints()}
    assert {"WorkerShutDown", "WorkerPoolRestart", "WorkerPoolGrow", "WorkerPoolShrink", "WorkerPoolAutoscale",
            "WorkerQueueAddConsumer", "WorkerQueueCancelConsumer", "TaskRevoke", "TaskTimout", "TaskRateLimit",
            "TaskApply", "TaskAsyncApply", "TaskSend", "TaskAbort"} <= names  # fmt: skip


def test_flower_is_read_only_by_default(
    start_worker: WorkerFactory, start_flower: FlowerFactory, redis_server: RedisServer
) -> None:
    """Given a Flower login; when it calls any endpoint that changes something, any method, any
    spelling; then 403 (401 without the login), and the worker, its queues and the broker are unchanged."""
    start_worker("w1")
    flower = start_flower()
    wait_until(lambda: "local@w1" in flower.workers(), 30, 0.3, "the worker in Flower")
    body = "queue=hermes.container&n=4&max=9&min=1&timeout=1&soft=1&ratelimit=1/h&args=[]"
    for name, path in control_endpoints():
        for method in METHODS:
            status, text = flower.call(method, path, body=None if method in ("GET", "HEAD") else body)
            assert status == 403, (name, method, path, status, text)
        assert flower.call("POST", path, body=body, auth=False)[0] == 401, name
    tricks = [
        ("POST", "/api/worker/shutdown/local@w1/"),  # trailing slash
        ("POST", "/api/worker/shutdown/local%40w1"),  # encoded name
        ("POST", "/api/worker/shutdown/../shutdown/local@w1"),
        ("POST", "/api/worker/shutdown/local@w1?refresh=1"),
        ("POST", "/api/task/send-task/hermes.normalize_chunk/"),
        ("POST", "/api/task/async-apply/celery.starmap"),
        ("GET", "/api/worker/queue/add-consumer/local@w1?queue=hermes.container"),
        ("POST", "/api/workers"),  # a reading endpoint, asked to write
        ("PUT", "/metrics"),
        ("DELETE", "/tasks"),
    ]
    for method, path in tricks:
        assert flower.call(method, path, body="queue=hermes.container")[0] == 403, (method, path)
    # Spellings that reach no handler at all do nothing either.
    for path in ("/api/worker/%73hutdown/local@w1", "//api/worker/shutdown/local@w1", "/API/worker/shutdown/local@w1"):
        assert flower.call("POST", path, body="x=1")[0] == 404, path
    assert flower.call("post", "/api/worker/shutdown/local@w1", body="x=1")[0] == 405
    # Reading still works.
    for path in ("/api/workers", "/api/tasks", "/api/queues/length", "/api/task/types", "/workers", "/tasks",
                 "/broker", "/worker/local@w1", "/metrics", "/healthcheck"):  # fmt: skip
        assert flower.call("GET", path)[0] == 200, path
    assert flower.call("POST", "/tasks/datatable", body="draw=1&start=0&length=10&order%5B0%5D%5Bcolumn%5D=0")[0] == 200
    # Nothing changed.
    client = redis_server.client()
    entry = registry_entry(client, "local@w1")
    assert entry is not None and entry["queues"] == ["hermes.local"] and entry["concurrency"] == 1
    assert client.llen("hermes.local") == 0 and client.llen("hermes.container") == 0
    queues = flower.workers()["local@w1"]["active_queues"]
    assert [q["name"] for q in queues] == ["hermes.local"]


def test_allow_control_opens_flower_but_workers_still_refuse_what_would_change_them(
    start_worker: WorkerFactory, start_flower: FlowerFactory, redis_server: RedisServer
) -> None:
    start_worker("w1")
    flower = start_flower("--allow-control")
    wait_until(lambda: "local@w1" in flower.workers(), 30, 0.3, "the worker in Flower")
    status, text = flower.call("POST", "/api/worker/queue/add-consumer/local@w1", body="queue=hermes.container")
    assert status == 403 and "refused by Hermes" in text  # Flower asked; the worker said no
    status, text = flower.call("POST", "/api/worker/pool/grow/local@w1", body="n=4")
    assert status == 403 and "refused by Hermes" in text
    assert flower.call("POST", "/api/worker/shutdown/local@w1", body="")[0] == 200  # Flower does not wait
    client = redis_server.client()
    refused = "messages_refused|kind=control"
    wait_until(lambda: int(client.hget("hermes:metrics:local@w1", refused) or 0) == 3, 30, 0.3,
               "the shutdown refused too")
    entry = registry_entry(client, "local@w1")
    assert entry is not None and entry["queues"] == ["hermes.local"] and entry["concurrency"] == 1


@pytest.mark.docker
@pytest.mark.slow
def test_a_flower_login_cannot_make_container_work_run_unisolated(
    start_worker: WorkerFactory, start_flower: FlowerFactory, chermes: HermesRunner, sandbox_image: Any,
    cluster_env: dict[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    """The attack of issue 11: a local worker told to consume hermes.container through Flower.

    Read-only Flower refuses it. With every door opened (Flower --allow-control, the local worker
    accepting every remote-control command, and a heartbeat slow enough that its watch looks late),
    the batch still gets container records only: the local worker puts back what it receives from
    that queue and stops consuming it, and the producer would refuse local records anyway.
    """
    start_worker("c1", mode="container", env={"HERMES_SANDBOX_IMAGE": sandbox_image.tag}, expect_tag="container")
    start_worker("rt1", mode="local", env={"HERMES_WORKER_REMOTE_CONTROL": "all", "HERMES_HEARTBEAT": "30"})
    read_only = start_flower()
    wait_until(lambda: "local@rt1" in read_only.workers(), 30, 0.3, "the local worker in Flower")
    attack = ("POST", "/api/worker/queue/add-consumer/local@rt1", "queue=hermes.container")
    assert read_only.call(*attack)[0] == 403

    opened = start_flower("--allow-control")
    wait_until(lambda: "local@rt1" in opened.workers(), 30, 0.3, "the local worker in the second Flower")
    status, text = opened.call(*attack)
    assert status == 200, text  # accepted, by Flower and by this worker

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": n, "prompt": f"caf\u00c3\u00a9 {n}"}) + "\n" for n in range(400)))
    done = chermes("batch", str(src), "-o", str(out), "--isolation", "container", "--no-fallback",
                   "--chunk-size", "20")  # fmt: skip
    assert done.returncode in (0, 3), done.stderr
    if done.returncode == 0:
        records = read_records(out)
        assert len(records) == 400 and {r["provenance"]["mode"] for r in records} == {"container"}
        assert "by mode" not in done.stderr and "mode 'local'" not in done.stderr
    else:
        assert not out.exists() and "container" in done.stderr
    queues = wait_until(lambda: opened.workers().get("local@rt1", {}).get("active_queues"), 30, 0.3, "rt1's queues")
    assert [q["name"] for q in queues] == ["hermes.local"]


def test_the_dashboard_shows_no_control_buttons_and_refuses_their_requests(
    start_worker: WorkerFactory, start_flower: FlowerFactory
) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        missing("Debian's chromium is not installed (apt-get install chromium)")
    start_worker("w1")
    flower = start_flower()
    wait_until(lambda: "local@w1" in flower.workers(), 30, 0.3, "the worker in Flower")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])  # fmt: skip
        try:
            context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                          viewport={"width": 1400, "height": 900})  # fmt: skip
            page = context.new_page()
            page.goto(f"{flower.url}/worker/local@w1")
            page.wait_for_selector("#workername", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "flower-read-only-worker.png"), full_page=True)
            buttons = page.locator("#worker-shutdown, #worker-pool-restart, #worker-group").count()
            status, text = page.evaluate(
                "fetch('/api/worker/shutdown/local@w1', {method: 'POST'}).then(async r => [r.status, await r.text()])"
            )
            page.goto(f"{flower.url}/workers")
            page.wait_for_selector("text=local@w1", timeout=30_000)
        finally:
            browser.close()
    assert buttons == 0
    assert status == 403 and "read-only" in text


def test_flower_help_says_what_a_login_can_and_cannot_do(hermes: HermesRunner) -> None:
    text = " ".join(hermes("flower", "--help").stdout.split())
    assert "Read-only by default" in text and "--allow-control" in text and "answers 403" in text
    assert "HERMES_WORKER_REMOTE_CONTROL=all" in text


def test_a_signed_flower_still_sees_signed_workers(
    start_worker: WorkerFactory, start_flower: FlowerFactory, tmp_path: Path
) -> None:
    """Flower's questions to workers are remote-control messages: with signing on, they are signed too."""
    pytest.importorskip("cryptography", reason="message signing needs hermes-prompts[signing]")
    key, cert = make_signing_files(tmp_path / "signing", "hermes")
    signing = {"HERMES_SIGNING_KEY": str(key), "HERMES_SIGNING_CERT": str(cert), "HERMES_SIGNING_CERTS": str(cert)}
    start_worker("w1", env=signing)
    flower = start_flower(env=signing)
    workers = wait_until(lambda: (lambda w: w if w.get("local@w1", {}).get("active_queues") else None)(
        flower.workers()), 30, 0.3, "the worker's queues, asked with a signed command")  # fmt: skip
    assert [q["name"] for q in workers["local@w1"]["active_queues"]] == ["hermes.local"]
