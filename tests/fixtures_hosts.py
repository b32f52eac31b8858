"""A LAN of hosts for the chaos scenarios of tests/test_chaos_hosts.py (issue 15).

:func:`lan` builds, for one test, a :class:`~tests.support.hosts.Network` with four hosts: Redis,
workers ``w1`` and ``w2`` (local workers, one process each) and the producer. Workers and producer
reach Redis at its address on the virtual network, never on loopback; the test reads Redis
through its unix socket. Everything is torn down after the test, whatever happened: every
process on every host is killed and every namespace deleted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .fixtures_chaos import Cluster
from .support.hosts import Host, HostRedis, Network, start_delay_proxy
from .support.processes import Producer, WorkerProcess

WORKERS = ("w1", "w2")
# Every worker's link is this narrow, each way: a batch of a few thousand prompts then lasts long
# enough for a fault to land in its middle, while the shared CPU stays nearly idle.
WORKER_LINK = "4mbit"


@dataclass
class Lan:
    """The hosts of one scenario and the processes running on them."""

    network: Network
    redis: HostRedis
    cluster: Cluster
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)  # proxies and the like

    def host(self, role: str) -> Host:
        return self.network.hosts[role]

    def worker(self, role: str) -> WorkerProcess:
        return next(w for w in self.cluster.workers if w.name == role)

    def batch(self, src: Path, out: Path, *flags: str, broker: str | None = None) -> Producer:
        """``hermes batch SRC -o OUT FLAGS...`` on the producer host (``broker``: another URL for it)."""
        env = {"HERMES_BROKER_URL": broker} if broker else None
        return self.cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", *flags, env=env,
                                   prefix=self.host("producer").exec)  # fmt: skip

    def delay_proxy(self, port: int, delay_ms: int) -> str:
        """A delaying proxy on the Redis host, in front of Redis; the URL that goes through it."""
        redis_host = self.host("redis")
        log = self.cluster.tmp / f"delay-proxy-{port}.log"
        self.processes.append(start_delay_proxy(redis_host, port, redis_host.address, 6379, delay_ms, log))
        return self.redis.url(port=port)

    def tear_down(self) -> None:
        self.network.destroy()  # SIGKILL to every process on every host: nothing waits for a cut-off worker
        self.redis.stop()
        popens = [*self.processes, *(w.process for w in self.cluster.workers),
                  *(p.process for p in self.cluster.producers)]  # fmt: skip
        for process in popens:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def lan(hermes_env: dict[str, str], tmp_path: Path) -> Iterator[Lan]:
    """Redis, two local workers (each on a link of WORKER_LINK) and a producer host, ready."""
    network = Network()
    try:
        network.create()
        redis_host = network.add_host("redis")
        workers = [network.add_host(role) for role in WORKERS]
        network.add_host("producer")
        for host in workers:
            network.limit(host, WORKER_LINK)
        server = HostRedis(redis_host)
    except BaseException:
        network.destroy()
        raise
    env = dict(hermes_env, HERMES_BROKER_URL=server.url(), HERMES_HEARTBEAT="1", HERMES_CONCURRENCY="1",
               HERMES_ISOLATION="local")  # fmt: skip
    built = Lan(network, server, Cluster(env, server.client, tmp_path))
    try:
        server.start()
        started = [built.cluster.worker(host.role, wait=False, prefix=host.exec) for host in workers]
        for worker in started:
            built.cluster.wait_registered(worker, f"local@{worker.name}")
        yield built
    finally:
        built.tear_down()
