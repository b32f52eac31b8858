"""Redis connections for results, the worker registry and the cluster log, and how to tell Redis
refusing us (a wrong password, a value too large) from Redis not answering."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

import redis
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from .sentinel_url import MAX_SENTINELS, SentinelUrl, is_sentinel

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["brief", "connect", "primary", "refusal", "refused_for_size", "results_client", "sentinel_kwargs"]

DEFAULT_MASTER = "mymaster"


def connect(url: str, timeout_s: float, *, master: str = DEFAULT_MASTER, sentinel_password: str = "") -> redis.Redis:
    """A client for ``url`` whose calls fail after ``timeout_s`` instead of hanging.

    Blocking reads (``XREAD BLOCK``) pass their own, longer, socket timeout. A ``sentinel://``
    list gives a client of the primary the sentinels name ``master``: each new connection asks
    them where it is now, and one to a server that is a replica now is dropped (redis-py's
    ``SentinelManagedConnection``), so a failover costs an error or two, then the new primary.
    The first URL's password is the primary's, ``sentinel_password`` the sentinels' own.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": max(timeout_s, 5.0),
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": False,
    }
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    where = SentinelUrl.parse(url)
    group = Sentinel(  # type: ignore[no-untyped-call]
        list(where.sentinels), sentinel_kwargs=sentinel_kwargs(timeout_s, sentinel_password), **options
    )
    login = {"username": where.username, "password": where.password, "db": where.db}
    client: redis.Redis = group.master_for(master, redis_class=redis.Redis, **login)  # type: ignore[no-untyped-call]
    return client


def sentinel_kwargs(timeout_s: float, password: str) -> dict[str, Any]:
    """How to talk to the sentinels themselves: short timeouts (a dead one is skipped), their password.

    Given explicitly, for Celery's result backend above all: it hands redis-py an empty dict by
    default, and the sentinels' connections then have no timeout at all.
    """
    kwargs: dict[str, Any] = {"socket_connect_timeout": timeout_s, "socket_timeout": max(timeout_s, 5.0),
                              "socket_keepalive": True}  # fmt: skip
    if password:
        kwargs["password"] = password
    return kwargs


def results_client(settings: Settings) -> redis.Redis:
    """A client of the result Redis (``HERMES_RESULT_BACKEND``: results, registry, cluster log, metrics)."""
    return connect(settings.result_backend, settings.broker_timeout_s, master=settings.sentinel_master,
                   sentinel_password=settings.sentinel_password)  # fmt: skip


_SENTINEL_AT = re.compile(r"host=([^,]{1,255}),port=([0-9]{1,5})")


def brief(exc: BaseException) -> str:
    """The text of ``exc``, with redis-py's ``MasterNotFoundError`` made readable: each sentinel as
    ``host:port`` and what it answered, not the repr of its whole client (a screenful each).

    >>> brief(MasterNotFoundError("No master found for 'm' : <redis.client.Redis(<redis.connection.ConnectionPool("
    ...       "<redis.connection.Connection(db=0,host=s1,port=26379,x=1)>)>)> - auth:AuthenticationError"))
    "No master found for 'm' (sentinel s1:26379: AuthenticationError)"
    """
    text = str(exc) or type(exc).__name__
    head, found, rest = text.partition(" : ")
    if not isinstance(exc, MasterNotFoundError) or not found:
        return text
    pieces = rest.split(">)>)> - ")
    said = []
    for before, after in itertools.pairwise(pieces):
        where = _SENTINEL_AT.findall(before[-2000:])
        host, port = where[-1] if where else ("?", "?")
        error = after.split(", <redis.client.Redis(", 1)[0][:200].removeprefix("auth:")  # "auth:" reads as a secret
        said.append(f"sentinel {host}:{port}: {error}")
    return f"{head} ({'; '.join(said[:MAX_SENTINELS])})"


def primary(client: redis.Redis) -> str | None:
    """``host:port`` of the primary a Sentinel-managed client writes to now; None for any other client.

    Raises:
        redis.RedisError: no sentinel answered, or none knows a primary (``MasterNotFoundError``).
    """
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# What servers and libraries say when they refuse us rather than fail to answer.
_AUTH_TEXTS = ("NOAUTH", "WRONGPASS", "invalid password", "invalid username-password", "Authentication required",
               "ACCESS_REFUSED", "AUTH failed", "authentication failed",
               "auth:AuthenticationError")  # fmt: skip  (a sentinel's refusal, inside MasterNotFoundError)
_TLS_TEXTS = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")


def refusal(exc: BaseException) -> str | None:
    """Why the server refused us, if it did: a configuration error, not an outage.

    A wrong password, a user without permission or a certificate that does not verify will
    not get better by waiting, so nobody should quietly fall back or retry on it. Looks through
    the exception's causes (kombu wraps redis-py's errors) and matches class names and texts,
    for any broker kombu supports.

    Returns:
        ``"authentication failed"``, ``"permission denied"`` or ``"TLS certificate
        verification failed"``; None when the server simply did not answer.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    names = {cls.__name__ for error in chain for cls in type(error).__mro__}
    text = " ".join(str(error) for error in chain)
    if "SSLCertVerificationError" in names or any(t in text for t in _TLS_TEXTS):
        return "TLS certificate verification failed"
    if names & {"NoPermissionError"} or "NOPERM" in text:
        return "permission denied"
    if names & {"AuthenticationError", "AuthenticationWrongNumberOfArgsError", "AccessRefused"} or any(
        t in text for t in _AUTH_TEXTS
    ):
        return "authentication failed"
    return None


# Redis' smallest proto-max-bulk-len: a write this large that breaks the connection may be refused.
_BIG_VALUE_BYTES = 1 << 20


def refused_for_size(client: redis.Redis, size: int, exc: BaseException) -> bool:
    """Whether a write of ``size`` bytes that failed with ``exc`` was refused for its size, not lost.

    Redis answers a value over its proto-max-bulk-len (512 MB unless an operator sets it lower, down
    to 1 MB) by dropping the connection, which looks like an outage. If the write was that large and
    Redis answers a ping at once, it was the size: waiting will not help, a smaller write may. The
    worker (a chunk's result) and the producer (a chunk's lines) both split the chunk on it.
    Redis writes "Protocol error: invalid bulk length" before it drops the connection: a client
    that reads it before it sees the connection go gets that error instead (a race).
    """
    if size <= _BIG_VALUE_BYTES:
        return False
    if isinstance(exc, redis.ResponseError):
        return "invalid bulk length" in str(exc)
    if not isinstance(exc, redis.ConnectionError):
        return False
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
