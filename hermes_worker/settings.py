"""The one settings object, read from the environment when it is built (never at import).

Every ``HERMES_*`` variable Hermes reads is here, with its default and its check. Command-line
options override these values; nothing else reads the environment.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from .contract import MAX_ITEM_TIME_BUDGET
from .engine import DEFAULT_MAX_PROMPT_BYTES, DEFAULT_PROFILE

__all__ = ["Settings", "SettingsError"]

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable holds a value Hermes cannot use; the message names it."""


def _positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _budget_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= MAX_ITEM_TIME_BUDGET:
        raise ValueError(f"must be a number from 0 (off) to {MAX_ITEM_TIME_BUDGET:g}; 1 is the default budget")
    return value


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _memory(text: str) -> str:
    # Docker's notation: a number with an optional b, k, m or g suffix.
    if not re.fullmatch(r"[0-9]+[bkmgBKMG]?", text):
        raise ValueError("must be a size such as 512m or 2g")
    return text.lower()


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE[,KEY=VALUE...]; keys under ``hermes.`` are Hermes' own (owner, session).

    >>> _labels("team=nlp, env=prod")
    (('team', 'nlp'), ('env', 'prod'))
    """
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{part!r} is not KEY=VALUE (expected e.g. team=nlp,env=prod)")
        if key.startswith("hermes."):
            raise ValueError(f"label {key!r}: keys starting with 'hermes.' are Hermes' own")
        pairs.append((key, value.strip()))
    return tuple(pairs)


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


@dataclass(frozen=True, slots=True)
class Settings:
    """Hermes configuration. Build it with :meth:`from_env`.

    Attributes:
        home: where the task store and the log live (``HERMES_HOME``, default ``~/.hermes``).
        profile: the default profile (``HERMES_PROFILE``, default ``prompt``).
        profile_file: a TOML file of custom profiles (``HERMES_PROFILE_FILE``), or None.
        max_validation: validation rounds after normalizing (``HERMES_MAX_VALIDATION``, 1).
        max_prompt_bytes: larger prompts are item errors (``HERMES_MAX_PROMPT_BYTES``, 1 MiB).
        chunk_size: prompts per chunk in batches (``HERMES_CHUNK_SIZE``, 1024: measured, see bench/).
        processes: in-process worker processes (``HERMES_PROCESSES``, default: every core).
        log_level: the lowest level written to Hermes' log (``HERMES_LOG_LEVEL``, DEBUG).

        broker_url: the Celery broker (``HERMES_BROKER_URL``, ``redis://localhost:6379/0``).
        result_backend: the Redis that carries results, the worker registry and the cluster
            log (``HERMES_RESULT_BACKEND``, default: the broker URL when it is Redis).
        broker_timeout_s: how long the producer waits for the broker to answer before running
            in-process (``HERMES_BROKER_TIMEOUT``, 1.5 s).
        no_fallback: never run in-process when the cluster cannot (``HERMES_NO_FALLBACK``).
        isolation: ``auto``, ``container`` or ``local`` (``HERMES_ISOLATION``, auto).
        wait_for_workers_s: how long to wait for a live worker (``HERMES_WAIT_FOR_WORKERS``, 0).
        worker_mode: ``auto``, ``container`` or ``local`` (``HERMES_WORKER_MODE``, auto).
        concurrency: worker processes per Celery worker (``HERMES_CONCURRENCY``, every core).
        heartbeat_s: worker heartbeat period; a worker silent for 3 periods is gone
            (``HERMES_HEARTBEAT``, 5 s).
        chunk_time_limit_s: hard time limit of one chunk (``HERMES_CHUNK_TIME_LIMIT``, 120 s);
            the soft limit is 80 % of it, the broker's visibility timeout is it plus 30 s.
        result_ttl_s: how long unread results stay in Redis (``HERMES_RESULT_TTL``, 1 day).
        outage_timeout_s: how long a batch keeps retrying a broker or result Redis that stopped
            answering mid-batch before it stops with exit 3, to be finished with ``--resume``
            (``HERMES_OUTAGE_TIMEOUT``, 300 s).
        max_memory_per_child_mb: a worker process above this is replaced after its task
            (``HERMES_MAX_MEMORY_PER_CHILD``, 512 MiB).

        container_backend: ``docker`` or ``dagger`` (``HERMES_CONTAINER_BACKEND``, docker).
        sandbox_image: the sandbox image (``HERMES_SANDBOX_IMAGE``, ``hermes-sandbox:latest``).
        docker_timeout_s: how long the probe waits for the Docker engine
            (``HERMES_DOCKER_TIMEOUT``, 3 s).
        container_memory: memory limit of a session container (``HERMES_CONTAINER_MEMORY``, 512m).
        container_cpus: CPU limit of a session container (``HERMES_CONTAINER_CPUS``, 1).
        container_pids: process limit of a session container (``HERMES_CONTAINER_PIDS``, 64).
        container_labels: extra labels on session containers, e.g. to find a deployment's with
            ``docker ps --filter label=...`` (``HERMES_CONTAINER_LABELS``, ``KEY=VALUE,...``).

        flower_user, flower_password: Flower's basic-auth credentials (``HERMES_FLOWER_USER``,
            ``HERMES_FLOWER_PASSWORD``); ``hermes flower`` refuses to start without them unless
            told ``--insecure-no-auth`` or given Flower's own OAuth settings.
        flower_port: Flower's port (``HERMES_FLOWER_PORT``, 5555).
        flower_address: the address Flower listens on (``HERMES_FLOWER_ADDRESS``, 127.0.0.1).
        metrics_port: a worker serves its Prometheus metrics here; 0 turns it off
            (``HERMES_METRICS_PORT``, 0).
        item_time_budget: scale of each item's CPU-time budget, ``1 s + 30 s per MiB`` of prompt
            at 1; an item over it becomes a ``too_slow`` error record; 0 turns it off
            (``HERMES_ITEM_TIME_BUDGET``, 1; at most 100). It travels in the chunk request.
    """

    home: Path
    profile: str = DEFAULT_PROFILE
    profile_file: Path | None = None
    max_validation: int = 1
    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES
    chunk_size: int = 1024
    processes: int = 1
    log_level: str = "DEBUG"

    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = "redis://localhost:6379/0"
    broker_timeout_s: float = 1.5
    no_fallback: bool = False
    isolation: str = "auto"
    wait_for_workers_s: float = 0.0
    worker_mode: str = "auto"
    concurrency: int = 1
    heartbeat_s: float = 5.0
    chunk_time_limit_s: float = 120.0
    result_ttl_s: int = 86_400
    outage_timeout_s: float = 300.0
    max_memory_per_child_mb: int = 512

    container_backend: str = "docker"
    sandbox_image: str = "hermes-sandbox:latest"
    docker_timeout_s: float = 3.0
    container_memory: str = "512m"
    container_cpus: float = 1.0
    container_pids: int = 64
    container_labels: tuple[tuple[str, str], ...] = ()

    flower_user: str = ""
    flower_password: str = ""
    flower_port: int = 5555
    flower_address: str = "127.0.0.1"
    metrics_port: int = 0
    item_time_budget: float = 1.0

    @property
    def worker_ttl_s(self) -> float:
        """A worker whose last heartbeat is older than this is gone."""
        return self.heartbeat_s * 3

    @property
    def visibility_timeout_s(self) -> int:
        """How long the Redis broker waits before redelivering an unacknowledged chunk."""
        return int(self.chunk_time_limit_s + 30)

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def store_path(self) -> Path:
        return self.home / "hermes.db"

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields changed; ``None`` values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every ``HERMES_*`` variable.

        Raises:
            SettingsError: naming the variable, its value and what it must be.
        """
        env = os.environ if env is None else env

        def read(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r} is invalid: {exc}") from None

        home = Path(env.get("HERMES_HOME") or Path.home() / ".hermes").expanduser()
        profile_file = env.get("HERMES_PROFILE_FILE") or None
        cores = os.cpu_count() or 1
        broker_url = read("HERMES_BROKER_URL", str, "redis://localhost:6379/0")
        default_backend = broker_url if broker_url.startswith(("redis://", "rediss://", "unix://")) else ""
        result_backend = read("HERMES_RESULT_BACKEND", str, default_backend)
        if not result_backend.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"HERMES_RESULT_BACKEND={result_backend!r} is invalid: results, the worker registry and the "
                "cluster log need Redis (redis://, rediss:// or unix://)"
            )
        return cls(
            home=home,
            profile=read("HERMES_PROFILE", str, DEFAULT_PROFILE),
            profile_file=Path(profile_file).expanduser() if profile_file else None,
            max_validation=read("HERMES_MAX_VALIDATION", _non_negative_int, 1),
            max_prompt_bytes=read("HERMES_MAX_PROMPT_BYTES", _positive_int, DEFAULT_MAX_PROMPT_BYTES),
            chunk_size=read("HERMES_CHUNK_SIZE", _positive_int, 1024),
            processes=read("HERMES_PROCESSES", _positive_int, cores),
            log_level=read("HERMES_LOG_LEVEL", _log_level, "DEBUG"),
            broker_url=broker_url,
            result_backend=result_backend,
            broker_timeout_s=read("HERMES_BROKER_TIMEOUT", _positive_float, 1.5),
            no_fallback=read("HERMES_NO_FALLBACK", _flag, False),
            isolation=read("HERMES_ISOLATION", _choice("auto", "container", "local"), "auto"),
            wait_for_workers_s=read("HERMES_WAIT_FOR_WORKERS", _non_negative_float, 0.0),
            worker_mode=read("HERMES_WORKER_MODE", _choice("auto", "container", "local"), "auto"),
            concurrency=read("HERMES_CONCURRENCY", _positive_int, cores),
            heartbeat_s=read("HERMES_HEARTBEAT", _positive_float, 5.0),
            chunk_time_limit_s=read("HERMES_CHUNK_TIME_LIMIT", _positive_float, 120.0),
            result_ttl_s=read("HERMES_RESULT_TTL", _positive_int, 86_400),
            outage_timeout_s=read("HERMES_OUTAGE_TIMEOUT", _positive_float, 300.0),
            max_memory_per_child_mb=read("HERMES_MAX_MEMORY_PER_CHILD", _positive_int, 512),
            container_backend=read("HERMES_CONTAINER_BACKEND", _choice("docker", "dagger"), "docker"),
            sandbox_image=read("HERMES_SANDBOX_IMAGE", str, "hermes-sandbox:latest"),
            docker_timeout_s=read("HERMES_DOCKER_TIMEOUT", _positive_float, 3.0),
            container_memory=read("HERMES_CONTAINER_MEMORY", _memory, "512m"),
            container_cpus=read("HERMES_CONTAINER_CPUS", _positive_float, 1.0),
            container_pids=read("HERMES_CONTAINER_PIDS", _positive_int, 64),
            container_labels=read("HERMES_CONTAINER_LABELS", _labels, ()),
            flower_user=env.get("HERMES_FLOWER_USER", ""),
            flower_password=env.get("HERMES_FLOWER_PASSWORD", ""),
            flower_port=read("HERMES_FLOWER_PORT", _positive_int, 5555),
            flower_address=read("HERMES_FLOWER_ADDRESS", str, "127.0.0.1"),
            metrics_port=read("HERMES_METRICS_PORT", _non_negative_int, 0),
            item_time_budget=read("HERMES_ITEM_TIME_BUDGET", _budget_scale, 1.0),
        )
