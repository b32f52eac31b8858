"""Celery's Redis Sentinel URLs: ``sentinel://[:PASSWORD@]HOST:PORT[/DB];sentinel://HOST:PORT;...``.

One URL a sentinel of the group; the master's name is not in the URL (``HERMES_SENTINEL_MASTER``,
kombu's ``master_name`` transport option). Celery's and kombu's conventions, kept here too: the
password (and user, and database) of the *first* URL are the Redis primary's; the sentinels' own
password, if they have one, is another setting (``HERMES_SENTINEL_PASSWORD``, kombu's
``sentinel_kwargs``). Later URLs may repeat the first one's credentials and database, but not
differ from them: kombu and Celery would silently use the first.

Standard library only (the settings' parsers use it). Every refusal says what is wrong without
quoting the URL: a piece of it may be a password.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["MAX_SENTINELS", "SCHEME", "SentinelUrl", "is_sentinel"]

SCHEME = "sentinel"
# A Sentinel group has 3 or 5 sentinels; each one named is tried in turn when none answers.
MAX_SENTINELS = 32
_MAX_LENGTH = 8192
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def is_sentinel(url: str) -> bool:
    """Whether ``url`` is Celery's sentinel form (its first part is, at least).

    >>> is_sentinel("sentinel://h:26379;sentinel://g:26379"), is_sentinel("redis://h:6379/0")
    (True, False)
    """
    return url.lstrip()[: len(SCHEME) + 3].lower() == f"{SCHEME}://"


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A checked sentinel URL: the sentinels to ask, and how to log in to the primary they name.

    >>> url = SentinelUrl.parse("sentinel://:p%3Bw%40rd@s1:26379/2;sentinel://s2:26380;sentinel://[::1]:26381")
    >>> url.sentinels, url.password, url.db
    ((('s1', 26379), ('s2', 26380), ('::1', 26381)), 'p;w@rd', 2)
    >>> SentinelUrl.parse("sentinel://s1")
    Traceback (most recent call last):
    ValueError: sentinel 1 of 1 has no port: write sentinel://HOST:PORT (Sentinel's port is usually 26379)
    """

    sentinels: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None  # the primary's (Celery's convention), not the sentinels'
    db: int = 0

    @classmethod
    def parse(cls, text: str) -> SentinelUrl:
        """Read ``text``; a ``ValueError`` says what is wrong and never quotes it."""
        if len(text) > _MAX_LENGTH:
            raise ValueError(f"is {len(text):,} characters long; a sentinel list is at most {_MAX_LENGTH:,}")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
            raise ValueError("contains spaces or control characters")
        parts = text.split(";")
        if parts and parts[-1] == "":
            parts.pop()  # one trailing ';', as people write lists
        if not parts:
            raise ValueError("names no sentinel: write sentinel://HOST:PORT;sentinel://HOST:PORT;...")
        if len(parts) > MAX_SENTINELS:
            raise ValueError(f"names {len(parts):,} sentinels; at most {MAX_SENTINELS} (a group has 3 or 5)")
        read = [_part(part, n, len(parts)) for n, part in enumerate(parts, 1)]
        first = read[0]
        for n, other in enumerate(read[1:], 2):
            for what, value, given in (("user", other[1], first[1]), ("password", other[2], first[2]),
                                       ("database", other[3], first[3])):  # fmt: skip
                if value is not None and value != given:
                    raise ValueError(
                        f"sentinel {n} of {len(read)} has a {what} other than the first one's: Celery uses the "
                        "first URL's credentials and database for the primary; give them there only (the "
                        "sentinels' own password goes in HERMES_SENTINEL_PASSWORD)"
                    )
        return cls(tuple(p[0] for p in read), first[1], first[2], first[3] or 0)

    def hosts(self) -> str:
        """The sentinels as ``host:port,...``: for messages (no credentials)."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)


def _part(text: str, n: int, count: int) -> tuple[tuple[str, int], str | None, str | None, int | None]:
    """One ``sentinel://`` URL: ``((host, port), user, password, db)``; user, password and db None if absent."""
    where = f"sentinel {n} of {count}"
    if not is_sentinel(text):
        raise ValueError(f"{where} is not a sentinel:// URL (a ';' in a password is written %3B)")
    authority = text[len(SCHEME) + 3 :].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if authority.count("@") > 1:
        raise ValueError(f"{where} has more than one '@': write an '@' in a password as %40")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(
            f"{where} cannot be read: a port that is not a number from 1 to 65535, or '/', '?', '#', ';' in the "
            "password (write %2F, %3F, %23, %3B)"
        ) from None
    if parts.query or parts.fragment:
        raise ValueError(f"{where} has a '?' or '#' part: sentinel URLs take no parameters")
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"{where} names no host: write sentinel://HOST:PORT")
    if not _valid_host(host):
        raise ValueError(f"{where} has a host that is neither an IP address nor a host name")
    if port is None:
        raise ValueError(f"{where} has no port: write sentinel://HOST:PORT (Sentinel's port is usually 26379)")
    if port == 0:
        raise ValueError(f"{where} has port 0: a port is a number from 1 to 65535")
    database = parts.path.strip("/")
    if database and not (database.isascii() and database.isdigit() and len(database) <= 5):
        raise ValueError(f"{where} has a database that is not a number (the path is the database: /0)")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return (host, port), user, password, int(database) if database else None


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _HOST.fullmatch(host) is not None
