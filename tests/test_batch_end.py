"""A batch that has ended leaves nothing in Redis, and nothing late brings any of it back (issue 15).

Found by the checker's leftovers count on the hosts scenarios (tests/test_chaos_hosts.py): a worker
cut off while it held a chunk published its result after the batch had ended, and that write made
the deleted result stream again, with the chunk's records in it, for HERMES_RESULT_TTL (a day); a
worker killed while it held a chunk left its message in the broker's unacknowledged store, to be
put back in the queue and run for nothing after the visibility timeout.

Here each rule is shown on a real Redis: a write creates a batch's stream only while the chunk's
lines are there (hermes_worker/publishing.py); a chunk message of an ended batch is dropped
without a trace; the producer removes its batch's leftover messages when it ends
(hermes_producer/purge.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection  # type: ignore[attr-defined]

from hermes_producer.purge import purge_batch, task_id_prefix
from hermes_worker.contract import KEY_EVENTS, new_batch_id
from hermes_worker.handling import ChunkHandler
from hermes_worker.publishing import BatchEnded, Publisher
from hermes_worker.runners import LocalRunner
from hermes_worker.settings import Settings
from hermes_worker.wire import ChunkRequest, Reply

from .support.redis_server import RedisServer

pytestmark = pytest.mark.cluster

EVENT = {"r": "{}"}


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The session's Redis, empty, and emptied again after the test (others share it)."""
    redis_server.flush()
    yield redis_server.client()
    redis_server.flush()


def test_the_first_write_of_a_chunk_whose_lines_wait_creates_the_stream(client: redis.Redis) -> None:
    reply = Reply(new_batch_id(), 60)
    client.set(reply.text_key(0), b"lines")
    assert Publisher(client).publish(reply.stream, 60, {"s": "0"}, EVENT, fetch=reply.text_key(0),
                                     wanted=reply.text_key(0)) == b"lines"  # fmt: skip
    assert [fields for _id, fields in client.xrange(reply.stream)] == [{b"s": b"0"}]  # type: ignore[union-attr]
    assert 0 < client.ttl(reply.stream) <= 60


def test_a_write_after_the_batch_ended_makes_nothing_again(client: redis.Redis) -> None:
    # Given a batch whose producer has written every chunk: lines and stream deleted
    reply = Reply(new_batch_id(), 60)
    # When a worker that was cut off publishes its chunk's result late
    with pytest.raises(BatchEnded):
        Publisher(client).publish(reply.stream, 60, {"t": "records"}, EVENT, wanted=reply.text_key(3))
    # Then no stream is made again (the event still goes to the cluster log)
    assert client.exists(reply.stream) == 0 and client.xlen(KEY_EVENTS) == 1


def test_a_late_duplicate_still_reaches_a_batch_that_runs(client: redis.Redis) -> None:
    # A copy of a chunk the producer has written already (its lines deleted) while the batch goes on:
    # the result is appended, as before, and the producer drops it as a duplicate.
    reply = Reply(new_batch_id(), 60)
    client.xadd(reply.stream, {"s": "1"})
    Publisher(client).publish(reply.stream, 60, {"t": "records"}, EVENT, wanted=reply.text_key(0))
    assert client.xlen(reply.stream) == 2


def test_a_chunk_of_items_has_no_lines_to_ask_and_may_create_the_stream(client: redis.Redis) -> None:
    reply = Reply(new_batch_id(), 60)
    Publisher(client).publish(reply.stream, 60, {"s": "0"}, EVENT)
    assert client.xlen(reply.stream) == 1


def test_a_chunk_message_of_an_ended_batch_is_dropped_without_a_trace(
    client: redis.Redis, redis_server: RedisServer, hermes_env: dict[str, str]
) -> None:
    # Given a chunk message redelivered after its batch ended (its lines and stream are gone)
    settings = Settings.from_env(dict(hermes_env, HERMES_BROKER_URL=redis_server.url()))
    reply = Reply(new_batch_id(), 60)
    payload = ChunkRequest(4, {"name": "nfc", "steps": ["nfc"]}, text_key=reply.text_key(4), count=1).to_payload()
    # When a worker takes it
    outcome = ChunkHandler(settings, LocalRunner(), client).handle(payload, reply.to_wire(), "local@w", "hermes.local")
    # Then it runs nothing and writes no stream
    assert outcome == {"chunk": 4, "batch_ended": True}
    assert client.exists(reply.stream) == 0


def _message(task_id: str) -> dict[str, Any]:
    return {"body": "W10=", "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"id": task_id, "task": "hermes.normalize_chunk"}, "properties": {"delivery_tag": task_id}}


def test_the_producer_removes_its_batch_messages_left_in_the_broker(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    # Given messages of two batches: queued copies, and delivered ones a dead worker never acknowledged
    ours, theirs = new_batch_id(), new_batch_id()
    for batch in (ours, theirs):
        for n in range(3):
            client.lpush("hermes.local", json.dumps(_message(f"{task_id_prefix(batch)}q{n}")))
            tag = f"{batch}-tag{n}"
            client.hset("unacked", tag, json.dumps([_message(f"{task_id_prefix(batch)}u{n}"), "", "hermes.local"]))
            client.zadd("unacked_index", {tag: 1.0})
    client.lpush("hermes.local", b"not json", json.dumps({"headers": {"id": 7}}))  # someone else's odd entries
    # When our batch ends
    with Connection(redis_server.url()) as connection:  # type: ignore[no-untyped-call]
        removed = purge_batch(connection.default_channel, task_id_prefix(ours), ["hermes.local", "hermes.container"])
    # Then only its own messages are gone, from the queue and from both of kombu's indexes
    assert removed == 6
    left = [json.loads(raw)["headers"]["id"] for raw in client.lrange("hermes.local", 0, -1)[2:]]
    assert len(left) == 3 and all(task_id.startswith(task_id_prefix(theirs)) for task_id in left)
    assert sorted(client.hkeys("unacked")) == sorted(client.zrange("unacked_index", 0, -1))
    tags: list[bytes] = client.hkeys("unacked")  # type: ignore[assignment]
    assert all(tag.startswith(theirs.encode()) for tag in tags) and len(tags) == 3


def test_a_task_id_prefix_cannot_match_another_batch() -> None:
    # Batch ids have a fixed length: one prefix is never the start of another's.
    first, second = task_id_prefix("a" * 32), task_id_prefix("a" * 16)
    assert not first.startswith(second) and not second.startswith(first)
