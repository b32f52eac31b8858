"""The worker's runtime: one object that holds what a worker keeps, and Celery's signals delegating to it.

:func:`~hermes_worker.app.create_app` makes one :class:`WorkerRuntime` per app. It answers
Celery's signals only once a worker of *its* app initialises (``celeryd_init``), so building an
app (for ``celery inspect``, or twice in one process) starts nothing. From then on:

- ``celeryd_init`` (main process, before consuming): decide the identity (probe Docker, unless
  ``hermes worker`` decided it already and handed it in), and consume only the tag's queue.
- ``worker_ready`` / ``worker_shutdown``: start and stop the registry heartbeat, the
  :class:`~.watches.LoopWatch` that frees the event loop from a pub/sub read kombu can leave it
  blocked in after a broker outage, the :class:`~.watches.QueueWatch` that cancels any consumer
  of a queue that is not the tag's, and on a container worker the :class:`~.watches.EngineWatch`,
  which stops taking container work while the sandbox engine is gone and takes it up again once
  the probe passes anew. Remote-control commands that would change the worker are refused from
  here on (:func:`~hermes_worker.guard.restrict_control`).
- ``worker_process_init``: a pool process told SIGTERM closes its sandbox session before it exits.
- ``worker_process_shutdown``: close the process's sandbox session (its container goes too).
- ``worker_shutting_down`` (SIGTERM, Ctrl-C): warm shutdown waits for running chunks; if it is
  still waiting with none running, the pool processes are told to go (Celery's prefork pool was
  seen to wait for ever for an idle process that never got its stop message, when SIGTERM came
  just as a chunk had been received but not yet handed to it).

No cluster-log event when a task is received: the main process takes every message of the
worker, and a DEBUG event for each cost it a Redis round trip per chunk (issue 13); the pool
process's ``chunk.started``, in the round trip that fetches the chunk's lines, follows at once.

Each process (the main one and every pool process) has its own
:class:`~.handling.ChunkHandler`, made on first use: a pool process forked later never reuses
the Redis connections or the sandbox of the process it was forked from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import redis
from celery import signals
from celery.worker import state as celery_state

from .contract import TASK_NORMALIZE, shown, worker_queues
from .events import ClusterLog
from .guard import Refusal, restrict_control
from .handling import ChunkHandler
from .identity import FALLBACK_MESSAGE, Identity, announce, decide, versions
from .metrics import bump, serve
from .public import NotRun
from .redact import RedactingFilter, redact, redact_data
from .redis_conn import results_client
from .registry import Heartbeat, Registry, WorkerInfo, node_name_problem
from .runners import make_runner
from .settings import Settings
from .watches import EngineWatch, LoopWatch, QueueWatch

__all__ = ["RegistryEntry", "WorkerRuntime"]

log = logging.getLogger("hermes.worker")


class RegistryEntry:
    """The worker's registry entry as the main process keeps it; watches change it from their threads.

    Args:
        fields: the :class:`~.registry.WorkerInfo` fields that do not change every heartbeat.
    """

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields
        self._lock = threading.Lock()
        # Held while the consumer's queues and the entry's change together (EngineWatch, QueueWatch).
        self.queues_lock = threading.Lock()
        self.heartbeat: Heartbeat | None = None

    def snapshot(self) -> WorkerInfo:
        with self._lock:
            current = dict(self._fields)
        return WorkerInfo(
            **current,
            heartbeat_at=time.time(),
            active=len(celery_state.active_requests),
            processed=sum(celery_state.total_count.values()),
        )

    def queues(self) -> set[str]:
        with self._lock:
            return set(self._fields["queues"])

    def update(self, **changes: Any) -> None:
        """Change fields and publish the entry at once: producers must see it now, not a heartbeat later."""
        with self._lock:
            self._fields.update(changes)
        if self.heartbeat is not None:
            self.heartbeat.beat()


class WorkerRuntime:
    """Identity, heartbeat, watches and per-process chunk handlers of one worker app.

    Args:
        settings: the worker's settings.
        identity: decided already (``hermes worker`` probes before Celery starts); None: the
            runtime probes when the worker initialises.
    """

    def __init__(self, settings: Settings, identity: Identity | None = None) -> None:
        self.settings = settings
        self.identity = identity or Identity()
        self._decided = identity is not None
        self._app: Any = None
        self._entry: RegistryEntry | None = None
        self._watches: list[EngineWatch | LoopWatch | QueueWatch] = []
        self._handler: ChunkHandler | None = None
        self._handler_pid = 0

    def attach(self, app: Any) -> None:
        """Answer Celery's signals for workers of ``app``, from the moment one initialises."""
        self._app = app
        signals.celeryd_init.connect(self._on_celeryd_init, weak=False)

    def handler(self) -> ChunkHandler:
        """This process's chunk handler (made on first use, again in a process forked since)."""
        if self._handler is None or self._handler_pid != os.getpid():
            client = results_client(self.settings)
            runner = make_runner(self.identity.tag, self.settings, f"{socket.gethostname()}-{os.getpid()}")
            self._handler, self._handler_pid = ChunkHandler(self.settings, runner, client), os.getpid()
        return self._handler

    # Main process ------------------------------------------------------------------------------

    def _on_celeryd_init(self, sender: Any = None, instance: Any = None, **_: Any) -> None:
        if getattr(instance, "app", None) is not self._app:
            return  # another app's worker
        if not self._decided:
            self.identity = decide(self.settings)
            announce(self.identity, None)
            self._decided = True
        if self.settings.worker_mode == "container" and self.identity.tag != "container":
            # SystemExit, not a HermesError: Celery's signal dispatcher logs and swallows any
            # Exception a receiver raises, and the worker would start anyway (`celery -A`).
            raise SystemExit(f"--mode container, but {FALLBACK_MESSAGE.lower()}: {self.identity.probe.get('reason')}")
        problem = node_name_problem(str(sender))
        if problem is not None:  # `celery -n`: a name no reader of the registry would take
            raise SystemExit(f"the worker name {shown(str(sender))} cannot be registered: {problem}")
        taken = name_taken(self.settings, self.identity, str(sender))
        if taken is not None:
            raise SystemExit(taken)  # SystemExit: as above
        # The tag decides the queue: a local worker never takes container work, or vice versa.
        # (A -Q on the command line selects again after this; the guard refuses what it lets in.)
        instance.app.amqp.queues.select(worker_queues(self.identity.tag, self.settings.public_task))
        self._connect_signals()

    def _connect_signals(self) -> None:
        for signal_, handler in (
            (signals.after_setup_logger, _redact_logs),
            (signals.after_setup_task_logger, _redact_logs),
            (signals.worker_ready, self._on_worker_ready),
            (signals.worker_shutdown, self._on_worker_shutdown),
            (signals.worker_shutting_down, _on_shutting_down),
            (signals.worker_process_init, self._on_process_init),
            (signals.worker_process_shutdown, self._on_process_shutdown),
            (signals.task_retry, self._on_task_retry),
        ):
            signal_.connect(handler, weak=False)

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        """Register the worker, start its heartbeat and watches, and say it is online."""
        settings, name = self.settings, sender.hostname
        client = results_client(settings)
        concurrency = int(getattr(sender.controller, "concurrency", 0) or settings.concurrency)
        self._entry = entry = RegistryEntry(self._registry_fields(name, concurrency))
        entry.heartbeat = Heartbeat(Registry(client, settings.worker_ttl_s), entry.snapshot, settings.heartbeat_s)
        entry.heartbeat.beat()
        entry.heartbeat.start()
        refused = restrict_control(settings.worker_remote_control == "all")
        if refused:
            log.info("remote control: %d command(s) that would change this worker are refused", len(refused))
        self._start_watches(sender, name, client, entry)
        bump(client, name, "probe", outcome=self.identity.tag)
        if settings.metrics_port:
            serve(client, settings.metrics_port, settings.metrics_address, source=name)
            log.info("Hermes metrics for %s on %s:%d/metrics", name, settings.metrics_address, settings.metrics_port)
        tag = self.identity.tag
        ClusterLog(client, name).emit(
            "INFO", "worker.online", f"worker {name} online, tag {tag}", tag=tag, concurrency=concurrency
        )

    def _registry_fields(self, name: str, concurrency: int) -> dict[str, Any]:
        return registry_fields(self.identity, name, concurrency, self.settings.public_task)


    def _start_watches(self, consumer: Any, name: str, client: Any, entry: RegistryEntry) -> None:
        settings = self.settings
        events = ClusterLog(client, name)

        def record(refusal: Refusal) -> None:
            bump(client, name, "messages_refused", kind=refusal.kind)
            events.emit("WARNING", "worker.refused", refusal.reason, kind=refusal.kind)
            if refusal.task_id is not None:  # a dropped public task: its client learns why
                self._store_refusal(refusal.task_id, refusal.reason)

        self._watches = [
            LoopWatch(threading.get_ident(), settings.heartbeat_s),
            QueueWatch(consumer, entry.queues, entry.queues_lock, settings.heartbeat_s, record),
        ]
        if self.identity.tag == "container":
            queues = tuple(worker_queues("container", settings.public_task))
            self._watches.append(
                EngineWatch(settings, consumer, name, entry.update, ClusterLog(client, name), entry.queues_lock, queues)
            )
        for watch in self._watches:
            watch.start()

    def _store_refusal(self, task_id: str, reason: str) -> None:
        """The error result of a public task the main process refused (off the event loop)."""
        try:
            self._app.backend.mark_as_failure(task_id, NotRun(f"{TASK_NORMALIZE} refused: {reason}"))
        except Exception as exc:  # the refusal is logged and counted already
            log.warning("refused task %s: its error result not stored (%s)", task_id, redact(str(exc)))

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        for watch in self._watches:
            watch.stop()
        if self._entry is not None and self._entry.heartbeat is not None:
            self._entry.heartbeat.stop()
            settings = self.settings
            ClusterLog(results_client(settings), str(sender)).emit(
                "INFO", "worker.offline", f"worker {sender} shutting down"
            )

    def _on_task_retry(self, request: Any = None, reason: Any = None, **_: Any) -> None:
        events = self.handler().events_for(request.hostname)
        events.emit("WARNING", "chunk.retried", f"chunk retried: {reason}", task_id=request.id)

    # Pool processes ----------------------------------------------------------------------------

    def _on_process_init(self, **_: Any) -> None:
        # Celery resets SIGTERM to its default in pool processes: they would die with their sandbox
        # container still running. Close it first (the chunk in flight, if any, goes back to the
        # queue: acks_late with reject_on_worker_lost).
        signal.signal(signal.SIGTERM, self._process_terminated)

    def _process_terminated(self, signum: int, frame: Any) -> None:
        with contextlib.suppress(Exception):
            self._close_runner()
        os._exit(128 + signum)

    def _on_process_shutdown(self, **_: Any) -> None:
        self._close_runner()

    def _close_runner(self) -> None:
        if self._handler is not None and self._handler_pid == os.getpid():
            self._handler.runner.close()


