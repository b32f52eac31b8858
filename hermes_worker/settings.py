"""The one settings object, read from the environment when it is built (never at import).

Every ``HERMES_*`` variable Hermes reads is here, with its default and its check. Command-line
options override these values; nothing else reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

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
        chunk_size: prompts per chunk in batches (``HERMES_CHUNK_SIZE``, 256).
        processes: in-process worker processes (``HERMES_PROCESSES``, default: every core).
        log_level: the lowest level written to Hermes' log (``HERMES_LOG_LEVEL``, DEBUG).
    """

    home: Path
    profile: str = DEFAULT_PROFILE
    profile_file: Path | None = None
    max_validation: int = 1
    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES
    chunk_size: int = 256
    processes: int = 1
    log_level: str = "DEBUG"

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
        return cls(
            home=home,
            profile=read("HERMES_PROFILE", str, DEFAULT_PROFILE),
            profile_file=Path(profile_file).expanduser() if profile_file else None,
            max_validation=read("HERMES_MAX_VALIDATION", _non_negative_int, 1),
            max_prompt_bytes=read("HERMES_MAX_PROMPT_BYTES", _positive_int, DEFAULT_MAX_PROMPT_BYTES),
            chunk_size=read("HERMES_CHUNK_SIZE", _positive_int, 256),
            processes=read("HERMES_PROCESSES", _positive_int, os.cpu_count() or 1),
            log_level=read("HERMES_LOG_LEVEL", _log_level, "DEBUG"),
        )
