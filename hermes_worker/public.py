"""``hermes.normalize``, the public task: what a plain Celery client may send, and what it gets back.

A Celery user who knows only the broker and result-backend URLs calls::

    app.send_task("hermes.normalize", args=[["a  b"]], kwargs={"profile": "compact"}).get(timeout=30)

and gets one record per prompt, in order, as ``hermes batch`` writes them (``id`` and ``line``
are the prompt's position, from 1). This module is the task's logic, pure (no Celery, no Redis):

- :meth:`NormalizeCall.from_arguments` checks the arguments by building the chunk request they
  stand for (:meth:`~hermes_worker.wire.ChunkRequest.from_payload`: the contract's bounds and
  checks, the same as for every chunk) and raises :class:`BadArguments` naming what is wrong;
- :meth:`NormalizeCall.requests` cuts the call into chunk requests of ``HERMES_CHUNK_SIZE``
  prompts, which the worker's runner runs here or in its sandbox session;
- :func:`records` turns their results back into the records the client gets;
- :func:`placement` says whether this worker runs the call, sends it on to the queue of the tag
  that must (the rules chunks are routed by, :func:`~hermes_worker.routes.route_for`), or cannot
  have it run at all.

A prompt is a string; a record this task returned stands for its text (an error record for its
error again), so that a chain of two calls, or a chord whose body is this task, needs nothing
else; a list of such lists (what a chord hands its body: the header's results, in order) is
taken one list after the other. Anything else is that prompt's ``prompt_not_string`` record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import fast_json
from .chunk_options import ChunkOptions, declarations
from .contract import (
    ERROR_CODES,
    MAX_CHUNK_LINES,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_VALUE_BYTES,
    PAYLOAD_VERSION,
    QUEUE_FOR_TAG,
    QUEUE_PUBLIC,
    TASK_NORMALIZE,
    ContractError,
    shown,
)
from .engine import ProfileError, load_profile_file, resolve_profile
from .errors import EXIT_USAGE, HermesError
from .registry import WorkerInfo
from .routes import route_for
from .settings import Settings
from .wire import ChunkRequest, ChunkResult, Item

__all__ = [
    "KEYWORDS",
    "BadArguments",
    "Forward",
    "NormalizeCall",
    "NotRun",
    "PublicTaskError",
    "RunHere",
    "placement",
    "records",
]

ISOLATIONS = ("auto", "container", "local")
# The keywords the task takes: the profile, where it may run, and every chunk option.
KEYWORDS = ("profile", "isolation", *(name for name, _ in declarations()))


class PublicTaskError(HermesError):
    """Why a ``hermes.normalize`` task ends with an error result instead of its records.

    The client's ``.get()`` raises it (rebuilt by name: a client without Hermes installed gets
    an exception of the same name and message).
    """


class BadArguments(PublicTaskError, ValueError):
    """The task's arguments break its contract; the message names the argument and the problem."""

    exit_code = EXIT_USAGE


class NotRun(PublicTaskError):
    """The task was not run: its message was refused, no live worker can run it with the isolation
    it asks for, or it ran past the time limit."""


def _refused(exc: ContractError | ProfileError) -> BadArguments:
    """A chunk-request check's refusal, worded for the task's caller."""
    return BadArguments(f"{TASK_NORMALIZE}: {str(exc).removeprefix('chunk payload: ')}")


def _as_item(line: int, prompt: Any) -> Item:
    """The item a prompt stands for: a string as it is; a record this task returned, its text
    (or its error again); anything else as it is, to become a ``prompt_not_string`` record."""
    if isinstance(prompt, Mapping):
        error = prompt.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str) and _known(error.get("code")):
            return Item(line, line, None, (error["code"], error["message"][:MAX_MESSAGE_CHARS]))
        if isinstance(prompt.get("text"), str):
            return Item(line, line, prompt["text"])
    return Item(line, line, prompt)


def _known(code: Any) -> bool:
    return isinstance(code, str) and code in ERROR_CODES


def _prompts(args: Sequence[Any]) -> list[Any]:
    """The prompts of the task's positional arguments, a chord's lists of lists flattened."""
    if len(args) != 1:
        raise BadArguments(
            f"{TASK_NORMALIZE} takes one positional argument, the list of prompts, and keywords "
            f"{', '.join(KEYWORDS)}; got {len(args)} positional arguments"
        )
    prompts = args[0]
    if not isinstance(prompts, list | tuple):
        raise BadArguments(f"{TASK_NORMALIZE}: the prompts must be a list of strings, got {type(prompts).__name__}")
    nested = bool(prompts) and all(isinstance(part, list | tuple) for part in prompts)
    count = sum(len(part) for part in prompts) if nested else len(prompts)
    if count > MAX_CHUNK_LINES:
        raise BadArguments(f"{TASK_NORMALIZE}: at most {MAX_CHUNK_LINES:,} prompts a task, got {count:,}")
    return [prompt for part in prompts for prompt in part] if nested else list(prompts)


def _profile(value: Any, settings: Settings) -> Mapping[str, Any]:
    """The profile spec ``value`` names: a profile's name (a built-in, or one of the worker's
    ``HERMES_PROFILE_FILE``), or a spec ``{"name": ..., "steps": [...]}`` itself."""
    if isinstance(value, Mapping):
        return value  # checked with the request, by the engine itself
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise BadArguments(
            f"{TASK_NORMALIZE}: 'profile' must be a profile's name (at most {MAX_NAME_CHARS} characters) or "
            f"{{'name': ..., 'steps': [...]}}, got {shown(value)}"
        )
    try:
        custom = load_profile_file(settings.profile_file) if settings.profile_file is not None else None
    except ProfileError as exc:
        raise NotRun(f"{TASK_NORMALIZE}: this worker's HERMES_PROFILE_FILE cannot be read: {exc}") from None
    try:
        return resolve_profile(value, custom).spec()
    except ProfileError as exc:
        raise _refused(exc) from None


