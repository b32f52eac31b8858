"""The worker's life: the Docker probe and tag at start-up, heartbeats, and per-process state.

Everything cross-cutting lives here, in Celery signal handlers, so the task stays thin:

- ``celeryd_init`` (main process, before consuming): decide the tag (probe Docker unless the
  tag was decided already by ``hermes worker``), and consume only that tag's queue.
- ``worker_ready`` / ``worker_shutdown``: start and stop the registry heartbeat.
- ``worker_process_shutdown``: close the process's sandbox session (its container goes too).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import signals
from celery.worker import state as celery_state

from . import __version__, contract
from .contract import EVENTS_MAXLEN, KEY_EVENTS, QUEUE_FOR_TAG
from .engine import ProfileError
from .events import ClusterLog
from .metrics import add as add_metrics
from .metrics import bump, chunk_increments, serve
from .metrics import field as metrics_field
from .processing import failed_chunk_result
from .redis_conn import connect
from .registry import Heartbeat, Registry, WorkerInfo
from .runners import Runner, make_runner
from .settings import Settings

log = logging.getLogger("hermes.worker")

FALLBACK_MESSAGE = "Docker is unavailable, using local processing"
ENV_TAG = "HERMES_WORKER_TAG"  # set by `hermes worker` after its own probe
ENV_PROBE = "HERMES_WORKER_PROBE"  # the probe's outcome as JSON, likewise


@dataclass(slots=True)
class Identity:
    """What the main process decided at start-up; forked worker processes inherit it."""

    tag: str = "local"
    probe: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)


IDENTITY = Identity()
_heartbeat: Heartbeat | None = None


def _settings() -> Settings:
    from .app import settings

    return settings


def versions() -> dict[str, str]:
    import platform
    import unicodedata

    import celery
    import ftfy

    return {
        "engine": __version__,
        "python": platform.python_version(),
        "unicode": unicodedata.unidata_version,
        "ftfy": ftfy.__version__,
        "celery": celery.__version__,
    }


def decide_tag(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Run the Docker probe as ``settings.worker_mode`` asks; return the tag and the outcome."""
    if settings.worker_mode == "local":
        return "local", {"tag": "local", "reason": "local mode requested (--mode local)", "fix": "", "probed": False}
    from .probe import probe  # Docker code only when Docker is wanted

    outcome = probe(settings)
    found = {"tag": outcome.tag, "reason": outcome.reason, "fix": outcome.fix, "details": outcome.details}
    return outcome.tag, found


def announce(tag: str, found: dict[str, Any], events: ClusterLog | None) -> str:
    """Say once, in the worker log and the cluster log, what the probe decided and why."""
    if tag == "container":
        text = f"Docker probe passed: using container processing ({found.get('reason', '')})"
        log.info(text)
        if events:
            events.emit("INFO", "probe.container", text, **found)
        return text
    if found.get("probed") is False:
        text = "using local processing: --mode local, Docker not probed"
        log.info(text)
        if events:
            events.emit("INFO", "probe.skipped", text, **found)
        return text
    text = f"{FALLBACK_MESSAGE}: {found.get('reason', 'unknown reason')}"
    if found.get("fix"):
        text += f". Fix: {found['fix']}"
    log.warning(text)
    if events:
        events.emit("WARNING", "probe.fallback", text, **found)
    return text


@signals.celeryd_init.connect
def _on_celeryd_init(
    sender: str | None = None, instance: Any = None, conf: Any = None, options: dict[str, Any] | None = None, **_: Any
) -> None:
    settings = _settings()
    preset = os.environ.get(ENV_TAG)
    if preset in QUEUE_FOR_TAG:
        IDENTITY.tag = preset
        IDENTITY.probe = json.loads(os.environ.get(ENV_PROBE) or "{}")
    else:
        IDENTITY.tag, IDENTITY.probe = decide_tag(settings)
        announce(IDENTITY.tag, IDENTITY.probe, None)
    if settings.worker_mode == "container" and IDENTITY.tag != "container":
        raise SystemExit(f"--mode container, but {FALLBACK_MESSAGE.lower()}: {IDENTITY.probe.get('reason')}")
    if options is not None:
        # The tag decides the queue: a local worker never takes container work, or vice versa.
        options["queues"] = [QUEUE_FOR_TAG[IDENTITY.tag]]


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    settings = _settings()
    client = connect(settings.result_backend, settings.broker_timeout_s)
    name = sender.hostname
    concurrency = int(getattr(sender.controller, "concurrency", 0) or settings.concurrency)
    info = dict(
        name=name,
        tag=IDENTITY.tag,
        concurrency=concurrency,
        queues=[QUEUE_FOR_TAG[IDENTITY.tag]],
        host=socket.gethostname(),
        pid=os.getpid(),
        versions=versions(),
        provenance={"mode": IDENTITY.tag, "image": IDENTITY.probe.get("details", {}).get("image")},
        probe=IDENTITY.probe,
        started_at=IDENTITY.started_at,
    )

    def snapshot() -> WorkerInfo:
        return WorkerInfo(
            **info,
            heartbeat_at=time.time(),
            active=len(celery_state.active_requests),
            processed=sum(celery_state.total_count.values()),
        )

    _heartbeat = Heartbeat(Registry(client, settings.worker_ttl_s), snapshot, settings.heartbeat_s)
    _heartbeat.beat()
    _heartbeat.start()
    bump(client, name, "probe", outcome=IDENTITY.tag)
    if settings.metrics_port:
        serve(client, settings.metrics_port, source=name)
        log.info("Hermes metrics for %s on port %d (/metrics)", name, settings.metrics_port)
    ClusterLog(client, name).emit(
        "INFO", "worker.online", f"worker {name} online, tag {IDENTITY.tag}", tag=IDENTITY.tag, concurrency=concurrency
    )


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
        settings = _settings()
        ClusterLog(connect(settings.result_backend, settings.broker_timeout_s), str(sender)).emit(
            "INFO", "worker.offline", f"worker {sender} shutting down"
        )


