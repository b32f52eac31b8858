"""What the chaos tests (tests/test_chaos*.py) share: prompt mixes, clusters, the report's safety nets.

``container_env`` is a fixture of :mod:`tests.fixtures_chaos`, imported here because the chaos
tests import it from this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hermes_worker.sandbox.docker_backend import session_filters

from .fixtures_chaos import DEFAULT_PROMPTS, Cluster, write_prompts
from .fixtures_chaos import container_env as container_env  # the chaos tests import it from here
from .fixtures_docker import TEST_DEPLOYMENT
from .fixtures_faults import TcpProxy
from .support.checker import check
from .support.inputs import journal_chunks
from .support.processes import Producer, descendants
from .support.redis_server import RedisServer
from .support.waiting import wait_until

# Longer prompts where the fault must land mid-batch however fast the machine is: the engine
# does ~10,000 (MEDIUM) or ~4,000 (HEAVY) of them a second per core, against ~40,000 short ones.
MEDIUM = [" ".join([text] * 10) for text in DEFAULT_PROMPTS]
HEAVY = [" ".join([text] * 30) for text in DEFAULT_PROMPTS]

RedisFactory = Callable[..., RedisServer]
ClusterFactory = Callable[..., Cluster]


def progress_after(out: Path, written: int, timeout: float, what: str, cluster: Cluster | None = None,
                   producer: Producer | None = None) -> float:  # fmt: skip
    """Wait until the batch writing ``out`` has written more than ``written`` chunks; return when.
    On a timeout the failure shows the ends of the producer's and the cluster's workers' logs."""

    def said() -> str:
        logs = [f"{what} (the batch had written {written} chunks)"]
        if producer is not None:
            logs.append(f"--- producer:\n{producer.stderr[-3000:]}")
        for worker in cluster.workers if cluster is not None else ():
            logs.append(f"--- worker {worker.name}:\n{worker.log[-2000:]}")
        return "\n".join(logs)

    wait_until(lambda: journal_chunks(out) > written, timeout, 0.05, said)
    return time.monotonic()


def local_cluster(redis_factory: RedisFactory, cluster_factory: ClusterFactory, workers: int = 2,
                  **options: Any) -> tuple[RedisServer, Cluster]:  # fmt: skip
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
    mine = session_filters(TEST_DEPLOYMENT)  # this test run's containers only
    found = docker_client.containers.list(all=True, filters=mine, ignore_removed=True)
    return [c for c in found if c.labels.get("hermes.pid") in pids]


SAFETY_NETS = {
    "event loop blocked in a pub/sub read": "worker event loop freed",
    "neither queued nor held by any worker": "stranded chunks resent",
    "taken before Redis went away and never answered": "unanswered chunks resent",
    "pool process(es) told to go": "stuck warm shutdown unblocked",
    "is gone or stopped taking this work": "chunks of a vanished worker resent",
}


def healed(cluster: Cluster) -> str:
    """Which of the workers' and producer's safety nets fired during the test, for the report."""
    fired = [f"{label} {n}x" for text, label in SAFETY_NETS.items() if (n := cluster.logged(text))]
    return f" ({', '.join(fired)})" if fired else ""


def both_workers_still_consume(cluster: Cluster, tmp_path: Path, name: str) -> None:
    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-out.jsonl"
    write_prompts(src, 4_000)
    again = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "50")
    assert again.wait(180) == 0, again.stderr
    verdict = check(out, src, client=cluster.client())
    verdict.assert_clean()
    workers = verdict.by("worker")
    assert workers["local@w1"] > 0 and workers["local@w2"] > 0, f"a worker stopped consuming: {dict(workers)}"


