"""Watches a worker's main process keeps, each on its own thread.

- :class:`EngineWatch` (container workers): stops taking container work while the sandbox
  backend's engine (Docker) is gone and takes it up again once the full probe passes anew.
- :class:`QueueWatch`: cancels any consumer the worker should not have (a queue not its tag's),
  and records the refusals the event loop made.
- :class:`LoopWatch`: frees the event loop when kombu leaves it blocked in a pub/sub read after
  a broker outage.

The engine check is the backend's own (:meth:`~hermes_worker.sandbox.session.SandboxSession.health`,
found by name in :mod:`hermes_worker.sandbox.backends`): cheap, so the watch asks every heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from .contract import QUEUE_CONTAINER
from .events import ClusterLog
from .guard import REFUSALS, Refusal, consumed_queues
from .sandbox.backends import backend
from .settings import Settings

__all__ = ["EngineWatch", "LoopWatch", "QueueWatch"]

log = logging.getLogger("hermes.worker")


class EngineWatch(threading.Thread):
    """A container worker's watch on its sandbox engine, in the main process.

    Every heartbeat it asks the backend's ``health`` (Docker's: the engine answers a ping and
    holds the sandbox image; a backend without a cheap check always answers yes). When the
    engine is gone the worker stops consuming ``hermes.container`` and the public queue (its
    consumer's ``cancel_task_queue``) and its registry entry lists no queue and says why, so producers
    re-route or wait instead of sending it chunks it cannot isolate. When the engine answers again, the full probe must
    pass before the worker consumes ``hermes.container`` again. The worker never takes local
    work instead: what it runs stays isolated.

    The worker changes its own consumer directly (not through remote control, which workers
    refuse by default: hermes_worker.guard), holding ``queues_lock`` while it does, so that the
    :class:`QueueWatch` never takes a change under way for a consumer it should not have.

    Args:
        settings: the worker's settings (heartbeat, Docker timeout, image).
        consumer: the worker's Celery consumer.
        name: the worker's node name (``container@NAME``).
        update: changes fields of the registry entry and publishes it at once.
        events: the cluster log.
        queues_lock: held while the consumer's queues and the registry entry change together.
        queues: the queues the worker consumes while its engine is there.
    """

    def __init__(
        self,
        settings: Settings,
        consumer: Any,
        name: str,
        update: Callable[..., None],
        events: ClusterLog,
        queues_lock: threading.Lock,
        queues: tuple[str, ...] = (QUEUE_CONTAINER,),
    ) -> None:
        super().__init__(name="hermes-engine-watch", daemon=True)
        self._backend = backend(settings.container_backend)
        self._settings = settings
        self._consumer = consumer
        self._name = name
        self._update = update
        self._events = events
        self._queues_lock = queues_lock
        self._queues = queues
        self._stopped = threading.Event()
        self.serving = True

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self._settings.heartbeat_s):
            try:
                self.check()
            except Exception:  # the watch must outlive anything a check runs into
                log.exception("engine watch check failed")

    def check(self) -> None:
        """Look at the engine once; stop or resume taking container work if that changed."""
        reason = self._backend.health(self._settings)
        if reason is not None and self.serving:
            self._pause(reason)
        elif reason is None and not self.serving:
            self._resume()

    def _consume(self, on: bool, timeout_s: float = 5.0) -> bool:
        """Start or stop consuming the worker's queues; True once the consumer has done it."""
        change = self._consumer.add_task_queue if on else self._consumer.cancel_task_queue
        for queue in self._queues:
            self._consumer.call_soon(change, queue)  # run by the event loop, like a control command
        deadline = time.monotonic() + timeout_s
        while any((queue in consumed_queues(self._consumer)) != on for queue in self._queues):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _pause(self, reason: str) -> None:
        text = f"{self._backend.engine_name} engine lost, not taking container work until it is back: {reason}"
        with self._queues_lock:
            if not self._consume(False):
                return  # the consumer did not get to it (reconnecting?): try again at the next check
            self.serving = False
            self._update(queues=[], probe={"tag": "local", "reason": text, "fix": "", "lost_at": time.time()})
        log.warning(text)
        self._events.emit("WARNING", "probe.lost", text, reason=reason)

    def _resume(self) -> None:
        from .probe import probe

        outcome = probe(self._settings)
        if outcome.tag != "container":
            self._update(probe={"tag": "local", "reason": outcome.reason, "fix": outcome.fix})
            return
        found = {"tag": outcome.tag, "reason": outcome.reason, "fix": outcome.fix, "details": outcome.details}
        image = outcome.details.get("image")
        with self._queues_lock:
            if not self._consume(True):
                return
            self.serving = True
            self._update(queues=list(self._queues), probe=found, provenance={"mode": "container", "image": image})
        text = f"{self._backend.engine_name} engine is back, taking container work again ({outcome.reason})"
        log.warning(text)
        self._events.emit("INFO", "probe.container", text, **found)


class QueueWatch(threading.Thread):
    """Every heartbeat: the worker consumes no queue but the ones its registry entry lists.

    Its tag decides its queue (``hermes.local`` or ``hermes.container``, or none while a container
    worker's Docker engine is gone). A consumer of any other queue (added by a remote-control
    command, when ``HERMES_WORKER_REMOTE_CONTROL=all`` lets one through) is cancelled at once,
    with a WARNING in the log and the cluster log. It also records the refusals the event loop
    made (:data:`hermes_worker.guard.REFUSALS`) in the cluster log and the metrics, off the loop.

    Args:
        consumer: the worker's Celery consumer.
        expected: the queues the worker should consume now (its registry entry's).
        queues_lock: held by whoever changes both (the :class:`EngineWatch`).
        period_s: how often to look.
        record: called with each refusal to record (cluster log, metrics).
    """

    def __init__(
        self,
        consumer: Any,
        expected: Callable[[], set[str]],
        queues_lock: threading.Lock,
        period_s: float,
        record: Callable[[Refusal], None],
    ) -> None:
        super().__init__(name="hermes-queue-watch", daemon=True)
        self._consumer = consumer
        self._expected = expected
        self._queues_lock = queues_lock
        self._period_s = period_s
        self._record = record
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self._period_s):
            try:
                self.check()
            except Exception:  # the watch must outlive anything a check runs into
                log.exception("queue watch check failed")

    def check(self) -> list[str]:
        """Cancel consumers of queues the worker should not consume; return their names."""
        with self._queues_lock:
            extra = sorted(consumed_queues(self._consumer) - self._expected())
            for queue in extra:
                self._consumer.call_soon(self._consumer.cancel_task_queue, queue)
        for queue in extra:
            REFUSALS.add(Refusal("wrong_queue", f"this worker was consuming queue {queue!r}, not its own: cancelled"))
        for refusal in REFUSALS.drain():
            self._record(refusal)
        return extra


