"""The Celery configuration for this workload, in one place, for workers and producers alike.

Every setting here is a decision; the comments say why. Only what Hermes uses is set.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from celery import Celery
from kombu import Connection, Exchange, Queue  # type: ignore[attr-defined]

from .contract import QUEUE_CONTAINER, QUEUE_LOCAL, QUEUE_PUBLIC, TASK_NORMALIZE, TASK_NORMALIZE_CHUNK
from .kombu_clients import reuse_clients
from .redis_conn import sentinel_kwargs
from .sentinel_url import is_sentinel
from .settings import Settings

__all__ = ["broker_connection", "broker_ssl", "celery_config", "kombu_url", "make_celery", "public_task_config",
           "sentinel_options"]

_READ_TIMEOUT_S = 10.0


def broker_ssl(url: str) -> dict[str, Any] | None:
    """TLS options for a ``rediss://`` broker whose URL does not say how to check the certificate.

    kombu quietly falls back to *not verifying* the server's certificate when a ``rediss://`` URL
    has no ``ssl_cert_reqs``; redis-py (results, registry) verifies it. Hermes verifies on both
    paths: without the parameter the certificate is required, against the system's CAs or the
    URL's ``ssl_ca_certs``. An explicit ``ssl_cert_reqs`` in the URL is kombu's to honour.

    >>> broker_ssl("rediss://h:6380/0")["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    True
    >>> broker_ssl("rediss://h:6380/0?ssl_cert_reqs=none") is None, broker_ssl("redis://h/0") is None
    (True, True)
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def kombu_url(url: str) -> str:
    """The broker URL as kombu can read it: a ``?password=`` (and ``?username=``) moved into it.

    redis-py takes the password from either place; kombu fails on the query form (``dict() got
    multiple values for keyword argument 'password'``) and would not mask it in its banner,
    ``inspect conf`` or Flower. In the URL's user part, kombu uses it and masks it everywhere.

    >>> kombu_url("redis://h:6379/0?password=p%40ss&ssl_cert_reqs=required")
    'redis://:p%40ss@h:6379/0?ssl_cert_reqs=required'
    >>> kombu_url("redis://:pw@h:6379/0"), kombu_url("amqp://u:pw@mq//?password=x")
    ('redis://:pw@h:6379/0', 'amqp://u:pw@mq//?password=x')
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.query:
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = dict(query)
    if "password" not in given and "username" not in given:
        return url
    user = quote(given.get("username", unquote(parts.username or "")), safe="")
    password = quote(given.get("password", unquote(parts.password or "")), safe="")
    host = parts.netloc.rpartition("@")[2]
    rest = urlencode([(k, v) for k, v in query if k not in ("password", "username")])
    netloc = f"{user}:{password}@{host}" if password else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, rest, parts.fragment))


def sentinel_options(settings: Settings, url: str) -> dict[str, Any]:
    """kombu's and Celery's transport options for a ``sentinel://`` URL (none for any other).

    ``master_name`` is the primary's name in the group (HERMES_SENTINEL_MASTER); ``sentinel_kwargs``
    how to reach the sentinels themselves: their password (HERMES_SENTINEL_PASSWORD) and timeouts.
    The URL's own password is the primary's (kombu's and Celery's convention).

    >>> from pathlib import Path
    >>> settings = Settings(home=Path("."), sentinel_master="hermes")
    >>> sentinel_options(settings, "sentinel://s1:26379")["master_name"], sentinel_options(settings, "redis://h/0")
    ('hermes', {})
    """
    if not is_sentinel(url):
        return {}
    return {"master_name": settings.sentinel_master,
            "sentinel_kwargs": sentinel_kwargs(settings.broker_timeout_s, settings.sentinel_password)}  # fmt: skip


def broker_connection(settings: Settings) -> Connection:
    """A kombu connection to the broker as Celery's would be (Sentinel's options included), for checks."""
    return Connection(  # type: ignore[no-untyped-call]
        kombu_url(settings.broker_url),
        connect_timeout=settings.broker_timeout_s,
        transport_options=sentinel_options(settings, settings.broker_url),
    )


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings Hermes runs with, derived from ``settings``."""
    hard_limit = settings.chunk_time_limit_s
    return {
        "broker_url": kombu_url(settings.broker_url),
        "broker_use_ssl": broker_ssl(settings.broker_url),
        # JSON only, both ways: a pickled message is refused, never deserialized.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        # Results travel on per-batch Redis streams (see contract.KEY_RESULTS), not through
        # Celery's result backend and its pub/sub channel.
        "task_ignore_result": True,
        "result_expires": settings.result_ttl_s,
        # A chunk is acknowledged only after its result is published; if the worker process
        # dies meanwhile the message goes back to the queue.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One chunk reserved per process: a slow chunk never holds others hostage.
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": hard_limit * 0.8,
        "task_time_limit": hard_limit,
        # Redis redelivers an unacknowledged message after this long: just above the longest
        # a chunk may run, not Celery's default of one hour.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": settings.broker_timeout_s,
            # A read that hangs is a connection error for kombu, which then reconnects (BRPOP
            # itself blocks only 1 s server-side). Pub/sub reads ignore it: see watches.LoopWatch.
            "socket_timeout": _READ_TIMEOUT_S,
            "socket_keepalive": True,
            "retry_on_timeout": True,
            "health_check_interval": 10,
            **sentinel_options(settings, settings.broker_url),
        },
        # Keep trying the broker forever, with Celery's growing back-off.
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        # A process that grew past this is replaced after its current chunk (huge prompts).
        "worker_max_memory_per_child": settings.max_memory_per_child_mb * 1024,
        # Task events only once a monitor asks (Flower does, at start and every 5 s): they took a
        # fifth of a worker's CPU at 8 prompts a chunk. HERMES_TASK_EVENTS=1: from the start.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        # Each queue on its own direct exchange, keyed by its name (Celery's own way with its
        # default queue `celery`): a message published to one queue's exchange reaches that queue
        # alone. (Without an exchange each would be bound to the default one, hermes.local's.)
        "task_queues": tuple(_queue(name) for name in (QUEUE_CONTAINER, QUEUE_LOCAL, QUEUE_PUBLIC)),
        "task_default_queue": QUEUE_LOCAL,
        # The public task's chains and chord bodies, sent by workers, go where clients send it.
        "task_routes": {TASK_NORMALIZE_CHUNK: {"queue": QUEUE_LOCAL}, TASK_NORMALIZE: {"queue": QUEUE_PUBLIC}},
        "task_create_missing_queues": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_connection_timeout": settings.broker_timeout_s,
    }


