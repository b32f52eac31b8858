"""Container backends by name: the one place that knows which backends exist.

``HERMES_CONTAINER_BACKEND`` names one; :func:`backend` gives its session class, whose
:meth:`~.session.SandboxSession.preflight` and :meth:`~.session.SandboxSession.health` the probe
and the worker's engine watch call without knowing which backend it is. Adding a backend means
writing its module (a :class:`~.session.SandboxSession` subclass) and one entry here.

Each backend's module is imported only when it is chosen: Docker's SDK or dagger-io never load
in a worker that does not use them, and never inside the sandbox image (which ships this module
with the package ``__init__``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import SessionFailed
from .session import SandboxSession

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["BACKENDS", "backend", "open_session"]


def _docker() -> type[SandboxSession]:
    from .docker_backend import DockerSession

    return DockerSession


def _dagger() -> type[SandboxSession]:
    from .dagger_backend import DaggerSession

    return DaggerSession


# Name -> the session class, loaded on first use.
BACKENDS: dict[str, Callable[[], type[SandboxSession]]] = {"docker": _docker, "dagger": _dagger}


def backend(name: str) -> type[SandboxSession]:
    """The session class of the backend called ``name``.

    Raises:
        SessionFailed: no backend has that name.

    >>> backend("docker").__name__
    'DockerSession'
    >>> try:
    ...     backend("podman")
    ... except SessionFailed as exc:
    ...     print(exc.reason, "|", exc.fix)
    unknown container backend 'podman' | set HERMES_CONTAINER_BACKEND to one of: dagger, docker
    """
    try:
        load = BACKENDS[name]
    except KeyError:
        names = ", ".join(sorted(BACKENDS))
        raise SessionFailed(
            f"unknown container backend {name!r}", f"set HERMES_CONTAINER_BACKEND to one of: {names}"
        ) from None
    return load()


def open_session(settings: Settings, worker_id: str) -> SandboxSession:
    """A new, not yet started, session of the backend ``settings.container_backend`` names.

    Args:
        settings: container_backend, sandbox_image, the container limits and timeouts.
        worker_id: who owns the sandbox; written on its labels so leftovers can be reaped.
            Unique per worker process, e.g. ``celery@host:1234``.
    """
    return backend(settings.container_backend)(settings, worker_id)