class LoopWatch(threading.Thread):
    """Frees the worker's event loop when kombu leaves it blocked in a pub/sub read for ever.

    After Redis came back from an outage, the worker's event loop was seen blocked in a read on
    a fresh pub/sub connection of the remote-control channel, with nothing subscribed on it and
    no timeout (redis-py reads pub/sub without one; kombu had taken a readable, reused file
    descriptor for it): the heartbeat kept the worker registered, but it took no task again.
    A pub/sub read in the event loop takes microseconds when data is there, so this thread
    looks at the loop's thread every ``period_s``: found in the same such read twice running,
    it shuts that connection's socket down. The read ends with a connection error and Celery
    reconnects, as after any other.

    Args:
        loop_thread: the ident of the thread that runs the event loop.
        period_s: how often to look.
    """

    def __init__(self, loop_thread: int, period_s: float) -> None:
        super().__init__(name="hermes-loop-watch", daemon=True)
        self._loop_thread = loop_thread
        self._period_s = period_s
        self._stopped = threading.Event()
        self.freed = 0  # how many times the loop had to be freed

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        seen: Any = None
        while not self._stopped.wait(self._period_s):
            read = _pubsub_read(sys._current_frames().get(self._loop_thread))
            if read is None or read is not seen:
                seen = read
                continue
            seen = None
            sock = getattr(getattr(read.f_locals.get("self"), "connection", None), "_sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                self.freed += 1
                log.warning("event loop blocked in a pub/sub read for over %g s: connection reset", self._period_s)


def _pubsub_read(frame: Any) -> Any:
    """The frame of a redis-py ``PubSub.parse_response`` on the stack of ``frame``, if any."""
    while frame is not None:
        if frame.f_code.co_name == "parse_response" and isinstance(frame.f_locals.get("self"), redis.client.PubSub):
            return frame
        frame = frame.f_back
    return None
