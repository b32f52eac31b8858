"""Nothing lost when hosts fail: Redis, two workers and the producer on hosts of their own (issue 15).

Each host is a network namespace on a private bridge (tests/support/hosts.py, the ``lan`` fixture
of tests/fixtures_hosts.py); workers and producer reach Redis across the virtual network. Each
test breaks the network or a host mid-batch (a link cut for 10 s or for good, latency with loss
and a narrow link, a 30 s partition, a whole host killed) and ends with the checker
(tests/support/checker.py): every line one record, its record the one normalizing it here gives,
in order, and nothing of the batch left in Redis. The time to recover is measured from the fault
(or from its end) to the moment the batch shows it has recovered; each test adds a row to
``artifacts/chaos-report.md``.

Needs root (``ip netns``, nft, tc): skipped with the reason on a laptop without, failed with CI=true.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hermes_worker.contract import KEY_EVENTS

from .chaos_support import HEAVY, healed, progress_after
from .fixtures_chaos import Report, chaos_report, journal_chunks, wait_for, write_prompts
from .fixtures_hosts import Lan, lan
from .support.checker import Verdict, check
from .support.processes import Producer

__all__ = ["chaos_report", "lan"]  # fixtures used below

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.slow]

LINES = 3_000


def _start(lan: Lan, tmp_path: Path, chunk: int = 40, broker: str | None = None,
           started_at: int = 10) -> tuple[Path, Path, Producer]:  # fmt: skip
    """A batch of LINES prompts in chunks of ``chunk`` on the producer host; returns once
    ``started_at`` chunks are written."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(src, LINES, HEAVY)
    batch = lan.batch(src, out, "--chunk-size", str(chunk), broker=broker)
    wait_for(lambda: journal_chunks(out) >= started_at, 60, "the batch to get going")
    return src, out, batch


def _checked(lan: Lan, src: Path, out: Path) -> Verdict:
    verdict = check(out, src, client=lan.redis.client())
    verdict.assert_clean()
    return verdict


def _holds_a_chunk(lan: Lan, node: str) -> bool:
    """Whether worker ``node``'s last event in the cluster log says it received or started a chunk
    (and has not published it yet)."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = lan.redis.client().xrevrange(KEY_EVENTS, count=50)  # type: ignore[assignment]
    for _id, fields in entries:
        record = json.loads(fields[b"r"])
        if record.get("worker") == node:
            return record.get("event") in ("chunk.received", "chunk.started")
    return False


def _resent_after(lan: Lan, since: float, timeout: float = 60) -> float:
    """Seconds from ``since`` (epoch) to the producer's resend of a vanished worker's chunks."""
    return wait_for(lambda: lan.cluster.logged_at("dispatch.reroute", "is gone") or 0.0, timeout,
                    "the lost chunks to be sent again") - since  # fmt: skip


def test_a_worker_host_cut_off_for_10_seconds(lan: Lan, chaos_report: Report, tmp_path: Path) -> None:
    """w1's cable is pulled mid-batch and plugged back 10 s later.

    Its registry entry expires (3 heartbeats), the producer sends its chunks again to w2, and
    when the link is back w1 serves again: it takes chunks of a second batch. The cut comes
    while w1 holds a chunk: what it still has to publish for the first batch (which ends
    meanwhile) is dropped, not written into a result stream made again for nobody (the checker
    counts Redis after both batches).
    """
    src, out, batch = _start(lan, tmp_path)
    wait_for(lambda: _holds_a_chunk(lan, "local@w1"), 30, "w1 to hold a chunk", interval=0.005)
    cut = time.time()
    lan.network.cut(lan.host("w1"))
    resent = _resent_after(lan, cut)
    time.sleep(max(0.0, cut + 10 - time.time()))
    lan.network.mend(lan.host("w1"))
    mended = time.monotonic()
    lan.cluster.wait_registered(lan.worker("w1"), "local@w1", timeout=60)
    back = time.monotonic() - mended
    assert batch.wait(120) == 0, batch.stderr

    src2, out2 = tmp_path / "again.jsonl", tmp_path / "again-out.jsonl"
    write_prompts(src2, 800, HEAVY)
    again = lan.batch(src2, out2, "--chunk-size", "20")
    assert again.wait(120) == 0, again.stderr
    verdict, second = _checked(lan, src, out), _checked(lan, src2, out2)
    assert second.by("worker")["local@w1"] > 0, f"w1 does not consume after its link came back: {second.by('worker')}"
    dropped = lan.worker("w1").log.count("'batch_ended': True")
    chaos_report.add("H1. worker host cut off 10 s", verdict, resent,
                     f"time to resend w1's chunks; w1 registered again {back:.1f} s after the link came back and "
                     f"took {second.by('worker')['local@w1'] // 20} chunks of a second batch; late writes for the "
                     f"ended batch dropped: {dropped}{healed(lan.cluster)}")  # fmt: skip


def test_a_worker_host_cut_off_for_good(lan: Lan, chaos_report: Report, tmp_path: Path) -> None:
    """w1's cable is pulled mid-batch and stays out: w2 finishes the batch alone."""
    src, out, batch = _start(lan, tmp_path)
    cut = time.time()
    lan.network.cut(lan.host("w1"))
    resent = _resent_after(lan, cut)

    assert batch.wait(120) == 0, batch.stderr
    verdict = _checked(lan, src, out)
    assert lan.worker("w1").process.poll() is None  # cut off, not dead
    chaos_report.add("H2. worker host cut off for good", verdict, resent,
                     f"time to resend w1's chunks; w2 finished alone{healed(lan.cluster)}")


