"""One root exception for the sandbox, with narrow subclasses.

Docker, requests and dagger errors never leave :mod:`hermes_worker.sandbox`: each backend
translates them at its boundary into one of these, with a ``reason`` (what went wrong, short
enough for a log line or a worker tag) and a ``fix`` (what to do about it). Standard library
only: this module also ships inside the sandbox image.
"""

from __future__ import annotations

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
]


class SandboxError(Exception):
    """Root of every error the sandbox raises on purpose.

    Attributes:
        reason: what went wrong, one line.
        fix: what to do about it, or an empty string when there is nothing to do.
    """

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(f"{reason} (fix: {fix})" if fix else reason)
        self.reason = reason
        self.fix = fix


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
