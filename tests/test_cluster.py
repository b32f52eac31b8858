"""Hermes over Celery and Redis: real worker processes, a real private Redis, the real CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer

from hermes_worker.celeryconfig import make_celery
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.contract import PAYLOAD_VERSION
from hermes_worker.settings import Settings
from hermes_worker.wire import ChunkRequest, Item

from .support.fixture_types import HermesProcessFactory, HermesRunner, WorkerFactory
from .support.inputs import make_input, read_records
from .support.processes import WorkerProcess, registry_entry, run_until_chunks_then_kill, wait_registered
from .support.redis_server import RedisServer
from .support.waiting import wait_until

pytestmark = pytest.mark.cluster


def test_a_local_worker_registers_its_tag_versions_and_queue(
    start_worker: WorkerFactory, chermes: HermesRunner
) -> None:
    start_worker("w1", mode="local")
    listed = json.loads(chermes("workers", "--json").stdout)
    assert [w["name"] for w in listed] == ["local@w1"]
    entry = listed[0]
    assert entry["tag"] == "local" and entry["queues"] == ["hermes.local", "celery"] and entry["concurrency"] == 1
    assert {"engine", "python", "unicode", "ftfy", "celery"} <= entry["versions"].keys()
    assert time.time() - entry["heartbeat_at"] < 5
    assert "local@w1" in chermes("workers").stdout


def test_a_stopped_worker_leaves_the_registry(start_worker: WorkerFactory, redis_server: RedisServer) -> None:
    worker = start_worker("w1")
    assert registry_entry(redis_server.client(), "local@w1") is not None
    assert worker.stop(signal.SIGTERM) == 0
    assert registry_entry(redis_server.client(), "local@w1") is None


def test_a_second_worker_with_a_live_workers_name_is_refused(
    start_worker: WorkerFactory, chermes: HermesRunner, redis_server: RedisServer
) -> None:
    first = start_worker("w1")
    second = chermes("worker", "--name", "w1", "--mode", "local", timeout=120)
    assert second.returncode == 2, second.stderr
    assert "a live worker is already called local@w1" in second.stderr and "another name" in second.stderr
    assert [w["name"] for w in json.loads(chermes("workers", "--json").stdout)] == ["local@w1"]
    assert json.loads(chermes("workers", "--json").stdout)[0]["pid"] == first.process.pid
    # And its banner shows the queues it consumes (its tag's and the public one), each with its own
    # exchange and key
    assert re.search(r"\.> hermes\.local +exchange=hermes\.local\(direct\) key=hermes\.local\n", first.log)
    assert re.search(r"\.> celery +exchange=celery\(direct\) key=celery\n", first.log)
    assert "hermes.container" not in first.log.partition("[queues]")[2].partition("[tasks]")[0]


def test_a_killed_workers_name_can_be_taken_at_once_on_the_same_host(
    start_worker: WorkerFactory, redis_server: RedisServer
) -> None:
    first = start_worker("w1")
    first.process.kill()
    first.process.wait()
    assert registry_entry(redis_server.client(), "local@w1") is not None  # its entry outlives it a while
    again = start_worker("w1")

    def the_new_one_holds_the_name() -> bool:
        assert again.process.poll() is None, again.log  # not refused
        entry = registry_entry(redis_server.client(), "local@w1")
        return entry is not None and entry["pid"] == again.process.pid

    wait_until(the_new_one_holds_the_name, 60, 0.1, "the restarted worker to take its name")


def test_auto_mode_without_docker_is_tagged_local_and_says_why(
    start_worker: WorkerFactory, chermes: HermesRunner
) -> None:
    worker = start_worker("w1", mode="auto", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert "Docker is unavailable, using local processing" in worker.log
    entry = json.loads(chermes("workers", "--json").stdout)[0]
    assert entry["tag"] == "local" and entry["probe"]["reason"] and entry["probe"]["fix"]
    cluster_log = chermes("log", "-n", "50").stdout
    assert "Docker is unavailable, using local processing" in cluster_log


def test_a_batch_fans_out_over_two_workers_in_input_order(
    start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    start_worker("w1")
    start_worker("w2")
    src = make_input(tmp_path / "in.jsonl", 20_000)
    out = tmp_path / "out.jsonl"
    done = chermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "200")
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    assert [r["id"] for r in records] == [f"p{n}" for n in range(20_000)]
    per_worker: dict[str, int] = {}
    for record in records:
        per_worker[record["provenance"]["worker"]] = per_worker.get(record["provenance"]["worker"], 0) + 1
        assert record["provenance"]["mode"] == "local"
    assert set(per_worker) == {"local@w1", "local@w2"} and all(n >= 1000 for n in per_worker.values())
    assert "20,000 prompts" in done.stderr and "local@w1" in done.stderr and "local@w2" in done.stderr


def test_duplicate_ids_across_chunks_run_on_different_workers_are_caught_in_input_order(
    start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    # Given two workers and ids that repeat across chunks, with a line that is not UTF-8
    start_worker("w1")
    start_worker("w2")
    src = make_input(tmp_path / "in.jsonl", 400)
    with src.open("ab") as handle:
        handle.write(b'{"id": "p3", "prompt": "p3 again, four chunks later"}\n{"id": "z", "prompt": "\xff"}\n')
        handle.write(b'{"id": "p399", "prompt": "and again"}\n')
    out = tmp_path / "out.jsonl"
    # When the batch runs through Celery in chunks of 100 lines
    done = chermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "100")
    # Then every line has its record, the repeats are duplicate_id errors naming the first use
    assert done.returncode == 1, done.stderr
    records = read_records(out)
    assert len(records) == 403 and [r["line"] for r in records] == list(range(1, 404))
    assert sum("error" in r for r in records) == 3
    assert records[400]["error"]["code"] == "duplicate_id" and "line 4" in records[400]["error"]["message"]
    assert records[401]["error"]["code"] == "invalid_utf8" and records[401]["line"] == 402
    assert records[402]["error"]["code"] == "duplicate_id" and "line 400" in records[402]["error"]["message"]
    assert {r["provenance"]["worker"] for r in records} <= {"local@w1", "local@w2"}


def test_run_goes_to_a_worker_and_records_who(start_worker: WorkerFactory, chermes: HermesRunner) -> None:
    start_worker("w1")
    done = chermes("run", "--prompt", "cafÃ©", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["provenance"]["worker"] == "local@w1"
    assert "Docker is unavailable, using local processing" in done.stderr  # auto, and no container worker


def test_container_isolation_never_runs_outside_a_container(start_worker: WorkerFactory, chermes: HermesRunner) -> None:
    start_worker("w1")
    done = chermes("run", "--prompt", "x", "--isolation", "container")
    assert done.returncode == 3
    assert "no live container worker" in done.stderr and "never runs prompts outside a container" in done.stderr


def test_no_live_worker_runs_in_process_or_exits_3(chermes: HermesRunner) -> None:
    fallback = chermes("run", "--prompt", "x", "--json")
    assert fallback.returncode == 0 and "no live Hermes worker" in fallback.stderr
    assert json.loads(fallback.stdout)["provenance"]["worker"].startswith("embedded@")
    strict = chermes("run", "--prompt", "x", "--no-fallback")
    assert strict.returncode == 3 and "no live Hermes worker" in strict.stderr and "--no-fallback" in strict.stderr


def test_waiting_for_workers_picks_up_one_that_starts_late(
    start_worker: WorkerFactory, hermes_process: HermesProcessFactory, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a command waiting for a worker, with none alive
    with (tmp_path / "run.out").open("wb") as stdout:
        run = hermes_process("run", "--prompt", "x", "--json", "--wait-for-workers", "60", "--isolation", "local",
                             env=cluster_env, stdout=stdout)  # fmt: skip
    wait_until(lambda: "waiting up to 60 s" in run.stderr, 30, 0.1, lambda: f"the command to wait:\n{run.stderr}")
    # When a worker starts
    start_worker("late", wait=False)
    # Then the command runs on it
    assert run.wait(timeout=120) == 0, run.stderr
    assert json.loads((tmp_path / "run.out").read_text())["provenance"]["worker"] == "local@late"


def test_an_unreachable_broker_means_in_process_unless_no_fallback(hermes: HermesRunner) -> None:
    # The default test environment points at a port where nothing listens.
    done = hermes("run", "--prompt", "x")
    assert done.returncode == 0 and "is not answering" in done.stderr and "in-process" in done.stderr
    strict = hermes("run", "--prompt", "x", "--no-fallback")
    assert strict.returncode == 3 and "is not answering" in strict.stderr
    by_env = hermes("run", "--prompt", "x", env={"HERMES_NO_FALLBACK": "1"})
    assert by_env.returncode == 3


def test_queue_all_runs_scheduled_tasks_on_the_workers(start_worker: WorkerFactory, chermes: HermesRunner) -> None:
    start_worker("w1")
    for n in range(30):
        assert chermes("task", "--prompt", f"task {n}  ").returncode == 0
    done = chermes("queue", "--all", "--isolation", "local")
    assert done.returncode == 0, done.stderr
    assert "ran 30 task(s): 30 ok, 0 failed" in done.stderr
    exported = json.loads(chermes("history", "--export", "7:-").stdout)
    assert exported["result"]["text"] == "task 6" and exported["result"]["provenance"]["worker"] == "local@w1"


@pytest.mark.parametrize("where", ["cluster", "in-process"])
def test_resume_after_killing_the_producer_loses_and_duplicates_nothing(
    where: str, start_worker: WorkerFactory, cluster_env: dict[str, str], hermes_env: dict[str, str], tmp_path: Path
) -> None:
    env = cluster_env if where == "cluster" else hermes_env
    if where == "cluster":
        start_worker("w1")
        start_worker("w2")
    count = 60_000
    src = make_input(tmp_path / "in.jsonl", count)
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.partial.journal"
    command = [
        sys.executable,
        "-m",
        "hermes_producer",
        "batch",
        str(src),
        "-o",
        str(out),
        "--chunk-size",
        "100",
        "--processes",
        "1",
    ]
    run_until_chunks_then_kill(command, env, tmp_path, journal)
    assert not out.exists()
    resumed = subprocess.run([*command, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after" in resumed.stderr
    records = read_records(out)
    assert [r["id"] for r in records] == [f"p{n}" for n in range(count)]
    assert not journal.exists() and not (tmp_path / "out.jsonl.partial").exists()


def test_resume_refuses_a_changed_input(hermes: HermesRunner, tmp_path: Path) -> None:
    src = make_input(tmp_path / "in.jsonl", 10)
    partial = tmp_path / "out.jsonl.partial"
    partial.write_text("")
    (tmp_path / "out.jsonl.partial.journal").write_text(
        json.dumps({"header": {"input": {"path": "elsewhere"}, "options": {}, "batch_id": "x"}}) + "\n"
    )
    done = hermes("batch", str(src), "-o", str(tmp_path / "out.jsonl"), "--resume")
    assert done.returncode == 2 and "cannot resume: the input changed" in done.stderr
    nothing = hermes("batch", str(src), "-o", str(tmp_path / "other.jsonl"), "--resume")
    assert nothing.returncode == 2 and "nothing to resume" in nothing.stderr


def test_a_pickled_message_is_refused_and_never_run(
    start_worker: WorkerFactory, redis_server: RedisServer, chermes: HermesRunner
) -> None:
    worker = start_worker("w1")
    payload = {
        "v": PAYLOAD_VERSION,
        "chunk": 0,
        "profile": {"name": "nfc", "steps": ["nfc"]},
        "max_validation": 0,
        "explain": False,
        "max_prompt_bytes": 1000,
        "items": [[1, 1, "pickled", None]],
    }
    reply = {"stream": "hermes:results:pickle-test", "ttl": 60}
    with Connection(redis_server.url()) as conn:
        producer = Producer(
            conn.channel(),
            exchange=Exchange("hermes.local", type="direct"),
            routing_key="hermes.local",
            serializer="pickle",
        )
        producer.publish(
            [[payload, reply], {}, {}],
            headers={"task": "hermes.normalize_chunk", "id": "pickle-1"},
            serializer="pickle",
            declare=[],
        )
    wait_until(lambda: "pickle" in worker.log, 20, 0.1, lambda: f"the worker to say so:\n{worker.log[-3000:]}")
    assert "Refusing to deserialize untrusted content of type pickle" in worker.log
    assert redis_server.client().xlen("hermes:results:pickle-test") == 0
    # The worker is still healthy and serves JSON messages.
    assert chermes("run", "--prompt", "still fine", "--isolation", "local").returncode == 0


def test_status_and_doctor_describe_the_cluster(start_worker: WorkerFactory, chermes: HermesRunner) -> None:
    start_worker("w1")
    status = json.loads(chermes("status", "--json").stdout)
    assert set(status["queues"]) == {"hermes.container", "hermes.local"}
    assert "local@w1" in status["workers"]
    doctor = chermes("doctor", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert "broker" in doctor.stdout and "local@w1" in doctor.stdout
    assert "[FAIL] Docker" in doctor.stdout and doctor.returncode == 1


def test_plain_celery_command_line_runs_the_same_worker(
    cluster_env: dict[str, str], redis_server: RedisServer, chermes: HermesRunner, tmp_path: Path
) -> None:
    log_path = tmp_path / "celery.log"
    # A heartbeat longer than the test: the queue watch, which would cancel a consumer of the
    # wrong queue at its first look, must not be what keeps the worker to its own queue.
    env = dict(cluster_env, HERMES_WORKER_MODE="local", HERMES_HEARTBEAT="60")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hermes_worker.app", "worker", "-E", "-c", "1", "-n", "local@plain"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_registered(WorkerProcess("plain", process, log_path), "local@plain", redis_server.client, timeout=60)
        entry = registry_entry(redis_server.client(), "local@plain")
        assert entry is not None and entry["queues"] == ["hermes.local", "celery"]
        # It consumes its tag's queue (and the public one) only, from the start
        inspect = make_celery(Settings.from_env(env)).control.inspect(destination=["local@plain"], timeout=5)
        consumed = {queue["name"] for queue in (inspect.active_queues() or {}).get("local@plain", [])}
        assert consumed == {"hermes.local", "celery"}, log_path.read_text()
        done = chermes("run", "--prompt", "ok", "--json", "--isolation", "local")
        assert json.loads(done.stdout)["provenance"]["worker"] == "local@plain"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_result_that_does_not_hold_one_record_per_item_becomes_error_records(
    cluster_env: dict[str, str], redis_server: RedisServer
) -> None:
    """A worker of another Hermes version must not make records vanish quietly."""
    from hermes_producer.celery_executor import CeleryExecutor
    from hermes_producer.chunk_events import render
    from hermes_producer.cluster import Cluster, Route
    from hermes_worker.registry import WorkerInfo

    settings = Settings.from_env(cluster_env)
    cluster = Cluster.connect(settings)
    route = Route("hermes.local", "local", [WorkerInfo("local@old", "local", 1, ["hermes.local"], "h", 1, {}, {})])
    messages: list[str] = []
    executor = CeleryExecutor(cluster, route, on_event=lambda event: messages.append(render(event)))

    def old_worker_answers(payload: dict[str, object], queue: str) -> None:
        # Version 1 workers sent the records inside "r" and nothing in "t".
        old = {"v": 1, "chunk": payload["chunk"], "lines": ['{"id": 1}'], "ok": 2, "failed": 0, "errors": [],
               "provenance": {"worker": "local@old", "mode": "local"}}
        cluster.redis.xadd(executor.stream, {"r": json.dumps(old)})

    executor.transport.send = old_worker_answers  # type: ignore[method-assign]
    items = [Item(1, "a", "x"), Item(2, "b", "y")]
    nfc = {"name": "nfc", "steps": ["nfc"]}
    options = ChunkOptions(max_validation=0, max_prompt_bytes=100)
    payload = ChunkRequest(0, nfc, options=options, items=items).to_payload()
    [result] = list(executor.map_ordered([payload]))
    assert result.failed == 2 and len(result.record_lines()) == 2
    assert all(json.loads(line)["error"]["code"] == "engine_failure" for line in result.record_lines())
    assert "run the same Hermes version everywhere" in messages[0]


def test_a_chunk_whose_lines_vanished_from_redis_is_sent_again(
    start_worker: WorkerFactory, chermes: HermesRunner, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a batch whose chunk lines wait in Redis for a worker (hermes:chunk:BATCH:N)
    start_worker("w1")
    src, out = make_input(tmp_path / "in.jsonl", 20_000), tmp_path / "out.jsonl"
    client = redis_server.client()
    stop, deleted = threading.Event(), []

    def lose_lines() -> None:
        # When Redis loses them (a restart without persistence, an eviction) before a worker
        # fetches them, over and over for a while
        started = time.monotonic()
        while not stop.is_set() and (time.monotonic() - started < 2 or len(deleted) < 5):
            keys = list(client.scan_iter(match="hermes:chunk:*", count=1000))
            if keys:
                deleted.extend(keys[: client.delete(*keys)])
            time.sleep(0.005)

    thief = threading.Thread(target=lose_lines)
    thief.start()
    try:
        done = chermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "100")
    finally:
        stop.set()
        thief.join()
    # Then the worker says so, the producer sends those chunks again, and nothing is lost
    assert done.returncode == 0, done.stderr
    assert len(deleted) >= 5 and "found its lines gone from Redis; sent again" in done.stderr
    records = read_records(out)
    assert [r["id"] for r in records] == [f"p{n}" for n in range(20_000)]
    assert all("error" not in r for r in records)


def test_a_python_client_runs_prompts_on_the_cluster_in_order(
    start_worker: WorkerFactory, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from hermes_producer import Client

    for name in [n for n in __import__("os").environ if n.startswith("HERMES_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HERMES_HOME", str(tmp_path / "home"))
    start_worker("w1")
    with Client(redis_server.url(), chunk_size=100) as client:
        assert [w.name for w in client.workers()] == ["local@w1"]
        records = list(client.map((f"caf\u00c3\u00a9 {n}" for n in range(2_000)), profile="prompt"))
    assert [r["text"] for r in records] == [f"café {n}" for n in range(2_000)]
    assert {r["provenance"]["worker"] for r in records} == {"local@w1"}
