"""Decide where a command's chunks run: on the cluster, or in-process (the embedded default).

The rules, in order:

0. A broker or result Redis that answers but refuses us (wrong password, no permission, a TLS
   certificate that does not verify): :class:`ClusterRefused` (exit 2) naming the URL (password
   masked) and the reason.
   A configuration error is never a reason to run somewhere else.
1. No broker answering: in-process (the embedded default), with a one-line notice;
   ``--no-fallback`` makes it :class:`NowhereToRun` (exit 3). In-process runs are local
   (``auto`` included: a sandbox session per command would cost a second or more for
   nothing asked for); ``container`` probes Docker here first and runs inside sandbox
   sessions when it passes, else raises :class:`NowhereToRun`.
2. Broker answering, a live worker for the isolation asked for: the cluster.
   ``--isolation auto`` prefers container workers and, with none alive, uses local workers
   and says ``Docker is unavailable, using local processing``.
3. Broker answering, no suitable worker: wait up to ``--wait-for-workers`` seconds; then, for
   ``auto`` and ``local``, in-process with a notice (``--no-fallback``: :class:`NowhereToRun`
   naming the kind of worker missing). ``container`` never falls back to unisolated processing.
   Redis answers, so such a batch is still on the board of running batches (``hermes batches``).

This module decides and raises; the command line turns its errors into exit codes (guard.py).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_worker.contract import new_batch_id
from hermes_worker.errors import HermesError
from hermes_worker.metrics import bump
from hermes_worker.processing import process_chunk
from hermes_worker.redact import redact
from hermes_worker.settings import Settings
from hermes_worker.wire import ChunkRequest, ChunkResult

from . import logs
from .batch_board import OnBoard
from .celery_executor import CeleryExecutor
from .chunk_events import Event, render
from .cluster import Cluster, ClusterRefused, ClusterUnavailable, Route
from .context import Context
from .executors import ChunkExecutor, InProcessExecutor

__all__ = ["NowhereToRun", "Placement", "choose_executor"]


class NowhereToRun(HermesError):
    """No executor may take the chunks as asked: ``--isolation container`` with no container to
    run in, or ``--no-fallback`` with no cluster to run on (an infrastructure error, exit 3)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """What the user asked for on the command line (None: take it from the settings)."""

    isolation: str | None = None
    no_fallback: bool | None = None
    wait_for_workers_s: float | None = None


def _probe_here(ctx: Context) -> str:
    """``container``, for in-process runs that must be isolated, once the Docker probe passed here.

    Raises:
        NowhereToRun: the probe failed; the reason and the fix.
    """
    from hermes_worker.probe import probe  # Docker code only when a container is wanted

    outcome = probe(ctx.settings)
    if outcome.tag != "container":
        # The reason may name DOCKER_HOST, which can carry credentials.
        reason, fix = redact(outcome.reason), f". Fix: {redact(outcome.fix)}" if outcome.fix else ""
        raise NowhereToRun(f"--isolation container, but the Docker probe failed: {reason}{fix}")
    return "container"


def _in_process_fallback(payload: dict[str, Any]) -> ChunkResult:
    return process_chunk(ChunkRequest.from_payload(payload), mode="local", worker=f"embedded@{socket.gethostname()}")


def choose_executor(
    ctx: Context,
    placement: Placement,
    processes: int,
    batch_id: str | None = None,
    connect: Callable[[Settings], Cluster] = Cluster.connect,
    board: bool = False,
) -> ChunkExecutor:
    """Pick the executor for this command and tell the user, once, what was chosen and why.

    ``batch_id`` names the batch (its result stream, its entry on the board; a new one if None).
    ``board``: a batch that runs in-process while Redis answers is on the board of running
    batches too (on the cluster it always is). ``connect`` opens the cluster view (tests hand in
    one whose live workers they choose).

    Raises:
        ClusterRefused: the broker or the result Redis refuses our credentials (exit 2).
        NowhereToRun: the chunks may run nowhere that ``placement`` allows (exit 3).
    """
    settings = ctx.settings
    isolation = placement.isolation or settings.isolation
    no_fallback = settings.no_fallback if placement.no_fallback is None else placement.no_fallback
    wait_s = settings.wait_for_workers_s if placement.wait_for_workers_s is None else placement.wait_for_workers_s

    def in_process(reason: str, embedded: bool) -> ChunkExecutor:
        """``embedded``: no broker at all, so this machine is the whole of Hermes."""
        if no_fallback:
            raise NowhereToRun(f"{reason}; --no-fallback forbids processing in-process")
        if isolation == "container" and not embedded:
            raise NowhereToRun(f"{reason}; --isolation container never runs prompts outside a container")
        # In-process, `auto` is local: a sandbox session per command costs a second or more and
        # buys nothing the user asked for; `container` asks for one, and gets it or exit 3.
        mode = _probe_here(ctx) if isolation == "container" else "local"
        executor = InProcessExecutor(processes, mode, settings)
        ctx.notice(f"{reason}: processing {executor.describe()}")
        logs.event(ctx.log, logging.INFO, "dispatch.in_process", reason, isolation=isolation, mode=mode)
        return executor

    try:
        cluster = connect(settings)
    except ClusterRefused as exc:
        logs.event(ctx.log, logging.ERROR, "dispatch.refused", str(exc))
        raise
    except ClusterUnavailable as exc:
        return in_process(str(exc), embedded=True)

    route = cluster.wait_for_route(
        isolation, wait_s, on_wait=lambda: ctx.notice(f"waiting up to {wait_s:.0f} s for a {isolation} worker")
    )
    if route is None:
        kind = "container" if isolation == "container" else "Hermes" if isolation == "auto" else isolation
        executor = in_process(f"no live {kind} worker (start one with: hermes worker)", embedded=False)
        bump(cluster.redis, "producers", "fallbacks", kind="in_process")
        return OnBoard.in_process(executor, cluster.redis, batch_id or new_batch_id()) if board else executor
    if route.note:
        bump(cluster.redis, "producers", "fallbacks", kind="local_instead_of_container")
        ctx.notice(route.note)
        logs.event(ctx.log, logging.WARNING, "dispatch.fallback", route.note)
    allow_fallback = not no_fallback and isolation != "container"
    return _on_cluster(ctx, cluster, route, isolation, allow_fallback, wait_s, batch_id)


def _on_cluster(
    ctx: Context, cluster: Cluster, route: Route, isolation: str, fallback: bool, wait_s: float, batch_id: str | None
) -> CeleryExecutor:
    """The Celery executor for ``route``; what it reports goes to stderr and the log, in words."""

    def report(event: Event) -> None:
        message = render(event)
        ctx.notice(message)
        logs.event(ctx.log, logging.WARNING, "dispatch.reroute", message, kind=type(event).__name__)

    executor = CeleryExecutor(
        cluster,
        route,
        batch_id=batch_id,
        on_event=report,
        fallback=_in_process_fallback if fallback else None,
        isolation=isolation,
        wait_for_workers_s=wait_s,
    )
    logs.event(
        ctx.log,
        logging.INFO,
        "dispatch.cluster",
        executor.describe(),
        queue=route.queue,
        workers=[w.name for w in route.workers],
    )
    return executor
