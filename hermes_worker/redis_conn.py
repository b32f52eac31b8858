"""Redis connections for results, the worker registry and the cluster log."""

from __future__ import annotations

import redis

__all__ = ["connect"]


def connect(url: str, timeout_s: float) -> redis.Redis:
    """A client for ``url`` whose calls fail after ``timeout_s`` instead of hanging.

    Blocking reads (``XREAD BLOCK``) pass their own, longer, socket timeout.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=max(timeout_s, 5.0),
        socket_keepalive=True,
        health_check_interval=10,
        retry_on_timeout=False,
    )
