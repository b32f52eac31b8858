"""The sandbox session: one long-lived sandbox per worker process, reused for every chunk.

A backend (:mod:`.docker_backend`, :mod:`.dagger_backend`) only knows how to start its sandbox,
send one chunk and get one result back, and replace a sandbox that died. What a chunk means is
kept here, once for every backend: a chunk whose sandbox dies is retried on a fresh one, and a
chunk that keeps killing it is split in halves until the item that does is alone; that item
gets a ``sandbox_failure`` error record and every other item its normal record.

Nothing the sandbox sends back is trusted: every reply goes through :mod:`.reply`, which checks
it against what the host knows (the items it parsed itself, the provenance it builds) and
rebuilds every field but the records. A reply that fails is handled like a death.

A backend also says whether it can run here before a session starts (:meth:`SandboxSession.preflight`,
run by the start-up probe) and whether its engine still answers (:meth:`SandboxSession.health`,
asked every heartbeat by a container worker): nothing outside a backend knows which one it is.
Backends are chosen by name in :mod:`.backends`.

Imports the standard library, the contract and the engine only (the package ``__init__``
imports this module, and the package ships inside the sandbox image); the backends, and with
them Docker or dagger, are imported when one is chosen.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

from .. import contract
from ..engine import Profile
from ..wire import ChunkRequest, ChunkResult
from .errors import ContainerDied, FrameTooLarge, SessionFailed
from .protocol import MAX_FRAME_BYTES
from .reply import BadReply, ClaimedTooLarge, Expected, check_result, error_result

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["SandboxSession", "timed", "unwrap_reply"]

log = logging.getLogger("hermes.sandbox")


class SandboxSession(ABC):
    """A running sandbox that normalizes chunks; a context manager.

    ``with open_session(settings, worker_id) as session: session.run_chunk(request, worker)``.
    ``__enter__`` starts the sandbox and, if starting fails half-way, cleans up before raising.
    """

    # What runs the sandboxes, as the worker names it when it goes or comes back ("Docker engine lost").
    engine_name: ClassVar[str] = "sandbox"

    @classmethod
    def preflight(cls, settings: Settings, details: dict[str, Any]) -> None:
        """Check, before any session starts, that this backend's engine can run a sandbox here.

        Run by the start-up probe. Records what it finds in ``details`` (engine version, image
        id) and how long each step took (:func:`timed`). The default checks nothing: a backend
        without a cheap check reports its failures when the session starts.

        Raises:
            SandboxError: a subclass saying why not, with a fix.
        """
        return

    @classmethod
    def health(cls, settings: Settings) -> str | None:
        """None when this backend's engine answers now; otherwise why not.

        Cheap (bounded by ``settings.docker_timeout_s`` per call): a container worker asks every
        heartbeat, and a pool process asks when a sandbox failed, to tell an engine that is gone
        from a chunk that is the problem. The default cannot tell, and says the engine answers.
        """
        return None

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self._digest: str | None = None
        # What the current sandbox said about itself when it started, before it saw a prompt.
        self._versions: dict[str, str] | None = None
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

    def start(self) -> None:
        """Start the sandbox and wait until its engine answers.

        A start that fails half-way closes what it opened, even outside a ``with`` block: every
        backend gets that from here and only writes :meth:`_start`.

        Raises:
            SandboxError: a subclass saying why, with a fix.
        """
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @abstractmethod
    def _start(self) -> None:
        """Open the sandbox and check its engine answers (:meth:`start` cleans up a failure)."""

    @abstractmethod
    def close(self) -> None:
        """Stop and remove the sandbox. Idempotent; never raises for a sandbox already gone."""

    @abstractmethod
    def _attempt(self, payload: Mapping[str, Any], worker: str) -> tuple[dict[str, Any], bytes]:
        """Run one chunk request once in the current sandbox: the reply's result and its records
        (raw JSONL bytes), both unchecked.

        Raises:
            ContainerDied: the sandbox died with the chunk in flight.
            FrameTooLarge: the request or its result does not fit in one frame.
        """

    @abstractmethod
    def _replace(self) -> None:
        """Replace a dead sandbox with a fresh one (and count it in :attr:`restarts`)."""

    def run_chunk(self, request: ChunkRequest, worker: str) -> ChunkResult:
        """Normalize a chunk in the sandbox.

        Returns:
            What ``process_chunk(request, mode="container", worker=worker, image=...)`` returns,
            computed inside the sandbox and checked here (see :mod:`.reply`).

        Raises:
            ProfileError: the request's profile is invalid (checked here, before anything is sent).
            SessionFailed: the sandbox cannot start, or does not answer in time.
        """
        profile = Profile.from_spec(request.profile)
        expect = Expected.of(request, profile, self._provenance(profile, worker))
        if request.text is None:
            return self._run_items(request, expect, worker, retried=False)
        # Raw lines go in as they came; only a chunk that fails is sent again as items, so that
        # it can be split item by item.
        try:
            return self._checked(request.to_payload(), expect, worker)
        except FrameTooLarge:
            died = False
        except ContainerDied:
            self._replace()
            died = True
        as_items = replace(request, text=None, first=1, format="jsonl", bad=None)
        result = self._run_items(as_items, expect.as_items(), worker, retried=died)
        return replace(result, first=request.first, ids=expect.ids)

    def _provenance(self, profile: Profile, worker: str) -> dict[str, Any]:
        """The provenance every record of this sandbox must carry, built here, not by the sandbox."""
        if self._versions is None:
            raise SessionFailed("the session has not started", "call start() or use it as a context manager")
        return {"profile": profile.name, "profile_digest": profile.digest, **self._versions,
                "mode": "container", "worker": worker, "image": self.image_digest}  # fmt: skip

    def _checked(self, payload: dict[str, Any], expect: Expected, worker: str) -> ChunkResult:
        """One attempt, its reply checked; a refused reply is raised as :class:`BadReply`."""
        try:
            raw, records = self._attempt(payload, worker)
        except ClaimedTooLarge as exc:
            if expect.reply_bound() < MAX_FRAME_BYTES:
                raise self._refused(BadReply(f"the sandbox claims a result over one frame: {exc.reason}")) from exc
            raise
        except BadReply as exc:
            raise self._refused(exc) from exc
        try:
            return check_result(raw, records, expect)
        except BadReply as exc:
            raise self._refused(exc) from exc

    def _refused(self, exc: BadReply) -> BadReply:
        log.warning("sandbox reply refused, its container is replaced: %s", exc.reason)
        return exc

    def _run_items(self, base: ChunkRequest, expect: Expected, worker: str, *, retried: bool) -> ChunkResult:
        items = expect.items
        try:
            return self._checked(replace(base, items=items).to_payload(), expect, worker)
        except FrameTooLarge as exc:
            if len(items) == 1:
                return error_result(expect, contract.SANDBOX_FAILURE, f"too large for the sandbox: {exc.reason}")
        except ContainerDied as exc:
            self._replace()
            if not retried:  # killed from outside, OOM by bad luck, engine restart: try once more
                return self._run_items(base, expect, worker, retried=True)
            if len(items) == 1:
                why = "the sandbox's reply to this prompt was refused" if isinstance(exc, BadReply) else (
                    "this prompt kills the sandbox")  # fmt: skip
                return error_result(expect, contract.SANDBOX_FAILURE, f"{why}: {exc.reason}")
        if not items:
            raise SessionFailed("the sandbox dies on an empty chunk", "check the sandbox image: hermes image build")
        half = len(items) // 2
        # A single half left over gets one retry again, so one unlucky death cannot blame an item.
        left = self._run_items(base, expect.part(0, half), worker, retried=half > 1)
        right = self._run_items(base, expect.part(half, len(items)), worker, retried=len(items) - half > 1)
        return left.followed_by(right)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def unwrap_reply(reply: Mapping[str, Any]) -> dict[str, Any]:
    """The result of an engine server reply.

    The host checked the payload and the profile before sending, so an honest sandbox can only
    fail a chunk as a whole when its result does not fit in one frame. Any other error it
    reports is refused like a reply that breaks the contract.

    Raises:
        ClaimedTooLarge: the sandbox says its result is over the frame bound.
        BadReply: anything else that is not a result.
    """
    if reply.get("ok") is True:
        result = reply.get("result")
        if type(result) is not dict:
            raise BadReply("the sandbox's reply holds no result object")
        return result
    error = reply.get("error")
    kind, message = (error.get("type"), str(error.get("message"))[:300]) if isinstance(error, dict) else (None, "")
    if kind == "FrameTooLarge":
        raise ClaimedTooLarge(message)
    raise BadReply(f"the sandbox engine failed the chunk as a whole ({str(kind)[:40]}): {message}")


@contextmanager
def timed(details: dict[str, Any], step: str) -> Iterator[None]:
    """Record how long ``step`` took, in ms, in ``details["timings_ms"]``, even when it fails."""
    started = time.perf_counter()
    try:
        yield
    finally:
        details.setdefault("timings_ms", {})[step] = round((time.perf_counter() - started) * 1000, 1)
