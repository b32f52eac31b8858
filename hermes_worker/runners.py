"""Runners execute one chunk in a worker process: natively, or inside the sandbox session."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .processing import process_chunk
from .settings import Settings
from .wire import ChunkRequest, ChunkResult

__all__ = ["LocalRunner", "Runner", "SandboxRunner", "make_runner"]

log = logging.getLogger("hermes.runner")


class Runner(Protocol):
    mode: str

    @property
    def restarts(self) -> int: ...

    def run(self, request: ChunkRequest, worker: str) -> ChunkResult: ...

    def close(self) -> None: ...


class LocalRunner:
    """The engine in this process: no isolation, and provenance says so."""

    mode = "local"
    restarts = 0

    def run(self, request: ChunkRequest, worker: str) -> ChunkResult:
        return process_chunk(request, mode="local", worker=worker)

    def close(self) -> None:
        pass


class SandboxRunner:
    """The engine inside this process's own container session, opened on first use and reused."""

    mode = "container"

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self._settings = settings
        self._worker_id = worker_id
        self._session: Any = None

    @property
    def restarts(self) -> int:
        """How many times this process's sandbox container had to be recreated."""
        return int(self._session.restarts) if self._session is not None else 0

    def run(self, request: ChunkRequest, worker: str) -> ChunkResult:
        if self._session is None:
            from .sandbox.backends import open_session  # Docker code only where it is needed

            session = open_session(self._settings, self._worker_id)
            session.start()
            self._session = session
        result: ChunkResult = self._session.run_chunk(request, worker)
        return result

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.close()


def make_runner(tag: str, settings: Settings | None, worker_id: str) -> Runner:
    """The runner for ``tag`` (``container`` or ``local``): workers and in-process pools alike."""
    if tag == "container":
        assert settings is not None, "a sandbox needs its settings"
        return SandboxRunner(settings, worker_id)
    return LocalRunner()
