"""The one Celery task: a thin wrapper that runs a chunk and publishes its result."""

from __future__ import annotations

from typing import Any

from celery import Task

from .app import app
from .contract import TASK_NORMALIZE_CHUNK
from .worker import process_state


@app.task(name=TASK_NORMALIZE_CHUNK, bind=True)
def normalize_chunk(self: Task, payload: dict[str, Any], reply: dict[str, Any]) -> None:
    """Normalize one chunk and publish its result on the producer's reply stream.

    Args:
        payload: a chunk request (hermes_worker.contract).
        reply: ``{"stream": "hermes:results:BATCH", "ttl": seconds}`` from the producer.
    """
    process_state().handle(payload, reply, self.request.hostname or "unknown")
