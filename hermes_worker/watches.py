"""Watches a worker's main process keeps, each on its own thread.

- :class:`DockerWatch` (container workers): stops taking container work while the Docker engine
  is gone and takes it up again once the full probe passes anew.
- :class:`LoopWatch`: frees the event loop when kombu leaves it blocked in a pub/sub read after
  a broker outage.

:func:`docker_health` is the cheap engine check both the watch and a pool process use.
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
from .settings import Settings

__all__ = ["DockerWatch", "LoopWatch", "docker_health"]

log = logging.getLogger("hermes.worker")


def docker_health(settings: Settings) -> str | None:
    """None when the Docker engine answers and holds the sandbox image; otherwise why not.

    Cheap (a ping and an image lookup, each within ``docker_timeout_s``), so a container worker
    can ask every heartbeat. The full probe (a session and the self-test) runs only when this
    turns healthy again.
    """
    if settings.container_backend != "docker":
        return None  # no cheap check for other backends: their sessions report failures
    from .sandbox.docker_backend import connect as docker_connect
    from .sandbox.errors import SandboxError, translate

    try:
        client = docker_connect(settings.docker_timeout_s)
    except SandboxError as exc:
        return exc.reason
    try:
        client.images.get(settings.sandbox_image)
    except Exception as exc:
        return translate(exc, "look up the sandbox image", settings.docker_timeout_s).reason
    finally:
        client.close()
    return None


class DockerWatch(threading.Thread):
    """A container worker's watch on its Docker engine, in the main process.

    Every heartbeat it runs :func:`docker_health`. When the engine is gone the worker stops
    consuming ``hermes.container`` (Celery's ``cancel_consumer``, sent to itself) and its
    registry entry lists no queue and says why, so producers re-route or wait instead of
    sending it chunks it cannot isolate. When the engine answers again, the full probe must
    pass before the worker consumes ``hermes.container`` again. The worker never takes local
    work instead: what it runs stays isolated.

    Args:
        settings: the worker's settings (heartbeat, Docker timeout, image).
        app: the worker's Celery app, for the control commands.
        name: the worker's node name (``container@NAME``).
        update: changes fields of the registry entry and publishes it at once.
        events: the cluster log.
    """

    def __init__(
        self, settings: Settings, app: Any, name: str, update: Callable[..., None], events: ClusterLog
    ) -> None:
        super().__init__(name="hermes-docker-watch", daemon=True)
        self._settings = settings
        self._app = app
        self._name = name
        self._update = update
        self._events = events
        self._stopped = threading.Event()
        self.serving = True

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self._settings.heartbeat_s):
            try:
                self.check()
            except Exception:  # the watch must outlive anything a check runs into
                log.exception("Docker watch check failed")

    def check(self) -> None:
        """Look at the engine once; stop or resume taking container work if that changed."""
        reason = docker_health(self._settings)
        if reason is not None and self.serving:
            self._pause(reason)
        elif reason is None and not self.serving:
            self._resume()

    def _control(self, command: str) -> bool:
        method = getattr(self._app.control, command)
        replies = method(QUEUE_CONTAINER, destination=[self._name], reply=True, timeout=5.0)
        return any(self._name in reply for reply in replies or [])

    def _pause(self, reason: str) -> None:
        if not self._control("cancel_consumer"):
            return  # no answer from our own consumer: try again at the next check
        self.serving = False
        text = f"Docker engine lost, not taking container work until it is back: {reason}"
        self._update(queues=[], probe={"tag": "local", "reason": text, "fix": "", "lost_at": time.time()})
        log.warning(text)
        self._events.emit("WARNING", "probe.lost", text, reason=reason)

    def _resume(self) -> None:
        from .probe import probe

        outcome = probe(self._settings)
        if outcome.tag != "container":
            self._update(probe={"tag": "local", "reason": outcome.reason, "fix": outcome.fix})
            return
        if not self._control("add_consumer"):
            return
        self.serving = True
        found = {"tag": outcome.tag, "reason": outcome.reason, "fix": outcome.fix, "details": outcome.details}
        image = outcome.details.get("image")
        self._update(queues=[QUEUE_CONTAINER], probe=found, provenance={"mode": "container", "image": image})
        text = f"Docker engine is back, taking container work again ({outcome.reason})"
        log.warning(text)
        self._events.emit("INFO", "probe.container", text, **found)


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
