"""Redis Sentinel (issue 15): the primary killed mid-batch, the old primary back as a replica.

A group of the test's own (tests/support/redis_server.py ``SentinelGroup``: a primary, a replica,
three sentinels judging a server down after 1 s); workers and the producer know only the
``sentinel://`` list and the master's name. Each scenario kills the primary with SIGKILL during a
batch; Sentinel promotes the replica, and the batch must finish with every record exactly once
(tests/support/checker.py: nothing lost, duplicated, unexpected, out of order, or left in Redis),
and both workers must consume again without a restart. The pause is measured from the kill to
the first chunk written from the new primary's results: docs/operations.md quotes it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import pytest
from celery import Celery

from hermes_producer import normalize

from .chaos_support import MEDIUM, ClusterFactory, both_workers_still_consume, healed, progress_after
from .fixtures_chaos import (
    Cluster,
    Report,
    chaos_report,
    cluster_factory,
    journal_chunks,
    sentinel_factory,
    wait_for,
    write_prompts,
)
from .fixtures_faults import TcpProxy
from .support.checker import check
from .support.processes import run_hermes
from .support.redis_server import SentinelGroup

__all__ = ["chaos_report", "cluster_factory", "sentinel_factory"]  # fixtures used below

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.slow]

SentinelFactory = Callable[..., SentinelGroup]
# Passwords with the characters a sentinel list must have quoted (';' splits it, '@' ends the user part).
PRIMARY_PASSWORD = "pri;mary@pass"
SENTINEL_PASSWORD = "sentinel;own@pass"


def sentinel_cluster(sentinel_factory: SentinelFactory, cluster_factory: ClusterFactory,
                     **options: Any) -> tuple[SentinelGroup, Cluster]:  # fmt: skip
    """A Sentinel group with passwords (the primary's and the sentinels' own; ``options`` for
    :class:`SentinelGroup`), two local workers on it."""
    group = sentinel_factory(password=PRIMARY_PASSWORD, sentinel_password=SENTINEL_PASSWORD, settle=False, **options)
    cluster = cluster_factory(group.url(), group.client, **group.env())
    for worker in [cluster.worker("w1", wait=False), cluster.worker("w2", wait=False)]:
        cluster.wait_registered(worker, f"local@{worker.name}")
    group.wait_settled()  # the sentinels found each other while the workers started
    return group, cluster


def fail_over(group: SentinelGroup, out: Path) -> tuple[float, float, float]:
    """Kill the primary (SIGKILL) mid-batch; return when (monotonic), and the seconds from then to
    the promotion and to the batch's next chunk.

    The pause counts from the kill to the first chunk written after every sentinel names the
    new primary: what the producer had read before the kill cannot count as recovery.
    """
    old = group.primary
    killed = time.monotonic()
    old.kill()
    group.wait_promoted(old)
    promoted = time.monotonic() - killed
    recovered = progress_after(out, journal_chunks(out), 120, "the batch to move again after the failover") - killed
    return killed, promoted, recovered


def feed(pipe: IO[bytes], source: Path, lines_per_second: int, until: threading.Event) -> threading.Thread:
    """Write ``source`` into ``pipe`` at about ``lines_per_second`` until ``until`` is set, then the
    rest at once, and close it: a batch that lasts as long as the test needs, and no longer."""
    lines = source.read_bytes().splitlines(keepends=True)
    step = max(1, lines_per_second // 20)

    def run() -> None:
        with pipe:
            start = 0
            while start < len(lines) and not until.is_set():
                pipe.write(b"".join(lines[start : start + step]))
                pipe.flush()
                start += step
                until.wait(0.05)
            pipe.write(b"".join(lines[start:]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_primary_killed_mid_batch_then_back_as_a_replica(
    sentinel_factory: SentinelFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """A batch fed slowly on its standard input (1,000 lines a second); the primary is killed with
    SIGKILL, Sentinel promotes the replica, and the old primary is started again: Sentinel makes it
    a replica of the new one (it waits about 8 s to see that it is not a newer primary) while the
    batch is still being fed; then the rest of the input goes in at once.

    Given a batch running over Sentinel, when the primary dies, then the batch moves again within
    seconds; when it comes back, the batch never writes to it; the batch finishes with every
    record exactly once and nothing left in Redis, and both workers consume the next batch
    without a restart.
    """
    group, cluster = sentinel_cluster(sentinel_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(src, 40_000)
    batch = cluster.hermes("batch", "-", "-o", str(out), "--isolation", "local", "--chunk-size", "100",
                           stdin=subprocess.PIPE)  # fmt: skip
    assert batch.process.stdin is not None
    back_again = threading.Event()
    feeder = feed(batch.process.stdin, src, 1_000, back_again)
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")

    old = group.primary
    killed, promoted, recovered = fail_over(group, out)
    old.start()
    group.wait_replica(old)
    back = time.monotonic()
    assert batch.process.poll() is None and feeder.is_alive(), "the batch ended before the old primary was back"
    back_again.set()  # the rest of the input at once

    assert batch.wait(300) == 0, batch.stderr
    verdict = check(out, src, client=group.client())
    verdict.assert_clean()
    both_workers_still_consume(cluster, tmp_path, "after-comeback")
    shows_the_primary(cluster, group, tmp_path)
    chaos_report.add_verdict("15. Sentinel: primary killed mid-batch, replica promoted, old primary back as a "
                             "replica mid-batch", verdict, recovered,
                             f"promoted {promoted:.1f} s after the kill; the old primary a replica again "
                             f"{back - killed:.0f} s after the kill, mid-batch{healed(cluster)}")  # fmt: skip


def public_task_answers(group: SentinelGroup) -> None:
    """A plain Celery client on the Sentinel group (Celery's own settings for it) gets the public
    task's records through Celery's result backend, which the workers reach through Sentinel too."""
    app = Celery(broker=group.url(), backend=group.url())
    options = {"master_name": group.master, "sentinel_kwargs": {"password": SENTINEL_PASSWORD}}
    app.conf.update(broker_transport_options=options, result_backend_transport_options=options)
    try:
        prompts = ["a  b", "cafÃ©  "]
        result = app.send_task("hermes.normalize", args=[prompts], kwargs={"profile": "compact"})
        assert [record["text"] for record in result.get(timeout=60)] == [normalize(p, profile="compact").text
                                                                         for p in prompts]  # fmt: skip
    finally:
        app.close()


def shows_the_primary(cluster: Cluster, group: SentinelGroup, tmp_path: Path) -> None:
    """`hermes status` and `hermes doctor` name the primary as it is now; no password shows."""
    where = f"127.0.0.1:{group.primary.port}"
    code, out, err = run_hermes(["status"], cluster.env, tmp_path)
    assert code == 0, err
    status = out.decode()
    assert f"primary of the result backend: {where} (Sentinel master {group.master})" in status, status
    _code, out, doctor_err = run_hermes(["doctor", "--json"], cluster.env, tmp_path)
    doctor = json.loads(out)
    assert {"ok": True, "what": f"result backend: Sentinel master {group.master} is at {where} now",
            "fix": None} in doctor, doctor  # fmt: skip
    printed = status + err.decode() + out.decode() + doctor_err.decode()
    assert "sentinel://:***@127.0.0.1:" in printed
    for secret in (PRIMARY_PASSWORD, SENTINEL_PASSWORD, quote(PRIMARY_PASSWORD, safe=""), "pri;", "own@"):
        assert secret not in printed


def test_writes_the_promoted_replica_never_got(
    sentinel_factory: SentinelFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """Replication is asynchronous: the replica replicates through a proxy that holds everything
    for 0.5 s while the batch writes to the primary; then the primary is killed, the held bytes
    dropped, and the replica promoted. Everything the primary acknowledged in that half second is
    gone: chunks' lines, task messages, start notices, results, acknowledgements, deletions. A
    marker written then proves it.

    Given a failover that loses acknowledged writes, then the producer's reconciliation still
    gives every record exactly once, with nothing left in Redis.
    """
    proxies: list[TcpProxy] = []

    def through_proxy(primary_port: int) -> int:
        proxies.append(TcpProxy(primary_port).start())
        return proxies[0].port

    # Sentinel would point the replica at the primary itself after failover_timeout_ms.
    group, cluster = sentinel_cluster(sentinel_factory, cluster_factory, replicate_via=through_proxy,
                                      failover_timeout_ms=180_000)  # fmt: skip
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(src, 12_000, MEDIUM)
    # Fed at 2,000 lines a second until it has moved again after the failover: read from a file,
    # the batch took 0.6 s, and could end within the half second of held writes.
    batch = cluster.hermes("batch", "-", "-o", str(out), "--isolation", "local", "--chunk-size", "100",
                           stdin=subprocess.PIPE)  # fmt: skip
    assert batch.process.stdin is not None
    moved_again = threading.Event()
    feeder = feed(batch.process.stdin, src, 2_000, moved_again)
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")

    old = group.primary
    proxies[0].hold()
    old.client().set("hermes-test:lost-marker", "acknowledged by the old primary")
    time.sleep(0.5)
    killed = time.monotonic()
    old.kill()
    proxies[0].cut()
    new = group.wait_promoted(old)
    promoted = time.monotonic() - killed
    assert not new.client().exists("hermes-test:lost-marker"), "no acknowledged write was lost"
    assert batch.process.poll() is None and feeder.is_alive(), "the batch ended before the failover"
    recovered = progress_after(out, journal_chunks(out), 120, "the batch to move again", cluster, batch) - killed
    moved_again.set()  # the rest of the input at once

    assert batch.wait(300) == 0, batch.stderr
    verdict = check(out, src, client=group.client())
    verdict.assert_clean()
    both_workers_still_consume(cluster, tmp_path, "after-lost-writes")
    public_task_answers(group)
    chaos_report.add_verdict("15b. Sentinel: a failover that loses 0.5 s of acknowledged writes", verdict, recovered,
                             f"promoted {promoted:.1f} s after the kill; both workers consume afterwards"
                             f"{healed(cluster)}")  # fmt: skip
