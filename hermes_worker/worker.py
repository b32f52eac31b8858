"""The worker's life: the Docker probe and tag at start-up, heartbeats, and per-process state.

Everything cross-cutting lives here, in Celery signal handlers, so the task stays thin:

- ``celeryd_init`` (main process, before consuming): decide the tag (probe Docker unless the
  tag was decided already by ``hermes worker``), and consume only that tag's queue.
- ``worker_ready`` / ``worker_shutdown``: start and stop the registry heartbeat, the
  :class:`LoopWatch` that frees the event loop from a pub/sub read kombu can leave it blocked
  in after a broker outage, the :class:`QueueWatch` that cancels any consumer of a queue that
  is not the tag's, and on a container worker the :class:`DockerWatch`, which stops taking
  container work while the Docker engine is gone and takes it up again once the probe passes
  anew. Remote-control commands that would change the worker are refused from here on
  (:func:`~hermes_worker.guard.restrict_control`).
- ``worker_process_shutdown``: close the process's sandbox session (its container goes too).
- ``worker_process_init``: a pool process told SIGTERM closes its session before it exits.
- ``worker_shutting_down`` (SIGTERM, Ctrl-C): warm shutdown waits for running chunks; if it is
  still waiting with none running, the pool processes are told to go (Celery's prefork pool was
  seen to wait for ever for an idle process that never got its stop message, when SIGTERM came
  just as a chunk had been received but not yet handed to it).

A chunk whose sandbox cannot run because the engine is gone is not failed: the worker waits
until its registry entry shows it has stopped consuming ``hermes.container``, then lets the
chunk go without a result; producers send it again elsewhere (or wait for the engine).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker import state as celery_state

from . import __version__, contract
from .contract import EVENTS_MAXLEN, KEY_EVENTS, QUEUE_CONTAINER, QUEUE_FOR_TAG, shown
from .engine import ProfileError
from .events import ClusterLog
from .guard import Refusal, restrict_control
from .metrics import add as add_metrics
from .metrics import bump, chunk_increments, serve
from .metrics import field as metrics_field
from .processing import failed_chunk_result, with_errors
from .redact import RedactingFilter, redact, redact_data
from .redis_conn import connect
from .registry import Heartbeat, Registry, WorkerInfo
from .runners import Runner, make_runner
from .settings import Settings
from .watches import DockerWatch, LoopWatch, QueueWatch, docker_health

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
_watch: DockerWatch | None = None
_loop_watch: LoopWatch | None = None
_queue_watch: QueueWatch | None = None


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
    """Say once, in the worker log and the cluster log, what the probe decided and why.

    The text is redacted: a probe's reason may name ``DOCKER_HOST``, credentials and all.
    """
    if tag == "container":
        text = redact(f"Docker probe passed: using container processing ({found.get('reason', '')})")
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
    text = redact(text)
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


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery masks the broker password in its banner; everything else a worker logs (kombu's
    # connection errors, exception texts, tracebacks) goes through the same redaction as
    # Hermes' own logs, whichever handler Celery set up.
    for handler in {*logging.getLogger().handlers, *(logger.handlers if logger else [])}:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    settings = _settings()
    client = connect(settings.result_backend, settings.broker_timeout_s)
    name = sender.hostname
    concurrency = int(getattr(sender.controller, "concurrency", 0) or settings.concurrency)
    info: dict[str, Any] = dict(
        name=name,
        tag=IDENTITY.tag,
        concurrency=concurrency,
        queues=[QUEUE_FOR_TAG[IDENTITY.tag]],
        host=socket.gethostname(),
        pid=os.getpid(),
        versions=versions(),
        provenance={"mode": IDENTITY.tag, "image": IDENTITY.probe.get("details", {}).get("image")},
        probe=redact_data(IDENTITY.probe),  # anyone who reads Redis reads the registry
        started_at=IDENTITY.started_at,
    )

    lock = threading.Lock()  # the DockerWatch changes queues and probe from its own thread
    queues_lock = threading.Lock()  # held while the consumer's queues and the entry's change together

    def snapshot() -> WorkerInfo:
        with lock:
            current = dict(info)
        return WorkerInfo(
            **current,
            heartbeat_at=time.time(),
            active=len(celery_state.active_requests),
            processed=sum(celery_state.total_count.values()),
        )

    _heartbeat = Heartbeat(Registry(client, settings.worker_ttl_s), snapshot, settings.heartbeat_s)
    _heartbeat.beat()
    _heartbeat.start()
    global _loop_watch, _queue_watch
    _loop_watch = LoopWatch(threading.get_ident(), settings.heartbeat_s)
    _loop_watch.start()
    refused = restrict_control(settings.worker_remote_control == "all")
    if refused:
        log.info("remote control: %d command(s) that would change this worker are refused", len(refused))
    events = ClusterLog(client, name)

    def expected() -> set[str]:
        with lock:
            return set(info["queues"])

    def record(refusal: Refusal) -> None:
        bump(client, name, "messages_refused", kind=refusal.kind)
        events.emit("WARNING", "worker.refused", refusal.reason, kind=refusal.kind)

    _queue_watch = QueueWatch(sender, expected, queues_lock, settings.heartbeat_s, record)
    _queue_watch.start()
    if IDENTITY.tag == "container" and settings.container_backend == "docker":
        global _watch

        def update(**changes: Any) -> None:
            with lock:
                info.update(changes)
            if _heartbeat is not None:
                _heartbeat.beat()  # producers must see the change now, not a heartbeat later

        _watch = DockerWatch(settings, sender, name, update, ClusterLog(client, name), queues_lock)
        _watch.start()
    bump(client, name, "probe", outcome=IDENTITY.tag)
    if settings.metrics_port:
        serve(client, settings.metrics_port, settings.metrics_address, source=name)
        log.info("Hermes metrics for %s on %s:%d/metrics", name, settings.metrics_address, settings.metrics_port)
    ClusterLog(client, name).emit(
        "INFO", "worker.online", f"worker {name} online, tag {IDENTITY.tag}", tag=IDENTITY.tag, concurrency=concurrency
    )


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    for thread in (_watch, _loop_watch, _queue_watch):
        if thread is not None:
            thread.stop()
    if _heartbeat is not None:
        _heartbeat.stop()
        settings = _settings()
        ClusterLog(connect(settings.result_backend, settings.broker_timeout_s), str(sender)).emit(
            "INFO", "worker.offline", f"worker {sender} shutting down"
        )


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    # Celery resets SIGTERM to its default in pool processes: they would die with their sandbox
    # container still running. Close it first (the chunk in flight, if any, goes back to the
    # queue: acks_late with reject_on_worker_lost).
    signal.signal(signal.SIGTERM, _process_terminated)


def _process_terminated(signum: int, frame: Any) -> None:
    if _process_state is not None:
        with contextlib.suppress(Exception):
            _process_state.runner.close()
    os._exit(128 + signum)


@signals.worker_shutting_down.connect
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
        self._deadline = 0.0  # until when the current chunk may keep retrying Redis

    def events_for(self, worker: str) -> ClusterLog:
        if worker not in self._events:
            self._events[worker] = ClusterLog(self.redis, worker)
        return self._events[worker]

    def handle_message(self, args: tuple[Any, ...], kwargs: dict[str, Any], worker: str, queue: str | None) -> None:
        """Run the arguments of a chunk task, or refuse them: it takes exactly ``(payload, reply)``."""
        if len(args) != 2 or kwargs:
            keywords = shown(sorted(kwargs))
            reason = f"a chunk message takes (payload, reply); got {len(args)} argument(s), keywords {keywords}"
            self.refuse(reason, worker)
            return
        self.handle(args[0], args[1], worker, queue)

    def handle(self, payload: Any, reply: Any, worker: str, queue: str | None) -> None:
        """Run one chunk and publish its result, after checking every field of the message.

        ``queue`` is the queue the message was sent to (its routing key): a chunk sent to the
        other kind of worker's queue, or one that must run in a container on a worker that
        cannot, is refused (see :meth:`refuse`), never run here.
        """
        try:
            answer = contract.Reply.from_wire(reply)
        except contract.ContractError as exc:
            self.refuse(str(exc), worker)
            return
        try:
            request = contract.ChunkRequest.from_payload(payload, answer)
        except (contract.ContractError, ProfileError) as exc:
            self.refuse(str(exc), worker, answer, payload.get("chunk") if isinstance(payload, Mapping) else None)
            return
        misplaced = self._misplaced(request, queue)
        if misplaced is not None:
            self.refuse(misplaced, worker, answer, request.chunk, kind="wrong_queue")
            return
        stream, ttl, chunk = answer.stream, answer.ttl, request.chunk
        payload = request.to_payload()  # only the fields the contract knows, checked
        events = self.events_for(worker)
        # Redis may be away for a while: keep trying to publish until shortly before Celery's
        # soft time limit (80 % of the hard one), rather than lose the chunk to a short outage.
        self._deadline = time.monotonic() + 0.75 * self.settings.chunk_time_limit_s
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
        if text_key is not None and text is None:
            # The producer deletes a chunk's lines once it has written the chunk, so this is a
            # late duplicate delivery, or Redis lost the key (restarted without persistence):
            # say so, and a producer still waiting for the chunk sends it again.
            self._publish(
                stream,
                ttl,
                {"m": json.dumps({"chunk": chunk, "worker": worker})},
                events.entry(
                    "WARNING", "chunk.lines_missing", f"chunk {chunk}: its lines are not in Redis", chunk=chunk
                ),
            )
            return
        started = time.perf_counter()
        result = self._run(payload, text, worker, chunk)
        if result is None:
            return  # not the items' fault: producers send the chunk again elsewhere
        if isinstance(result, str):
            self._fail(stream, ttl, chunk, worker, result, split=True)
            return
        elapsed = time.perf_counter() - started
        try:
            fields, done, increments = self._result_fields(result, worker, chunk, elapsed)
        except Exception as exc:
            log.exception("chunk %s: its result cannot be encoded", chunk)
            self._fail(stream, ttl, chunk, worker, f"its result cannot be encoded: {type(exc).__name__}", split=True)
            return
        if len(fields["t"]) > contract.MAX_VALUE_BYTES:
            reason = f"its records are {len(fields['t']):,} bytes, over the {contract.MAX_VALUE_BYTES:,}-byte bound"
            self._fail(stream, ttl, chunk, worker, reason, split=True)
            return
        try:
            self._publish(stream, ttl, fields, done, (worker, increments))
        except _Unpublishable as exc:
            # Retrying here cannot help: tell the producer, who splits a result too large for
            # Redis, and sends anything else again (another worker may fare better).
            self._fail(stream, ttl, chunk, worker, f"its result cannot be published: {exc}", split=exc.too_large)

    def _run(self, payload: dict[str, Any], text: bytes | None, worker: str, chunk: Any) -> dict[str, Any] | str | None:
        """The chunk's result (error records if need be); a reason to split it; or None to let it go.

        Never raises: whatever goes wrong with one chunk ends with its records or a notice.
        """
        try:
            if text is not None:
                payload["text"] = text.decode("utf-8")
            payload.pop("count", None)
            return self.runner.run(payload, worker)
        except (contract.ContractError, ProfileError) as exc:
            message = f"chunk rejected by the worker: {exc}"
            return failed_chunk_result(payload, contract.ENGINE_FAILURE, message, mode=self.runner.mode, worker=worker)
        except SoftTimeLimitExceeded:
            # One slow line must not fail its neighbours: the producer splits the chunk until the
            # line to blame is alone.
            log.warning("chunk %s ran past its soft time limit", chunk)
            if self.runner.mode == "container":
                # The sandbox may still be busy with the chunk: the next one gets a fresh session.
                with contextlib.suppress(Exception):
                    self.runner.close()
            return f"it ran past the soft time limit ({0.8 * self.settings.chunk_time_limit_s:.0f} s)"
        except Exception as exc:
            try:
                gone = self.runner.mode == "container" and self._engine_gone(exc, worker, chunk)
            except Exception:
                gone = False
            if gone:
                return None
            log.exception("chunk %s failed as a whole", chunk)
            code = contract.SANDBOX_FAILURE if self.runner.mode == "container" else contract.ENGINE_FAILURE
            message = f"{type(exc).__name__}: {exc}"
            events = self.events_for(worker)
            events.emit("ERROR", "chunk.failed", f"chunk {chunk} failed as a whole: {exc}", chunk=chunk)
            return failed_chunk_result(payload, code, message, mode=self.runner.mode, worker=worker)

    def _result_fields(
        self, result: dict[str, Any], worker: str, chunk: Any, elapsed: float
    ) -> tuple[dict[str, str | bytes], dict[str, str], dict[str, float]]:
        """The stream fields of a result, its event and its metric increments."""
        # The records travel as raw JSONL bytes next to the counts: encoding them again as JSON
        # strings would make every quote an escape for Redis to store and the producer to undo.
        lines = result["lines"]
        try:
            body = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        except UnicodeEncodeError:
            # process_chunk never writes such a record; should one slip through, it fails alone.
            unwritable = {i: line for i, line in enumerate(lines) if not _encodes(line)}
            message = "the record for this item cannot be written as UTF-8"
            result = with_errors(result, dict.fromkeys(unwritable, (contract.ENGINE_FAILURE, message)))
            lines = result["lines"]
            body = ("\n".join(lines) + "\n").encode("utf-8")
        elapsed_ms = round(elapsed * 1000, 2)
        increments = chunk_increments(result, elapsed, self.runner.mode)
        restarts = self.runner.restarts
        if restarts > self._restarts_seen:
            increments[metrics_field("session_restarts")] = restarts - self._restarts_seen
            self._restarts_seen = restarts
        level = "WARNING" if result["failed"] else "DEBUG"
        done = self.events_for(worker).entry(
            level,
            "chunk.succeeded",
            f"chunk {chunk}: {result['ok']} ok, {result['failed']} failed in {elapsed_ms} ms",
            chunk=chunk,
            ok=result["ok"],
            failed=result["failed"],
            ms=elapsed_ms,
            mode=self.runner.mode,
        )
        # ASCII: ids and error messages are checked writable, but this must not fail either way.
        counts = json.dumps({k: v for k, v in result.items() if k != "lines"}, ensure_ascii=True)
        return {"r": counts, "t": body}, done, increments

    def _fail(self, stream: str, ttl: int, chunk: Any, worker: str, reason: str, *, split: bool) -> None:
        """Publish a failure notice: the producer sends the chunk again (or splits it, or gives up).

        The notice is small ASCII JSON, so nothing in it can fail to encode. If even it cannot be
        published, the task fails; the producer finds the chunk overdue and sends it again.
        """
        reason = reason.encode("ascii", "backslashreplace").decode("ascii")[:500]
        notice = json.dumps({"chunk": chunk, "worker": worker, "reason": reason, "split": split})
        log.warning("chunk %s: %s; the producer is told", chunk, reason)
        event = self.events_for(worker).entry("ERROR", "chunk.unpublished", f"chunk {chunk}: {reason}", chunk=chunk)
        try:
            self._publish(stream, ttl, {"f": notice}, event)
        except Exception:
            log.exception("chunk %s: not even its failure notice could be published", chunk)
            raise

    def _misplaced(self, request: contract.ChunkRequest, queue: str | None) -> str | None:
        """Why this worker must not run ``request``, sent to ``queue``; None if it may."""
        mode = self.runner.mode
        own = QUEUE_FOR_TAG[mode]
        if queue != own:
            return f"chunk {request.chunk} was sent to queue {shown(queue)}; this {mode} worker serves {own}"
        if request.isolation == contract.ISOLATION_CONTAINER and mode != "container":
            return f"chunk {request.chunk} must run in a container; this is a {mode} worker"
        return None

    def refuse(
        self,
        reason: str,
        worker: str,
        reply: contract.Reply | None = None,
        chunk: Any = None,
        kind: str = "invalid",
    ) -> None:
        """Refuse a chunk message without acting on it: a WARNING (no prompt in it), counted, done.

        The message is acknowledged and never retried. When it names a valid result stream and
        chunk number, a refusal notice goes there (contract.NOTICE_REFUSED): the producer sends
        the chunk again, a few times at most, or stops naming the reason. Nothing else is written.
        """
        log.warning("chunk message refused (%s): %s", kind, reason)
        bump(self.redis, worker, "messages_refused", kind=kind)
        text = f"chunk message refused: {reason}"
        if reply is None or type(chunk) is not int or not 0 <= chunk <= contract.MAX_CHUNK_NUMBER:
            self.events_for(worker).emit("WARNING", "chunk.refused", text, kind=kind)
            return
        event = self.events_for(worker).entry("WARNING", "chunk.refused", text, kind=kind, chunk=chunk)
        self._deadline = time.monotonic() + 0.75 * self.settings.chunk_time_limit_s
        notice = json.dumps({"chunk": chunk, "worker": worker, "reason": reason})
        self._publish(reply.stream, reply.ttl, {contract.NOTICE_REFUSED: notice}, event)

    def _engine_gone(self, exc: Exception, worker: str, chunk: Any) -> bool:
        """True when the sandbox failed because the Docker engine is gone and this worker has
        stopped taking container work: the chunk is then let go without a result.

        Waits (a few heartbeats at most) for the main process's :class:`DockerWatch` to
        withdraw the worker from ``hermes.container``; only then may the chunk go, since
        producers send a chunk again once the worker that announced it no longer serves the
        queue. False when the engine is fine (the chunk itself is the problem) or the worker is
        still registered as serving: the chunk then gets error records, as before.
        """
        from .sandbox.errors import SandboxError

        if not isinstance(exc, SandboxError):
            return False
        reason = docker_health(self.settings)
        if reason is None:
            return False
        registry = Registry(self.redis, self.settings.worker_ttl_s)
        deadline = time.monotonic() + 2 * self.settings.worker_ttl_s + self.settings.docker_timeout_s
        while time.monotonic() < deadline:
            try:
                entry = registry.get(worker)
            except redis.RedisError:
                entry = None
            if entry is not None and QUEUE_CONTAINER not in entry.queues:
                log.warning("chunk %s let go: the Docker engine is gone (%s)", chunk, reason)
                self.events_for(worker).emit(
                    "WARNING", "chunk.returned", f"chunk {chunk} let go: {reason}", chunk=chunk, reason=reason
                )
                return True
            time.sleep(0.2)
        return False

    def _publish(
        self,
        stream: str,
        ttl: int,
        fields: dict[str, str | bytes],
        event: dict[str, str],
        counters: tuple[str, dict[str, float]] | None = None,
        fetch: str | None = None,
    ) -> bytes | None:
        """Append ``fields`` to ``stream`` (and the event, the counters; and GET ``fetch``).

        Raises:
            _Unpublishable: Redis refuses these fields for good; retrying cannot help.
            redis.RedisError: Redis did not answer until the deadline.
        """
        # A result must not be lost to a Redis outage: retry with back-off until the deadline;
        # then the task fails and the producer, finding the chunk overdue, sends it again.
        deadline = max(self._deadline, time.monotonic() + 2.0)
        delay = 0.2
        size = sum(len(value) for value in fields.values())
        while True:
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
                pipe.expire(stream, ttl)
                pipe.xadd(KEY_EVENTS, event, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
                if counters is not None:
                    add_metrics(pipe, *counters)
                if fetch is not None:
                    pipe.get(fetch)  # the chunk's lines, in the same round trip as its start notice
                # raise_on_error=False: a refused GET of the chunk's lines (a key of another type,
                # put there by a Redis writer) is not a refusal of the notice (see _fetched).
                replies = pipe.execute(raise_on_error=False)
                return _fetched(replies, fetch)
            except (redis.DataError, UnicodeError) as exc:
                raise _Unpublishable(f"{type(exc).__name__}: {exc}") from exc
            except redis.ResponseError as exc:
                # Redis refused a command: wrong type, bad argument, no permission. It would again:
                # no outage to wait out, unless it is one of the passing states (_TRANSIENT).
                if not _transient(exc):
                    raise _Unpublishable(_redis_reason(exc)) from exc
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Redis is busy (%s); retrying in %.1f s", _redis_reason(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except redis.RedisError as exc:
                if size > _BIG_VALUE_BYTES and isinstance(exc, redis.ConnectionError) and self._answers():
                    # Redis drops the connection on a value over its proto-max-bulk-len; if it
                    # answers a ping at once, it was the size, and waiting will not help.
                    raise _Unpublishable(f"Redis refused {size:,} bytes ({exc})", too_large=True) from exc
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Redis is not answering (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _answers(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False


class _Unpublishable(Exception):
    """Redis refuses what a worker tries to publish, for a reason that waiting does not fix."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


