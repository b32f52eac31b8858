"""Dramatiq with its Redis broker and the Results middleware on Redis.

Tuning (Dramatiq's docs, "Cookbook" and worker options): one thread per process for a
CPU-bound actor (``--threads 1``), ``dramatiq_queue_prefetch=64`` in the environment so a
worker holds many short messages at once, no retries (``max_retries=0``).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from .work import REDIS_URL, compact, compact_many

backend = RedisBackend(url=REDIS_URL)
broker = RedisBroker(url=REDIS_URL)  # type: ignore[no-untyped-call]
broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)

one = dramatiq.actor(actor_name="peer_compact", store_results=True, max_retries=0)(compact)
many = dramatiq.actor(actor_name="peer_compact_many", store_results=True, max_retries=0)(compact_many)
