"""The sandbox's errors: one branch of Hermes' root (:mod:`hermes_worker.errors`), narrow subclasses.

Docker, requests and dagger errors never leave :mod:`hermes_worker.sandbox`: each backend
translates them at its boundary into one of these, with a ``reason`` (what went wrong, short
enough for a log line or a worker tag) and a ``fix`` (what to do about it). Standard library
only: this module also ships inside the sandbox image.
"""

from __future__ import annotations

import os
import socket

from ..errors import HermesError

__all__ = [
    "ContainerDied",
    "DaggerUnavailable",
    "DockerUnavailable",
    "FrameTooLarge",
    "ImageMissing",
    "ProtocolError",
    "SandboxError",
    "SelfTestMismatch",
    "SessionFailed",
    "TornStream",
    "translate",
]

_FIX_START = "start it: sudo systemctl start docker (or ops/ensure-docker.sh); check DOCKER_HOST"
_FIX_GROUP = "add the user to the docker group: sudo usermod -aG docker $USER, then log in again (or newgrp docker)"


class SandboxError(HermesError):
    """Root of every error the sandbox raises on purpose: an infrastructure error (exit 3).

    Attributes:
        reason: what went wrong, one line (short enough for a worker tag).
        fix: what to do about it, or an empty string when there is nothing to do.
    """


class DockerUnavailable(SandboxError):
    """No Docker engine answers: not running, socket not allowed, DOCKER_HOST wrong, too slow."""


class ImageMissing(SandboxError):
    """The sandbox image (or the base it is built on) is not in the local image store."""


class SessionFailed(SandboxError):
    """A session could not start, or its container keeps failing for reasons not tied to an item."""


class SelfTestMismatch(SandboxError):
    """The sandbox produced different bytes from the local engine for the self-test strings."""


class DaggerUnavailable(SandboxError):
    """The dagger backend cannot run: dagger-io missing, no Dagger CLI, or the engine fails."""


class ProtocolError(SandboxError):
    """The framed stream between host and sandbox is broken; the session must be restarted."""


class TornStream(ProtocolError):
    """The stream ended in the middle of a frame (the other side died while writing)."""


class FrameTooLarge(ProtocolError):
    """A frame is larger than the agreed bound; it is refused before anything is allocated."""


class ContainerDied(SessionFailed):
    """The session's container stopped while a chunk was in flight (killed, OOM, engine restart).

    Backends raise it from a single attempt; the session recreates the container and retries,
    then splits the chunk to find the item that keeps killing it.
    """


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and exceptions nested in their args."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop()
        if any(current is known for known in seen):
            continue
        seen.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += [a for a in current.args if isinstance(a, BaseException)]
    return seen


def translate(exc: BaseException, doing: str, timeout_s: float | None = None) -> SandboxError:
    """Our error for a Docker SDK, requests or socket error raised while ``doing`` something.

    Matches on the standard library's exception types and on the SDK's class names, so this
    module needs no Docker import (it ships inside the image).
    """
    if isinstance(exc, SandboxError):
        return exc
    chain = _chain(exc)
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"  # Docker's own variable
    if any(isinstance(e, PermissionError) for e in chain) or "Permission denied" in text:
        return DockerUnavailable(f"permission denied on the Docker socket ({host}) while trying to {doing}", _FIX_GROUP)
    if any(isinstance(e, FileNotFoundError | ConnectionRefusedError | socket.gaierror) for e in chain) or any(
        s in text for s in ("No such file", "Connection refused", "Name or service not known")
    ):
        return DockerUnavailable(f"Docker daemon not running: nothing answers at {host}", _FIX_START)
    if any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in chain):
        waited = f" within {timeout_s:g} s" if timeout_s else ""
        return DockerUnavailable(
            f"the Docker engine at {host} did not answer{waited}",
            "check the engine: docker info; raise HERMES_DOCKER_TIMEOUT if it is only slow",
        )
    explanation = getattr(exc, "explanation", None) or str(exc)
    if "ImageNotFound" in names:
        return ImageMissing(f"image not found while trying to {doing}: {explanation}", "hermes image build")
    if "APIError" in names or hasattr(exc, "status_code"):
        return SessionFailed(f"Docker refused to {doing}: {explanation}")
    if "DockerException" in names or isinstance(exc, OSError):
        return DockerUnavailable(f"cannot reach the Docker engine at {host} to {doing}: {exc}", _FIX_START)
    return SessionFailed(f"could not {doing}: {type(exc).__name__}: {exc}")
