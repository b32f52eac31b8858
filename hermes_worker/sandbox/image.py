"""Build the sandbox image from ``ops/sandbox/Dockerfile``, with no network.

The build context is assembled here, not read from the work tree: the engine's own sources
(only what the server imports) and every pure-Python distribution the engine needs, copied
from this interpreter's site-packages at the versions installed here, with orjson's compiled
module beside them (an accelerator the output does not depend on). The container therefore
runs exactly the text code the host runs, and its output is byte-identical to local output as
long as the base image's Python has the same Unicode version.

The image is tagged ``hermes-sandbox:<engine version>-<content hash>``; the hash covers the
context, the Dockerfile and the base image id, so an existing tag means nothing needs building.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import re
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import docker.errors  # the SDK ships no types

from .. import __version__
from .docker_backend import connect
from .errors import ImageMissing, SandboxError, SessionFailed, translate

__all__ = ["DEFAULT_BASE", "DOCKERFILE", "SandboxImage", "build_image", "content_tag", "context_files"]

log = logging.getLogger("hermes.sandbox")

DEFAULT_BASE = "python:3.11-slim"
REPOSITORY = "hermes-sandbox"
_PACKAGE = Path(__file__).resolve().parent.parent  # hermes_worker/
# Package data, so `hermes image build` works from any install; ops/sandbox/Dockerfile links here.
DOCKERFILE = Path(__file__).resolve().parent / "Dockerfile"
# What the engine server imports, and nothing more: no Docker, Celery or Redis code in the image.
_SOURCES = (
    "__init__.py",
    "chunk_options.py",
    "contract.py",
    "errors.py",
    "fast_json.py",
    "lines.py",
    "processing.py",
    "raw_lines.py",
    "shared_input.py",
    "wire.py",
    "engine/*.py",
    *(f"sandbox/{name}.py" for name in ("__init__", "backends", "errors", "protocol", "reply", "server", "session")),
)
_TEXT_DISTRIBUTIONS = ("ftfy",)
# Copied with their compiled modules, when the host has them: optional accelerators whose absence
# changes no output (hermes_worker.fast_json). A module's file name carries the ABI it was built
# for (``orjson.cpython-311-x86_64-linux-gnu.so``): a base image whose Python differs never loads
# it, and the sandbox runs on the standard library.
_ACCELERATORS = ("orjson",)


@dataclass(frozen=True, slots=True)
class SandboxImage:
    """A sandbox image in the local store.

    Attributes:
        tag: the content tag, ``hermes-sandbox:<version>-<hash>``.
        digest: the image id (``sha256:...``), as written into provenance.
        tags: every tag this call put on it.
        built: False when the content tag already existed and nothing was built.
    """

    tag: str
    digest: str
    tags: tuple[str, ...]
    built: bool


def _distribution_files(name: str, seen: set[str], files: dict[str, bytes], compiled: bool = False) -> None:
    """Copy one installed distribution and, recursively, what it requires (extras aside); its
    compiled modules too when ``compiled`` (see ``_ACCELERATORS``)."""
    dist = metadata.distribution(name)
    key = dist.metadata["Name"].lower()
    if key in seen:
        return
    seen.add(key)
    for entry in dist.files or ():
        rel = entry.as_posix()
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith((".pyc", "RECORD", "INSTALLER")):
            continue  # scripts outside site-packages, caches, and files that only pip needs
        if rel.endswith((".so", ".pyd", ".dylib")) and not compiled:
            # Compiled modules are built for the host's Python, not the image's: leave them out.
            # The ones in reach are optional accelerators (wcwidth's C extension, needed only by
            # ftfy.formatting) with pure-Python fallbacks; anything that truly needed one would
            # fail the sandbox self-test that every probe runs.
            continue
        data = Path(str(entry.locate())).read_bytes()
        _check_installed(dist.metadata["Name"], rel, entry.hash, data)
        files[f"site/{rel}"] = data
    for requirement in dist.requires or ():
        if "extra ==" not in requirement:
            match = re.match(r"[A-Za-z0-9._-]+", requirement)
            if match:
                _distribution_files(match.group(0), seen, files, compiled)


def _check_installed(dist: str, rel: str, recorded: Any, data: bytes) -> None:
    """Refuse a file whose bytes differ from what pip recorded when it installed ``dist``.

    The sandbox gets the host's text libraries byte for byte; the RECORD hash ties those bytes to
    the wheel pip installed (in the worker image, a wheel whose hash ops/worker/requirements.txt
    locks), so a file changed since (by hand, or by someone with write access to site-packages)
    never reaches the image.
    """
    if recorded is None or not recorded.mode or not recorded.value:
        return  # RECORD lists no hash for itself and for files written after install
    try:
        digest = hashlib.new(recorded.mode, data).digest()
    except ValueError:
        raise SessionFailed(f"{dist}: {rel} has a RECORD hash of unknown kind {recorded.mode!r}") from None
    if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != recorded.value:
        raise SessionFailed(
            f"{dist}: {rel} is not the file pip installed (its RECORD hash differs): refusing to copy it "
            "into the sandbox image",
            f"reinstall it: pip install --force-reinstall --no-deps {dist}=={metadata.version(dist)}",
        )


def context_files() -> dict[str, bytes]:
    """The build context: ``Dockerfile`` and ``site/...`` (path -> bytes), in sorted order."""
    if not DOCKERFILE.is_file():
        raise ImageMissing(f"{DOCKERFILE} not found", "run hermes image build from a Hermes checkout")
    files = {"Dockerfile": DOCKERFILE.read_bytes()}
    for pattern in _SOURCES:
        for path in sorted(_PACKAGE.glob(pattern)):
            files[f"site/hermes_worker/{path.relative_to(_PACKAGE).as_posix()}"] = path.read_bytes()
    seen: set[str] = set()
    for name in _TEXT_DISTRIBUTIONS:
        _distribution_files(name, seen, files)
    for name in _ACCELERATORS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            _distribution_files(name, seen, files, compiled=True)
    return dict(sorted(files.items()))


def content_tag(files: dict[str, bytes], base_id: str) -> str:
    """``hermes-sandbox:<engine version>-<12 hex digits>`` for this context on this base."""
    digest = hashlib.sha256(base_id.encode())
    for path, data in sorted(files.items()):
        digest.update(b"\0%s\0%d\0" % (path.encode(), len(data)))
        digest.update(data)
    return f"{REPOSITORY}:{__version__}-{digest.hexdigest()[:12]}"


def _tar(files: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: same bytes, same layers
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def build_image(
    *, base: str = DEFAULT_BASE, tags: tuple[str, ...] = (), rebuild: bool = False, timeout_s: float = 600
) -> SandboxImage:
    """Build (or find) the sandbox image on ``base`` and tag it.

    Args:
        base: the base image; it must already be in the local store (nothing is pulled).
        tags: more tags to put on it besides the content tag, e.g. ``hermes-sandbox:latest``.
        rebuild: build even when the content tag exists.
        timeout_s: how long the build may take.

    Raises:
        DockerUnavailable: no engine answers.
        ImageMissing: the base image is not in the local store.
        SessionFailed: the build failed (its last log lines are in the message).
    """
    client = connect(timeout_s)
    try:
        try:
            base_id = client.images.get(base).id
        except docker.errors.ImageNotFound:
            raise ImageMissing(
                f"base image {base} is not in the local image store (Hermes never pulls)",
                f"docker pull {base} where a registry is reachable, or build one offline: "
                "ops/build-base-image.sh && hermes image build --base hermes-base:bookworm",
            ) from None
        files = context_files()
        tag = content_tag(files, base_id)
        built = rebuild or not client.images.list(name=tag)
        if built:
            log.info("building %s on %s", tag, base)
            _build(client, files, base, tag)
        image = client.images.get(tag)
        for extra in tags:
            repository, _, version = extra.rpartition(":")
            if not repository or "/" in version:  # no tag given, or a registry's port
                repository, version = extra, "latest"
            image.tag(repository, version)
        return SandboxImage(tag=tag, digest=str(image.id), tags=(tag, *tags), built=built)
    except SandboxError:
        raise
    except Exception as exc:
        raise translate(exc, "build the sandbox image") from exc
    finally:
        client.close()


def _build(client: Any, files: dict[str, bytes], base: str, tag: str) -> None:
    tail: list[str] = []
    stream = client.api.build(
        fileobj=_tar(files), custom_context=True, tag=tag, buildargs={"BASE": base},
        rm=True, forcerm=True, pull=False, network_mode="none", decode=True,
    )  # fmt: skip
    for event in stream:
        if "error" in event:
            raise SessionFailed(f"sandbox image build failed: {event['error'].strip()}", "; ".join(tail[-5:]))
        line = str(event.get("stream", "")).strip()
        if line:
            log.debug("build: %s", line)
            tail.append(line)
