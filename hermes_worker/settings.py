"""The one settings object, read from the environment when it is built (never at import).

Every ``HERMES_*`` variable Hermes reads is declared once, as a field of :class:`Settings`:
its variable, parser (with its bounds), default, help text and whether it holds a secret.
From those declarations come the parsing in :meth:`Settings.from_env`, :data:`LIMITS`, the
``--help`` of the command-line options that override a setting (:func:`option_help`) and the
README's tables (``python -m hermes_worker.settings_docs``; a test keeps them in step).
Command-line options override these values; nothing else reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from . import contract
from .engine import DEFAULT_MAX_PROMPT_BYTES, DEFAULT_PROFILE
from .errors import EXIT_USAGE, HermesError
from .redact import redact, remember, url_secrets
from .sandbox.backends import BACKENDS
from .setting_parsers import (
    REDIS_SCHEMES,
    DecimalRange,
    OneOf,
    WholeRange,
    deployment,
    flag,
    labels,
    listen_address,
    log_level,
    memory_size,
    path,
    redis_url,
    sentinel_master,
    show_number,
    text,
    url,
    url_problem,
)

__all__ = [
    "LIMITS",
    "REQUIRED",
    "SETTINGS",
    "Secret",
    "Setting",
    "Settings",
    "SettingsError",
    "float_setting",
    "int_setting",
    "listen_address",
    "option_help",
    "setting",
    "show_number",
]

T = TypeVar("T")


class SettingsError(HermesError):
    """An environment variable holds a value Hermes cannot use; the message names it (exit 2).

    Not a ``ValueError``: the parsers raise ``ValueError`` (:mod:`.setting_parsers`) and
    :class:`Setting` turns it into this, naming the variable; nothing catches ``ValueError`` to
    get one.
    """

    exit_code = EXIT_USAGE


class _Required(Enum):
    REQUIRED = "required"


REQUIRED: Any = _Required.REQUIRED  # Any: it stands for a default of any type
"""The default of a setting that a :class:`Settings` built by hand must be given."""


class Secret(Enum):
    """What of a setting's value is secret: masked wherever it turns up, never in a repr."""

    NONE = "none"
    WHOLE = "whole"  # a password
    URL = "url"  # the password and secret query parameters of the URLs in it
    FILE = "file"  # the path of a file holding one: the path is not masked, the file's content never shown

    def parts(self, value: Any) -> list[str]:
        if self is Secret.WHOLE:
            return [value]
        return url_secrets(value) if self is Secret.URL else []


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as declared: see :func:`setting`. ``name`` is its field on :class:`Settings`."""

    variable: str
    parse: Callable[[str], Any]
    help: str
    shown_default: str
    computed: Callable[[Mapping[str, Any]], str] | None = None
    check: Callable[[Any], None] | None = None
    options: tuple[str, ...] = ()
    secret: Secret = Secret.NONE
    strip: bool = True
    note: str = ""
    bounds_note: str = ""
    default: Any = None
    name: str = ""

    @property
    def loggable(self) -> bool:
        """Whether its value may appear as it is in a log or on a terminal."""
        return self.secret is Secret.NONE

    def read(self, env: Mapping[str, str], known: Mapping[str, Any]) -> Any:
        """Its value in ``env``; the default if unset or blank. ``known``: the settings read so far."""
        raw = env.get(self.variable, "")
        if self.strip:
            raw = raw.strip()
        if raw:
            return self.parse_text(raw)
        if self.computed is None:
            return self.default
        derived = self.computed(known)
        try:
            return self.parse(derived)
        except ValueError as exc:
            # Nobody typed this value: say where it came from rather than quote an empty string.
            raise SettingsError(f"{self.variable} is not set and {self.shown_default} will not do: {exc}") from None

    def parse_text(self, raw: str) -> Any:
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{self.variable}={redact(raw)!r} is invalid: {exc}") from None

    def run_check(self, value: Any) -> None:
        """Its ``check``, if any, whose refusal names the variable but never quotes the value."""
        try:
            if self.check is not None:
                self.check(value)
        except ValueError as exc:
            raise SettingsError(f"{self.variable} is invalid: {exc}") from None


def _absolute(value: Path | None) -> None:
    if value is not None and not value.is_absolute():
        raise ValueError("must be an absolute path")


def setting(
    variable: str,
    parse: Callable[[str], T],
    default: T,
    help: str,
    *,
    computed: Callable[[Mapping[str, Any]], str] | None = None,
    check: Callable[[T], None] | None = None,
    shown: str | None = None,
    options: Iterable[str] = (),
    secret: Secret = Secret.NONE,
    strip: bool = True,
    note: str = "",
    bounds_note: str = "",
) -> T:
    """Declare a field of :class:`Settings` read from ``variable``.

    Args:
        variable: the ``HERMES_*`` environment variable.
        parse: text (stripped, unless ``strip`` is false) to value; ``ValueError`` says why not.
        default: the field's default, and the value when the variable is unset or blank
            (:data:`REQUIRED`: none; ``from_env`` then needs ``computed``).
        help: what it is, for the README and ``--help`` (lower case, Markdown backticks allowed).
        computed: the default's text from the settings read before it, parsed like the variable's
            (when the default depends on the machine or another setting).
        check: a further check of the value, run once every setting is read; its message names
            the variable but not the value (for URLs, which may hold a password that the
            redaction cannot find in a URL it cannot read).
        shown: the default as the docs say it, when not the default itself.
        options: the command-line options that override it, as the docs name them.
        secret: what of the value is secret.
        strip: false: the value is taken exactly as written (passwords, paths).
        note: more for the README's table.
        bounds_note: what the bounds mean, for the README's limits table.
    """
    spec = Setting(
        variable=variable,
        parse=parse,
        help=help,
        shown_default=shown or _shown(default),
        computed=computed,
        check=check,
        options=tuple(options),
        secret=secret,
        strip=strip,
        note=note,
        bounds_note=bounds_note,
        default=None if default is REQUIRED else default,
    )
    if default is REQUIRED:
        return field(metadata={"setting": spec})  # type: ignore[no-any-return]
    return field(default=default, repr=secret is Secret.NONE, metadata={"setting": spec})


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return f"`{int(default)}`"
    if default is None or default == "":
        return "unset"
    if default == ():
        return "(none)"
    return f"`{show_number(default) if isinstance(default, int | float) else default}`"


def _every_core(_: Mapping[str, Any]) -> str:
    return str(min(os.cpu_count() or 1, 1024))


def _broker_if_redis(known: Mapping[str, Any]) -> str:
    broker: str = known["broker_url"]
    return broker if broker.startswith(tuple(f"{scheme}://" for scheme in REDIS_SCHEMES)) else ""


_MODES = OneOf(("auto", "container", "local"))


@dataclass(frozen=True, slots=True)
class Settings:
    """Hermes configuration. Build it with :meth:`from_env`; each field says where it comes from."""

    # Why each upper bound: chunk_size, processes, concurrency and max_prompt_bytes size memory and
    # process tables (a 64 MiB prompt in JSONL can be a 384 MiB line, under Redis' 512 MiB string
    # limit); max_validation is stored in SQLite and each round re-runs the profile; seconds beyond
    # a day (a year for the result TTL) are a typo, not a plan; ports and pids have the kernel's range.
    # max_validation, max_prompt_bytes, chunk_size, result_ttl_s and item_time_budget travel in every
    # chunk request: within what workers accept (contract.py).

    home: Path = setting("HERMES_HOME", path, REQUIRED, "task store (`hermes.db`) and log (`log/hermes.log`)",
                         computed=lambda _: str(Path.home() / ".hermes"), shown="`~/.hermes`", strip=False)  # fmt: skip
    profile: str = setting("HERMES_PROFILE", text, DEFAULT_PROFILE, "the profile used when none is named",
                           options=["--profile"])  # fmt: skip
    profile_file: Path | None = setting(
        "HERMES_PROFILE_FILE", path, None, "TOML file with custom profiles, `[profiles.NAME] steps = [...]`",
        options=["--profile-file"], strip=False)  # fmt: skip
    max_validation: int = setting(
        "HERMES_MAX_VALIDATION", WholeRange(0, min(100, contract.MAX_VALIDATION)), 1,
        "validation rounds after normalizing: check for a fixed point, re-run if needed",
        options=["--max-validation"])  # fmt: skip
    max_prompt_bytes: int = setting(
        "HERMES_MAX_PROMPT_BYTES", WholeRange(1, contract.MAX_PROMPT_BYTES), DEFAULT_MAX_PROMPT_BYTES,
        "larger prompts are `too_large` item errors", options=["--max-prompt-bytes"], bounds_note="64 MiB")  # fmt: skip
    chunk_size: int = setting(
        "HERMES_CHUNK_SIZE", WholeRange(1, min(100_000, contract.MAX_CHUNK_LINES)), 1024,
        "prompts per chunk in batches and queues", options=["--chunk-size"],
        note="chosen by the chunk-size sweep in `bench/`: 1,024 moves 25 % more than 256 over Celery; "
        "4,096 another 25 % for large batches")  # fmt: skip
    shared_root: Path | None = setting(
        "HERMES_SHARED_ROOT", path, None,
        "the directory whose files `hermes batch --shared` may name and workers read byte ranges of; unset: none",
        check=_absolute, strip=False, note="an absolute path, the same on the producer and every worker")  # fmt: skip
    processes: int = setting("HERMES_PROCESSES", WholeRange(1, 1024), 1, "in-process worker processes",
                             computed=_every_core, shown="number of cores", options=["--processes"])  # fmt: skip
    log_level: str = setting("HERMES_LOG_LEVEL", log_level, "DEBUG", "lowest level written to the log file")

    broker_url: str = setting("HERMES_BROKER_URL", url, "redis://localhost:6379/0", "Celery broker",
                              check=url_problem, secret=Secret.URL)  # fmt: skip
    result_backend: str = setting(
        "HERMES_RESULT_BACKEND", redis_url, "redis://localhost:6379/0",
        "the Redis for results, the worker registry and the cluster log (must be Redis)",
        computed=_broker_if_redis, check=url_problem, shown="the broker URL", secret=Secret.URL)  # fmt: skip
    sentinel_master: str = setting(
        "HERMES_SENTINEL_MASTER", sentinel_master, "mymaster",
        "the primary's name in the Sentinel group, for `sentinel://` URLs (Celery's `master_name`)",
        note="`sentinel://[:PASSWORD@]HOST:PORT;sentinel://HOST:PORT;...` in `HERMES_BROKER_URL` and "
        "`HERMES_RESULT_BACKEND`: the first URL's password is the Redis primary's")  # fmt: skip
    sentinel_password: str = setting(
        "HERMES_SENTINEL_PASSWORD", text, "", "the sentinels' own password (their `requirepass`), if they have one",
        strip=False, secret=Secret.WHOLE)  # fmt: skip
    broker_timeout_s: float = setting("HERMES_BROKER_TIMEOUT", DecimalRange(0.01, 300.0), 1.5,
                                      "seconds to wait for the broker before running in-process")  # fmt: skip
    no_fallback: bool = setting("HERMES_NO_FALLBACK", flag, False,
                                "never run in-process when the cluster cannot take the work: exit 3 instead",
                                options=["--no-fallback"])  # fmt: skip
    isolation: str = setting(
        "HERMES_ISOLATION", _MODES, "auto",
        "where chunks run: `container` only in containers, `local` in no container, `auto` in containers when any",
        options=["--isolation"])  # fmt: skip
    wait_for_workers_s: float = setting("HERMES_WAIT_FOR_WORKERS", DecimalRange(0.0, 86_400.0), 0.0,
                                        "seconds to wait for a live worker before falling back",
                                        options=["--wait-for-workers"])  # fmt: skip
    worker_mode: str = setting(
        "HERMES_WORKER_MODE", _MODES, "auto",
        "how a worker runs chunks: `auto` probes Docker, `container` fails unless the probe passes, `local` "
        "uses no Docker",
        options=["hermes worker --mode"])  # fmt: skip
    concurrency: int = setting("HERMES_CONCURRENCY", WholeRange(1, 1024), 1, "worker processes per worker",
                               computed=_every_core, shown="number of cores",
                               options=["hermes worker --concurrency"])  # fmt: skip
    heartbeat_s: float = setting("HERMES_HEARTBEAT", DecimalRange(0.1, 3600.0), 5.0,
                                 "worker heartbeat period, seconds; silent for 3 periods = gone")  # fmt: skip
    chunk_time_limit_s: float = setting(
        "HERMES_CHUNK_TIME_LIMIT", DecimalRange(0.01, 86_400.0), 120.0,
        "hard limit per chunk, seconds (soft limit 80 %, visibility timeout +30 s)")  # fmt: skip
    result_ttl_s: int = setting("HERMES_RESULT_TTL", WholeRange(1, contract.MAX_RESULT_TTL_S), 86_400,
                                "seconds unread results stay in Redis", bounds_note="30 days")  # fmt: skip
    outage_timeout_s: float = setting(
        "HERMES_OUTAGE_TIMEOUT", DecimalRange(0.01, 86_400.0), 300.0,
        "seconds a batch keeps retrying a broker or Redis that stopped answering mid-batch, then exit 3 "
        "(finish with `--resume`)")  # fmt: skip
    max_memory_per_child_mb: int = setting(
        "HERMES_MAX_MEMORY_PER_CHILD", WholeRange(1, 1024 * 1024), 512,
        "MiB; a worker process above it is replaced after its chunk", bounds_note="MiB: 1 TiB")  # fmt: skip

    container_backend: str = setting(  # the names of the registry: a new backend is a choice here at once
        "HERMES_CONTAINER_BACKEND", OneOf(tuple(BACKENDS)), "docker",
        "what runs session containers: " + " or ".join(f"`{name}`" for name in BACKENDS))  # fmt: skip
    sandbox_image: str = setting("HERMES_SANDBOX_IMAGE", text, "hermes-sandbox:latest", "the sandbox image")
    docker_timeout_s: float = setting("HERMES_DOCKER_TIMEOUT", DecimalRange(0.01, 600.0), 3.0,
                                      "seconds the probe waits for the Docker engine")  # fmt: skip
    container_memory: str = setting(
        "HERMES_CONTAINER_MEMORY", memory_size, "512m",
        "memory limit of a session container, `6m` (Docker's minimum) to `1024g`")  # fmt: skip
    container_cpus: float = setting("HERMES_CONTAINER_CPUS", DecimalRange(0.01, 1024.0), 1.0,
                                    "CPU limit of a session container")  # fmt: skip
    container_pids: int = setting("HERMES_CONTAINER_PIDS", WholeRange(1, 4_194_304), 64,
                                  "process limit of a session container")  # fmt: skip
    container_labels: tuple[tuple[str, str], ...] = setting(
        "HERMES_CONTAINER_LABELS", labels, (),
        "extra labels on session containers, `KEY=VALUE,...` (keys under `hermes.` are reserved), e.g. to "
        "find a deployment's with `docker ps --filter label=...`")  # fmt: skip

    flower_user: str = setting("HERMES_FLOWER_USER", text, "", "the user of `hermes flower`'s login", strip=False)
    flower_password: str = setting(
        "HERMES_FLOWER_PASSWORD", text, "", "the password of that login", strip=False, secret=Secret.WHOLE,
        note="`hermes flower` refuses to start without a login unless told `--insecure-no-auth` or given "
        "Flower's own OAuth settings")  # fmt: skip
    flower_port: int = setting("HERMES_FLOWER_PORT", WholeRange(1, 65535), 5555, "the port Flower listens on",
                               options=["hermes flower --port"])  # fmt: skip
    flower_address: str = setting("HERMES_FLOWER_ADDRESS", text, "127.0.0.1", "the address Flower listens on",
                                  options=["hermes flower --address"])  # fmt: skip
    metrics_port: int = setting("HERMES_METRICS_PORT", WholeRange(0, 65535), 0,
                                "a worker serves its Prometheus metrics on this port; `0`: off",
                                options=["hermes worker --metrics-port"])  # fmt: skip
    deployment: str = setting(
        "HERMES_DEPLOYMENT", deployment, "",
        "the deployment that owns this process's sandbox containers (label `hermes.deployment`); reaping "
        "and cleanup touch no other deployment's. Letters, digits, `.`, `_`, `-`; at most 63",
        shown="derived from `HERMES_RESULT_BACKEND` (address, no credentials)")  # fmt: skip
    metrics_address: str = setting(
        "HERMES_METRICS_ADDRESS", listen_address, "127.0.0.1",
        "where a worker's metrics and `hermes metrics --port` listen: `127.0.0.1` this machine only, "
        "`0.0.0.0` for a Prometheus on another machine",
        options=["hermes worker --metrics-address", "hermes metrics --address"])  # fmt: skip

    public_task: bool = setting(
        "HERMES_PUBLIC_TASK", flag, True,
        "worker: take the public task `hermes.normalize` from Celery's default queue `celery`, so that a plain "
        "Celery client needs only the broker and result-backend URLs; `0`: leave that queue alone (the task still "
        "runs when another worker sends it on to this one's queue)",
        note="turn it off where other Celery apps use this broker's `celery` queue")  # fmt: skip
    worker_remote_control: str = setting(
        "HERMES_WORKER_REMOTE_CONTROL", OneOf(("inspect", "all")), "inspect",
        "worker: answer remote-control questions only (`inspect`), or accept Celery's every command "
        "(`all`)")  # fmt: skip
    task_events: bool = setting(
        "HERMES_TASK_EVENTS", flag, False,
        "send Celery's task events (received, started, succeeded; task-sent from producers) for every chunk from "
        "the start; by default workers send them once a monitor asks for them (`hermes flower` at once, Flower "
        "every 5 s, `celery control enable_events`), and producers send no task-sent events",
        note="task events cost a fifth of a worker's CPU at small chunk sizes: paid for nobody "
        "when no monitor runs")  # fmt: skip
    flower_allow_control: bool = setting(
        "HERMES_FLOWER_ALLOW_CONTROL", flag, False,
        "let Flower's users control workers and send tasks; read-only otherwise",
        options=["hermes flower --allow-control"])  # fmt: skip
    signing_key: Path | None = setting(
        "HERMES_SIGNING_KEY", path, None,
        "sign task and remote-control messages with this RSA private key (PEM, unencrypted); with the next two "
        "(all three or none: checked when read)", secret=Secret.FILE)  # fmt: skip
    signing_cert: Path | None = setting("HERMES_SIGNING_CERT", path, None, "the certificate of that key (PEM)")
    signing_certs: Path | None = setting(
        "HERMES_SIGNING_CERTS", path, None,
        "a certificate file or directory: only messages signed by one of these are accepted")  # fmt: skip
    item_time_budget: float = setting(
        "HERMES_ITEM_TIME_BUDGET", DecimalRange(0.0, contract.MAX_ITEM_TIME_BUDGET), 1.0,
        "scale of each item's CPU-time budget (at `1`: 1 s + 30 s per MiB of prompt); an item over it becomes "
        "a `too_slow` error record and its chunk goes on; `0` turns it off",
        note="set where batches are started: it travels in the chunk request",
        bounds_note="0 turns the budget off")  # fmt: skip

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
    def from_env(cls, env: Mapping[str, str] | None = None, given: Mapping[str, str] | None = None) -> Settings:
        """Read and check every declared ``HERMES_*`` variable, in the order declared.

        ``given``: values from the command line, by the variable they stand for, read in its
        place (``hermes --broker URL``): what is derived from it (the result backend) follows.

        Raises:
            SettingsError: naming the variable, its value and what it must be.
        """
        env = os.environ if env is None else env
        if given:
            env = {**env, **given}
        values: dict[str, Any] = {}
        for spec in SETTINGS:
            # Each value checked as soon as it is read: a typo in the broker URL is named as such,
            # not as the result backend that would have been derived from it.
            values[spec.name] = spec.read(env, values)
            spec.run_check(values[spec.name])
        settings = cls(**values)
        _check_signing(settings)
        # Whatever prints or logs these from now on masks them, in any shape (redact.remember).
        remember(*(part for spec in SETTINGS for part in spec.secret.parts(values[spec.name])))
        return settings


SETTINGS: tuple[Setting, ...] = tuple(
    replace(f.metadata["setting"], name=f.name) for f in fields(Settings) if "setting" in f.metadata
)
"""Every declared setting, in the order of the fields."""

_BY_VARIABLE = {spec.variable: spec for spec in SETTINGS}

LIMITS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {spec.variable: spec.parse.bounds() for spec in SETTINGS if isinstance(spec.parse, WholeRange | DecimalRange)}
)
"""Bounds of every numeric setting, by variable: (lowest, highest), inclusive; ints for whole numbers."""


def int_setting(variable: str) -> Callable[[str], int]:
    """The parser of the whole-number setting ``variable``, bounded by ``LIMITS[variable]``."""
    parse = _BY_VARIABLE[variable].parse
    assert isinstance(parse, WholeRange), variable
    return parse


def float_setting(variable: str) -> Callable[[str], float]:
    """The parser of the decimal setting ``variable``, bounded by ``LIMITS[variable]``."""
    parse = _BY_VARIABLE[variable].parse
    assert isinstance(parse, DecimalRange), variable
    return parse


def option_help(variable: str) -> str:
    """The ``--help`` text of a command-line option that overrides ``variable``.

    >>> option_help("HERMES_CHUNK_SIZE")
    'Prompts per chunk in batches and queues (default: 1024; HERMES_CHUNK_SIZE).'
    """
    spec = _BY_VARIABLE[variable]
    words = spec.help.replace("`", "")
    default = spec.shown_default.replace("`", "")
    if isinstance(spec.default, bool):
        default = "on" if spec.default else "off"
    source = variable if default == "unset" else f"default: {default}; {variable}"
    return f"{words[:1].upper()}{words[1:]} ({source})."


def _check_signing(settings: Settings) -> None:
    """All three signing files or none, each usable: a worker must not start unable to verify."""
    files = {
        "HERMES_SIGNING_KEY": settings.signing_key,
        "HERMES_SIGNING_CERT": settings.signing_cert,
        "HERMES_SIGNING_CERTS": settings.signing_certs,
    }
    if not any(files.values()):
        return
    unset = [name for name, file in files.items() if file is None]
    if unset:
        raise SettingsError(f"{', '.join(unset)} must be set too: message signing needs all three signing settings")
    from .signing import SigningError, check_files

    assert settings.signing_key and settings.signing_cert and settings.signing_certs
    try:
        check_files(settings.signing_key, settings.signing_cert, settings.signing_certs)
    except SigningError as exc:
        raise SettingsError(f"message signing (HERMES_SIGNING_*): {exc}") from None