@dataclass(frozen=True, slots=True)
class NormalizeCall:
    """A checked ``hermes.normalize`` call: its items, profile, options and isolation."""

    items: tuple[Item, ...]
    profile: Mapping[str, Any]
    options: ChunkOptions
    isolation: str

    @classmethod
    def from_arguments(cls, args: Sequence[Any], kwargs: Mapping[str, Any], settings: Settings) -> NormalizeCall:
        """Check the task's arguments; what they leave out comes from the worker's ``settings``.

        Raises:
            BadArguments: naming the first argument that is wrong (quoting no prompt).
            NotRun: the worker's own profile file cannot be read.
        """
        unknown = sorted(str(name) for name in kwargs if name not in KEYWORDS)
        if unknown:
            raise BadArguments(f"{TASK_NORMALIZE}: unknown keyword {shown(unknown)}; it takes {', '.join(KEYWORDS)}")
        prompts = _prompts(args)
        given = {name: value for name, value in kwargs.items() if value is not None}  # None: the default
        isolation = given.get("isolation", settings.isolation)
        if isolation not in ISOLATIONS:
            raise BadArguments(f"{TASK_NORMALIZE}: 'isolation' must be one of {', '.join(ISOLATIONS)}, got "
                               f"{shown(isolation)}")  # fmt: skip
        profile = _profile(given.get("profile", settings.profile), settings)
        defaults = ChunkOptions()
        options = {name: given.get(name, getattr(settings if declared.setting else defaults, name))
                   for name, declared in declarations()}  # fmt: skip
        payload = {"v": PAYLOAD_VERSION, "chunk": 0, "profile": profile, **options,
                   "items": [_as_item(line, prompt).to_wire() for line, prompt in enumerate(prompts, 1)]}  # fmt: skip
        try:
            request = ChunkRequest.from_payload(payload)
        except (ContractError, ProfileError) as exc:
            raise _refused(exc) from None
        return cls(tuple(request.items or ()), request.profile, request.options, isolation)

    def requests(self, chunk_size: int) -> list[ChunkRequest]:
        """The call as chunk requests of at most ``chunk_size`` items each, in order."""
        isolation = "container" if self.isolation == "container" else None
        starts = range(0, len(self.items), chunk_size)
        return [
            ChunkRequest(number, self.profile, self.options, items=list(self.items[at : at + chunk_size]),
                         isolation=isolation)
            for number, at in enumerate(starts)
        ]  # fmt: skip


def records(results: Sequence[ChunkResult]) -> list[dict[str, Any]]:
    """The records of the call's chunk results, in order, as the client gets them.

    Raises:
        BadArguments: the records are larger than any value Hermes writes to Redis.
    """
    size = sum(len(result.records) for result in results)
    if size > MAX_VALUE_BYTES:
        raise BadArguments(
            f"{TASK_NORMALIZE}: the records are {size:,} characters, over the {MAX_VALUE_BYTES:,} a result may "
            "hold: send fewer prompts a task"
        )
    found = []
    for result in results:
        shared = dict(result.provenance)  # one object per chunk, not one per record: memory
        for line in result.record_lines():
            record = fast_json.loads(line)
            record["provenance"] = shared
            found.append(record)
    return found


@dataclass(frozen=True, slots=True)
class RunHere:
    """This worker runs the call."""


@dataclass(frozen=True, slots=True)
class Forward:
    """The call goes on to ``queue``, for a worker of the tag that must run it."""

    queue: str


def placement(isolation: str, tag: str, queue: str | None, workers: list[WorkerInfo]) -> RunHere | Forward:
    """Where a call that reached a worker tagged ``tag`` on ``queue`` runs, given the live ``workers``.

    From the public queue it goes where a chunk of that isolation would (:func:`route_for`): here
    when this worker's tag is the route's, else on to the route's queue. On a tag's queue it has
    been routed already: it runs here, unless it must run in a container and this worker cannot.

    Raises:
        NotRun: no live worker can run it with ``isolation``: it is never run unisolated.

    >>> local = WorkerInfo("local@a", "local", 1, ["hermes.local", "celery"], "h", 1, {}, {})
    >>> box = WorkerInfo("container@b", "container", 1, ["hermes.container", "celery"], "h", 2, {}, {})
    >>> placement("auto", "local", "celery", [local, box]), placement("local", "local", "celery", [local, box])
    (Forward(queue='hermes.container'), RunHere())
    """
    if queue != QUEUE_PUBLIC:
        if isolation == "container" and tag != "container":
            raise NotRun(f"{TASK_NORMALIZE} asked for isolation 'container' and reached the {tag} worker's "
                         f"queue {shown(queue)}: it is never run outside a container")  # fmt: skip
        return RunHere()
    route = route_for(workers, isolation)
    if route is None:
        kind = "" if isolation == "auto" else f"{isolation} "
        raise NotRun(
            f"{TASK_NORMALIZE}: no live {kind}worker can run it with isolation {isolation!r}"
            + (" (it never runs outside a container)" if isolation == "container" else "")
        )
    return RunHere() if route.queue == QUEUE_FOR_TAG[tag] else Forward(route.queue)
