"""What a worker's main process refuses before a chunk reaches a pool process.

Anyone who can write to the broker can put messages on Hermes' queues and broadcast remote-control
commands to workers (SECURITY.md, "Broker writers"). A pool process checks every field of a chunk
request against the contract (:meth:`~hermes_worker.wire.ChunkRequest.from_payload`); here the
main process checks what only the message around it says, and what it may be told to do:

- :func:`strategy` is the tasks' Celery strategy. A message for another queue than the worker's
  own (its tag's) goes back to the broker, for a worker of the right kind, and the worker stops
  consuming that queue at once: a local worker never takes container work. A message no Hermes
  producer sends (an ETA or countdown, time limits of its own, callbacks, chains, other arguments)
  is dropped. Each is logged and counted. The public task ``hermes.normalize`` has rules of its own
  (:func:`public_message_problem`): it also comes from the public queue, may be part of a chain or
  a chord of its own kind (and nothing else), and is bounded in size before its body is read; a
  dropped one gets an error result naming why, so that its client is not left waiting.
- :func:`restrict_control` leaves remote control to what monitoring needs: Flower's and
  ``celery inspect``'s questions are answered; commands that would change the worker (shutdown,
  pool size, queues, revocations, rate and time limits, memory dumps) are refused, unless
  ``HERMES_WORKER_REMOTE_CONTROL=all``.
- :func:`drop_builtins` removes the tasks Celery registers on every app (``celery.map``,
  ``celery.group``, ``celery.chord_unlock``...): they would let a message run Hermes' task
  without these checks, or make the worker send others. A message for them is an unknown task.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .contract import MAX_PUBLIC_MESSAGE_BYTES, QUEUE_FOR_TAG, QUEUE_PUBLIC, TASK_NORMALIZE, shown
from .public import KEYWORDS  # the public task's keywords: none of them holds a prompt

__all__ = [
    "CONTROL_ALLOWED",
    "Refusal",
    "Refusals",
    "drop_builtins",
    "message_problem",
    "public_message_problem",
    "restrict_control",
    "strategy",
]

log = logging.getLogger("hermes.guard")

# Remote-control commands a Hermes worker answers by default: questions, for Flower's dashboard
# and `celery inspect`, and two that only make it send events Flower asks for. Everything else
# would change the worker.
CONTROL_ALLOWED = frozenset(
    {
        "ping", "stats", "active_queues", "registered", "scheduled", "active", "reserved", "revoked", "conf",
        "report", "clock", "hello", "query_task", "dump_active", "dump_conf", "dump_reserved", "dump_revoked",
        "dump_schedule", "dump_tasks", "enable_events", "heartbeat",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message or a command was refused.

    Attributes:
        kind: a short stable label for metrics (``wrong_queue``, ``message``, ``control``).
        reason: for people; quotes no prompt.
        requeue: put the message back on the broker (its own queue) rather than drop it.
        stop_queue: the queue the worker must stop consuming, if any.
        task_id: a dropped public task's id, whose error result says why (off the event loop).
    """

    kind: str
    reason: str
    requeue: bool = False
    stop_queue: str | None = None
    task_id: str | None = None


