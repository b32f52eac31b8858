"""The tracker through Redis outages (tests/test_tracker.py has the rest, and the fake cluster).

An outage is reported when it starts and ends, and ends the batch past its timeout; nobody is
judged gone until the registry had time to come back; and Redis may come back without its last
writes (Sentinel promoted a replica that had not got them): a chunk taken before the outage and
unanswered since is sent again once its queue is empty.
"""

from __future__ import annotations

import pytest

from hermes_producer.chunk_events import Event, OutageEnded, OutageStarted, WorkersLost, render
from hermes_producer.executors import ExecutorError
from hermes_producer.tracker import STRANDED_AFTER_S

from .support.fake_cluster import LIMITS, W1, W2, FakeCluster, chunk


def test_an_outage_is_reported_when_it_starts_and_ends_and_stops_the_batch_past_the_timeout() -> None:
    tracker = FakeCluster(W1).tracker
    events: list[Event] = []
    tracker._emit = events.append
    tracker.unanswered("Redis", "Connection refused", 10.0)
    tracker.unanswered("Redis", "Connection refused", 12.0)
    tracker.answered(12.5)
    assert events == [OutageStarted("Redis", "Connection refused", 300), OutageEnded("Redis", 2.5)]
    assert [render(e) for e in events] == ["Redis is not answering (Connection refused); retrying for up to 300 s",
                                           "Redis answers again after 2.5 s"]  # fmt: skip
    tracker.unanswered("the broker", "timed out", 20.0)
    tracker.unanswered("the broker", "timed out", 320.0)
    with pytest.raises(ExecutorError, match=r"^the broker has not answered for 300 s \(timed out\)$"):
        tracker.unanswered("the broker", "timed out", 320.5)


def test_after_an_outage_no_worker_is_judged_gone_until_its_entry_had_time_to_come_back() -> None:
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0))
    cluster.take(0)
    cluster.tracker.unanswered("Redis", "reset", cluster.now)
    cluster.tracker.answered(cluster.now)
    cluster.registry = []  # every entry expired while Redis was away
    cluster.tick(LIMITS.worker_ttl_s)
    assert cluster.sent() == [0]
    cluster.tick()
    assert cluster.sent() == [0, 0] and isinstance(cluster.events[-1], WorkersLost)


def test_a_chunk_taken_before_an_outage_whose_result_redis_lost_is_sent_again() -> None:
    # Given two chunks taken by a live worker, and Redis gone and back (Sentinel promoted a replica
    # that never got the results: their start notices came, nothing more will)
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0), chunk(1))
    cluster.take(0)
    cluster.take(1)
    cluster.tracker.unanswered("Redis", "Connection refused", cluster.now)
    cluster.tracker.answered(cluster.now)
    # When chunk 1 answers, and chunk 0 does not, with its queue empty, for the stranded bound
    cluster.answer(1)
    cluster.tick(LIMITS.worker_ttl_s + 1, busy=True)  # no judgement right after an outage
    assert cluster.sent() == [0, 1]
    cluster.tick(2 * STRANDED_AFTER_S, busy=True)
    # Then chunk 0 alone is sent again, long before it would be overdue, and said why
    assert cluster.sent() == [0, 1, 0] and cluster.sends[-1].resend
    assert cluster.said()[-1] == ("1 chunk(s) taken before Redis went away and never answered (a failover or "
                                  "restart can lose what Redis acknowledged): sent again (chunks 0)")  # fmt: skip
    cluster.answer(0)
    assert cluster.written_chunks() == [0, 1]


def test_a_doubted_chunk_waits_while_its_queue_is_busy_and_without_an_outage_none_is_doubted() -> None:
    cluster = FakeCluster(W1, W2)
    cluster.submit(chunk(0), chunk(1))
    cluster.take(0)
    cluster.take(1, by="local@w2")
    cluster.tick(30, busy=True)  # long chunks, no outage: nothing doubted
    assert cluster.sent() == [0, 1]
    cluster.tracker.unanswered("Redis", "Connection refused", cluster.now)
    cluster.tracker.answered(cluster.now)
    cluster.queue_depth = 3
    cluster.tick(30, busy=True)
    assert cluster.sent() == [0, 1]  # their workers may be on them still: nothing sent while others wait
    cluster.queue_depth = 0
    cluster.tick(2 * STRANDED_AFTER_S, busy=True)
    assert cluster.sent() == [0, 1, 0, 1]