# Redis' smallest proto-max-bulk-len: a write this large that breaks the connection may be refused.
_BIG_VALUE_BYTES = 1 << 20
# Redis errors that pass: loading, a replica promoted, a failed save (MISCONF), out of memory
# (the producer frees the stream as it reads), cluster resharding.
_TRANSIENT = ("LOADING", "READONLY", "MISCONF", "OOM", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "BUSY")


def _transient(exc: redis.ResponseError) -> bool:
    status = getattr(exc, "status_code", None)
    return isinstance(exc, redis.exceptions.OutOfMemoryError | redis.ReadOnlyError) or (
        status in _TRANSIENT or _redis_reason(exc).startswith(_TRANSIENT)
    )


def _redis_reason(exc: redis.RedisError) -> str:
    """A Redis error without the command redis-py quotes in front of it (it may hold prompts)."""
    text = str(exc)
    return text.split(" caused error: ", 1)[-1][:300]


def _encodes(line: str) -> bool:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fetched(replies: list[Any], fetch: str | None) -> bytes | None:
    """The fetched value of a :meth:`ProcessState._publish` pipeline; raises what Redis refused."""
    for reply in replies[:-1] if fetch is not None else replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    if fetch is None:
        return None
    value = replies[-1]
    if isinstance(value, redis.ResponseError):
        # The chunk's key holds something other than its lines (a Redis writer put it there):
        # like lines gone, the producer is told and sends the chunk again (its SET replaces it).
        log.warning("the lines of a chunk could not be read from %s: %s", fetch, value)
        return None
    return value if isinstance(value, bytes) else None


_process_state: ProcessState | None = None


def process_state() -> ProcessState:
    global _process_state
    if _process_state is None or _process_state.settings is not _settings():
        _process_state = ProcessState(_settings())
    return _process_state