@dataclass
class Refusals:
    """Refusals made in the event loop, logged at once and handed to a watch thread to record.

    The event loop must not wait on Redis, so the cluster-log events and counters are written by
    :class:`~hermes_worker.watches.QueueWatch`, which calls :meth:`drain` every heartbeat.
    """

    _pending: collections.deque[Refusal] = field(default_factory=lambda: collections.deque(maxlen=1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, refusal: Refusal) -> None:
        log.warning("refused: %s", refusal.reason)
        with self._lock:
            self._pending.append(refusal)

    def drain(self) -> list[Refusal]:
        with self._lock:
            found = list(self._pending)
            self._pending.clear()
        return found


REFUSALS = Refusals()


_CANVAS = ("callbacks", "errbacks", "chain", "chord")  # what makes a worker send other tasks after this one


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ()


def message_problem(
    headers: Mapping[str, Any], body: Any, delivery: Mapping[str, Any] | None, tag: str
) -> Refusal | None:
    """What is wrong with a task message for a worker tagged ``tag``, or None.

    Args:
        headers: the message headers (protocol 2).
        body: the decoded body: ``[args, kwargs, embed]``.
        delivery: the message's delivery info (``routing_key``: the queue it was sent to).
        tag: ``local`` or ``container``.

    >>> message_problem({"task": "t"}, [[1, 2], {}, {}], {"routing_key": "hermes.container"}, "local").kind
    'wrong_queue'
    >>> message_problem({"task": "t", "eta": "2099-01-01T00:00:00"}, [[1, 2], {}, {}],
    ...                 {"routing_key": "hermes.local"}, "local").reason
    'a message with an ETA or countdown (no Hermes producer sends one)'
    """
    routing = (delivery or {}).get("routing_key")
    problem = _misrouted("a chunk", routing, tag, ()) or _header_problem(headers)
    if problem is not None:
        return problem
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return Refusal("message", "a message body that is not [args, kwargs, options]")
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or len(args) != 2 or not _empty(kwargs):
        return Refusal("message", "a chunk message needs exactly two arguments, (payload, reply), and no others")
    if not isinstance(embed, Mapping) or not all(_empty(embed.get(k)) for k in _CANVAS):
        return Refusal("message", "a message with callbacks, errbacks, a chain or a chord (no producer sends one)")
    return None


def _misrouted(what: str, routing: Any, tag: str, also: tuple[str, ...]) -> Refusal | None:
    """Why ``what``, sent to queue ``routing``, must not run on a ``tag`` worker that serves its
    tag's queue and ``also``; None if it may."""
    own = QUEUE_FOR_TAG[tag]
    if routing == own or routing in also:
        return None
    # Sent to the other Hermes queue: back there, for a worker of the right kind. Anything
    # else was made by hand; putting it back could only bring it here again.
    back = routing in QUEUE_FOR_TAG.values()
    return Refusal(
        "wrong_queue",
        f"{what} for queue {shown(routing)} reached this {tag} worker, which serves {own}: "
        + ("put back, and that queue is no longer consumed here" if back else "dropped"),
        requeue=back,
        stop_queue=routing if back else None,
    )


def _header_problem(
    headers: Mapping[str, Any], ceiling: tuple[float, float] = (0.0, 0.0), why: str = "no Hermes producer sends one"
) -> Refusal | None:
    """What no Hermes sender puts in a message's headers, or None.

    ``ceiling``: the (hard, soft) time limits a message may ask for at most (none, by default);
    a worker's own are its chunk time limit and 80 % of it, which Celery puts in the messages a
    worker sends itself (a chain's next step, a chord's body). ``why`` such a message is refused.
    """
    if "task" not in headers:
        return Refusal("message", f"a message in Celery's old protocol 1 ({why})")
    if headers.get("eta") is not None:
        return Refusal("message", f"a message with an ETA or countdown ({why})")
    limits = headers.get("timelimit") or ()
    if not isinstance(limits, list | tuple) or len(limits) > 2 or not all(
        limit is None or (type(limit) in (int, float) and 0 < limit <= most + 1e-6)
        for limit, most in zip(limits, ceiling, strict=False)
    ):
        return Refusal("message", f"a message with time limits of its own ({shown(headers.get('timelimit'))})")
    return None


# Options of a linked signature that would make a worker publish somewhere of the sender's choosing.
_ROUTING = ("queue", "exchange", "routing_key", "exchange_type", "declare")


def _link_problem(name: str, value: Any) -> str | None:
    """What is wrong with the signatures a public task names under ``name`` (its callbacks, its
    chain, its chord's body), or None: each must be a plain ``hermes.normalize``, routed by Hermes."""
    if _empty(value):
        return None
    for signature in [value] if name == "chord" else value if isinstance(value, list | tuple) else [value]:
        if not (isinstance(signature, Mapping) and signature.get("task") == TASK_NORMALIZE
                and signature.get("subtask_type") is None):  # fmt: skip
            return f"a {TASK_NORMALIZE} message whose {name} names another task than {TASK_NORMALIZE}"
        options = signature.get("options")
        if not isinstance(options, Mapping) or any(options.get(key) is not None for key in _ROUTING):
            return f"a {TASK_NORMALIZE} message whose {name} says where to send it (Hermes routes it)"
    return None


def public_message_problem(
    headers: Mapping[str, Any],
    body: Callable[[], Any],
    delivery: Mapping[str, Any] | None,
    tag: str,
    size: int,
    limits: tuple[float, float] = (0.0, 0.0),
) -> Refusal | None:
    """What is wrong with a ``hermes.normalize`` message of ``size`` bytes for a ``tag`` worker, or None.

    What the task's arguments hold is the task's to check: a wrong one is its error result. This
    checks what Celery acts on in the worker's main process, before any task runs, and what the
    worker would send after it: ``body`` (called only once the size is known to be bounded)
    decodes the message body; ``limits``, the worker's own (hard, soft) time limits, are the
    most a message may ask for. A dropped message names its task id, when it has one a result
    may be stored under, so that the client gets the reason as its error result.

    >>> good = [[["a  b"]], {"profile": "compact"}, {}]
    >>> public_message_problem({"task": "hermes.normalize", "id": "t1"}, lambda: good,
    ...                        {"routing_key": "celery"}, "local", 100) is None
    True
    >>> public_message_problem({"task": "hermes.normalize", "id": "t1", "eta": "2099-01-01T00:00:00"},
    ...                        lambda: good, {"routing_key": "celery"}, "local", 100).task_id
    't1'
    """
    problem = _misrouted(f"a {TASK_NORMALIZE} task", (delivery or {}).get("routing_key"), tag, (QUEUE_PUBLIC,))
    if problem is not None and problem.requeue:
        return problem
    task_id = headers.get("id")
    valid_id = isinstance(task_id, str) and 0 < len(task_id) <= 255 and task_id.isprintable()
    if problem is None and not valid_id:
        return Refusal("message", f"a {TASK_NORMALIZE} message without a task id a result can be stored under")
    why = f"{TASK_NORMALIZE} runs when it arrives, within the worker's own time limits"
    problem = problem or _header_problem(headers, limits, why)
    if problem is None and size > MAX_PUBLIC_MESSAGE_BYTES:
        bound = f"over the {MAX_PUBLIC_MESSAGE_BYTES:,} a message may hold: send fewer prompts a task"
        problem = Refusal("message", f"a {TASK_NORMALIZE} message of {size:,} bytes, {bound}")
    problem = problem or _public_body_problem(body())
    if problem is None or not valid_id:
        return problem
    return replace(problem, task_id=task_id)


def _public_body_problem(body: Any) -> Refusal | None:
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return Refusal("message", "a message body that is not [args, kwargs, options]")
    args, kwargs, embed = body
    if not (isinstance(args, list | tuple) and isinstance(kwargs, Mapping) and isinstance(embed, Mapping)):
        return Refusal("message", "a message body that is not [args, kwargs, options]")
    if not _empty(embed.get("errbacks")):
        return Refusal("message", f"a {TASK_NORMALIZE} message with errbacks (its error is in its result)")
    for name in ("callbacks", "chain", "chord"):
        reason = _link_problem(name, embed.get(name))
        if reason is not None:
            return Refusal("message", reason)
    return None


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """The tasks' Celery strategy: :func:`message_problem` (or :func:`public_message_problem`)
    first, then Celery's default one.

    Set as ``Task.Strategy``; Celery calls it once per task when the consumer starts. The task
    carries the worker's runtime (:func:`hermes_worker.tasks.register`), whose tag decides the queue.
    """
    from celery.worker.strategy import default

    handle = default(task, app, consumer, **kwargs)
    runtime = task.runtime  # its identity was decided in celeryd_init, before the consumer started
    public = task.name == TASK_NORMALIZE

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **more: Any) -> Any:
        # message.payload decodes the body (Celery's default strategy does the same next); a
        # body that cannot be decoded or is not allowed raises here, and the consumer refuses
        # it the usual way.
        tag, headers = runtime.identity.tag, message.headers or {}
        if public:
            size = len(message.body or b"")
            hard = runtime.settings.chunk_time_limit_s
            problem = public_message_problem(
                headers, lambda: message.payload, message.delivery_info, tag, size, (hard, hard * 0.8)
            )
        else:
            problem = message_problem(headers, message.payload, message.delivery_info, tag)
        if problem is None:
            if public:
                _summarize(headers, message.payload)
            return handle(message, body, ack, reject, callbacks, **more)
        if problem.requeue:
            reject(log, consumer.connection_errors, True)
        else:
            ack(log, consumer.connection_errors)
        if problem.stop_queue is not None and problem.stop_queue in consumed_queues(consumer):
            consumer.call_soon(consumer.cancel_task_queue, problem.stop_queue)
        REFUSALS.add(problem)
        return None

    return on_message


