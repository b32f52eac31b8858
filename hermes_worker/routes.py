"""Where work goes, given who is alive: pure rules over registry entries.

A producer routes a batch's chunks by them; a worker routes a public ``hermes.normalize`` task
(:mod:`hermes_worker.public`) by the same rules.

>>> from hermes_worker.registry import WorkerInfo
>>> local = WorkerInfo("local@a", "local", 2, ["hermes.local"], "h", 1, {}, {})
>>> route_for([local], "container") is None, route_for([local], "auto").queue
(True, 'hermes.local')
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import FALLBACK_MESSAGE, QUEUE_CONTAINER, QUEUE_LOCAL
from .registry import WorkerInfo

__all__ = ["FALLBACK_MESSAGE", "Route", "route_for"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a batch goes: a queue, the live workers behind it, and anything to tell the user."""

    queue: str
    tag: str
    workers: list[WorkerInfo]
    note: str | None = None

    @property
    def concurrency(self) -> int:
        return sum(max(1, w.concurrency) for w in self.workers)



def route_for(workers: list[WorkerInfo], isolation: str) -> Route | None:
    """The route for ``isolation`` among ``workers``, or None if none of them can take it.

    A worker counts for a queue only while it consumes it: a container worker that lost its
    Docker engine stays registered, with no queue, until the engine is back.
    """
    container = [w for w in workers if w.tag == "container" and QUEUE_CONTAINER in w.queues]
    local = [w for w in workers if w.tag == "local" and QUEUE_LOCAL in w.queues]
    if isolation in ("container", "auto") and container:
        return Route(QUEUE_CONTAINER, "container", container)
    if isolation == "local" and local:
        return Route(QUEUE_LOCAL, "local", local)
    if isolation == "auto" and local:
        return Route(QUEUE_LOCAL, "local", local, note=f"{FALLBACK_MESSAGE}: no live container worker")
    return None
