"""What is left of a finished batch's messages in the broker, removed when the batch ends.

Every chunk message of a batch carries a task id starting with the batch's own prefix
(:func:`task_id_prefix`). Once every record is written, copies of its messages may remain: still
queued (a chunk sent again while its first message waited), or delivered to a worker that was
killed or cut off before acknowledging it. kombu's Redis transport keeps the latter in a hash and
a sorted set (``unacked``, ``unacked_index``) and puts them back in the queue after the visibility
timeout, where a worker would take them for nothing. :func:`purge_batch` removes both kinds; a
worker still holding one acknowledges it as usual (kombu's ack of a removed entry changes nothing).
On other transports it does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

__all__ = ["purge_batch", "purge_quietly", "task_id_prefix"]

# How far into a queue to look: a batch keeps at most a few chunks per worker process in flight,
# so its copies sit near the head of the queue it uses; a queue longer than this is someone else's.
QUEUE_SCAN = 10_000


def task_id_prefix(batch: str) -> str:
    """The start of every task id of ``batch``'s chunk messages.

    >>> task_id_prefix("7f553e86cc4144e68659bd755ec1d2b1")
    'hermes-7f553e86cc4144e68659bd755ec1d2b1-'
    """
    return f"hermes-{batch}-"


def purge_batch(channel: Any, prefix: str, queues: Iterable[str]) -> int:
    """Remove the messages whose task id starts with ``prefix`` from ``queues`` and from the
    transport's store of unacknowledged ones, on a kombu Redis ``channel``; how many were removed.

    Raises:
        redis.RedisError: the broker did not answer.
    """
    unacked, index = getattr(channel, "unacked_key", None), getattr(channel, "unacked_index_key", None)
    if not (isinstance(unacked, str) and isinstance(index, str) and hasattr(channel, "conn_or_acquire")):
        return 0  # not kombu's Redis transport
    needle = prefix.encode()
    removed = 0
    with channel.conn_or_acquire() as client:
        for queue in queues:
            queued: list[bytes] = client.lrange(queue, 0, QUEUE_SCAN - 1)
            for raw in queued:
                if needle in raw and _task_id(raw).startswith(prefix):
                    removed += int(client.lrem(queue, 1, raw))
        tags = [tag for tag, raw in client.hscan_iter(unacked, count=1000)
                if needle in raw and _task_id(raw, delivered=True).startswith(prefix)]  # fmt: skip
        if tags:
            pipe = client.pipeline()
            pipe.zrem(index, *tags)
            pipe.hdel(unacked, *tags)
            removed += int(pipe.execute()[1])
    return removed


def _task_id(raw: bytes, delivered: bool = False) -> str:
    """The task id in a stored message (``delivered``: kombu's ``[message, exchange, routing key]``); ""
    when it has none that can be read."""
    try:
        message = json.loads(raw)
        headers = (message[0] if delivered else message)["headers"]
        task_id = headers["id"]
    except (ValueError, LookupError, TypeError):
        return ""
    return task_id if isinstance(task_id, str) else ""


def purge_quietly(channel: Any, prefix: str, queues: Iterable[str]) -> int:
    """:func:`purge_batch`, or 0 when the broker does not answer: a batch that wrote every record
    has succeeded, and what stays behind is only taken for nothing later."""
    try:
        return purge_batch(channel, prefix, queues)
    except (redis.RedisError, OSError):
        return 0
