"""The chunk tracker, specified against a fake cluster and a fake clock: no Redis, no Celery, no workers.

The tracker (hermes_producer/tracker.py) decides what the Celery executor sends, resends, splits,
re-routes and runs in-process. :class:`FakeCluster` plays the executor's loop by hand: it carries
out the tracker's decisions, keeps a registry, a queue depth and a clock, and lets a test post
what workers would write on the batch's result stream. The real wiring (Redis, Celery, worker
processes) is proved by tests/test_cluster.py, test_hostile_*.py and the chaos tests.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from hermes_producer.chunk_events import (
    ChunkRefused,
    ChunkResent,
    ChunkSplit,
    ChunksStranded,
    ChunksUnanswered,
    Event,
    FellBack,
    GaveUp,
    LinesLost,
    Malformed,
    Misplaced,
    NeverTaken,
    NotFinished,
    NoWorker,
    Overdue,
    RefusedBy,
    ResultUnreadable,
    RouteMoved,
    StreamEntryIgnored,
    TakenRepeatedly,
    TooLarge,
    Vanished,
    WorkersLost,
    WorkersStuck,
    render,
)  # fmt: skip
from hermes_producer.executors import ExecutorError
from hermes_producer.notices import (
    FailureNotice,
    MissingNotice,
    RefusalNotice,
    ResultPosted,
    StartNotice,
    decode_entry,
)  # fmt: skip
from hermes_worker.contract import PAYLOAD_VERSION
from hermes_worker.shared_parts import PartRef

from .support.fake_cluster import LIMITS, OVERDUE_AFTER, W1, W2, FakeCluster, chunk, posted, records, worker

# Normal work: in order, however the results come.


def test_results_are_handed_back_in_input_order_whatever_order_they_arrive_in() -> None:
    # Given four chunks sent to a worker
    cluster = FakeCluster(W1)
    cluster.submit(*(chunk(n) for n in range(4)))
    assert cluster.sent() == [0, 1, 2, 3] and not any(s.resend for s in cluster.sends)
    # When their results arrive out of order, each chunk waits for those before it
    cluster.answer(2)
    assert cluster.written_chunks() == []
    cluster.answer(0)
    assert cluster.written_chunks() == [0]
    cluster.answer(3)
    cluster.answer(1)
    # Then all come back in input order, each with its own records, and nothing was said
    assert cluster.written_chunks() == [0, 1, 2, 3]
    assert [records(r)[0]["id"] for _n, r in cluster.written] == ["0-0", "1-0", "2-0", "3-0"]
    assert cluster.tracker.idle and cluster.events == [] and cluster.sent() == [0, 1, 2, 3]


def test_a_duplicate_result_is_dropped_and_each_chunk_written_once() -> None:
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0), chunk(1))
    # Given chunk 1 answered twice (a redelivered message finished again) before chunk 0
    cluster.answer(1)
    cluster.answer(1, by="local@w2")
    cluster.answer(0)
    # and chunk 0 answered again after it was written
    cluster.see(posted(chunk(0), "local@w2"))
    # Then each chunk is written once, with the first result that came
    assert cluster.written_chunks() == [0, 1]
    assert records(cluster.written[1][1])[0]["provenance"]["worker"] == "local@w1"
    assert cluster.events == []


def test_a_result_about_other_lines_numbered_alike_is_ignored() -> None:
    # Given chunk 0 outstanding, and a result numbered 0 that is about other lines (an earlier run's part)
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0))
    cluster.see(posted(chunk(0), "local@w1", first=999))
    # Then it is not written; the real one is
    assert cluster.written == []
    cluster.answer(0)
    assert cluster.written_chunks() == [0]


def test_the_window_bounds_the_chunks_in_flight() -> None:
    # Given a route of one worker of concurrency 1: 4 * 1 + 4 chunks may be in flight
    cluster = FakeCluster(W1)
    cluster.submit(*(chunk(n) for n in range(8)))
    # Then no ninth is admitted until the first is handed back
    assert not cluster.tracker.has_room()
    cluster.answer(1)
    assert not cluster.tracker.has_room()
    cluster.answer(0)
    assert cluster.tracker.has_room() and cluster.written_chunks() == [0, 1]


# Workers that vanish, chunks lost on the way.


def test_a_vanished_workers_chunks_and_every_unannounced_chunk_are_sent_again() -> None:
    # Given two workers: w1 took chunks 0 and 1, w2 took chunk 2, nobody announced chunk 3
    cluster = FakeCluster(W1, W2)
    cluster.submit(*(chunk(n) for n in range(4)))
    cluster.take(0)
    cluster.take(1)
    cluster.take(2, by="local@w2")
    before = len(cluster.sends)
    # When w1 leaves the registry
    cluster.registry = [W2]
    cluster.tick()
    # Then w1's chunks and the unannounced one (w1 may have reserved it) go again; w2's does not
    assert cluster.sent(since=before) == [0, 1, 3]
    assert all(s.resend and s.queue == "hermes.local" for s in cluster.sends[before:])
    assert cluster.events == [WorkersLost(("local@w1",), (0, 1, 3))]
    assert cluster.said() == ["worker local@w1 is gone or stopped taking this work: 3 chunk(s) sent again "
                              "(chunks 0, 1, 3)"]  # fmt: skip
    # And a result that comes twice (the first delivery finished after all) is written once
    cluster.answer(0)
    cluster.answer(0, by="local@w2")
    assert cluster.written_chunks() == [0]


def test_a_chunk_whose_worker_vanishes_with_it_every_time_is_split() -> None:
    # Given a chunk that every worker running it dies with (it counts as a failed delivery)
    cluster = FakeCluster(W1, W2)
    cluster.submit(chunk(0, lines=16))
    for _delivery in range(2):
        cluster.take(0)
        cluster.registry = [W2]
        cluster.tick()
        cluster.registry = [W1, W2]
        cluster.tick()
    assert [type(e) for e in cluster.events] == [WorkersLost, WorkersLost]
    cluster.take(0)
    cluster.registry = [W2]
    cluster.tick()
    # Then the third time it is split in eight parts, and its lines forgotten
    assert cluster.events[-1] == ChunkSplit(0, 1, 16, Vanished("local@w1"), parts=8)
    assert cluster.forgotten == [0] and len(cluster.sent(since=3)) == 8


def test_a_chunk_neither_queued_nor_announced_is_sent_again() -> None:
    # Given a chunk sent and never announced, while its queue stays empty
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0))
    # It is a suspect once nobody took it for 3 s, and stranded 3 s later
    cluster.tick(5)
    assert cluster.sent() == [0]
    cluster.tick()
    assert cluster.sent() == [0, 0] and cluster.sends[-1].resend
    assert cluster.said() == ["1 chunk(s) neither queued nor held by any worker (lost in a broken connection?): "
                              "sent again (chunks 0)"]  # fmt: skip


def test_a_chunk_waiting_in_a_busy_queue_is_not_stranded() -> None:
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0))
    cluster.queue_depth = 5
    cluster.tick(20, busy=True)
    assert cluster.sent() == [0] and cluster.events == []


def test_a_chunk_no_worker_ever_takes_gets_error_records_after_five_sends() -> None:
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0, lines=2))
    cluster.tick(40, busy=True)
    assert cluster.sent() == [0] * 5
    assert [type(e) for e in cluster.events] == [ChunksStranded] * 4 + [GaveUp]
    assert cluster.events[-1] == GaveUp(0, 1, 2, NeverTaken(5))
    [(number, result)] = cluster.written
    assert number == 0 and result.failed == 2
    error = records(result)[0]["error"]
    assert error["code"] == "engine_failure"
    assert error["message"] == ("no worker could process this line: sent 5 times and never taken by a worker "
                                "(can the workers write to Redis?)")  # fmt: skip


def test_a_chunk_whose_lines_vanished_from_redis_is_sent_again() -> None:
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0))
    cluster.see(MissingNotice(0, "local@w1"))
    assert cluster.sent() == [0, 0] and cluster.events == [LinesLost(0, "local@w1")]
    assert cluster.said() == ["chunk 0: local@w1 found its lines gone from Redis; sent again"]


# Deliveries that end without a result: bounded, then split or given up on.


def test_a_failure_notice_sends_the_chunk_again_then_error_records_when_no_line_is_to_blame() -> None:
    # Given a worker whose result Redis refuses for a reason splitting cannot help (a permission)
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0, lines=2))
    refused = FailureNotice(0, "local@w1", "NOPERM", split=False)
    cluster.see(refused)
    cluster.see(refused)
    # Then it is sent again twice, saying so
    assert cluster.sent() == [0, 0, 0]
    assert cluster.said() == [
        "chunk 0 (lines 1-2): local@w1 could not finish it: NOPERM; sent again (1 of 3 deliveries failed)",
        "chunk 0 (lines 1-2): local@w1 could not finish it: NOPERM; sent again (2 of 3 deliveries failed)",
    ]
    # And the third failure gives its lines error records: no more deliveries
    cluster.see(refused)
    assert cluster.sent() == [0, 0, 0] and cluster.events[-1] == GaveUp(0, 1, 2, NotFinished("local@w1", "NOPERM"))
    assert [r["error"]["code"] for r in records(cluster.written[0][1])] == ["engine_failure"] * 2


def test_a_notice_that_splitting_helps_splits_at_once_and_the_parts_merge_in_order() -> None:
    # Given a chunk whose result is too large to publish (the worker says splitting helps)
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0, lines=16), chunk(1))
    cluster.see(FailureNotice(0, "local@w1", "result too large", split=True))
    # Then it is split into eight parts of two lines, sent as chunks of their own
    assert cluster.events == [ChunkSplit(0, 1, 16, NotFinished("local@w1", "result too large"), parts=8)]
    parts = cluster.sent(since=2)
    assert len(parts) == 8 and all(p >= 1 << 40 for p in parts) and cluster.forgotten == [0]
    # When the parts finish in any order, the chunk's result is theirs, merged in line order
    cluster.answer(1)
    for part in reversed(parts):
        cluster.answer(part)
    assert cluster.written_chunks() == [0, 1]
    merged = cluster.written[0][1]
    assert merged.chunk == 0 and merged.ok == 16
    assert [r["line"] for r in records(merged)] == list(range(1, 17))
    assert sorted(cluster.forgotten) == sorted([0, *parts])  # the parts' lines go as they finish


def test_a_line_that_kills_every_process_running_it_gets_its_own_error_record() -> None:
    # Given a chunk of 16 lines; line 6 kills the process that runs it, so the message comes
    # back to a worker again and again (a start notice each time) and never a result
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0, lines=16, poison=5))
    delivered = 0
    while delivered < len(cluster.sends):
        send = cluster.sends[delivered]
        delivered += 1
        for _death in range(10):  # each death puts the message back; a tracker that never gives up fails below
            if cluster.tracker.wants_sent(send.chunk) and "POISON" in send.payload["text"]:
                cluster.take(send.chunk)
        if cluster.tracker.wants_sent(send.chunk):
            cluster.answer(send.chunk)
    # Then the chunk is split down to the line, which alone gets an error record naming why
    [(number, result)] = cluster.written
    lines = records(result)
    assert number == 0 and [r["line"] for r in lines] == list(range(1, 17))
    assert [r["line"] for r in lines if "error" in r] == [6]
    assert lines[5]["error"]["message"] == ("no worker could process this line: taken 4 times with no result, last "
                                            "by local@w1 (does it kill its process?)")  # fmt: skip
    assert cluster.events == [
        ChunkSplit(0, 1, 16, TakenRepeatedly(4, "local@w1"), parts=8),
        ChunkSplit(1 << 40 | 2, 5, 2, TakenRepeatedly(2, "local@w1"), parts=2),
        GaveUp((1 << 40) + 9, 6, 1, TakenRepeatedly(4, "local@w1")),
    ]


def test_an_overdue_chunk_is_sent_again_then_split() -> None:
    # Given a live worker that took a chunk and never answered, while other chunks keep it busy
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0, lines=16))
    for delivery in (1, 2):
        cluster.take(0)
        cluster.tick(OVERDUE_AFTER, busy=True)
        assert cluster.sent() == [0] * delivery  # not before the chunk time limit, a grace and two heartbeats
        cluster.tick(busy=True)
        # Then it is sent again once overdue
        assert cluster.sent() == [0] * (delivery + 1)
        assert cluster.events[-1] == ChunkResent(0, 1, 16, Overdue("local@w1", OVERDUE_AFTER + 1, 60), delivery, 3)
    assert cluster.said()[0] == ("chunk 0 (lines 1-16): local@w1 took it 76 s ago and never answered (the chunk "
                                 "time limit is 60 s); sent again (1 of 3 deliveries failed)")  # fmt: skip
    # And after its third delivery it is split
    cluster.take(0)
    cluster.tick(OVERDUE_AFTER + 1, busy=True)
    assert isinstance(cluster.events[-1], ChunkSplit) and len(cluster.sent(since=3)) == 8


def test_a_chunk_too_large_for_one_redis_value_is_split_before_it_is_sent() -> None:
    cluster = FakeCluster(W1)
    cluster.too_large = {0}
    cluster.submit(chunk(0, lines=16))
    assert cluster.events == [ChunkSplit(0, 1, 16, TooLarge("its lines are too large"), parts=8)]
    assert len(cluster.sent()) == 8 and 0 not in cluster.sent()


# Refusals: no line is to blame, and the batch stops if they go on.


def test_a_chunk_whose_lines_redis_loses_again_and_again_is_sent_again_each_time_never_given_up() -> None:
    # Given a chunk whose lines Redis loses (evictions, a restart) each time a worker takes it
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0))
    for _ in range(6):
        cluster.take(0)
        cluster.see(MissingNotice(0, "local@w1"))
    # Then each take that found no lines is explained, not a process dying on the chunk: it goes
    # again every time, and its records come once a worker finds its lines
    assert cluster.sent() == [0] * 7 and cluster.written == []
    cluster.take(0)
    cluster.answer(0)
    assert cluster.written_chunks() == [0]
    assert not any(isinstance(event, GaveUp) for event in cluster.events)


def test_a_refused_chunk_is_sent_again_and_the_third_refusal_stops_the_batch() -> None:
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0))
    cluster.see(RefusalNotice(0, "local@w1", "not my queue"))
    cluster.answer(0, errors=[[1, "x"]])  # a result whose errors do not match its counts
    assert cluster.sent() == [0, 0, 0] and cluster.written == []
    assert cluster.said() == [
        "chunk 0 refused by local@w1: not my queue; sent again",
        "chunk 0 answered with a result whose errors do not match its counts; sent again",
    ]
    with pytest.raises(ExecutorError, match=r"^chunk 0 was refused 3 times; last: refused by local@w1: not my queue$"):
        cluster.see(RefusalNotice(0, "local@w1", "not my queue"))


def test_with_container_isolation_records_that_did_not_run_in_a_container_are_refused() -> None:
    cluster = FakeCluster(worker("c1", "container"), isolation="container")
    cluster.submit(chunk(0))
    cluster.answer(0, by="local@rogue")
    assert cluster.written == [] and cluster.events == [ChunkRefused(0, Misplaced("local@rogue", "local"))]
    cluster.answer(0, by="container@c1")
    assert cluster.written_chunks() == [0]


def test_a_result_whose_part_file_cannot_be_had_is_refused_and_its_chunk_sent_again() -> None:
    # Given a shared chunk whose records the worker wrote to a part file
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0))
    good = posted(cluster.last_sent(0), "local@w1")
    # When the transport could not read the part back (gone, planted, changed), it says why
    problem = "part 0-x.jsonl: its bytes are not the ones the worker wrote"
    cluster.see(dataclasses.replace(good, text=b"", problem=problem))
    # Then nothing is written, the chunk goes again, and the answer that follows is taken
    assert cluster.written == [] and cluster.sent() == [0, 0]
    assert cluster.said() == ["chunk 0 answered with part 0-x.jsonl: its bytes are not the ones the worker wrote; "
                              "sent again"]  # fmt: skip
    cluster.see(good)
    assert cluster.written_chunks() == [0]


def test_a_part_holding_a_record_too_few_becomes_error_records_not_a_short_chunk() -> None:
    # Given a shared chunk of 2 lines whose part (read back, its hash the worker's) holds 1 record
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0, lines=2))
    good = posted(cluster.last_sent(0), "local@w1")
    part = PartRef("0-" + "a" * 32 + ".jsonl", 1, "b" * 64)
    cluster.see(dataclasses.replace(good, text=good.text.split(b"\n", 1)[1], part=part))
    # Then one record per input line is still kept: both lines get error records
    assert cluster.events == [ResultUnreadable("local@w1", 1, 2, PAYLOAD_VERSION)]
    assert [r["error"]["code"] for r in records(cluster.written[0][1])] == ["engine_failure"] * 2


def test_only_a_result_the_tracker_waits_for_has_its_part_read() -> None:
    # Given a shared chunk's result posted with its part (not read yet)
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0, lines=2))
    good = posted(cluster.last_sent(0), "local@w1")
    unread = dataclasses.replace(good, text=b"", part=PartRef("0-" + "a" * 32 + ".jsonl", 1, "b" * 64))
    assert cluster.tracker.wants_result(unread)
    # Then one of other lines numbered alike, or of a chunk not ours, is not worth reading
    assert not cluster.tracker.wants_result(dataclasses.replace(unread, result=dict(good.result, first=999)))
    assert not cluster.tracker.wants_result(dataclasses.replace(unread, chunk=7))
    # nor, once the chunk is written, a second delivery's or the same entry posted again: a
    # 200-byte stream entry would otherwise cost the producer up to 64 MiB read and hashed
    cluster.see(good)
    assert cluster.written_chunks() == [0] and not cluster.tracker.wants_result(unread)


def test_a_result_of_another_hermes_version_becomes_error_records() -> None:
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0, lines=2))
    cluster.answer(0, v=PAYLOAD_VERSION + 1)
    assert cluster.events == [ResultUnreadable("local@w1", 2, 2, PAYLOAD_VERSION + 1)]
    assert [r["error"]["code"] for r in records(cluster.written[0][1])] == ["engine_failure"] * 2
    assert "run the same Hermes version everywhere" in records(cluster.written[0][1])[0]["error"]["message"]


# No worker left: move, wait, fall back, or stop.


def test_with_isolation_auto_a_route_with_no_worker_left_moves_to_the_other_kind() -> None:
    # Given a batch on a container worker, and a local worker alive
    container, local = worker("c1", "container"), worker("l1")
    cluster = FakeCluster(container, local, isolation="auto")
    cluster.submit(chunk(0), chunk(1))
    cluster.take(0, by="container@c1")
    # When the container worker stops serving its queue (its Docker engine went away)
    cluster.registry = [worker("c1", "container", serving=False), local]
    cluster.tick()
    # Then the outstanding chunks go to the local worker's queue
    assert cluster.tracker.route.tag == "local"
    assert [(s.chunk, s.queue, s.resend) for s in cluster.sends[2:]] == [(0, "hermes.local", True),
                                                                        (1, "hermes.local", True)]  # fmt: skip
    assert cluster.said() == [
        "no container worker is taking work: 2 outstanding chunk(s) re-routed to local worker(s) local@l1 (Docker is "
        "unavailable, using local processing: no live container worker)"
    ]
    # And later chunks follow them
    cluster.submit(chunk(2))
    assert cluster.sends[-1].queue == "hermes.local"


def test_with_isolation_container_the_batch_waits_then_stops_naming_why_no_worker_takes_work() -> None:
    cluster = FakeCluster(worker("c1", "container"), worker("l1"), isolation="container", fallback=False)
    cluster.submit(chunk(0))
    cluster.registry = [worker("c1", "container", serving=False, reason="the Docker engine is gone"), worker("l1")]
    cluster.queue_depth = 1  # nobody consumes the queue: the message waits there
    cluster.tick(LIMITS.patience_s + 1)
    # (sent again once when c1 stopped serving, since it may have reserved it; never to the local queue)
    assert [(s.chunk, s.queue) for s in cluster.sends] == [(0, "hermes.container")] * 2
    with pytest.raises(ExecutorError) as raised:
        cluster.tick()
    assert str(raised.value) == ("no live container worker for 30 s with 1 chunk(s) outstanding (container@c1 is not "
                                 "taking work: the Docker engine is gone); start one with: hermes worker --mode "
                                 "container")  # fmt: skip


def test_with_no_worker_left_the_batch_falls_back_in_process() -> None:
    # Given chunks outstanding, one of them split, when the only worker vanishes
    cluster = FakeCluster(W1)
    cluster.submit(chunk(0), chunk(1, lines=16))
    cluster.see(FailureNotice(1, "local@w1", "too large", split=True))
    cluster.registry = []
    cluster.queue_depth = 9  # nobody consumes the queue: the messages wait there
    # Then the batch waits for a worker (patience_s), no longer
    cluster.tick(LIMITS.patience_s + 1)
    assert cluster.written == [] and not cluster.tracker.degraded
    sent = len(cluster.sends)
    cluster.tick()
    # And then finishes in-process: the split chunk runs whole, and later chunks run here too
    assert cluster.events[-1] == FellBack(NoWorker("local", 30.0), outstanding=2)
    assert cluster.said()[-1] == ("no live local worker for 30 s: finishing the batch in-process "
                                  "(2 chunk(s) outstanding)")  # fmt: skip
    cluster.submit(chunk(2))
    assert cluster.written_chunks() == [0, 1, 2]
    assert {records(r)[0]["provenance"]["worker"] for _n, r in cluster.written} == {"embedded@test"}
    assert len(cluster.sends) == sent  # nothing sent since


def test_workers_that_serve_the_queue_but_never_say_a_word_are_stuck() -> None:
    # Given a chunk waiting in the queue of a worker that takes nothing and says nothing
    cluster = FakeCluster(W1, fallback=False)
    cluster.submit(chunk(0))
    cluster.queue_depth = 1
    cluster.tick(OVERDUE_AFTER)
    with pytest.raises(ExecutorError) as raised:
        cluster.tick()
    assert str(raised.value) == ("no worker answered for 76 s with 1 chunk(s) outstanding, although local@w1 serve "
                                 "hermes.local: are they stuck? (see hermes workers and their logs)")  # fmt: skip
    fallback = FakeCluster(W1)
    fallback.submit(chunk(0))
    fallback.queue_depth = 1
    fallback.tick(OVERDUE_AFTER + 1)
    assert fallback.events == [FellBack(WorkersStuck(76, ("local@w1",), "hermes.local"), 1)]
    assert fallback.written_chunks() == [0]


# Outages: retried for a while, and nobody judged gone for the registry entries that expired.


# The stream's entries, and the words users see.


def test_stream_entries_decode_into_what_the_tracker_observes() -> None:
    assert decode_entry({b"s": b'{"chunk": 3, "worker": "w\\u001b[2J"}'}) == StartNotice(3, "w\\u001b[2J")
    assert decode_entry({b"m": b'{"chunk": 3, "worker": "w"}'}) == MissingNotice(3, "w")
    assert decode_entry({b"x": b'{"chunk": 3, "worker": "w", "reason": "no"}'}) == RefusalNotice(3, "w", "no")
    assert decode_entry({b"f": b'{"chunk": 3, "worker": "w", "reason": "r"}'}) == FailureNotice(3, "w", "r", False)
    assert decode_entry({b"r": b'{"chunk": 3}', b"t": b"{}\n"}) == ResultPosted(3, {"chunk": 3}, b"{}\n")
    assert decode_entry({b"z": b"{}"}) is None
    # A shared chunk's records in a part file (hermes_worker.shared_parts): the ref, checked.
    ref = {"name": "3-" + "a" * 32 + ".jsonl", "size": 2, "sha256": "b" * 64}
    seen = decode_entry({b"r": b'{"chunk": 3}', b"p": json.dumps(ref).encode()})
    assert seen == ResultPosted(3, {"chunk": 3}, b"", part=PartRef(ref["name"], 2, "b" * 64))
    for hostile in (ref | {"name": "../../etc/passwd"}, ref | {"size": -1}, ref | {"size": 1 << 40}, [1], "x"):
        seen = decode_entry({b"r": b'{"chunk": 3}', b"p": json.dumps(hostile).encode()})
        assert isinstance(seen, ResultPosted) and seen.part is None and seen.problem, hostile
    assert decode_entry({b"r": b'{"chunk": 3}', b"p": b"{not json"}).problem  # type: ignore[union-attr]
    for garbage in ({b"r": b"{not json"}, {b"r": b"[1, 2]"}, {b"m": b'{"chunk": {"a": 1}}'}, {b"s": b"7"}):
        with pytest.raises((ValueError, TypeError, AttributeError)):
            decode_entry(garbage)


def test_a_result_naming_the_part_of_another_chunk_cannot_be_had() -> None:
    # Given an entry for chunk 3 whose part is one of chunk 5's (a worker writes its own chunk's)
    ref = {"name": "5-" + "a" * 32 + ".jsonl", "size": 2, "sha256": "b" * 64}
    for number in (b"3", b"53", b'"5"', b"true"):
        seen = decode_entry({b"r": b'{"chunk": ' + number + b"}", b"p": json.dumps(ref).encode()})
        # Then it is not read (nor deleted once chunk 3 is written): the result is malformed
        assert isinstance(seen, ResultPosted) and seen.part is None, number
        assert seen.problem == f"a result's part: {ref['name']} is not one of this chunk's", number


SENTENCES: list[tuple[Event, str]] = [
    (StreamEntryIgnored("JSONDecodeError"), "ignored a malformed entry on the result stream (JSONDecodeError)"),
    (ChunkRefused(4, Malformed("a result without its provenance")),
     "chunk 4 answered with a result without its provenance; sent again"),
    (ChunkRefused(4, Misplaced("local@x", "local")),
     "chunk 4 answered by local@x with records that ran in mode 'local', not in a container; sent again"),
    (ResultUnreadable("local@old", 1, 2, 1),
     "local@old answered with 1 record(s) for 2 item(s) (result version 1, expected "
     f"{PAYLOAD_VERSION}): run the same Hermes version everywhere"),
    (WorkersLost(("local@a", "local@b"), tuple(range(10))),
     "worker local@a, local@b is gone or stopped taking this work: 10 chunk(s) sent again "
     "(chunks 0, 1, 2, 3, 4, 5, 6, 7, ...)"),
    (RouteMoved("local", "container", ("container@c",), 3), "no local worker is taking work: 3 outstanding chunk(s) "
     "re-routed to container worker(s) container@c"),
    (FellBack(WorkersStuck(80.4, ("local@a",), "hermes.local"), 2), "no worker answered for 80 s although local@a "
     "serve hermes.local: are they stuck?: finishing the batch in-process (2 chunk(s) outstanding)"),
    (FellBack(NoWorker("container", 30, (("container@c", "no engine"),)), 1), "no live container worker for 30 s "
     "(container@c is not taking work: no engine): finishing the batch in-process (1 chunk(s) outstanding)"),
    (GaveUp(9, 7, 1, Overdue("local@a", 80, 60)), "line 7: gave up: local@a took it 80 s ago and never answered "
     "(the chunk time limit is 60 s)"),
    (ChunkSplit(1, 1, 2, NotFinished("w", "r"), parts=2),
     "chunk 1 (lines 1-2): w could not finish it: r; split into 2 parts"),
    (LinesLost(2, "w\x1b[2J"), "chunk 2: w\\u001b[2J found its lines gone from Redis; sent again"),
    (ChunksUnanswered((3, 4)), "2 chunk(s) taken before Redis went away and never answered (a failover or restart "
     "can lose what Redis acknowledged): sent again (chunks 3, 4)"),
]  # fmt: skip


@pytest.mark.parametrize(("event", "words"), SENTENCES, ids=[type(e).__name__ for e, _w in SENTENCES])
def test_each_event_renders_as_the_sentence_users_and_scripts_know(event: Event, words: str) -> None:
    assert render(event) == words


def test_a_rendered_event_is_bounded() -> None:
    render_of: Callable[[str], str] = lambda reason: render(ChunkRefused(1, RefusedBy("w", reason)))  # noqa: E731
    assert len(render_of("x" * 5000)) == 2000
