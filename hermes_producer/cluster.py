"""The producer's view of the cluster: is the broker there, who is alive, where work goes.

The producer talks to Celery only through a client app built from the shared configuration and
sends tasks by name; it never imports worker code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from celery import Celery
from kombu import Connection  # type: ignore[attr-defined]

from hermes_worker.celeryconfig import kombu_url, make_celery
from hermes_worker.contract import QUEUE_CONTAINER, QUEUE_LOCAL
from hermes_worker.errors import EXIT_USAGE, HermesError
from hermes_worker.redact import redact, redact_url
from hermes_worker.redis_conn import connect, refusal
from hermes_worker.registry import Registry, WorkerInfo
from hermes_worker.settings import Settings

__all__ = ["FALLBACK_MESSAGE", "Cluster", "ClusterRefused", "ClusterUnavailable", "Route"]

FALLBACK_MESSAGE = "Docker is unavailable, using local processing"


class ClusterUnavailable(HermesError):
    """The broker or the result Redis does not answer (exit 3 where nothing else can be done)."""


class ClusterRefused(ClusterUnavailable):
    """The broker or the result Redis answered and refused us: a wrong password, no permission,
    a TLS certificate that does not verify. A configuration error: never a reason to fall back.

    A subclass, so code that only knows "the cluster cannot be used" still stops using it;
    :mod:`.dispatch` and the cluster commands tell the two apart. A usage error (exit 2).
    """

    exit_code = EXIT_USAGE


@dataclass(frozen=True, slots=True)
class Route:
    """Where a batch goes: a queue, the live workers behind it, and anything to tell the user."""

    queue: str
    tag: str
    workers: list[WorkerInfo]
    note: str | None = None

    @property
    def concurrency(self) -> int:
        return sum(max(1, w.concurrency) for w in self.workers)


class Cluster:
    """A connected cluster: Redis for results and the registry, Celery for sending chunks."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.registry = Registry(client, settings.worker_ttl_s)
        self._app: Celery | None = None

    @classmethod
    def connect(cls, settings: Settings) -> Cluster:
        """Check that the result Redis and the broker answer within ``broker_timeout_s``.

        Raises:
            ClusterRefused: a server answered but refused us (wrong password, no permission,
                a TLS certificate that does not verify): a configuration error.
            ClusterUnavailable: naming what did not answer and where.
        """
        client = connect(settings.result_backend, settings.broker_timeout_s)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise _failure("Redis", settings.result_backend, _setting(settings), exc) from None
        if settings.broker_url != settings.result_backend:
            try:
                with Connection(  # type: ignore[no-untyped-call]
                    kombu_url(settings.broker_url), connect_timeout=settings.broker_timeout_s
                ) as conn:
                    conn.ensure_connection(max_retries=1, timeout=settings.broker_timeout_s)
            except Exception as exc:
                raise _failure("broker", settings.broker_url, "HERMES_BROKER_URL", exc) from None
        return cls(settings, client)

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = make_celery(self.settings, main="hermes_producer")
        return self._app

    def live_workers(self) -> list[WorkerInfo]:
        return self.registry.live()

    def route(self, isolation: str) -> Route | None:
        """The route for ``isolation`` given who is alive now, or None if no worker can take it.

        A worker counts for a queue only while it consumes it: a container worker that lost its
        Docker engine stays registered, with no queue, until the engine is back.
        """
        workers = self.live_workers()
        container = [w for w in workers if w.tag == "container" and QUEUE_CONTAINER in w.queues]
        local = [w for w in workers if w.tag == "local" and QUEUE_LOCAL in w.queues]
        if isolation in ("container", "auto") and container:
            return Route(QUEUE_CONTAINER, "container", container)
        if isolation == "local" and local:
            return Route(QUEUE_LOCAL, "local", local)
        if isolation == "auto" and local:
            return Route(QUEUE_LOCAL, "local", local, note=f"{FALLBACK_MESSAGE}: no live container worker")
        return None

    def wait_for_route(self, isolation: str, wait_s: float, on_wait: Callable[[], None] | None = None) -> Route | None:
        """Like :meth:`route`, polling up to ``wait_s`` seconds for a worker to appear."""
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            found = self.route(isolation)
            if found is not None or time.monotonic() >= deadline:
                return found
            if on_wait is not None and not announced:
                on_wait()
                announced = True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _setting(settings: Settings) -> str:
    """The variable to fix: the result backend is the broker URL unless set on its own."""
    return "HERMES_BROKER_URL" if settings.result_backend == settings.broker_url else "HERMES_RESULT_BACKEND"


def _failure(what: str, url: str, variable: str, exc: BaseException) -> ClusterUnavailable:
    """The error for a connection that failed: refused (configuration) or not answering.

    redis-py and kombu exception texts may hold the URL: both the URL and the text are redacted.
    """
    detail = redact(str(exc) or type(exc).__name__)
    reason = refusal(exc)
    if reason is not None:
        return ClusterRefused(
            f"{what} at {redact_url(url)} refused the connection: {reason} ({detail}); check {variable}"
        )
    return ClusterUnavailable(f"{what} at {redact_url(url)} is not answering ({detail})")
