"""kombu's Redis channel, made to reuse one redis-py client for its commands instead of making one each time.

kombu's Redis transport (5.x) builds a new ``redis.Redis`` for every command it sends outside its
consumer's own client: each task message and each event it publishes, each ack, each entry of
the unacknowledged-message store (``Channel.conn_or_acquire``). With redis-py 8 building a client
costs tens of microseconds of CPU (its table of response callbacks), and a chunk pays it about
seven times: the producer's message and task-sent event; the worker's unacked entry, ack and three
task events (issue 13: per-chunk fixed CPU). The clients all share the channel's connection pool,
which does the real work; one client per pool serves them all (a redis-py client is thread-safe,
each command or pipeline takes its own connection from the pool).

:func:`reuse_clients` patches ``Channel.conn_or_acquire`` once per process, for every Celery app
(:func:`hermes_worker.celeryconfig.make_celery` calls it). A client is kept per channel and made
again whenever the channel's pool is replaced (kombu makes a new pool after a lost connection),
so recovery from a broker outage goes as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["reuse_clients"]

_ATTRIBUTE = "_hermes_client"


def reuse_clients() -> bool:
    """Make kombu's Redis channels reuse one client each; True if this call patched it (idempotent)."""
    from kombu.transport import redis as transport

    if getattr(transport.Channel.conn_or_acquire, "hermes_reuses_clients", False):
        return False

    @contextlib.contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        kept = self.__dict__.get(_ATTRIBUTE)
        if kept is None or kept.connection_pool is not pool:
            kept = self._create_client()
            self.__dict__[_ATTRIBUTE] = kept
        yield kept

    conn_or_acquire.hermes_reuses_clients = True  # type: ignore[attr-defined]
    transport.Channel.conn_or_acquire = conn_or_acquire  # type: ignore[method-assign]
    return True
