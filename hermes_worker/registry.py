"""The worker registry in Redis: who is alive, tagged how, with what versions.

Each worker's main process writes one JSON entry under ``hermes:worker:NAME`` every heartbeat,
with an expiry of three heartbeats: an entry that stops being refreshed disappears by itself,
so producers never route work to a worker that died without saying goodbye.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from .contract import KEY_WORKER

__all__ = ["Heartbeat", "Registry", "WorkerInfo"]

log = logging.getLogger("hermes.registry")


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker as the registry knows it."""

    name: str
    tag: str
    concurrency: int
    queues: list[str]
    host: str
    pid: int
    versions: dict[str, str]
    provenance: dict[str, Any]
    probe: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    active: int = 0
    processed: int = 0

    def age(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self.heartbeat_at

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInfo | None:
        """An entry as Redis holds it, or None if it is not one a Hermes worker writes.

        Anyone who can write to Redis can write an entry: producers route work by it and print
        it, so each field must have its type and a sane range (a concurrency of 10**9 would
        make a producer put a whole input in flight at once), and names must be printable.
        """
        try:
            data = json.loads(raw)
            info = cls(**data) if isinstance(data, dict) else None
        except (ValueError, TypeError, RecursionError):
            # An entry from an incompatible Hermes, or a forged one nested too deeply for the
            # parser: not a worker we can use, and no reason for every cluster command to fail.
            return None
        if info is None or not (
            _printable(info.name)
            and info.tag in ("local", "container")
            and _integer(info.concurrency, 1, MAX_CONCURRENCY)
            and isinstance(info.queues, list)
            and all(_printable(q) for q in info.queues)
            and _printable(info.host)
            and _integer(info.pid, 0, 1 << 32)
            and all(isinstance(d, dict) for d in (info.versions, info.provenance, info.probe))
            and all(_number(t) for t in (info.started_at, info.heartbeat_at))
            and _integer(info.active, 0, 1 << 32)
            and _integer(info.processed, 0, 1 << 62)
        ):
            return None
        return info


# Processes one worker may report; a registry entry claiming more is not believed.
MAX_CONCURRENCY = 4096


def node_name_problem(node: str) -> str | None:
    """Why no reader of the registry would take ``node`` (``TAG@NAME``) for a worker's name, or None.

    A worker whose entry every reader refuses would consume chunks while producers saw no worker.

    >>> node_name_problem("local@cpu1"), node_name_problem("local@" + "x" * 300)
    (None, 'longer than 255 characters')
    """
    if not node or len(node) > 255:
        return "empty" if not node else "longer than 255 characters"
    if not node.isprintable() or any(character.isspace() for character in node):
        return "it holds a control or space character"
    return None


def _printable(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255 and value.isprintable()


def _integer(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


class Registry:
    """Read and write worker entries.

    Args:
        client: the Redis that holds the registry.
        ttl_s: how long an entry lives without a heartbeat.
    """

    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        self._redis = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self.ttl_s = ttl_s

    def publish(self, info: WorkerInfo) -> None:
        self._redis.set(KEY_WORKER.format(name=info.name), json.dumps(asdict(info)), px=self._ttl_ms)

    def claim(self, info: WorkerInfo) -> WorkerInfo | None:
        """Take ``info.name`` for this worker: None if it is now ours, else the live worker holding it.

        Atomic (SET NX): of two workers starting with one name at the same moment, one gets it.
        A holder on this host whose process is gone (a worker killed and restarted before its
        entry expired) does not count: its name is taken over.
        """
        key, value = KEY_WORKER.format(name=info.name), json.dumps(asdict(info))
        if self._redis.set(key, value, px=self._ttl_ms, nx=True):
            return None
        holder = self.get(info.name)
        if holder is None or (holder.host, holder.pid) == (info.host, info.pid) or _gone(holder, info.host):
            self._redis.set(key, value, px=self._ttl_ms)
            return None
        return holder

    def remove(self, name: str) -> None:
        self._redis.delete(KEY_WORKER.format(name=name))

    def get(self, name: str) -> WorkerInfo | None:
        """One worker's entry, or None if it has none (expired, removed, or unreadable)."""
        raw = self._redis.get(KEY_WORKER.format(name=name))
        return WorkerInfo.from_json(raw) if raw else None

    def live(self) -> list[WorkerInfo]:
        """Every worker whose heartbeat is fresh, sorted by name."""
        keys = sorted(self._redis.scan_iter(match=KEY_WORKER.format(name="*"), count=500))
        if not keys:
            return []
        now = time.time()
        workers = []
        for raw in self._redis.mget(keys):
            info = WorkerInfo.from_json(raw) if raw is not None else None
            if info is not None and info.age(now) <= self.ttl_s:
                workers.append(info)
        return workers


def _gone(holder: WorkerInfo, host: str) -> bool:
    """Whether ``holder`` ran on this host (``host``) in a process that no longer exists."""
    if holder.host != host or holder.pid <= 0:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


class Heartbeat(threading.Thread):
    """Publishes ``snapshot()`` every ``period_s`` until stopped; removes the entry on stop."""

    def __init__(self, registry: Registry, snapshot: Callable[[], WorkerInfo], period_s: float) -> None:
        super().__init__(name="hermes-heartbeat", daemon=True)
        self._registry = registry
        self._snapshot = snapshot
        self._period_s = period_s
        self._stopped = threading.Event()
        self._name: str | None = None

    def beat(self) -> None:
        info = self._snapshot()
        self._name = info.name
        try:
            self._registry.publish(info)
        except redis.RedisError as exc:
            # Redis is away: keep beating; the entry simply expires until it is back.
            log.warning("heartbeat not published: %s", exc)

    def run(self) -> None:
        while not self._stopped.wait(self._period_s):
            self.beat()

    def stop(self) -> None:
        self._stopped.set()
        if self._name is not None:
            try:
                self._registry.remove(self._name)
            except redis.RedisError as exc:
                log.warning("registry entry not removed (it will expire): %s", exc)
