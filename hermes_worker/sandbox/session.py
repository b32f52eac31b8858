"""The sandbox session: one long-lived sandbox per worker process, reused for every chunk.

A backend (:mod:`.docker_backend`, :mod:`.dagger_backend`) only knows how to start its sandbox,
send one chunk and get one result back, and replace a sandbox that died. What a chunk means is
kept here, once for every backend: a chunk whose sandbox dies is retried on a fresh one, and a
chunk that keeps killing it is split in halves until the item that does is alone; that item
gets a ``sandbox_failure`` error record and every other item its normal record.

Imports the standard library, the contract and the engine only (the package ``__init__``
imports this module, and the package ships inside the sandbox image); the backends, and with
them Docker or dagger, are imported when a session is opened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .. import contract
from ..contract import ChunkRequest, ContractError
from ..engine import ProfileError
from ..processing import request_items
from .errors import ContainerDied, FrameTooLarge, SessionFailed

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["SandboxSession", "open_session", "unwrap_reply"]


class SandboxSession(ABC):
    """A running sandbox that normalizes chunks; a context manager.

    ``with open_session(settings, worker_id) as session: session.run_chunk(payload, worker)``.
    ``__enter__`` starts the sandbox and, if starting fails half-way, cleans up before raising.
    """

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self._digest: str | None = None
        self._restarts = 0

    @property
    def image_digest(self) -> str:
        """The digest (image id) of the sandbox image, as written into provenance."""
        if self._digest is None:
            raise SessionFailed("the session has not started", "call start() or use it as a context manager")
        return self._digest

    @property
    def restarts(self) -> int:
        """How many times the sandbox was replaced after it died."""
        return self._restarts

    @abstractmethod
    def start(self) -> None:
        """Start the sandbox and wait until its engine answers.

        Raises:
            SandboxError: a subclass saying why, with a fix.
        """

    @abstractmethod
    def close(self) -> None:
        """Stop and remove the sandbox. Idempotent; never raises for a sandbox already gone."""

    @abstractmethod
    def _attempt(self, payload: Mapping[str, Any], worker: str) -> dict[str, Any]:
        """Run one chunk request once in the current sandbox.

        Raises:
            ContainerDied: the sandbox died with the chunk in flight.
            FrameTooLarge: the request or its result does not fit in one frame.
        """

    @abstractmethod
    def _replace(self) -> None:
        """Replace a dead sandbox with a fresh one (and count it in :attr:`restarts`)."""

    def run_chunk(self, payload: Mapping[str, Any], worker: str) -> dict[str, Any]:
        """Normalize a chunk in the sandbox.

        Returns:
            Exactly what ``process_chunk(payload, mode="container", worker=worker, image=...)``
            returns, computed inside the sandbox.

        Raises:
            ContractError: the payload is malformed (checked here, before anything is sent).
            ProfileError: the payload's profile is invalid.
            SessionFailed: the sandbox cannot run even a single error record.
        """
        request = ChunkRequest.from_payload(payload)
        base = dict(payload)
        if request.text is None:
            return self._run_items(base, request.items or [], worker, retried=False)
        # Raw lines go in as they came; only a chunk that fails is parsed here (by the same pure
        # parser the sandbox runs) so that it can be split item by item.
        try:
            return self._attempt(base, worker)
        except FrameTooLarge:
            died = False
        except ContainerDied:
            self._replace()
            died = True
        items, ids = request_items(request)
        for key in ("text", "first", "format", "bad"):
            base.pop(key, None)
        result = self._run_items(base, items, worker, retried=died)
        return result | {"first": request.first, "ids": ids}

    def _run_items(self, base: dict[str, Any], items: list[list[Any]], worker: str, *, retried: bool) -> dict[str, Any]:
        try:
            return self._attempt(base | {"items": items}, worker)
        except FrameTooLarge as exc:
            if len(items) == 1:
                return self._give_up(base, items[0], worker, f"too large for the sandbox: {exc.reason}")
        except ContainerDied as exc:
            self._replace()
            if not retried:  # killed from outside, OOM by bad luck, engine restart: try once more
                return self._run_items(base, items, worker, retried=True)
            if len(items) == 1:
                return self._give_up(base, items[0], worker, f"this prompt kills the sandbox: {exc.reason}")
        if not items:
            raise SessionFailed("the sandbox dies on an empty chunk", "check the sandbox image: hermes image build")
        half = len(items) // 2
        # A single half left over gets one retry again, so one unlucky death cannot blame an item.
        left = self._run_items(base, items[:half], worker, retried=half > 1)
        right = self._run_items(base, items[half:], worker, retried=len(items) - half > 1)
        return _merge(left, right)

    def _give_up(self, base: dict[str, Any], item: list[Any], worker: str, message: str) -> dict[str, Any]:
        # The error record is written by the sandbox itself, so its provenance is the sandbox's.
        line, item_id = item[0], item[1]
        try:
            return self._attempt(base | {"items": [[line, item_id, None, [contract.SANDBOX_FAILURE, message]]]}, worker)
        except ContainerDied as exc:
            self._replace()
            raise SessionFailed(f"the sandbox dies even on an error record: {exc.reason}", exc.fix) from exc

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    return left | {
        "lines": left["lines"] + right["lines"],
        "ok": left["ok"] + right["ok"],
        "failed": left["failed"] + right["failed"],
        "errors": left["errors"] + right["errors"],
    }


def unwrap_reply(reply: Mapping[str, Any]) -> dict[str, Any]:
    """The result of an engine server reply, or the error it reports raised as ours."""
    if reply.get("ok"):
        result: dict[str, Any] = reply["result"]
        return result
    error = reply.get("error") or {}
    kind, message = error.get("type"), str(error.get("message"))
    if kind == "ContractError":
        raise ContractError(message)
    if kind == "ProfileError":
        raise ProfileError(message)
    if kind == "FrameTooLarge":
        raise FrameTooLarge(message)
    raise SessionFailed(f"the sandbox engine failed: {message}")


def open_session(settings: Settings, worker_id: str) -> SandboxSession:
    """A new, not yet started, session of the backend ``settings.container_backend`` names.

    Args:
        settings: container_backend, sandbox_image, the container limits and timeouts.
        worker_id: who owns the sandbox; written on its labels so leftovers can be reaped.
            Unique per worker process, e.g. ``celery@host:1234``.
    """
    if settings.container_backend == "dagger":
        from .dagger_backend import DaggerSession

        return DaggerSession(settings, worker_id)
    from .docker_backend import DockerSession

    return DockerSession(settings, worker_id)
