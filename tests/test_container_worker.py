"""Container workers end to end: probe -> tag -> queue -> one reused session per process -> cleanup."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .support.environment import EXAMPLES
from .support.fixture_types import HermesProcessFactory, HermesRunner, WorkerFactory
from .support.inputs import journal_chunks, make_input, read_records
from .support.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker]


@pytest.fixture
def container_label() -> str:
    """A label only this test's session containers carry: other runs may share the engine."""
    return f"hermes-test={uuid.uuid4().hex}"


@pytest.fixture
def container_env(sandbox_image: Any, container_label: str) -> dict[str, str]:
    return {"HERMES_SANDBOX_IMAGE": sandbox_image.tag, "HERMES_CONTAINER_LABELS": container_label}


@pytest.fixture
def session_containers(docker_client: Any, container_label: str) -> Callable[[], list[Any]]:
    """The session containers this test's workers and commands created and left."""
    return lambda: docker_client.containers.list(all=True, filters={"label": container_label}, ignore_removed=True)


def created_since(docker_client: Any, since: float, label: str) -> int:
    """Session containers with ``label`` Docker says it created after ``since`` (a time.time() value)."""
    events = docker_client.events(
        since=int(since),
        until=int(time.time()) + 1,
        decode=True,
        filters={"event": "create", "label": label},
    )
    return sum(1 for event in events if event["timeNano"] >= since * 1e9)


def test_a_worker_that_passes_the_probe_is_a_container_worker(
    start_worker: WorkerFactory, container_env: dict[str, str], chermes: HermesRunner
) -> None:
    worker = start_worker("c1", mode="auto", env=container_env, expect_tag="container")
    assert "Docker probe passed" in worker.log
    entry = json.loads(chermes("workers", "--json").stdout)[0]
    assert entry["name"] == "container@c1" and entry["queues"] == ["hermes.container", "celery"]
    assert entry["provenance"]["image"].startswith("sha256:")


def test_a_batch_runs_in_one_reused_container_per_worker_process(
    container_label: str,
    start_worker: WorkerFactory,
    container_env: dict[str, str],
    chermes: HermesRunner,
    docker_client: Any,
    session_containers: Callable[[], list[Any]],
    tmp_path: Path,
) -> None:
    worker = start_worker("c1", mode="container", concurrency=2, env=container_env, expect_tag="container")
    src = make_input(tmp_path / "in.jsonl", 5_000)
    out = tmp_path / "out.jsonl"
    since = time.time()
    done = chermes("batch", str(src), "-o", str(out), "--isolation", "container", "--chunk-size", "100")
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    assert len(records) == 5_000
    assert {r["provenance"]["mode"] for r in records} == {"container"}
    assert {r["provenance"]["image"] for r in records} == {
        json.loads(chermes("workers", "--json").stdout)[0]["provenance"]["image"]
    }
    # 50 chunks, 2 worker processes: at most 2 containers, counted from Docker's own events.
    assert 1 <= created_since(docker_client, since, container_label) <= 2

    # SIGTERM: the worker removes its session containers on the way out.
    assert worker.stop(signal.SIGTERM) == 0
    assert session_containers() == []


def test_container_output_equals_local_output(
    start_worker: WorkerFactory, container_env: dict[str, str], chermes: HermesRunner, tmp_path: Path
) -> None:
    start_worker("c1", mode="container", env=container_env, expect_tag="container")
    start_worker("l1", mode="local")
    src = EXAMPLES / "prompts.jsonl"
    outputs = {}
    for isolation in ("container", "local"):
        out = tmp_path / f"{isolation}.jsonl"
        assert chermes("batch", str(src), "-o", str(out), "--isolation", isolation).returncode == 0
        outputs[isolation] = [(r["id"], r["text"]) for r in read_records(out)]
    assert outputs["container"] == outputs["local"]


