"""The one settings object, read from the environment when it is built (never at import).

Every ``HERMES_*`` variable Hermes reads is here, with its default and its check. Command-line
options override these values; nothing else reads the environment.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from . import contract
from .engine import DEFAULT_MAX_PROMPT_BYTES, DEFAULT_PROFILE
from .redact import redact, remember, url_secrets

__all__ = ["LIMITS", "Settings", "SettingsError", "float_setting", "int_setting", "listen_address", "show_number"]

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable holds a value Hermes cannot use; the message names it."""


# Bounds of every numeric setting: (lowest, highest), inclusive; float bounds for settings that take
# fractions (seconds, CPUs), int bounds for whole numbers. A value outside them is refused
# when the settings are built, so nothing absurd reaches a timer, SQLite, Redis or the kernel.
# Why each upper bound: chunk_size, processes, concurrency and max_prompt_bytes size memory and
# process tables (a 64 MiB prompt in JSONL can be a 384 MiB line, under Redis' 512 MiB string
# limit); max_validation is stored in SQLite and each round re-runs the profile; seconds beyond
# a day (a year for the result TTL) are a typo, not a plan; ports and pids have the kernel's range.
LIMITS: Mapping[str, tuple[float, float]] = {
    # These three and HERMES_RESULT_TTL travel in every chunk request: within what workers accept.
    "HERMES_MAX_VALIDATION": (0, min(100, contract.MAX_VALIDATION)),
    "HERMES_MAX_PROMPT_BYTES": (1, contract.MAX_PROMPT_BYTES),
    "HERMES_CHUNK_SIZE": (1, min(100_000, contract.MAX_CHUNK_LINES)),
    "HERMES_PROCESSES": (1, 1024),
    "HERMES_BROKER_TIMEOUT": (0.01, 300.0),
    "HERMES_WAIT_FOR_WORKERS": (0.0, 86_400.0),
    "HERMES_CONCURRENCY": (1, 1024),
    "HERMES_HEARTBEAT": (0.1, 3600.0),
    "HERMES_CHUNK_TIME_LIMIT": (0.01, 86_400.0),
    "HERMES_RESULT_TTL": (1, contract.MAX_RESULT_TTL_S),
    "HERMES_OUTAGE_TIMEOUT": (0.01, 86_400.0),
    "HERMES_MAX_MEMORY_PER_CHILD": (1, 1024 * 1024),
    "HERMES_DOCKER_TIMEOUT": (0.01, 600.0),
    "HERMES_CONTAINER_CPUS": (0.01, 1024.0),
    "HERMES_CONTAINER_PIDS": (1, 4_194_304),
    "HERMES_FLOWER_PORT": (1, 65535),
    "HERMES_METRICS_PORT": (0, 65535),
    # A scale (1: 1 s + 30 s per MiB of prompt; 0: off), carried in every chunk request.
    "HERMES_ITEM_TIME_BUDGET": (0.0, contract.MAX_ITEM_TIME_BUDGET),
}

