"""How the text of a ``HERMES_*`` variable becomes a checked value, or a refusal saying why.

Each parser takes the variable's text (stripped) and returns the value, or raises ``ValueError``
whose message completes the sentence "HERMES_X='value' is invalid: ...". Standard library only,
apart from redis-py's own URL parser when it is installed.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .sentinel_url import SCHEME as SENTINEL_SCHEME
from .sentinel_url import SentinelUrl, is_sentinel

__all__ = [
    "DecimalRange",
    "OneOf",
    "WholeRange",
    "deployment",
    "flag",
    "labels",
    "listen_address",
    "log_level",
    "memory_size",
    "path",
    "redis_url",
    "sentinel_master",
    "show_number",
    "text",
    "url",
    "url_problem",
]


# Python's int() and float() accept any Unicode digit ('٣' is 3) and spell infinity and NaN in
# words; settings are ASCII decimal numbers ('_' between digits allowed, as in 1_048_576).
_DIGITS = r"[0-9]+(?:_[0-9]+)*"
_INT = re.compile(rf"[+-]?{_DIGITS}")
_FLOAT = re.compile(rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?")


def show_number(value: float) -> str:
    """A bound as people write it: ``1024``, ``0.01``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True, slots=True)
class _Range:
    """Inclusive bounds; a value outside them is refused when the settings are built, so nothing
    absurd reaches a timer, SQLite, Redis or the kernel."""

    low: float
    high: float

    def check(self, value: float) -> None:
        if not self.low <= value <= self.high:
            raise ValueError(f"must be between {show_number(self.low)} and {show_number(self.high)}")


@dataclass(frozen=True, slots=True)
class WholeRange(_Range):
    """A whole number within bounds.

    >>> WholeRange(1, 1024)("1_000"), WholeRange(1, 1024)("+7")
    (1000, 7)
    >>> WholeRange(1, 1024)("١")
    Traceback (most recent call last):
    ValueError: must be a whole number
    """

    def __call__(self, text: str) -> int:
        if not _INT.fullmatch(text):
            raise ValueError("must be a whole number")
        if len(text) > 30:
            # Far beyond any bound: say which, before int() (which refuses 4,300 digits with a
            # message about Python, not Hermes) is ever asked.
            self.check(math.inf)
        value = int(text)
        self.check(value)
        return value

    def bounds(self) -> tuple[float, float]:
        return int(self.low), int(self.high)


@dataclass(frozen=True, slots=True)
class DecimalRange(_Range):
    """A finite decimal number within bounds: NaN and infinity are refused, and so is '1e309' (= inf).

    >>> DecimalRange(0.0, 10.0)("-0"), DecimalRange(0.0, 10.0)(".5")
    (0.0, 0.5)
    >>> DecimalRange(0.0, 10.0)("nan")
    Traceback (most recent call last):
    ValueError: must be a decimal number such as 5 or 0.5
    """

    def __call__(self, text: str) -> float:
        if not _FLOAT.fullmatch(text):
            raise ValueError("must be a decimal number such as 5 or 0.5")
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("is too large to be a finite number")
        value += 0.0  # -0.0 becomes 0.0
        self.check(value)
        return value

    def bounds(self) -> tuple[float, float]:
        return float(self.low), float(self.high)


def text(value: str) -> str:
    """Any text, as written."""
    return value


def path(value: str) -> Path:
    """A file or directory, ``~`` expanded; whether it is usable is checked where it is used."""
    return Path(value).expanduser()


def flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True, slots=True)
class OneOf:
    """One of ``choices``, spelled exactly.

    >>> OneOf(("docker", "dagger"))("podman")
    Traceback (most recent call last):
    ValueError: must be one of docker, dagger
    """

    choices: tuple[str, ...]

    def __call__(self, value: str) -> str:
        if value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return value


def log_level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


_MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def memory_size(value: str) -> str:
    """Docker's notation: a number with an optional b, k, m or g suffix, lower-cased.

    Docker refuses less than 6 MiB; more than 1 TiB for one session is a typo.
    """
    if not re.fullmatch(r"[0-9]{1,15}[bkmgBKMG]?", value):
        raise ValueError("must be a size such as 512m or 2g")
    digits = value.rstrip("bkmgBKMG")
    size = int(digits) * _MEMORY_UNITS[value[len(digits) :].lower()]
    if not 6 << 20 <= size <= 1 << 40:
        raise ValueError("must be between 6m and 1024g")
    return value.lower()


