"""The producer's view of the cluster: is the broker there, who is alive, where work goes.

The producer talks to Celery only through a client app built from the shared configuration and
sends tasks by name; it never imports worker code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import ChannelError

from hermes_worker.celeryconfig import broker_connection, make_celery
from hermes_worker.errors import EXIT_USAGE, HermesError
from hermes_worker.redact import redact, redact_url
from hermes_worker.redis_conn import brief, connect, primary, refusal, results_client
from hermes_worker.registry import Registry, WorkerInfo
from hermes_worker.routes import FALLBACK_MESSAGE, Route, route_for
from hermes_worker.sentinel_url import is_sentinel
from hermes_worker.settings import Settings

__all__ = ["FALLBACK_MESSAGE", "Cluster", "ClusterRefused", "ClusterUnavailable", "Route",
           "queue_depth", "route_for"]


def queue_depth(channel: Any, queue: str) -> int:
    """Messages waiting in ``queue``, asked on a kombu ``channel`` of any broker kombu supports.

    A queue the broker does not know counts as empty: that is how the Redis transport answers
    for a list with nothing in it. Any other error is the caller's to judge.
    """
    try:
        _, count, _ = channel.queue_declare(queue=queue, passive=True)
    except ChannelError:
        return 0
    return int(count)


class ClusterUnavailable(HermesError):
    """The broker or the result Redis does not answer (exit 3 where nothing else can be done)."""


class ClusterRefused(ClusterUnavailable):
    """The broker or the result Redis answered and refused us: a wrong password, no permission,
    a TLS certificate that does not verify. A configuration error: never a reason to fall back.

    A subclass, so code that only knows "the cluster cannot be used" still stops using it;
    :mod:`.dispatch` and the cluster commands tell the two apart. A usage error (exit 2).
    """

    exit_code = EXIT_USAGE


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
        client = results_client(settings)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise _failure("Redis", settings.result_backend, _setting(settings), exc) from None
        if settings.broker_url != settings.result_backend:
            try:
                with broker_connection(settings) as conn:
                    conn.ensure_connection(max_retries=1, timeout=settings.broker_timeout_s)
            except Exception as exc:
                raise _failure("broker", settings.broker_url, "HERMES_BROKER_URL", exc) from None
        return cls(settings, client)

    def close(self) -> None:
        """Close the Redis connections and the Celery app's broker pool."""
        self.redis.close()
        if self._app is not None:
            self._app.close()
            self._app = None

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = make_celery(self.settings, main="hermes_producer")
        return self._app

    def primaries(self) -> dict[str, str]:
        """Where Sentinel says the primary is now, for each of the broker and the result Redis
        given as ``sentinel://`` lists: ``{"result backend": "host:port", ...}`` (empty without Sentinel).

        Raises:
            redis.RedisError: no sentinel answered, or none knows the primary.
        """
        found: dict[str, str] = {}
        where = primary(self.redis)
        if where is not None:
            found["result backend"] = where
        if is_sentinel(self.settings.broker_url) and self.settings.broker_url != self.settings.result_backend:
            settings = self.settings
            broker = connect(settings.broker_url, settings.broker_timeout_s, master=settings.sentinel_master,
                             sentinel_password=settings.sentinel_password)  # fmt: skip
            try:
                found["broker"] = primary(broker) or ""
            finally:
                broker.close()
        return found

    def live_workers(self) -> list[WorkerInfo]:
        return self.registry.live()

    def route(self, isolation: str) -> Route | None:
        """The route for ``isolation`` given who is alive now (:func:`route_for`), or None."""
        return route_for(self.live_workers(), isolation)

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
    detail = redact(brief(exc))
    reason = refusal(exc)
    if is_sentinel(url):
        # The URL's password is the primary's; the sentinels' own, and the master's name, are apart.
        variable += " (its password is the Redis primary's), HERMES_SENTINEL_PASSWORD and HERMES_SENTINEL_MASTER"
    if reason is not None:
        return ClusterRefused(
            f"{what} at {redact_url(url)} refused the connection: {reason} ({detail}); check {variable}"
        )
    return ClusterUnavailable(f"{what} at {redact_url(url)} is not answering ({detail})")
