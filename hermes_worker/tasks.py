"""The one Celery task: a thin wrapper that runs a chunk and publishes its result."""

from __future__ import annotations

from typing import Any

from celery import Task

from .app import app
from .contract import TASK_NORMALIZE_CHUNK
from .worker import process_state


class ChunkTask(Task):
    # The main process checks every message before a pool process sees it (hermes_worker.guard).
    Strategy = "hermes_worker.guard:strategy"
    # Checked by the task itself: a hand-made message may carry any arguments at all.
    typing = False


@app.task(name=TASK_NORMALIZE_CHUNK, bind=True, base=ChunkTask)
def normalize_chunk(self: Task, *args: Any, **kwargs: Any) -> None:
    """Normalize one chunk and publish its result on the producer's reply stream.

    Takes exactly ``(payload, reply)``: a chunk request (hermes_worker.contract) and
    ``{"stream": "hermes:results:BATCH", "ttl": seconds}``. Anything else is refused without
    running (logged and counted): anyone who can write to the broker can send this task.
    """
    delivery = self.request.delivery_info or {}
    process_state().handle_message(args, kwargs, self.request.hostname or "unknown", delivery.get("routing_key"))
