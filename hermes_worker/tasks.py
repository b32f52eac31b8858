"""The one Celery task: a thin wrapper that hands a chunk message to its process's handler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from .contract import TASK_NORMALIZE_CHUNK

if TYPE_CHECKING:
    from .runtime import WorkerRuntime

__all__ = ["ChunkTask", "register"]


class ChunkTask(Task):
    # The main process checks every message before a pool process sees it (hermes_worker.guard).
    Strategy = "hermes_worker.guard:strategy"
    # Checked by the task itself: a hand-made message may carry any arguments at all.
    typing = False
    # The runtime of the app the task is registered on (set by register()).
    runtime: WorkerRuntime


def normalize_chunk(self: ChunkTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Normalize one chunk and publish its result on the producer's reply stream.

    Takes exactly ``(payload, reply)``: a chunk request (hermes_worker.contract) and
    ``{"stream": "hermes:results:BATCH", "ttl": seconds}``. Anything else is refused without
    running (logged and counted): anyone who can write to the broker can send this task.

    Returns the chunk's counts (``{"chunk": 3, "ok": 1022, "failed": 2, "errors": {...}}``) or
    what became of it: Celery's task-succeeded event carries it, so Flower shows a chunk whose
    items failed as such. Results are ignored (never stored): the records went on the stream.
    """
    delivery = self.request.delivery_info or {}
    handler = self.runtime.handler()
    return handler.handle_message(args, kwargs, self.request.hostname or "unknown", delivery.get("routing_key"))


def register(app: Celery, runtime: WorkerRuntime) -> Task:
    """Register :func:`normalize_chunk` on ``app``, run by ``runtime``'s handlers."""
    # shared=False: the task belongs to this app only, never to apps made later in the process.
    return app.task(name=TASK_NORMALIZE_CHUNK, bind=True, base=ChunkTask, shared=False, runtime=runtime)(
        normalize_chunk
    )