def _redact_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery masks the broker password in its banner; everything else a worker logs (kombu's
    # connection errors, exception texts, tracebacks) goes through the same redaction as
    # Hermes' own logs, whichever handler Celery set up.
    for handler in {*logging.getLogger().handlers, *(logger.handlers if logger else [])}:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def _on_shutting_down(**_: Any) -> None:
    threading.Thread(target=_unstick_shutdown, name="hermes-shutdown-watch", daemon=True).start()


def _unstick_shutdown(grace_s: float = 5.0) -> None:
    """Tell the pool processes to go if shutdown waits ``grace_s`` with no chunk running."""
    idle_since: float | None = None
    while True:
        time.sleep(0.5)
        if celery_state.active_requests:
            idle_since = None
            continue
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since < grace_s:
            continue
        children = _child_pids()
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        log.warning("shutdown still waiting with no chunk running: %d pool process(es) told to go", len(children))
        return


def _child_pids() -> list[int]:
    """The pids of this process's children (the pool processes)."""
    pids: list[int] = []
    for task in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []:
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children", encoding="ascii") as handle:
            pids += [int(pid) for pid in handle.read().split()]
    return pids


def registry_fields(identity: Identity, name: str, concurrency: int, public: bool) -> dict[str, Any]:
    """The fields of a worker's registry entry that do not change every heartbeat."""
    return dict(
        name=name,
        tag=identity.tag,
        concurrency=concurrency,
        queues=worker_queues(identity.tag, public),
        host=socket.gethostname(),
        pid=os.getpid(),
        versions=versions(),
        provenance={"mode": identity.tag, "image": identity.probe.get("details", {}).get("image")},
        probe=redact_data(identity.probe),  # anyone who reads Redis reads the registry
        started_at=identity.started_at,
    )


def name_taken(settings: Settings, identity: Identity, name: str) -> str | None:
    """Claim the worker name ``name`` in the registry; why not, if a live worker holds it.

    Two workers with one name would be one entry in the registry: ``hermes workers`` would show
    one, and the first to stop would remove the entry of the other. Redis unreachable: nothing
    to claim from yet (Celery retries the broker), so the worker goes on.
    """
    try:
        client = results_client(settings)
        # No queue yet: the worker consumes nothing until it is ready (its first heartbeat lists
        # them), and nobody may take it for a worker that does (producers route by queues).
        fields = registry_fields(identity, name, settings.concurrency, settings.public_task) | {"queues": []}
        info = WorkerInfo(**fields, heartbeat_at=time.time())
        holder = Registry(client, settings.worker_ttl_s).claim(info)
    except redis.RedisError as exc:
        log.warning("worker name %s not claimed (Redis: %s); going on", name, redact(str(exc)))
        return None
    if holder is None:
        return None
    return (
        f"a live worker is already called {name} (pid {holder.pid} on {holder.host}, last heartbeat "
        f"{holder.age():.0f} s ago): give this one another name (hermes worker --name NAME, celery -n)"
    )
