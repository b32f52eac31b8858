"""Profiles: named, ordered lists of steps; the built-in ones and custom ones from TOML.

A profile travels to workers as its *spec* (``{"name": ..., "steps": [...]}``), so a custom
profile defined on the producer's machine runs unchanged on any worker or sandbox.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ProfileError
from .steps import STEPS

__all__ = ["BUILTIN_PROFILES", "DEFAULT_PROFILE", "Profile", "load_profile_file", "resolve_profile"]

DEFAULT_PROFILE = "prompt"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MAX_PROFILE_STEPS = 64  # a profile travels in every chunk request: a longer one is refused, not run


@dataclass(frozen=True, slots=True)
class Profile:
    """An ordered list of step names with a name and a stable hash of the list."""

    name: str
    steps: tuple[str, ...]
    description: str = ""
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        # fullmatch, not match: '$' also matches before a trailing newline, so 'mine\n' passed.
        if not _NAME.fullmatch(self.name):
            raise ProfileError(
                f"profile name {self.name!r} is invalid: use 1-64 lowercase letters, digits, '_' or '-', "
                "starting with a letter"
            )
        if not self.steps:
            raise ProfileError(f"profile {self.name!r} has no steps")
        if len(self.steps) > MAX_PROFILE_STEPS:
            raise ProfileError(f"profile {self.name!r} has {len(self.steps)} steps; at most {MAX_PROFILE_STEPS}")
        for step in self.steps:
            if step not in STEPS:
                hint = difflib.get_close_matches(step, STEPS, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ProfileError(
                    f"profile {self.name!r}: unknown step {step!r}{suggestion}; known steps: {', '.join(STEPS)}"
                )
        # The digest names the behaviour, not the label: two profiles with the same steps in
        # the same order produce the same output, whatever they are called.
        object.__setattr__(self, "digest", hashlib.sha256("\n".join(self.steps).encode()).hexdigest()[:16])

    def spec(self) -> dict[str, Any]:
        """The JSON-safe form that travels in task payloads."""
        return {"name": self.name, "steps": list(self.steps)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Profile:
        """Rebuild a profile from :meth:`spec` output, validating it.

        Raises:
            ProfileError: the spec is malformed or names unknown steps.
        """
        if not isinstance(spec, Mapping):
            raise ProfileError("profile spec must be an object with 'name' and 'steps'")
        name, steps = spec.get("name"), spec.get("steps")
        if not isinstance(name, str) or not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise ProfileError("profile spec needs a string 'name' and a list of step names 'steps'")
        return cls(name, tuple(steps))


BUILTIN_PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        profile.name: profile
        for profile in (
            Profile(
                "prompt",
                (
                    "strip_terminal_escapes",
                    "ftfy",
                    "unify_newlines",
                    "strip_controls",
                    "strip_invisible",
                    "nfc",
                    "rstrip_lines",
                    "collapse_blank_lines",
                    "trim_blank_edges",
                ),
                "safe for prompts holding code, tables and emoji: ftfy repairs, NFC, no stray "
                "controls or invisibles, tidy line ends and blank lines; indentation kept",
            ),
            Profile("nfc", ("nfc",), "Unicode NFC and nothing else"),
            Profile("nfkc", ("nfkc",), "Unicode NFKC and nothing else"),
            Profile(
                "compact",
                ("nfkc", "collapse_whitespace"),
                "NFKC, whitespace runs become one space: keys for search and dedup",
            ),
        )
    }
)


# Bounds of a profile file: far above any real one, far below what would hurt. A profile travels
# in every chunk request, and every item runs each of its steps.
MAX_PROFILE_FILE_BYTES = 1024 * 1024
MAX_PROFILES = 256
MAX_STEPS = 100
MAX_DESCRIPTION = 1000


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: names in messages come from the file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_profile_file(path: Path) -> str:
    """The file's text, read only if it is a regular file of reasonable size.

    A FIFO would block the command forever, ``/dev/zero`` would fill the memory, and a
    directory gives a confusing error: all are refused naming the file.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile file: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, device or socket)"
            raise ProfileError(f"{path}: cannot read profile file: it is {kind}")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_PROFILE_FILE_BYTES + 1)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile file: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_FILE_BYTES:
        raise ProfileError(f"{path}: the profile file is larger than {MAX_PROFILE_FILE_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"{path}: not valid TOML: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def load_profile_file(path: str | Path) -> dict[str, Profile]:
    """Read custom profiles from a TOML file.

    The file holds one table per profile::

        [profiles.code]
        description = "keep everything but fix encodings"
        steps = ["ftfy", "strip_controls"]

    Raises:
        ProfileError: the file is unreadable, not TOML, or a profile in it is invalid; the
            message names the file and the profile.
    """
    path = Path(path)
    text = _read_profile_file(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ProfileError(f"{path}: not valid TOML for Hermes: arrays or tables nested too deeply") from None

    unknown_top = set(data) - {"profiles"}
    if unknown_top:
        shown = ", ".join(_short(key, 40) for key in sorted(unknown_top)[:5])
        raise ProfileError(f"{path}: unknown top-level keys {shown}; profiles go under [profiles.NAME]")
    tables = data.get("profiles")
    if not isinstance(tables, dict) or not tables:
        raise ProfileError(f"{path}: no profiles defined; add a table such as [profiles.mine] with steps = [...]")
    if len(tables) > MAX_PROFILES:
        raise ProfileError(f"{path}: {len(tables):,} profiles; a file may define at most {MAX_PROFILES}")

    profiles: dict[str, Profile] = {}
    for name, table in tables.items():
        where = f"{path}: profile {_short(name)}"
        if not _NAME.fullmatch(name):
            raise ProfileError(
                f"{where}: the name is invalid: use 1-64 lowercase letters, digits, '_' or '-', starting with a letter"
            )
        if name in BUILTIN_PROFILES:
            raise ProfileError(f"{where}: redefines a built-in profile; choose another name")
        if not isinstance(table, dict):
            raise ProfileError(f"{where}: must be a table with a 'steps' list")
        extra = set(table) - {"steps", "description"}
        if extra:
            shown = ", ".join(_short(key, 40) for key in sorted(extra)[:5])
            raise ProfileError(f"{where}: unknown keys {shown}; allowed: steps, description")
        steps = table.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise ProfileError(f"{where}: 'steps' must be a list of step names")
        if len(steps) > MAX_STEPS:
            raise ProfileError(f"{where}: {len(steps):,} steps; a profile may have at most {MAX_STEPS}")
        unknown = next((step for step in steps if step not in STEPS), None)
        if unknown is not None and len(unknown) > 64:
            raise ProfileError(f"{where}: unknown step {_short(unknown)}; known steps: {', '.join(STEPS)}")
        description = table.get("description", "")
        if not isinstance(description, str):
            raise ProfileError(f"{where}: 'description' must be a string")
        if len(description) > MAX_DESCRIPTION:
            raise ProfileError(f"{where}: the description is longer than {MAX_DESCRIPTION:,} characters")
        try:
            profiles[name] = Profile(name, tuple(steps), description)
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from exc
    return profiles


def resolve_profile(name: str, custom: Mapping[str, Profile] | None = None) -> Profile:
    """Find a profile by name among the built-in and the custom ones.

    Raises:
        ProfileError: no such profile; the message lists the known ones.
    """
    known = dict(BUILTIN_PROFILES)
    known.update(custom or {})
    try:
        return known[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; known profiles: {', '.join(known)}") from None
