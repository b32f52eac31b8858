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
from urllib.parse import quote

import pytest
from flower.urls import handlers as flower_handlers

from .support.environment import free_port, missing, needs_module
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

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def call(
        self, method: str, path: str, body: str | None = None, auth: bool = True, login: str | None = None
    ) -> tuple[int, str]:
        """``login``: the ``user:password`` to send (default: the right one), UTF-8 encoded."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        if auth:
            credential = base64.b64encode((login or f"{USER}:{PASSWORD}").encode()).decode()
            headers["Authorization"] = "Basic " + credential
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

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Flower:
        port = free_port()
        flower = Flower(port, tmp_path / f"flower-{port}.log")
        full_env = {**cluster_env, "HERMES_FLOWER_USER": USER, "HERMES_FLOWER_PASSWORD": PASSWORD, **(env or {})}
        processes.append(start_flower_process(full_env, port, flower.log, *args, cwd=cwd))
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
    assert entry is not None and entry["queues"] == ["hermes.local", "celery"] and entry["concurrency"] == 1
    assert client.llen("hermes.local") == 0 and client.llen("hermes.container") == 0
    queues = flower.workers()["local@w1"]["active_queues"]
    assert sorted(q["name"] for q in queues) == ["celery", "hermes.local"]


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
    assert entry is not None and entry["queues"] == ["hermes.local", "celery"] and entry["concurrency"] == 1


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

    def consumed() -> list[str]:
        return sorted(q["name"] for q in opened.workers().get("local@rt1", {}).get("active_queues") or [])

    # The worker stops consuming hermes.container: at once if a message from it arrived, else
    # when its queue watch next looks (a heartbeat: 30 s here). Waited for, not read once.
    wait_until(lambda: consumed() == ["celery", "hermes.local"], 75, 0.5, "rt1 to consume only its own queues")


def test_the_dashboard_shows_no_control_buttons_and_refuses_their_requests(
    start_worker: WorkerFactory, start_flower: FlowerFactory
) -> None:
    playwright = needs_module("playwright.sync_api", reason="playwright is in the test extra")
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


def test_the_login_is_the_whole_password_whatever_its_characters(
    start_worker: WorkerFactory, start_flower: FlowerFactory
) -> None:
    """Flower's own FLOWER_BASIC_AUTH split a password at its commas (each piece a login of its own:
    here "1" alone got in) and answered 500, with a traceback in its log, to any non-ASCII login."""
    password = "s\u00e4kret,1"
    start_worker("w1")
    flower = start_flower(env={"HERMES_FLOWER_PASSWORD": password})
    for path in ("/api/workers", "/workers", "/api/worker/shutdown/local@w1"):
        assert flower.call("GET", path, login=f"{USER}:{password}")[0] in (200, 403), path
        for wrong in ("1", f"{USER}:s\u00e4kret", f"{USER}:\u00e9", "\u00e9", f"{USER}:{password}\n", ":"):
            assert flower.call("GET", path, login=wrong)[0] == 401, (path, wrong)
    assert "Traceback" not in flower.log.read_text(encoding="utf-8", errors="replace")


PLANTED_MODULE = """
import importlib, os, sys
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ran-humanize"), "w").close()
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
del sys.modules["humanize"]
sys.modules["humanize"] = importlib.import_module("humanize")  # the real one: Flower starts as usual
"""
PLANTED_CONFIG = """
import os
open(os.path.join(os.getcwd(), "ran-flowerconfig"), "w").close()
basic_auth = ["x:y"]
"""


def test_flower_runs_nothing_from_the_directory_it_starts_in(
    start_worker: WorkerFactory, start_flower: FlowerFactory, tmp_path: Path
) -> None:
    """Given a directory anyone can write to, with a module Flower imports and a flowerconfig.py
    planted in it; when `hermes flower` starts there; then neither runs and the login is Hermes'."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "humanize.py").write_text(PLANTED_MODULE)
    (shared / "flowerconfig.py").write_text(PLANTED_CONFIG)
    start_worker("w1")
    flower = start_flower(cwd=shared)
    assert flower.call("GET", "/api/workers")[0] == 200
    assert flower.call("GET", "/api/workers", login="x:y")[0] == 401
    assert sorted(path.name for path in shared.iterdir()) == ["flowerconfig.py", "humanize.py"]


@pytest.mark.parametrize(
    ("arg", "instead"),
    [
        ("--basic-auth=ops:on-the-command-line", "HERMES_FLOWER_PASSWORD"),
        ("--basic_auth=ops:on-the-command-line", "HERMES_FLOWER_PASSWORD"),
        ("--cookie-secret=on-the-command-line", "FLOWER_COOKIE_SECRET"),
        ("--oauth2_secret=on-the-command-line", "FLOWER_OAUTH2_SECRET"),
        ("--broker-api=http://guest:on-the-command-line@mq:15672/api/", "FLOWER_BROKER_API"),
    ],
)
def test_flower_refuses_a_secret_on_its_command_line(hermes: HermesRunner, arg: str, instead: str) -> None:
    """`ps` shows every command line to every user of the machine: Flower gets secrets in its environment."""
    env = {"HERMES_FLOWER_USER": USER, "HERMES_FLOWER_PASSWORD": PASSWORD}
    done = hermes("flower", "--port", str(free_port()), "--", arg, env=env, timeout=30)
    assert done.returncode == 2 and instead in done.stderr and "environment" in done.stderr, done.stderr
    assert "on-the-command-line" not in done.stderr + done.stdout