@signals.task_received.connect
def _on_task_received(request: Any = None, **_: Any) -> None:
    state = process_state()
    state.events_for(request.hostname).emit("DEBUG", "chunk.received", "chunk received", task_id=request.id)


@signals.task_retry.connect
def _on_task_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    state = process_state()
    state.events_for(request.hostname).emit("WARNING", "chunk.retried", f"chunk retried: {reason}", task_id=request.id)


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    if _process_state is not None:
        _process_state.runner.close()


class ProcessState:
    """One per worker process: the runner (maybe a sandbox session) and the Redis client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = connect(settings.result_backend, settings.broker_timeout_s)
        self.runner: Runner = make_runner(IDENTITY.tag, settings, f"{socket.gethostname()}-{os.getpid()}")
        self._events: dict[str, ClusterLog] = {}
        self._restarts_seen = 0

    def events_for(self, worker: str) -> ClusterLog:
        if worker not in self._events:
            self._events[worker] = ClusterLog(self.redis, worker)
        return self._events[worker]

    def handle(self, payload: dict[str, Any], reply: dict[str, Any], worker: str) -> None:
        stream = reply.get("stream") if isinstance(reply, dict) else None
        if not isinstance(stream, str) or not stream.startswith(contract.KEY_RESULTS.format(batch="")):
            raise ValueError(f"reply stream {stream!r} is not a Hermes results stream")
        ttl = int(reply.get("ttl") or self.settings.result_ttl_s)
        chunk = payload.get("chunk")
        events = self.events_for(worker)
        # One round trip before and one after: the start notice (which tells the producer
        # who holds the chunk) with its event, then the result with its event.
        text_key = payload.pop(contract.TEXT_KEY, None)
        text = self._publish(
            stream,
            ttl,
            {"s": json.dumps({"chunk": chunk, "worker": worker})},
            events.entry("DEBUG", "chunk.started", f"chunk {chunk} started", chunk=chunk),
            fetch=text_key if isinstance(text_key, str) else None,
        )
        started = time.perf_counter()
        try:
            if text_key is not None:
                # Gone only if the chunk waited longer than the result TTL: its lines then get
                # error records (stand-ins count them) instead of vanishing.
                payload["text"] = text.decode("utf-8") if text is not None else "\n" * (payload.pop("count", 1) - 1)
                if text is None:
                    raise contract.ContractError(f"the chunk's lines are no longer in Redis ({text_key})")
            payload.pop("count", None)
            result = self.runner.run(payload, worker)
        except (contract.ContractError, ProfileError) as exc:
            result = failed_chunk_result(
                payload,
                contract.ENGINE_FAILURE,
                f"chunk rejected by the worker: {exc}",
                mode=self.runner.mode,
                worker=worker,
            )
        except Exception as exc:
            log.exception("chunk %s failed as a whole", chunk)
            code = contract.SANDBOX_FAILURE if self.runner.mode == "container" else contract.ENGINE_FAILURE
            result = failed_chunk_result(
                payload, code, f"{type(exc).__name__}: {exc}", mode=self.runner.mode, worker=worker
            )
            events.emit("ERROR", "chunk.failed", f"chunk {chunk} failed as a whole: {exc}", chunk=chunk)
        elapsed = time.perf_counter() - started
        elapsed_ms = round(elapsed * 1000, 2)
        increments = chunk_increments(result, elapsed, self.runner.mode)
        restarts = self.runner.restarts
        if restarts > self._restarts_seen:
            increments[metrics_field("session_restarts")] = restarts - self._restarts_seen
            self._restarts_seen = restarts
        level = "WARNING" if result["failed"] else "DEBUG"
        done = events.entry(
            level,
            "chunk.succeeded",
            f"chunk {chunk}: {result['ok']} ok, {result['failed']} failed in {elapsed_ms} ms",
            chunk=chunk,
            ok=result["ok"],
            failed=result["failed"],
            ms=elapsed_ms,
            mode=self.runner.mode,
        )
        # The records travel as raw JSONL bytes next to the counts: encoding them again as JSON
        # strings would make every quote an escape for Redis to store and the producer to undo.
        lines = result.pop("lines")
        fields = {"r": json.dumps(result, ensure_ascii=False), "t": "\n".join(lines) + "\n" if lines else ""}
        self._publish(stream, ttl, fields, done, (worker, increments))

    def _publish(
        self,
        stream: str,
        ttl: int,
        fields: dict[str, str],
        event: dict[str, str],
        counters: tuple[str, dict[str, float]] | None = None,
        fetch: str | None = None,
    ) -> bytes | None:
        # A result must not be lost to a Redis blip: retry with back-off, then let Celery
        # redeliver the chunk (the message is acknowledged only when this returns).
        for attempt in range(6):
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
                pipe.expire(stream, ttl)
                pipe.xadd(KEY_EVENTS, event, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
                if counters is not None:
                    add_metrics(pipe, *counters)
                if fetch is not None:
                    pipe.get(fetch)  # the chunk's lines, in the same round trip as its start notice
                replies = pipe.execute()
                return replies[-1] if fetch is not None else None  # type: ignore[no-any-return]
            except redis.RedisError:
                if attempt == 5:
                    raise
                time.sleep(0.2 * 2**attempt)


_process_state: ProcessState | None = None


def process_state() -> ProcessState:
    global _process_state
    if _process_state is None or _process_state.settings is not _settings():
        _process_state = ProcessState(_settings())
    return _process_state
