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

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

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
from .support.checker import check
from .support.redis_server import SentinelGroup

__all__ = ["chaos_report", "cluster_factory", "sentinel_factory"]  # fixtures used below

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.slow]

SentinelFactory = Callable[..., SentinelGroup]
# Passwords with the characters a sentinel list must have quoted (';' splits it, '@' ends the user part).
PRIMARY_PASSWORD = "pri;mary@pass"
SENTINEL_PASSWORD = "sentinel;own@pass"


def sentinel_cluster(sentinel_factory: SentinelFactory, cluster_factory: ClusterFactory) -> tuple[SentinelGroup, Cluster]:
    """A Sentinel group with passwords (the primary's and the sentinels' own), two local workers on it."""
    group = sentinel_factory(password=PRIMARY_PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    cluster = cluster_factory(group.url(), group.client, **group.env())
    for worker in [cluster.worker("w1", wait=False), cluster.worker("w2", wait=False)]:
        cluster.wait_registered(worker, f"local@{worker.name}")
    return group, cluster


def fail_over(group: SentinelGroup, out: Path) -> tuple[float, float]:
    """Kill the primary (SIGKILL) mid-batch; return (seconds to promotion, seconds to the batch's next chunk).

    The pause counts from the kill to the first chunk written after every sentinel names the
    new primary: what the producer had read before the kill cannot count as recovery.
    """
    old = group.primary
    killed = time.monotonic()
    old.kill()
    group.wait_promoted(old)
    promoted = time.monotonic() - killed
    recovered = progress_after(out, journal_chunks(out), 120, "the batch to move again after the failover") - killed
    return promoted, recovered


def test_primary_killed_mid_batch_sentinel_promotes_the_replica(
    sentinel_factory: SentinelFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """30,000 prompts on two workers; the primary is killed with SIGKILL once the batch is under way.

    Given a batch running over Sentinel, when the primary dies, then Sentinel promotes the
    replica, the batch finishes with every record exactly once and nothing left in Redis, and
    both workers consume the next batch without a restart.
    """
    group, cluster = sentinel_cluster(sentinel_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(src, 30_000, MEDIUM)
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "200")
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")

    promoted, recovered = fail_over(group, out)

    assert batch.wait(300) == 0, batch.stderr
    verdict = check(out, src, client=group.client())
    verdict.assert_clean()
    both_workers_still_consume(cluster, tmp_path, "after-failover")
    chaos_report.add_verdict("15. Sentinel: primary killed mid-batch, replica promoted", verdict, recovered,
                             f"promoted {promoted:.1f} s after the kill; both workers consume afterwards"
                             f"{healed(cluster)}")  # fmt: skip


def feed(pipe: IO[bytes], source: Path, lines_per_second: int) -> threading.Thread:
    """Write ``source`` into ``pipe`` at about ``lines_per_second``, then close it: a batch that lasts."""
    lines = source.read_bytes().splitlines(keepends=True)
    step = max(1, lines_per_second // 20)

    def run() -> None:
        with pipe:
            for start in range(0, len(lines), step):
                pipe.write(b"".join(lines[start : start + step]))
                pipe.flush()
                time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_old_primary_comes_back_as_a_replica_mid_batch(
    sentinel_factory: SentinelFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """A batch fed slowly on its standard input (about 30 s); the primary is killed, the replica
    promoted, and the old primary started again: Sentinel makes it a replica of the new one
    (it waits about 8 s to see that it is not a newer primary) while the batch is still running.

    Given a batch running over Sentinel, when the primary dies and comes back, then the batch
    never writes to it, finishes with every record exactly once, and both workers consume after.
    """
    group, cluster = sentinel_cluster(sentinel_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(src, 36_000)
    batch = cluster.hermes("batch", "-", "-o", str(out), "--isolation", "local", "--chunk-size", "100",
                           stdin=subprocess.PIPE)  # fmt: skip
    assert batch.process.stdin is not None
    feeder = feed(batch.process.stdin, src, 1_200)
    wait_for(lambda: journal_chunks(out) >= 10, 120, "the batch to get going")

    old = group.primary
    promoted, recovered = fail_over(group, out)
    old.start()
    group.wait_replica(old)
    back = time.monotonic()
    assert batch.process.poll() is None and feeder.is_alive(), "the batch ended before the old primary was back"

    assert batch.wait(300) == 0, batch.stderr
    finished = time.monotonic() - back
    verdict = check(out, src, client=group.client())
    verdict.assert_clean()
    both_workers_still_consume(cluster, tmp_path, "after-comeback")
    chaos_report.add_verdict("15b. Sentinel: old primary back as a replica mid-batch", verdict, recovered,
                             f"promoted {promoted:.1f} s after the kill; the old primary a replica again "
                             f"{finished:.0f} s before the batch ended{healed(cluster)}")  # fmt: skip