def test_flower_refuses_a_user_name_with_a_colon(hermes: HermesRunner) -> None:
    env = {"HERMES_FLOWER_USER": "ops:admin", "HERMES_FLOWER_PASSWORD": PASSWORD}
    done = hermes("flower", "--port", str(free_port()), env=env, timeout=30)
    assert done.returncode == 2 and "HERMES_FLOWER_USER" in done.stderr and "':'" in done.stderr, done.stderr


def test_flower_log_shows_control_characters_and_never_obeys_them(
    start_worker: WorkerFactory, start_flower: FlowerFactory
) -> None:
    """A logged-in user asks for a worker whose name is a terminal escape and a forged log line;
    Flower logs the unknown name, with the escape shown, never raw, and the line indented."""
    start_worker("w1")
    flower = start_flower()
    forged = "x\n[E 261129 19:00:00 web:1] FORGED\x1b]0;pwned\x07\x1b[2J\x9b31m"
    status, _ = flower.call("GET", "/worker/" + quote(forged, safe=""))
    assert status == 404
    log = wait_until(lambda: (lambda text: text if "FORGED" in text else None)(flower.log.read_text("utf-8")),
                     30, 0.2, "the unknown worker in Flower's log")  # fmt: skip
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", log), log
    assert "\\x1b]0;pwned\\x07" in log
    assert not re.search("^\\[E [^\n]*FORGED", log, re.MULTILINE)


def script(tag: str) -> str:
    """Markup that, if a page ran it, would leave ``tag`` in ``window.ran``."""
    run = f"(window.ran=window.ran||[]).push('{tag}')"
    return f'"><img src=x onerror="{run}"><script>{run}</script>\'`'


def test_a_broker_writer_cannot_run_script_in_the_dashboard(
    start_worker: WorkerFactory, start_flower: FlowerFactory, cluster_env: dict[str, str]
) -> None:
    """Given worker and task events forged on the broker with markup in every field Flower shows;
    when a logged-in browser opens every page that shows them; then all of it is text, none runs."""
    playwright = needs_module("playwright.sync_api", reason="playwright is in the test extra")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        missing("Debian's chromium is not installed (apt-get install chromium)")
    from hermes_worker.celeryconfig import make_celery
    from hermes_worker.settings import Settings

    start_worker("w1")
    flower = start_flower()
    host, task = "evil" + script("host") + "@h", "t" + script("uuid")
    app = make_celery(Settings.from_env(cluster_env))

    def forge() -> bool:
        """Send the forged events; True once Flower shows the task. Events are broadcast, so those
        sent before Flower's receiver bound its queue are lost: sent again until one arrives."""
        with app.connection() as connection:
            events = app.events.Dispatcher(connection, hostname=host, enabled=True)
            events.send("worker-online", freq=2, sw_ident=script("sw_ident"), sw_ver=script("sw_ver"))
            events.send("task-received", uuid=task, name="hermes." + script("name"), args=script("args"),
                        kwargs=script("kwargs"), eta=script("eta"), routing_key=script("routing_key"))  # fmt: skip
            events.send("task-failed", uuid=task, exception=script("exception"), traceback=script("traceback"))
        return task in json.loads(flower.call("GET", "/api/tasks")[1])

    wait_until(forge, 60, 1.0, "the forged task in Flower")
    pages = ["/workers", "/tasks", f"/task/{quote(task, safe='')}", f"/worker/{quote(host, safe='')}",
             f"/worker/{quote(script('missing'), safe='')}", "/broker"]  # fmt: skip
    ran: dict[str, list[str]] = {}
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])  # fmt: skip
        try:
            page = browser.new_context(http_credentials={"username": USER, "password": PASSWORD}).new_page()
            page.on("dialog", lambda dialog: dialog.dismiss())
            for path in pages:
                page.goto(f"{flower.url}{path}")
                page.wait_for_load_state("networkidle")
                ran[path] = page.evaluate("window.ran || []")
            page.goto(f"{flower.url}/tasks")
            page.wait_for_selector("text=hermes.", timeout=30_000)  # the forged name, shown as text
            ran["/tasks rows"] = page.evaluate("window.ran || []")
        finally:
            browser.close()
    assert ran == {path: [] for path in ran}


def test_flower_help_says_what_a_login_can_and_cannot_do(hermes: HermesRunner) -> None:
    text = " ".join(hermes("flower", "--help").stdout.split())
    assert "Read-only by default" in text and "--allow-control" in text and "answers 403" in text
    assert "HERMES_WORKER_REMOTE_CONTROL=all" in text


def test_a_signed_flower_still_sees_signed_workers(
    start_worker: WorkerFactory, start_flower: FlowerFactory, tmp_path: Path
) -> None:
    """Flower's questions to workers are remote-control messages: with signing on, they are signed too."""
    needs_module("cryptography", reason="message signing needs hermes-prompts[signing]")
    key, cert = make_signing_files(tmp_path / "signing", "hermes")
    signing = {"HERMES_SIGNING_KEY": str(key), "HERMES_SIGNING_CERT": str(cert), "HERMES_SIGNING_CERTS": str(cert)}
    start_worker("w1", env=signing)
    flower = start_flower(env=signing)
    workers = wait_until(lambda: (lambda w: w if w.get("local@w1", {}).get("active_queues") else None)(
        flower.workers()), 30, 0.3, "the worker's queues, asked with a signed command")  # fmt: skip
    assert sorted(q["name"] for q in workers["local@w1"]["active_queues"]) == ["celery", "hermes.local"]