# Python's int() and float() accept any Unicode digit ('٣' is 3) and spell infinity and NaN in
# words; settings are ASCII decimal numbers ('_' between digits allowed, as in 1_048_576).
_DIGITS = r"[0-9]+(?:_[0-9]+)*"
_INT = re.compile(rf"[+-]?{_DIGITS}")
_FLOAT = re.compile(rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?")


def _int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError("must be a whole number")
    if len(text) > 100:  # int() refuses 4,300 digits with a message about Python, not Hermes
        raise ValueError("is far too large")
    return int(text)


def _float(text: str) -> float:
    """A finite decimal number: NaN and infinity are refused, and so is '1e309' (= inf)."""
    if not _FLOAT.fullmatch(text):
        raise ValueError("must be a decimal number such as 5 or 0.5")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("is too large to be a finite number")
    return value + 0.0  # -0.0 becomes 0.0


def _in_range(value: float, name: str) -> None:
    low, high = LIMITS[name]
    if not low <= value <= high:
        raise ValueError(f"must be between {show_number(low)} and {show_number(high)}")


def show_number(value: float) -> str:
    """A bound as people write it: ``1024``, ``0.01``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def int_setting(name: str) -> Callable[[str], int]:
    """A parser for the integer setting ``name``, bounded by ``LIMITS[name]``."""

    def parse(text: str) -> int:
        if _INT.fullmatch(text) and len(text) > 30:
            _in_range(math.inf, name)  # far beyond any bound: say which
        value = _int(text)
        _in_range(value, name)
        return value

    return parse


def float_setting(name: str) -> Callable[[str], float]:
    """A parser for the finite float setting ``name``, bounded by ``LIMITS[name]``."""

    def parse(text: str) -> float:
        value = _float(text)
        _in_range(value, name)
        return value

    return parse


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise ValueError("must be >= 0")
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


_MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _memory(text: str) -> str:
    # Docker's notation: a number with an optional b, k, m or g suffix. Docker refuses less
    # than 6 MiB; more than 1 TiB for one session is a typo.
    if not re.fullmatch(r"[0-9]{1,15}[bkmgBKMG]?", text):
        raise ValueError("must be a size such as 512m or 2g")
    digits = text.rstrip("bkmgBKMG")
    size = int(digits) * _MEMORY_UNITS[text[len(digits) :].lower()]
    if not 6 << 20 <= size <= 1 << 40:
        raise ValueError("must be between 6m and 1024g")
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


def _url(text: str) -> str:
    """A URL (or a ``;``-separated list of them) whose host and port can be read.

    Otherwise the Redis and kombu clients fail later with a traceback quoting the unreadable
    part, which is often a piece of the password.

    >>> _url("redis://:p%2Fw@h:6379/0")
    'redis://:p%2Fw@h:6379/0'
    >>> _url("redis://:p/w@h:6379/0")
    Traceback (most recent call last):
    ValueError: cannot be read: a port that is not a number, or '/', '?', '#' in the password (write %2F, %3F, %23)
    """
    for part in text.split(";"):
        try:
            urlsplit(part.strip()).port  # noqa: B018 - reading the port is the check
        except ValueError as exc:
            if "'" in str(exc) or '"' in str(exc):  # it quotes a piece of the URL: maybe of the password
                raise ValueError(
                    "cannot be read: a port that is not a number, "
                    "or '/', '?', '#' in the password (write %2F, %3F, %23)"
                ) from None
            raise ValueError(f"cannot be read: {exc}") from None
    return text


def listen_address(text: str) -> str:
    """A listen address: an IP address or a host name (``--metrics-address`` checks it too).

    >>> listen_address("127.0.0.1"), listen_address("::1"), listen_address("metrics.internal")
    ('127.0.0.1', '::1', 'metrics.internal')
    """
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", text):
        raise ValueError("must be an IP address (127.0.0.1, 0.0.0.0, ::) or a host name")
    return text


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _url_problem(url: str) -> str | None:
    """What is wrong with a broker or Redis URL, or None; never the URL itself (it may hold a password).

    Checked here so that a typo is a usage error naming the variable, not a traceback from the
    Redis or kombu client later, or a silent fallback to in-process as if Redis were down.

    >>> _url_problem("redis://h:99999/0"), _url_problem("unix://")
    ('Port out of range 0-65535', 'unix:// needs a socket path, e.g. unix:///run/redis.sock')
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port raises ValueError when it is not a port
    except ValueError as exc:
        return str(exc)
    if not parts.scheme or "://" not in url:
        return "must be a URL such as redis://host:6379/0"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "contains spaces or control characters"
    if parts.scheme not in _REDIS_SCHEMES:
        return None  # another kombu transport: kombu checks its own URLs
    if parts.scheme == "unix" and not parts.path:
        return "unix:// needs a socket path, e.g. unix:///run/redis.sock"
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return f"the database {parts.path.strip('/')!r} is not a number"
    try:
        from redis.connection import parse_url  # the worker and the producer have redis; the sandbox does not
    except ImportError:
        return None
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        return str(exc)
    return None


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _deployment(text: str) -> str:
    # A Docker label value and a filter argument (``label=hermes.deployment=VALUE``): keep it to
    # characters no shell, filter or log line treats specially.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", text):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return text


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
        deployment: the deployment that owns this process's sandbox containers, written on their
            ``hermes.deployment`` label; reaping and cleanup touch only containers of the same
            deployment (``HERMES_DEPLOYMENT``; default: derived from the result backend's address,
            see :func:`hermes_worker.sandbox.docker_backend.deployment_id`).
        metrics_address: the address a worker's metrics listen on (``HERMES_METRICS_ADDRESS``,
            127.0.0.1: only this machine; ``0.0.0.0`` for a Prometheus elsewhere).

        worker_remote_control: ``inspect`` (default): a worker answers Flower's and ``celery
            inspect``'s questions and refuses remote-control commands that would change it;
            ``all``: Celery's full set (``HERMES_WORKER_REMOTE_CONTROL``).
        flower_allow_control: ``hermes flower`` lets its users control workers and send tasks
            (``HERMES_FLOWER_ALLOW_CONTROL``, or ``--allow-control``); read-only otherwise.
        signing_key, signing_cert, signing_certs: sign task and remote-control messages with
            this RSA key and certificate, and accept only messages signed by a certificate in
            this file or directory (``HERMES_SIGNING_KEY``, ``HERMES_SIGNING_CERT``,
            ``HERMES_SIGNING_CERTS``: all three, or none). Checked when read; never logged.
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
    deployment: str = ""
    metrics_address: str = "127.0.0.1"

    worker_remote_control: str = "inspect"
    flower_allow_control: bool = False
    signing_key: Path | None = None
    signing_cert: Path | None = None
    signing_certs: Path | None = None
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
                raise SettingsError(f"{name}={redact(raw)!r} is invalid: {exc}") from None

        def read_int(name: str, default: int) -> int:
            return read(name, int_setting(name), default)

        def read_float(name: str, default: float) -> float:
            return read(name, float_setting(name), default)

        home = Path(env.get("HERMES_HOME") or Path.home() / ".hermes").expanduser()
        profile_file = env.get("HERMES_PROFILE_FILE") or None
        cores = os.cpu_count() or 1
        broker_url = read("HERMES_BROKER_URL", _url, "redis://localhost:6379/0")
        default_backend = broker_url if broker_url.startswith(("redis://", "rediss://", "unix://")) else ""
        result_backend = read("HERMES_RESULT_BACKEND", _url, default_backend)
        if not result_backend.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"HERMES_RESULT_BACKEND={redact(result_backend)!r} is invalid: results, the worker registry and the "
                "cluster log need Redis (redis://, rediss:// or unix://)"
            )
        for name, url in (("HERMES_BROKER_URL", broker_url), ("HERMES_RESULT_BACKEND", result_backend)):
            problem = _url_problem(url)
            if problem:
                raise SettingsError(f"{name} is invalid: {problem}")
        settings = cls(
            home=home,
            profile=read("HERMES_PROFILE", str, DEFAULT_PROFILE),
            profile_file=Path(profile_file).expanduser() if profile_file else None,
            max_validation=read_int("HERMES_MAX_VALIDATION", 1),
            max_prompt_bytes=read_int("HERMES_MAX_PROMPT_BYTES", DEFAULT_MAX_PROMPT_BYTES),
            chunk_size=read_int("HERMES_CHUNK_SIZE", 1024),
            processes=read_int("HERMES_PROCESSES", min(cores, 1024)),
            log_level=read("HERMES_LOG_LEVEL", _log_level, "DEBUG"),
            broker_url=broker_url,
            result_backend=result_backend,
            broker_timeout_s=read_float("HERMES_BROKER_TIMEOUT", 1.5),
            no_fallback=read("HERMES_NO_FALLBACK", _flag, False),
            isolation=read("HERMES_ISOLATION", _choice("auto", "container", "local"), "auto"),
            wait_for_workers_s=read_float("HERMES_WAIT_FOR_WORKERS", 0.0),
            worker_mode=read("HERMES_WORKER_MODE", _choice("auto", "container", "local"), "auto"),
            concurrency=read_int("HERMES_CONCURRENCY", min(cores, 1024)),
            heartbeat_s=read_float("HERMES_HEARTBEAT", 5.0),
            chunk_time_limit_s=read_float("HERMES_CHUNK_TIME_LIMIT", 120.0),
            result_ttl_s=read_int("HERMES_RESULT_TTL", 86_400),
            outage_timeout_s=read_float("HERMES_OUTAGE_TIMEOUT", 300.0),
            max_memory_per_child_mb=read_int("HERMES_MAX_MEMORY_PER_CHILD", 512),
            container_backend=read("HERMES_CONTAINER_BACKEND", _choice("docker", "dagger"), "docker"),
            sandbox_image=read("HERMES_SANDBOX_IMAGE", str, "hermes-sandbox:latest"),
            docker_timeout_s=read_float("HERMES_DOCKER_TIMEOUT", 3.0),
            container_memory=read("HERMES_CONTAINER_MEMORY", _memory, "512m"),
            container_cpus=read_float("HERMES_CONTAINER_CPUS", 1.0),
            container_pids=read_int("HERMES_CONTAINER_PIDS", 64),
            container_labels=read("HERMES_CONTAINER_LABELS", _labels, ()),
            flower_user=env.get("HERMES_FLOWER_USER", ""),
            flower_password=env.get("HERMES_FLOWER_PASSWORD", ""),
            flower_port=read_int("HERMES_FLOWER_PORT", 5555),
            flower_address=read("HERMES_FLOWER_ADDRESS", str, "127.0.0.1"),
            metrics_port=read_int("HERMES_METRICS_PORT", 0),
            deployment=read("HERMES_DEPLOYMENT", _deployment, ""),
            metrics_address=read("HERMES_METRICS_ADDRESS", listen_address, "127.0.0.1"),
            worker_remote_control=read("HERMES_WORKER_REMOTE_CONTROL", _choice("inspect", "all"), "inspect"),
            flower_allow_control=read("HERMES_FLOWER_ALLOW_CONTROL", _flag, False),
            signing_key=read("HERMES_SIGNING_KEY", _path, None),
            signing_cert=read("HERMES_SIGNING_CERT", _path, None),
            signing_certs=read("HERMES_SIGNING_CERTS", _path, None),
            item_time_budget=read_float("HERMES_ITEM_TIME_BUDGET", 1.0),
        )
        _check_signing(settings)
        # Whatever prints or logs these from now on masks them, in any shape (redact.remember).
        remember(*url_secrets(settings.broker_url), *url_secrets(settings.result_backend), settings.flower_password)
        return settings


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _check_signing(settings: Settings) -> None:
    """All three signing files or none, each usable: a worker must not start unable to verify."""
    files = {
        "HERMES_SIGNING_KEY": settings.signing_key,
        "HERMES_SIGNING_CERT": settings.signing_cert,
        "HERMES_SIGNING_CERTS": settings.signing_certs,
    }
    if not any(files.values()):
        return
    unset = [name for name, path in files.items() if path is None]
    if unset:
        raise SettingsError(f"{', '.join(unset)} must be set too: message signing needs all three signing settings")
    from .signing import SigningError, check_files

    assert settings.signing_key and settings.signing_cert and settings.signing_certs
    try:
        check_files(settings.signing_key, settings.signing_cert, settings.signing_certs)
    except SigningError as exc:
        raise SettingsError(f"message signing (HERMES_SIGNING_*): {exc}") from None