def public_task_config(settings: Settings) -> dict[str, Any]:
    """What a worker that runs the public task ``hermes.normalize`` adds: Celery's result backend.

    Only workers store results (producers send chunks, whose results travel on Hermes' streams, and
    would otherwise subscribe to a result channel for every chunk they send). The result Redis is
    Hermes' own (HERMES_RESULT_BACKEND); results expire after HERMES_RESULT_TTL (``result_expires``).
    """
    return {
        "result_backend": kombu_url(settings.result_backend),
        "redis_backend_use_ssl": broker_ssl(settings.result_backend),
        "redis_socket_connect_timeout": settings.broker_timeout_s,
        "redis_socket_timeout": _READ_TIMEOUT_S,
        "redis_retry_on_timeout": True,
        "result_backend_transport_options": sentinel_options(settings, settings.result_backend),
        # A worker sends tasks only for the public task (a chain's next step, a chord's body, a
        # task sent on to its tag's queue): their sent events would carry records to Flower.
        "task_send_sent_event": False,
    }


def make_celery(settings: Settings, main: str = "hermes") -> Celery:
    """A Celery app configured for Hermes (the worker app and the producer's client alike).

    kombu's Redis channels then reuse one client each instead of making one per command
    (:mod:`hermes_worker.kombu_clients`).
    """
    reuse_clients()
    app = Celery(main, set_as_current=False)
    app.conf.update(celery_config(settings))
    if settings.signing_key and settings.signing_cert and settings.signing_certs:
        from .signing import enable

        enable(app, settings.signing_key, settings.signing_cert, settings.signing_certs)
    return app