def labels(value: str) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE[,KEY=VALUE...]; keys under ``hermes.`` are Hermes' own (owner, session).

    >>> labels("team=nlp, env=prod")
    (('team', 'nlp'), ('env', 'prod'))
    """
    pairs = []
    for part in (p.strip() for p in value.split(",")):
        key, sep, label = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{part!r} is not KEY=VALUE (expected e.g. team=nlp,env=prod)")
        if key.startswith("hermes."):
            raise ValueError(f"label {key!r}: keys starting with 'hermes.' are Hermes' own")
        pairs.append((key, label.strip()))
    return tuple(pairs)


def deployment(value: str) -> str:
    # A Docker label value and a filter argument (``label=hermes.deployment=VALUE``): keep it to
    # characters no shell, filter or log line treats specially.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def listen_address(value: str) -> str:
    """A listen address: an IP address or a host name (``--metrics-address`` checks it too).

    >>> listen_address("127.0.0.1"), listen_address("::1"), listen_address("metrics.internal")
    ('127.0.0.1', '::1', 'metrics.internal')
    """
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", value):
        raise ValueError("must be an IP address (127.0.0.1, 0.0.0.0, ::) or a host name")
    return value


def sentinel_master(value: str) -> str:
    """The name a Sentinel group monitors its primary by (``sentinel monitor NAME ...``).

    >>> sentinel_master("mymaster"), sentinel_master("hermes-prod.eu_1")
    ('mymaster', 'hermes-prod.eu_1')
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", value):
        raise ValueError("must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit")
    return value


REDIS_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)


def url(value: str) -> str:
    """A URL (or a ``;``-separated list of them) whose host and port can be read.

    Otherwise the Redis and kombu clients fail later with a traceback quoting the unreadable
    part, which is often a piece of the password. :func:`url_problem` checks the rest.

    >>> url("redis://:p%2Fw@h:6379/0")
    'redis://:p%2Fw@h:6379/0'
    >>> url("redis://:p/w@h:6379/0")
    Traceback (most recent call last):
    ValueError: cannot be read: a port that is not a number, or '/', '?', '#' in the password (write %2F, %3F, %23)

    A sentinel list (``sentinel://...;sentinel://...``) is read whole by :func:`url_problem`, which
    says what is wrong without quoting it (a refusal here would quote the whole list).
    """
    if is_sentinel(value):
        return value
    for part in value.split(";"):
        try:
            urlsplit(part.strip()).port  # noqa: B018 - reading the port is the check
        except ValueError as exc:
            if "'" in str(exc) or '"' in str(exc):  # it quotes a piece of the URL: maybe of the password
                raise ValueError(
                    "cannot be read: a port that is not a number, "
                    "or '/', '?', '#' in the password (write %2F, %3F, %23)"
                ) from None
            raise ValueError(f"cannot be read: {exc}") from None
    return value


def redis_url(value: str) -> str:
    """A :func:`url` that is Redis: results, the worker registry and the cluster log live there."""
    url(value)
    if not value.startswith(tuple(f"{scheme}://" for scheme in REDIS_SCHEMES)):
        raise ValueError(
            "results, the worker registry and the cluster log need Redis (redis://, rediss://, unix:// or sentinel://)"
        )
    return value


def url_problem(value: str) -> None:
    """Refuse a broker or Redis URL the clients would not accept; the message never quotes the URL.

    Checked here so that a typo is a usage error naming the variable, not a traceback from the
    Redis or kombu client later, or a silent fallback to in-process as if Redis were down.

    >>> url_problem("unix://")
    Traceback (most recent call last):
    ValueError: unix:// needs a socket path, e.g. unix:///run/redis.sock
    >>> url_problem("sentinel://:pw@s1:26379;redis://s2:6379")
    Traceback (most recent call last):
    ValueError: sentinel 2 of 2 is not a sentinel:// URL (a ';' in a password is written %3B)
    """
    if is_sentinel(value):
        SentinelUrl.parse(value)  # Celery's sentinel list: its own rules (sentinel_url.py)
        return
    problem = _problem(value)
    if problem:
        raise ValueError(problem)


def _problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port raises ValueError when it is not a port
    except ValueError as exc:
        return str(exc)
    if not parts.scheme or "://" not in value:
        return "must be a URL such as redis://host:6379/0"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return "contains spaces or control characters"
    if parts.scheme not in REDIS_SCHEMES:
        return None  # another kombu transport: kombu checks its own URLs
    if parts.scheme == "unix" and not parts.path:
        return "unix:// needs a socket path, e.g. unix:///run/redis.sock"
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        return f"the database {database!r} is not a number"
    try:
        from redis.connection import parse_url  # the worker and the producer have redis; the sandbox does not
    except ImportError:
        return None
    try:
        parse_url(value)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        return str(exc)
    return None