def test_a_worker_host_killed_outright(lan: Lan, chaos_report: Report, tmp_path: Path) -> None:
    """Every process on w1 gets SIGKILL at once mid-batch (the machine lost its power)."""
    src, out, batch = _start(lan, tmp_path)
    killed = time.time()
    assert lan.network.kill_host(lan.host("w1"))
    resent = _resent_after(lan, killed)

    assert batch.wait(120) == 0, batch.stderr
    verdict = _checked(lan, src, out)
    chaos_report.add("H3. worker host kill -9 (all its processes)", verdict, resent,
                     f"time to resend w1's chunks{healed(lan.cluster)}")


def test_the_producer_partitioned_from_redis_for_30_seconds(lan: Lan, chaos_report: Report, tmp_path: Path) -> None:
    """Every packet between the producer and Redis is dropped for 30 s mid-batch; workers go on.

    The producer waits out the outage (HERMES_OUTAGE_TIMEOUT), then reads what the workers
    published meanwhile and finishes.
    """
    src, out, batch = _start(lan, tmp_path)
    producer, redis_host = lan.host("producer"), lan.host("redis")
    lan.network.partition(producer, redis_host)
    time.sleep(30)
    written = journal_chunks(out)
    lan.network.heal(producer)
    healed_at = time.monotonic()
    recovered = progress_after(out, written, 120, "the batch to move again") - healed_at

    assert batch.wait(120) == 0, batch.stderr
    verdict = _checked(lan, src, out)
    chaos_report.add("H4. producer partitioned from Redis 30 s", verdict, recovered,
                     f"time from the partition's end to the next chunk written{healed(lan.cluster)}")


def test_latency_loss_and_a_narrow_link_between_the_producer_and_redis(
    lan: Lan, chaos_report: Report, tmp_path: Path
) -> None:
    """The producer reaches Redis through a proxy adding 40 ms each way (every round trip 80 ms
    longer); mid-batch, 5 % of its packets are dropped and its link narrowed to 2 Mbit/s for 10 s."""
    broker = lan.delay_proxy(6380, 40)
    src, out, batch = _start(lan, tmp_path, chunk=150, broker=broker, started_at=3)
    producer, redis_host = lan.host("producer"), lan.host("redis")
    before = journal_chunks(out), time.monotonic()
    lan.network.degrade(producer, redis_host, 5, "2mbit")
    time.sleep(10)
    lan.network.heal(producer)
    written = journal_chunks(out)
    healed_at = time.monotonic()
    recovered = progress_after(out, written, 120, "the batch to move again") - healed_at

    assert batch.wait(120) == 0, batch.stderr
    verdict = _checked(lan, src, out)
    during = (written - before[0]) / (healed_at - before[1])
    chaos_report.add("H5. producer: +80 ms round trips; 5 % loss and 2 Mbit/s for 10 s", verdict, recovered,
                     f"time from the loss's end to the next chunk written; {during:.1f} chunks/s during the "
                     f"loss{healed(lan.cluster)}")  # fmt: skip