def _summarize(headers: dict[str, Any], body: Any) -> None:
    """Put a summary of a public task's arguments in its headers, in place of the client's repr of
    them: task events (Flower) and the worker's log show the summary, never a prompt."""
    args, kwargs, _ = body
    prompts = args[0] if len(args) == 1 and isinstance(args[0], list | tuple) else None
    headers["argsrepr"] = f"({len(prompts)} prompts)" if prompts is not None else f"({len(args)} arguments)"
    headers["kwargsrepr"] = shown({key: value for key, value in kwargs.items() if key in KEYWORDS})


def consumed_queues(consumer: Any) -> set[str]:
    """The names of the task queues ``consumer`` takes messages from now (empty while it reconnects)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return set()
    return {queue.name for queue in list(task_consumer.queues)}


def restrict_control(allow_all: bool) -> list[str]:
    """Refuse every remote-control command outside :data:`CONTROL_ALLOWED`; return their names.

    Celery's worker looks commands up in ``Panel.data`` for every message, so replacing the
    entries in this (worker) process takes effect at once. A refused command answers with an
    error (Flower shows it) and is logged and counted.
    """
    from celery.worker.control import Panel

    if allow_all:
        return []
    refused = sorted(name for name in Panel.data if name not in CONTROL_ALLOWED)
    for name in refused:
        Panel.data[name] = _refuser(name)
    return refused


def _refuser(name: str) -> Callable[..., dict[str, str]]:
    def refuse(state: Any, **arguments: Any) -> dict[str, str]:
        REFUSALS.add(Refusal("control", f"remote-control command {name!r} ({shown(arguments)})"))
        return {"error": f"refused by Hermes: remote-control command {name!r} is off (HERMES_WORKER_REMOTE_CONTROL)"}

    return refuse


def drop_builtins(app: Any) -> list[str]:
    """Unregister Celery's built-in tasks from ``app``; return their names."""
    names = sorted(name for name in app.tasks if name.startswith("celery."))
    for name in names:
        app.tasks.unregister(name)
    return names