def test_a_shared_batch_in_containers_writes_what_a_normal_one_does(
    start_worker: WorkerFactory, container_env: dict[str, str], chermes: HermesRunner, tmp_path: Path
) -> None:
    # The worker (host side) reads the range; its sandbox gets the same text a normal chunk carries.
    shared = {"HERMES_SHARED_ROOT": str(tmp_path)}
    start_worker("c1", mode="container", env=container_env | shared, expect_tag="container")
    src = make_input(tmp_path / "in.jsonl", 3_000)
    outputs = {}
    for mode, extra in (("normal", ()), ("shared", ("--shared",))):
        out = tmp_path / f"{mode}.jsonl"
        done = chermes("batch", str(src), "-o", str(out), "--isolation", "container", "--chunk-size", "500", *extra,
                       env=shared)  # fmt: skip
        assert done.returncode == 0, done.stderr
        outputs[mode] = out.read_bytes()
    assert outputs["normal"] == outputs["shared"] and outputs["shared"].count(b"\n") == 3_000
    assert b'"mode":"container"' in outputs["shared"]


def test_containers_of_a_killed_worker_are_reaped_when_it_starts_again(
    start_worker: WorkerFactory,
    container_env: dict[str, str],
    chermes: HermesRunner,
    docker_client: Any,
    session_containers: Callable[[], list[Any]],
) -> None:
    worker = start_worker("c1", mode="container", env=container_env, expect_tag="container")
    assert chermes("run", "--prompt", "open a session", "--isolation", "container").returncode == 0
    assert len(session_containers()) == 1
    worker.kill()  # SIGKILL: no chance to clean up
    assert len(session_containers()) == 1
    start_worker("c1b", mode="container", env=container_env, expect_tag="container")
    assert chermes("run", "--prompt", "new session", "--isolation", "container").returncode == 0
    # The orphan is gone, the new one runs
    wait_until(lambda: len(session_containers()) == 1, 30, 0.2,
               lambda: f"one session container: {[(c.status, c.labels) for c in session_containers()]}")  # fmt: skip


def test_a_container_killed_mid_batch_loses_nothing(
    start_worker: WorkerFactory,
    container_env: dict[str, str],
    cluster_env: dict[str, str],
    hermes_process: HermesProcessFactory,
    docker_client: Any,
    session_containers: Callable[[], list[Any]],
    tmp_path: Path,
) -> None:
    start_worker("c1", mode="container", env=container_env, expect_tag="container")
    src = make_input(tmp_path / "in.jsonl", 20_000)
    out = tmp_path / "out.jsonl"
    batch = hermes_process("batch", str(src), "-o", str(out), "--isolation", "container", "--chunk-size", "100",
                           env=cluster_env)  # fmt: skip
    # When its sandbox container is killed once the batch has written its first chunk
    wait_until(lambda: journal_chunks(out) >= 1, 120, 0.05, lambda: f"the batch to get going:\n{batch.stderr}")
    running = wait_until(lambda: [c for c in session_containers() if c.status == "running"], 30, 0.05,
                         "a running sandbox container")  # fmt: skip
    running[0].kill()
    assert batch.wait(timeout=300) == 0, batch.stderr
    records = read_records(out)
    assert [r["id"] for r in records] == [f"p{n}" for n in range(20_000)]
    assert all(r["provenance"]["mode"] == "container" for r in records)


@pytest.mark.parametrize(
    ("isolation", "docker_host", "exit_code", "mode", "says"),
    [
        ("container", None, 0, "container", "in a sandbox container"),
        # In-process, auto is local: no sandbox session a command (issue 14), Docker or not.
        ("auto", None, 0, "local", "in-process (1 process)"),
        ("auto", "unix:///nonexistent/docker.sock", 0, "local", "in-process (1 process)"),
        ("container", "unix:///nonexistent/docker.sock", 3, None, "the Docker probe failed"),
        ("local", None, 0, "local", "in-process (1 process)"),
    ],
)
def test_without_a_broker_only_container_isolation_probes_docker_here(
    hermes: HermesRunner,
    container_env: dict[str, str],
    docker_client: Any,
    session_containers: Callable[[], list[Any]],
    isolation: str,
    docker_host: str | None,
    exit_code: int,
    mode: str | None,
    says: str,
) -> None:
    env = dict(container_env, HERMES_ISOLATION=isolation)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    done = hermes("run", "--prompt", "cafÃ©", "--json", env=env)
    assert done.returncode == exit_code, done.stderr
    assert says in done.stderr
    if mode is not None:
        record = json.loads(done.stdout)
        assert record["text"] == "café" and record["provenance"]["mode"] == mode
        assert (record["provenance"]["image"] is not None) == (mode == "container")
    assert session_containers() == []  # the embedded session is gone with the command
