"""A real Flower on a real cluster: authentication, workers with their tags, tasks, metrics, a browser."""

from __future__ import annotations

import base64
import html
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.celeryconfig import make_celery
from hermes_worker.settings import Settings

from .support.environment import EXAMPLES, free_port, missing, needs_module
from .support.fixture_types import HermesRunner, WorkerFactory
from .support.processes import start_flower_process
from .support.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

USER, PASSWORD = "ops", "s3cret-flower"
ARTIFACTS = Path(os.environ.get("HERMES_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))


def get(url: str, auth: bool = True) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def flower(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = dict(cluster_env, HERMES_FLOWER_USER=USER, HERMES_FLOWER_PASSWORD=PASSWORD)
    process = start_flower_process(env, port, tmp_path / "flower.log")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture
def two_workers(start_worker: WorkerFactory, sandbox_image: Any) -> None:
    start_worker("c1", mode="container", env={"HERMES_SANDBOX_IMAGE": sandbox_image.tag}, expect_tag="container")
    start_worker("l1", mode="local")


def test_flower_refuses_to_start_without_credentials(hermes: HermesRunner) -> None:
    done = hermes("flower", "--port", str(free_port()))
    assert done.returncode == 2 and "HERMES_FLOWER_USER" in done.stderr


def test_flower_shows_both_workers_their_tasks_and_metrics(
    two_workers: None, flower: str, chermes: HermesRunner, tmp_path: Path
) -> None:
    # Without credentials: refused, API and pages alike. /healthcheck stays open for probes.
    assert get(f"{flower}/api/workers", auth=False)[0] == 401
    assert get(f"{flower}/workers", auth=False)[0] == 401

    for isolation in ("container", "local"):
        done = chermes("batch", str(EXAMPLES / "prompts.jsonl"), "-o", str(tmp_path / f"{isolation}.jsonl"),
                       "--isolation", isolation, "--chunk-size", "10")
        assert done.returncode == 0, done.stderr

    workers = wait_until(lambda: (lambda w: w if {"container@c1", "local@l1"} <= w.keys() else None)(
        json.loads(get(f"{flower}/api/workers?refresh=1")[1])), 30, 0.3, "both workers in /api/workers")
    assert workers["container@c1"]["active_queues"][0]["name"] == "hermes.container"
    assert workers["local@l1"]["active_queues"][0]["name"] == "hermes.local"

    tasks = wait_until(lambda: (lambda t: t if len(t) >= 8 else None)(
        json.loads(get(f"{flower}/api/tasks?state=SUCCESS")[1])), 30, 0.3, "8 finished chunks in /api/tasks")
    shown = json.dumps(tasks)
    assert {t["name"] for t in tasks.values()} == {"hermes.normalize_chunk"}
    assert {t["worker"] for t in tasks.values()} == {"container@c1", "local@l1"}
    assert all(t["args"].startswith("chunk ") and "sha256" in t["args"] for t in tasks.values())
    assert "Lisbon" not in shown and "Mona Lisa" not in shown  # counts, sizes and hashes, never prompts

    metrics = get(f"{flower}/metrics", auth=False)[1].decode()
    succeeded = [line for line in metrics.splitlines()
                 if line.startswith("flower_events_total") and 'type="task-succeeded"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in succeeded) >= 8

    queues = json.loads(get(f"{flower}/api/queues/length")[1])["active_queues"]
    # Every queue a worker consumes: the tags' and the public task's (Celery's default, `celery`)
    assert {q["name"] for q in queues} == {"hermes.container", "hermes.local", "celery"}


def test_flower_shows_a_chunk_whose_items_failed_with_its_counts(
    start_worker: WorkerFactory, flower: str, chermes: HermesRunner, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a chunk of four lines, two of which cannot be normalized (an empty prompt, not JSON),
    start_worker("l1", mode="local")
    # (a worker started after Flower sends task events from Flower's next request, within 5 s:
    # asked here at once, as Flower would)
    app = make_celery(Settings.from_env(cluster_env), main="hermes-test-flower")
    assert app.control.broadcast("enable_events", reply=True, timeout=10)
    source = tmp_path / "mixed.jsonl"
    source.write_text('{"prompt": "ok"}\n{"prompt": ""}\nnot json\n{"prompt": "fine"}\n')
    done = chermes("batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--isolation", "local")
    assert done.returncode == 1, done.stderr  # some items failed
    # When Flower has its task event, then its result says so: not a bare SUCCESS.
    tasks = wait_until(lambda: json.loads(get(f"{flower}/api/tasks?state=SUCCESS")[1]), 30, 0.3, "the chunk's task")
    (task,) = tasks.values()
    assert task["result"] == "{'chunk': 0, 'ok': 2, 'failed': 2, 'errors': {'empty_prompt': 1, 'malformed_json': 1}}"
    # And the task page shows it.
    status, page = get(f"{flower}/task/{task['uuid']}")
    assert status == 200 and task["result"] in html.unescape(page.decode())


def test_a_browser_logs_in_and_sees_both_workers(two_workers: None, flower: str) -> None:
    playwright = needs_module("playwright.sync_api", reason="playwright is in the test extra")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        missing("Debian's chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "flower-workers.png"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                          viewport={"width": 1400, "height": 800})
            page = context.new_page()
            page.goto(f"{flower}/workers")
            page.wait_for_selector("text=container@c1", timeout=30_000)
            page.wait_for_selector("text=local@l1", timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body")
        finally:
            browser.close()
    assert "container@c1" in text and "local@l1" in text
    assert shot.stat().st_size > 10_000
