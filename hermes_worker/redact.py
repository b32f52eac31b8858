"""Secrets out of everything Hermes prints or logs: the one place that knows what they look like.

Every printer (``hermes doctor``, ``status``, ``workers``, notices and errors), every log (the
JSON file log, the cluster log, a worker's own output) and every reader of old logs passes its
text through :func:`redact`. Wherever they appear in a text, it masks:

- the password of a URL, ``scheme://user:PASSWORD@host`` (redis, rediss, sentinel, amqp,
  unix, http, anything), keeping the user; a user part without a colon is masked whole, since
  tokens travel there too (``https://TOKEN@host``);
- the value of any ``name=value``, ``name: value``, ``"name": "value"`` or ``--name value``
  whose name says it is a secret (password, passwd, pass, pwd, secret, token, credential,
  cookie, auth, authorization, a KEY after another part as in API_KEY): URL query parameters
  (``?password=``), environment assignments (``HERMES_FLOWER_PASSWORD=``,
  ``FLOWER_BASIC_AUTH=``), HTTP ``Authorization:`` headers, Python reprs of settings;
- ``Basic`` credentials (base64 of ``user:password``) and ``Bearer`` tokens on their own;
- every value handed to :func:`remember`: the passwords in Hermes' own settings, in whatever
  shape a library prints them (``Settings.from_env`` remembers them).

It errs on the side of masking: a harmless value masked costs a little clarity, a secret
printed costs the secret. It runs in linear time (it is applied to exception texts, which may
hold anything): names and tokens are matched from their first character only, with atomic
groups, so nothing is scanned more than a bounded number of times.

Standard library only: the worker, the producer and the sandbox image can all import it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = [
    "MASK",
    "RedactingFilter",
    "is_secret_name",
    "redact",
    "redact_data",
    "redact_env",
    "redact_url",
    "remember",
    "url_secrets",
]

MASK = "***"

# What a secret's name contains. Components (PASS, PW, AUTH, and KEY after another part, as in
# API_KEY) only where the bare word is too common inside other words: "monkey", "passed",
# "author", "KEY=VALUE" are not secrets.
_WORDS = (
    r"pass(?:word|wd|phrase)|requirepass|masterauth|secret|token|credential|cookie"
    r"|api[_-]?key|access[_-]?key|private[_-]?key|authorization"
    r"|(?<![a-z])(?:pass|pwd|pw)(?![a-z])|(?<=[_.\-])key(?![a-z])|auth(?![a-z])"
)
_SECRET_NAME = re.compile(_WORDS, re.IGNORECASE)
# A name, matched only from its first character (the lookbehind) and atomically, so a long
# run of name characters with no separator after it is scanned once, not once per position.
_NAME = r"(?>[\w.\-]*?(?:" + _WORDS + r")[\w.\-]*+)"
_NAME_NO_DOT = r"(?>[\w\-]*?(?:" + _WORDS + r")[\w\-]*+)"
_HEADS = (
    _NAME + r"\\?[\"']?[ \t]*=",  # name=value, password = 'x'
    _NAME + r"\\?[\"'][ \t]*:",  # "name": value (JSON, Python reprs)
    _NAME_NO_DOT + r"[ \t]*:",  # Authorization: ..., password: x (but not "token.txt: No such file")
    r"-{1,2}" + _NAME + r"(?=[ \t])",  # --requirepass value
)
_PAIR = re.compile(
    r"(?<![\w.\-])(?:" + "|".join(_HEADS) + r")[ \t]*(?:(?P<dq>\\?\")|(?P<sq>\\?'))?"
    r"(?:(?:basic|bearer|digest|negotiate|ntlm|token)[ \t]+)?"
    r"(?P<value>(?(dq)[^\"\\\n]*|(?(sq)[^'\\\n]*|[^\s\"',&}\])<>\\]+)))",
    re.IGNORECASE,
)
_STANDALONE = re.compile(r"(?<![\w\-])(?P<kind>Basic|Bearer)[ \t]+(?P<credential>[A-Za-z0-9+/=._~\-]{8,}+)")
# Tokens, from their first character: where URLs are looked for.
_TOKEN = re.compile(r"(?<![^\s\"'<>`])[^\s\"'<>`]++")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")

_known: set[str] = set()
_MIN_KNOWN = 4  # shorter "secrets" would mask common words everywhere


def remember(*secrets: str | None) -> None:
    """Mask these exact values (and their URL-quoted forms) wherever they appear from now on.

    For the secrets Hermes' own settings hold: structure finds most of them, but a library may
    print a password in a shape nobody foresaw. Values shorter than 4 characters are ignored.

    >>> remember("hunter2-secret")
    >>> redact("connect failed, auth hunter2-secret rejected")
    'connect failed, auth *** rejected'
    """
    for secret in secrets:
        if secret and len(secret) >= _MIN_KNOWN:
            _known.add(secret)
            _known.add(quote(secret, safe=""))


def url_secrets(url: str) -> list[str]:
    """The secrets a URL (or a ``;``-separated list of them) carries: passwords, secret parameters.

    >>> url_secrets("redis://:pw1@h/0?password=pw2&db=1;sentinel://user:pw%403@s")
    ['pw1', 'pw2', 'pw@3']
    """
    found: list[str] = []
    for part in url.split(";"):
        try:
            parts = urlsplit(part.strip())
            password = parts.password
        except ValueError:  # a malformed port, say: nothing reliable to take
            continue
        if password:
            found.append(unquote(password))
        found += [value for name, value in parse_qsl(parts.query) if is_secret_name(name) and value]
    return found


def is_secret_name(name: str) -> bool:
    """True if a variable, setting, field or parameter of this name holds a secret.

    >>> [is_secret_name(n) for n in ("HERMES_FLOWER_PASSWORD", "OPENAI_API_KEY", "FLOWER_BASIC_AUTH",
    ...                              "GITHUB_TOKEN", "HERMES_FLOWER_USER", "HERMES_BROKER_URL", "keyboard")]
    [True, True, True, True, False, False, False]
    """
    return _SECRET_NAME.search(name) is not None


def redact(text: str) -> str:
    """``text`` with every secret in it masked (see the module's docstring for what counts).

    >>> redact("Redis at redis://:S3cret@10.0.0.5:6379/0 is not answering")
    'Redis at redis://:***@10.0.0.5:6379/0 is not answering'
    >>> redact("broker amqp://hermes:pw@mq//, result rediss://h:6380/0?ssl_cert_reqs=required&password=pw2")
    'broker amqp://hermes:***@mq//, result rediss://h:6380/0?ssl_cert_reqs=required&password=***'
    >>> redact("HERMES_FLOWER_PASSWORD=s3cret FLOWER_BASIC_AUTH=ops:pw --requirepass abc")
    'HERMES_FLOWER_PASSWORD=*** FLOWER_BASIC_AUTH=*** --requirepass ***'
    >>> redact("{'password': 'p w', \\"token\\": \\"t\\"} Authorization: Basic b3BzOnB3")
    '{\\'password\\': \\'***\\', "token": "***"} Authorization: Basic ***'
    >>> redact("Docker probe passed: using container processing")
    'Docker probe passed: using container processing'
    """
    if not text:
        return text
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    if "://" in text:
        text = _TOKEN.sub(_mask_urls, text)
    text = _PAIR.sub(_mask_pair, text)
    return _STANDALONE.sub(_mask_standalone, text)


def redact_url(url: str) -> str:
    """A URL fit for messages: its password, and any secret query parameter, masked.

    >>> redact_url("redis://:S3cret@redis.internal:6379/0")
    'redis://:***@redis.internal:6379/0'
    >>> redact_url("redis://redis.internal:6379/0?password=S3cret")
    'redis://redis.internal:6379/0?password=***'
    >>> redact_url("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379")
    'sentinel://:***@s1:26379;sentinel://:***@s2:26379'
    >>> redact_url("unix://:pw@/run/redis.sock?db=0"), redact_url("unix:///run/redis.sock?password=pw")
    ('unix://:***@/run/redis.sock?db=0', 'unix:///run/redis.sock?password=***')
    >>> redact_url("https://ghp_token123@github.com/x"), redact_url("redis://localhost:6379/0")
    ('https://***@github.com/x', 'redis://localhost:6379/0')
    """
    return redact(url)


def redact_data(value: Any) -> Any:
    """A copy of JSON-like data with secrets masked: values under secret names, and in strings.

    >>> redact_data({"password": "x", "n": 3, "urls": ["redis://:pw@h/0"], "nested": {"api_key": 7}})
    {'password': '***', 'n': 3, 'urls': ['redis://:***@h/0'], 'nested': {'api_key': '***'}}
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _masked_field(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


def _masked_field(key: Any, value: Any) -> Any:
    if isinstance(key, str) and is_secret_name(key) and value not in (None, ""):
        return MASK
    return redact_data(value)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """Environment variables fit to print: secret-named ones masked, secrets in the rest too.

    >>> redact_env({"HERMES_FLOWER_PASSWORD": "pw", "HERMES_BROKER_URL": "redis://:pw2@h/0", "HOME": "/root"})
    {'HERMES_FLOWER_PASSWORD': '***', 'HERMES_BROKER_URL': 'redis://:***@h/0', 'HOME': '/root'}
    """
    return {name: MASK if is_secret_name(name) and value else redact(value) for name, value in env.items()}


class RedactingFilter(logging.Filter):
    """A logging filter for handlers: the message, its arguments and the traceback, redacted.

    Attach it to a handler (not a logger) and it covers every record that handler writes,
    whichever library logged it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _mask_urls(match: re.Match[str]) -> str:
    """One token: the user information of every URL in it masked."""
    token = match.group()
    marks = [m.start() for m in re.finditer("://", token)]
    if not marks:
        return token
    pieces = []
    done = 0
    for index, mark in enumerate(marks):
        start = mark + 3
        # The authority runs to the next URL's scheme (sentinel lists), or the token's end.
        end = _scheme_start(token, marks[index + 1], start) if index + 1 < len(marks) else len(token)
        if start >= end or token[start] == "/":  # unix:///path: no authority at all
            continue
        at = token.rfind("@", start, end)
        if at < 0:
            continue
        user, colon, _password = token[start:at].partition(":")
        pieces += [token[done:start], f"{user}:{MASK}" if colon else MASK]
        done = at
    return "".join(pieces) + token[done:]


def _scheme_start(token: str, mark: int, floor: int) -> int:
    """Where the scheme that ends at ``mark`` (the ``://``) begins, not before ``floor``."""
    position = mark
    while position > floor and token[position - 1] in _SCHEME_CHARS:
        position -= 1
    return position


def _mask_pair(match: re.Match[str]) -> str:
    if not match.group("value"):
        return match.group()
    return match.group()[: match.start("value") - match.start()] + MASK


def _mask_standalone(match: re.Match[str]) -> str:
    credential = match.group("credential")
    if match.group("kind") == "Basic":
        # "Basic" is an English word too: mask only what decodes as user:password.
        try:
            if b":" not in base64.b64decode(credential + "=" * (-len(credential) % 4), validate=True):
                return match.group()
        except (binascii.Error, ValueError):
            return match.group()
    return f"{match.group('kind')} {MASK}"
