"""kombu's Redis channels reuse one client each (hermes_worker/kombu_clients.py), and recover as before.

A real private Redis: a message published through the channel arrives, the channel's commands
all go through one client, and a channel whose connection pool kombu replaced (as it does after
a lost connection) gets a client of the new pool, which works.
"""

from __future__ import annotations

import pytest
from kombu import Connection, Exchange, Queue  # type: ignore[attr-defined]

from hermes_worker.celeryconfig import make_celery
from hermes_worker.kombu_clients import reuse_clients
from hermes_worker.settings import Settings

from .support.redis_server import RedisServer

pytestmark = pytest.mark.cluster


def test_a_channel_reuses_one_client_and_makes_another_for_a_new_pool(redis_server: RedisServer) -> None:
    # Given: the patch applied (making a Hermes Celery app applies it; applying it again changes nothing)
    make_celery(Settings.from_env({"HERMES_BROKER_URL": redis_server.url()}))
    assert reuse_clients() is False
    queue = Queue("bench.kombu-clients", Exchange("bench.kombu-clients", type="direct"), "bench.kombu-clients")
    with Connection(redis_server.url()) as connection:
        channel = connection.default_channel
        # When: the channel publishes twice and is asked for its client twice
        producer = connection.Producer(channel)
        for n in range(2):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            pass
        # Then: one client served both, and both messages are in the queue, in order
        assert first is second
        received = [queue(channel).get(no_ack=True).payload for _ in range(2)]
        assert received == [{"n": 0}, {"n": 1}]

        # When: kombu drops the channel's pools (what it does after a lost connection)
        channel._disconnect_pools()
        with channel.conn_or_acquire() as third:
            # Then: a client of the new pool, which answers
            assert third is not first and third.connection_pool is channel.pool
            assert third.ping()
        # And: a client handed in is used as it is
        with channel.conn_or_acquire(first) as given:
            assert given is first
