"""The sandbox: hardened container sessions that run the engine, and the protocol they speak.

Import :func:`open_session` to get a session of the backend the settings choose (backends are
registered by name in :mod:`.backends`)::

    with open_session(settings, worker_id) as session:
        result = session.run_chunk(payload, worker)

This package's ``__init__`` imports only the standard library and the engine (it is imported
inside the sandbox image, where the server runs); Docker and dagger are imported by their
backends, when a session of theirs is opened.
"""

from .backends import BACKENDS, backend, open_session
from .errors import (
    ContainerDied,
    DaggerUnavailable,
    DockerUnavailable,
    FrameTooLarge,
    ImageMissing,
    ProtocolError,
    SandboxError,
    SelfTestMismatch,
    SessionFailed,
    TornStream,
)
from .reply import BadReply
from .session import SandboxSession

__all__ = [
    "BACKENDS",
    "BadReply",
    "ContainerDied",
    "DaggerUnavailable",
    "DockerUnavailable",
    "FrameTooLarge",
    "ImageMissing",
    "ProtocolError",
    "SandboxError",
    "SandboxSession",
    "SelfTestMismatch",
    "SessionFailed",
    "TornStream",
    "backend",
    "open_session",
]
