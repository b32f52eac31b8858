"""Hermes' two Celery tasks, thin: each hands its message to its process's handler.

- ``hermes.normalize_chunk`` (:func:`normalize_chunk`): a chunk of a batch, from Hermes' own
  producers; its result goes on the batch's reply stream.
- ``hermes.normalize`` (:func:`normalize`): the public task, for any Celery client; its records
  are its result, through Celery's result backend (:mod:`hermes_worker.public`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery, Task

from .contract import QUEUE_PUBLIC, TASK_NORMALIZE, TASK_NORMALIZE_CHUNK
from .metrics import add, chunk_increments
from .public import Forward, NormalizeCall, NotRun, PublicTaskError, placement, records
from .registry import Registry
from .wire import ChunkResult

if TYPE_CHECKING:
    from .handling import ChunkHandler
    from .runtime import WorkerRuntime

__all__ = ["ChunkTask", "PublicTask", "register"]

log = logging.getLogger("hermes.worker")


class ChunkTask(Task):
    # The main process checks every message before a pool process sees it (hermes_worker.guard).
    Strategy = "hermes_worker.guard:strategy"
    # Checked by the task itself: a hand-made message may carry any arguments at all.
    typing = False
    # The runtime of the app the task is registered on (set by register()).
    runtime: WorkerRuntime


class PublicTask(ChunkTask):
    # Its records are its result: stored in the result backend (HERMES_RESULT_BACKEND), which
    # expires them after HERMES_RESULT_TTL, whatever task_ignore_result says for chunks.
    ignore_result = False
    # Task events (Flower) and the worker's log show no record: the text of prompts stays out.
    resultrepr_maxsize = 0
    # Its error results are the caller's to read, not the worker's failures: logged in one line.
    throws = (PublicTaskError,)


def normalize_chunk(self: ChunkTask, *args: Any, **kwargs: Any) -> None:
    """Normalize one chunk and publish its result on the producer's reply stream.

    Takes exactly ``(payload, reply)``: a chunk request (hermes_worker.contract) and
    ``{"stream": "hermes:results:BATCH", "ttl": seconds}``. Anything else is refused without
    running (logged and counted): anyone who can write to the broker can send this task.
    """
    delivery = self.request.delivery_info or {}
    handler = self.runtime.handler()
    handler.handle_message(args, kwargs, self.request.hostname or "unknown", delivery.get("routing_key"))


def normalize(self: PublicTask, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """The public task: one ``hermes batch`` record per prompt, in order (hermes_worker.public).

    Takes ``(prompts, profile=..., isolation=..., max_validation=..., explain=...,
    max_prompt_bytes=..., item_time_budget=...)``. From the public queue it goes where a chunk of
    its isolation would: run here, or sent on (same task id, chord and callbacks) to the queue of
    the tag that must run it. Wrong arguments, or no live worker for its isolation, end as its
    error result (:class:`~hermes_worker.public.PublicTaskError`).
    """
    runtime = self.runtime
    call = NormalizeCall.from_arguments(args, kwargs, runtime.settings)
    handler, queue = runtime.handler(), (self.request.delivery_info or {}).get("routing_key")
    # Only a call from the public queue is routed; on a tag's queue it has been already.
    workers = Registry(handler.redis, runtime.settings.worker_ttl_s).live() if queue == QUEUE_PUBLIC else []
    where = placement(call.isolation, runtime.identity.tag, queue, workers)
    if isinstance(where, Forward):
        log.info("%s[%s] sent on to %s (isolation %s)", TASK_NORMALIZE, self.request.id, where.queue, call.isolation)
        forwarded = self.signature(args, kwargs, queue=where.queue, argsrepr="(forwarded)", kwargsrepr="{}")
        return self.replace(forwarded)  # type: ignore[no-any-return]  # raises Ignore: the result is the new task's
    return run_call(handler, call, self.request.hostname or "unknown")


def run_call(handler: ChunkHandler, call: NormalizeCall, worker: str) -> list[dict[str, Any]]:
    """Run a public call's chunks through ``handler`` (here or in its sandbox) and give its records.

    Raises:
        NotRun: a chunk ran past the soft time limit, or the sandbox engine went away.
    """
    results: list[ChunkResult] = []
    mode = handler.runner.mode
    for request in call.requests(handler.settings.chunk_size):
        started = time.perf_counter()
        outcome = handler.run_request(request, worker, request.to_payload())
        if isinstance(outcome, str):
            raise NotRun(f"{TASK_NORMALIZE}: {outcome}: send fewer prompts a task")
        if outcome is None:
            raise NotRun(f"{TASK_NORMALIZE}: the sandbox engine went away on {worker}: send the task again")
        results.append(outcome)
        with contextlib.suppress(redis.RedisError), handler.redis.pipeline(transaction=False) as pipe:
            add(pipe, worker, chunk_increments(outcome, time.perf_counter() - started, mode))
            pipe.execute()
    return records(results)


def register(app: Celery, runtime: WorkerRuntime) -> list[Task]:
    """Register :func:`normalize_chunk` and :func:`normalize` on ``app``, run by ``runtime``'s handlers.

    Every worker runs the public task when it reaches its tag's queue; HERMES_PUBLIC_TASK says
    whether it also takes it from the public queue (hermes_worker.runtime).
    """
    # shared=False: the tasks belong to this app only, never to apps made later in the process.
    return [
        app.task(name=TASK_NORMALIZE_CHUNK, bind=True, base=ChunkTask, shared=False, runtime=runtime)(normalize_chunk),
        app.task(name=TASK_NORMALIZE, bind=True, base=PublicTask, shared=False, runtime=runtime)(normalize),
    ]
