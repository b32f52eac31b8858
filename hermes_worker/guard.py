"""What a worker's main process refuses before a chunk reaches a pool process.

Anyone who can write to the broker can put messages on Hermes' queues and broadcast remote-control
commands to workers (SECURITY.md, "Broker writers"). A pool process checks every field of a chunk
request against the contract (:meth:`~hermes_worker.wire.ChunkRequest.from_payload`); here the
main process checks what only the message around it says, and what it may be told to do:

- :func:`strategy` is the task's Celery strategy. A message for another queue than the worker's
  own (its tag's) goes back to the broker, for a worker of the right kind, and the worker stops
  consuming that queue at once: a local worker never takes container work. A message no Hermes
  producer sends (an ETA or countdown, time limits of its own, callbacks, chains, other arguments)
  is dropped. Each is logged and counted.
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
from dataclasses import dataclass, field
from typing import Any

from .contract import QUEUE_FOR_TAG, shown

__all__ = [
    "CONTROL_ALLOWED",
    "Refusal",
    "Refusals",
    "drop_builtins",
    "message_problem",
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
    """

    kind: str
    reason: str
    requeue: bool = False
    stop_queue: str | None = None


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
    'a message with an ETA (no Hermes producer sends one)'
    """
    own = QUEUE_FOR_TAG[tag]
    routing = (delivery or {}).get("routing_key")
    if routing != own:
        # Sent to the other Hermes queue: back there, for a worker of the right kind. Anything
        # else was made by hand; putting it back could only bring it here again.
        back = routing in QUEUE_FOR_TAG.values()
        return Refusal(
            "wrong_queue",
            f"a chunk for queue {shown(routing)} reached this {tag} worker, which serves {own}: "
            + ("put back, and that queue is no longer consumed here" if back else "dropped"),
            requeue=back,
            stop_queue=routing if back else None,
        )
    if "task" not in headers:
        return Refusal("message", "a message in Celery's old protocol 1 (no Hermes producer sends one)")
    if headers.get("eta") is not None:
        return Refusal("message", "a message with an ETA (no Hermes producer sends one)")
    if any(limit is not None for limit in headers.get("timelimit") or ()):
        return Refusal("message", f"a message with time limits of its own ({shown(headers.get('timelimit'))})")
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return Refusal("message", "a message body that is not [args, kwargs, options]")
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or len(args) != 2 or not _empty(kwargs):
        return Refusal("message", "a chunk message needs exactly two arguments, (payload, reply), and no others")
    if not isinstance(embed, Mapping) or not all(_empty(embed.get(k)) for k in _CANVAS):
        return Refusal("message", "a message with callbacks, errbacks, a chain or a chord (no producer sends one)")
    return None


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """The task's Celery strategy: :func:`message_problem` first, then Celery's default one.

    Set as ``Task.Strategy``; Celery calls it once per task when the consumer starts. The task
    carries the worker's runtime (:func:`hermes_worker.tasks.register`), whose tag decides the queue.
    """
    from celery.worker.strategy import default

    handle = default(task, app, consumer, **kwargs)
    runtime = task.runtime  # its identity was decided in celeryd_init, before the consumer started

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **more: Any) -> Any:
        # message.payload decodes the body (Celery's default strategy does the same next); a
        # body that cannot be decoded or is not allowed raises here, and the consumer refuses
        # it the usual way.
        tag = runtime.identity.tag
        problem = message_problem(message.headers or {}, message.payload, message.delivery_info, tag)
        if problem is None:
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
