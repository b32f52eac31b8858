"""Plain Celery with the Redis broker and result backend, tuned as Celery's docs allow.

Tuning (see "Optimizing" in the Celery user guide): a high ``worker_prefetch_multiplier`` for
many short tasks (``BENCH_CELERY_PREFETCH``, 64 a process by default), early acknowledgement
(the default), rate limits off, and the worker started without gossip, mingle and heartbeat.
Results use the Redis backend; the producer reuses one connection for all its sends and
collects with ``join_native``.
"""

from __future__ import annotations

import os

from celery import Celery

from .work import REDIS_URL, compact, compact_many

app = Celery("bench_peer", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "64")),
    task_acks_late=False,
    worker_disable_rate_limits=True,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)
one = app.task(name="peer.compact")(compact)
many = app.task(name="peer.compact_many")(compact_many)
