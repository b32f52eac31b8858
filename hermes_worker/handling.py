"""One chunk message in a worker process: accept it, fetch its lines, run it, publish its result.

:class:`ChunkHandler` is what the task calls (one per pool process). Each step is its own method:

- :meth:`~ChunkHandler.accept` checks every field of the message; a bad one is refused
  (:meth:`~ChunkHandler.refuse`), never run.
- :meth:`~ChunkHandler.fetch` publishes the start notice (which tells the producer who holds the
  chunk) and reads the chunk's lines in the same round trip.
- :meth:`~ChunkHandler.run` runs the chunk here or in the sandbox; whatever goes wrong ends as
  error records, a reason to split the chunk, or (the sandbox's engine gone) letting it go.
- :meth:`~ChunkHandler.publish` sends the records with their counts, event and metrics, or a
  failure notice when Redis will not take them.

A chunk whose sandbox cannot run because the engine is gone is not failed: the handler waits
until the worker's registry entry shows it has stopped consuming ``hermes.container``, then lets
the chunk go without a result; producers send it again elsewhere (or wait for the engine).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from . import contract
from .contract import QUEUE_CONTAINER, QUEUE_FOR_TAG, shown
from .engine import ProfileError
from .events import ClusterLog
from .metrics import bump, chunk_increments
from .metrics import field as metrics_field
from .processing import failed_chunk_result, with_errors
from .publishing import BatchEnded, Publisher, Unpublishable
from .raw_lines import InputFormat
from .registry import Registry
from .runners import Runner
from .sandbox.backends import backend
from .settings import Settings
from .shared_input import read_range
from .shared_parts import PartRef, remove_part, write_part
from .wire import ChunkRequest, ChunkResult, Reply

__all__ = ["ChunkHandler", "Job"]

log = logging.getLogger("hermes.worker")


@dataclass(slots=True)
class Job:
    """An accepted chunk message: who runs it, where its result goes, what to run."""

    worker: str
    stream: str
    ttl: int
    request: ChunkRequest
    text: bytes | None = None  # the chunk's lines, once fetched from Redis
    lines: tuple[str, list[list[Any]]] | None = None  # text and bad lines read from a shared input

    @property
    def chunk(self) -> int:
        return self.request.chunk

    @property
    def batch(self) -> str:
        return self.stream[len(contract.RESULTS_PREFIX) :]


# What :meth:`ChunkHandler.run` gives: a result, a reason to split the chunk, or None to let it go.
Outcome = ChunkResult | str | None


class ChunkHandler:
    """One per worker process: the runner (maybe a sandbox session) and the Redis client.

    Args:
        settings: the worker's settings.
        runner: runs a chunk here or in this process's sandbox session.
        client: the result Redis.
    """

    def __init__(self, settings: Settings, runner: Runner, client: redis.Redis) -> None:
        self.settings = settings
        self.runner = runner
        self.redis = client
        self.publisher = Publisher(client)
        self._events: dict[str, ClusterLog] = {}
        self._restarts_seen = 0

    def events_for(self, worker: str) -> ClusterLog:
        if worker not in self._events:
            self._events[worker] = ClusterLog(self.redis, worker)
        return self._events[worker]

    def handle_message(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], worker: str, queue: str | None
    ) -> dict[str, Any]:
        """Run the arguments of a chunk task, or refuse them: it takes exactly ``(payload, reply)``.

        Returns what becomes of the chunk, for monitoring (see :meth:`handle`).
        """
        if len(args) != 2 or kwargs:
            keywords = shown(sorted(kwargs))
            reason = f"a chunk message takes (payload, reply); got {len(args)} argument(s), keywords {keywords}"
            self.refuse(reason, worker)
            return {"refused": True}
        return self.handle(args[0], args[1], worker, queue)

    def handle(self, payload: Any, reply: Any, worker: str, queue: str | None) -> dict[str, Any]:
        """Run one chunk and publish its result, after checking every field of the message.

        ``queue`` is the queue the message was sent to (its routing key): a chunk sent to the
        other kind of worker's queue, or one that must run in a container on a worker that
        cannot, is refused (see :meth:`refuse`), never run here.

        Returns what became of the chunk, which the task returns so that Celery's task events
        (and Flower's Result column) show it: ``{"chunk": 3, "ok": 1022, "failed": 2, "errors":
        {"empty_prompt": 2}}`` for a chunk whose items partly failed, not a bare SUCCESS; or
        ``refused``, ``lines_missing``, ``let_go``, ``not_finished`` (why) or ``batch_ended`` (its
        producer deleted the chunk's lines and the result stream: nothing is published). Counts
        and codes only: never a prompt.
        """
        job = self.accept(payload, reply, worker, queue)
        if job is None:
            return {"refused": True}
        # Redis may be away for a while: keep trying to publish until shortly before Celery's
        # soft time limit (80 % of the hard one), rather than lose the chunk to a short outage.
        self.publisher.allow(0.75 * self.settings.chunk_time_limit_s)
        try:
            if not self.fetch(job):
                return {"chunk": job.chunk, "lines_missing": True}
        except BatchEnded:
            return self._ended(job, "before it ran")
        if job.request.source is not None and job.request.text_key is not None and not self.read_shared(job):
            return {"refused": True}
        started = time.perf_counter()
        outcome = self.run(job)
        return self.publish(job, outcome, time.perf_counter() - started)

    def accept(self, payload: Any, reply: Any, worker: str, queue: str | None) -> Job | None:
        """The job this message asks for, checked against the contract; None once refused."""
        try:
            answer = Reply.from_wire(reply)
        except contract.ContractError as exc:
            self.refuse(str(exc), worker)
            return None
        try:
            request = ChunkRequest.from_payload(payload, answer)
        except (contract.ContractError, ProfileError) as exc:
            self.refuse(str(exc), worker, answer, payload.get("chunk") if isinstance(payload, Mapping) else None)
            return None
        misplaced = self._misplaced(request, queue)
        if misplaced is not None:
            self.refuse(misplaced, worker, answer, request.chunk, kind="wrong_queue")
            return None
        return Job(worker, answer.stream, answer.ttl, request)

    def fetch(self, job: Job) -> bool:
        """Publish the start notice and read the chunk's lines (one round trip); False: let it go."""
        chunk, worker = job.chunk, job.worker
        events = self.events_for(worker)
        text_key = job.request.text_key
        job.text = self.publisher.publish(
            job.stream,
            job.ttl,
            {"s": json.dumps({"chunk": chunk, "worker": worker})},
            events.entry("DEBUG", "chunk.started", f"chunk {chunk} started", chunk=chunk),
            fetch=text_key,
            wanted=text_key,
        )
        if text_key is None or job.text is not None:
            return True
        # The producer deletes a chunk's lines once it has written the chunk, so this is a late
        # duplicate delivery, or Redis lost the key (restarted without persistence): say so, and
        # a producer still waiting for the chunk sends it again.
        self.publisher.publish(
            job.stream,
            job.ttl,
            {"m": json.dumps({"chunk": chunk, "worker": worker})},
            events.entry("WARNING", "chunk.lines_missing", f"chunk {chunk}: its lines are not in Redis", chunk=chunk),
            wanted=text_key,
        )
        return False

    def read_shared(self, job: Job) -> bool:
        """Read a shared-input chunk's byte range (:mod:`.shared_input`); refuse it (False) when the
        path is not this worker's to read or the bytes are not the ones the producer read."""
        request = job.request
        assert request.source is not None and request.count is not None
        try:
            fmt: InputFormat = "jsonl" if request.format == "jsonl" else "text"
            job.lines = read_range(self.settings.shared_root, request.source, request.count, fmt,
                                   request.options.max_prompt_bytes)  # fmt: skip
        except contract.ContractError as exc:
            self.refuse(str(exc), job.worker, Reply.from_wire({"stream": job.stream, "ttl": job.ttl}), job.chunk)
            return False
        return True

    def run(self, job: Job) -> Outcome:
        """The chunk's result (error records if need be); a reason to split it; or None to let it go.

        Never raises: whatever goes wrong with one chunk ends with its records or a notice.
        """
        # Only the fields the contract knows, checked (and again with the lines put back in).
        payload = job.request.to_payload()

        def request() -> ChunkRequest:
            if job.text is None:
                return job.request
            del payload[contract.TEXT_KEY], payload["count"]
            if job.lines is not None:
                del payload["range"]
                payload["text"], payload["bad"] = job.lines
            else:
                payload["text"] = job.text.decode("utf-8")
            return ChunkRequest.from_payload(payload)

        return self.run_request(request, job.worker, payload)

    def run_request(
        self, request: ChunkRequest | Callable[[], ChunkRequest], worker: str, payload: dict[str, Any]
    ) -> Outcome:
        """Run ``request`` (or the one it makes; its wire form: ``payload``) as :meth:`run` does.

        The public task runs its chunks through here too (hermes_worker.tasks).
        """
        chunk, mode = payload.get("chunk"), self.runner.mode
        try:
            return self.runner.run(request() if callable(request) else request, worker)
        except (contract.ContractError, ProfileError) as exc:
            message = f"chunk rejected by the worker: {exc}"
            return failed_chunk_result(payload, contract.ENGINE_FAILURE, message, mode=mode, worker=worker)
        except SoftTimeLimitExceeded:
            # One slow line must not fail its neighbours: the producer splits the chunk until the
            # line to blame is alone.
            log.warning("chunk %s ran past its soft time limit", chunk)
            if mode == "container":
                # The sandbox may still be busy with the chunk: the next one gets a fresh session.
                with contextlib.suppress(Exception):
                    self.runner.close()
            return f"it ran past the soft time limit ({0.8 * self.settings.chunk_time_limit_s:.0f} s)"
        except Exception as exc:
            try:
                gone = mode == "container" and self._engine_gone(exc, worker, chunk)
            except Exception:
                gone = False
            if gone:
                return None
            log.exception("chunk %s failed as a whole", chunk)
            code = contract.SANDBOX_FAILURE if mode == "container" else contract.ENGINE_FAILURE
            message = f"{type(exc).__name__}: {exc}"
            events = self.events_for(worker)
            events.emit("ERROR", "chunk.failed", f"chunk {chunk} failed as a whole: {exc}", chunk=chunk)
            return failed_chunk_result(payload, code, message, mode=mode, worker=worker)

    def publish(self, job: Job, outcome: Outcome, elapsed: float) -> dict[str, Any]:
        """Publish the outcome of :meth:`run`: the records, or a notice that the chunk must be split.

        Returns what became of the chunk (see :meth:`handle`).
        """
        if outcome is None:
            return {"chunk": job.chunk, "let_go": True}  # not the items' fault: sent again elsewhere
        if isinstance(outcome, str):
            return self._fail(job, outcome, split=True)
        try:
            fields, done, increments = self._result_fields(outcome, job, elapsed)
        except Exception as exc:
            log.exception("chunk %s: its result cannot be encoded", job.chunk)
            return self._fail(job, f"its result cannot be encoded: {type(exc).__name__}", split=True)
        if len(fields["t"]) > contract.MAX_VALUE_BYTES:
            reason = f"its records are {len(fields['t']):,} bytes, over the {contract.MAX_VALUE_BYTES:,}-byte bound"
            return self._fail(job, reason, split=True)
        part = self._write_part(job, fields)
        try:
            self.publisher.publish(job.stream, job.ttl, fields, done, (job.worker, increments),
                                   wanted=job.request.text_key)  # fmt: skip
        except (BatchEnded, Unpublishable) as exc:
            if part is not None:
                remove_part(self.settings.shared_root, job.batch, part)
            if isinstance(exc, BatchEnded):
                return self._ended(job, "while it ran")
            # Retrying here cannot help: tell the producer, who splits a result too large for
            # Redis, and sends anything else again (another worker may fare better).
            return self._fail(job, f"its result cannot be published: {exc}", split=exc.too_large)
        return outcome_summary(job.chunk, outcome)

    def _write_part(self, job: Job, fields: dict[str, str | bytes]) -> PartRef | None:
        """A shared chunk's records to a part file (:mod:`.shared_parts`), if its batch takes
        parts: ``fields`` then carry the part's ref (``p``) instead of the records (``t``)."""
        if job.request.source is None or job.request.parts is None:
            return None  # its producer took no part directory: one there is not one it reads
        records = fields["t"]
        assert isinstance(records, bytes)
        part = write_part(self.settings.shared_root, job.batch, job.chunk, records, job.request.parts)
        if part is not None:
            del fields["t"]
            fields["p"] = part.to_wire()
        return part

    def _result_fields(
        self, result: ChunkResult, job: Job, elapsed: float
    ) -> tuple[dict[str, str | bytes], dict[str, str], dict[str, float]]:
        """The stream fields of a result, its event and its metric increments."""
        try:
            fields = result.to_stream()
        except UnicodeEncodeError:
            # process_chunk never writes such a record; should one slip through, it fails alone.
            unwritable = [i for i, line in enumerate(result.record_lines()) if not _encodes(line)]
            message = "the record for this item cannot be written as UTF-8"
            result = with_errors(result, dict.fromkeys(unwritable, (contract.ENGINE_FAILURE, message)))
            fields = result.to_stream()
        elapsed_ms = round(elapsed * 1000, 2)
        increments = chunk_increments(result, elapsed, self.runner.mode)
        restarts = self.runner.restarts
        if restarts > self._restarts_seen:
            increments[metrics_field("session_restarts")] = restarts - self._restarts_seen
            self._restarts_seen = restarts
        level = "WARNING" if result.failed else "DEBUG"
        done = self.events_for(job.worker).entry(
            level,
            "chunk.succeeded",
            f"chunk {job.chunk}: {result.ok} ok, {result.failed} failed in {elapsed_ms} ms",
            chunk=job.chunk,
            ok=result.ok,
            failed=result.failed,
            ms=elapsed_ms,
            mode=self.runner.mode,
        )
        return fields, done, increments

    def _fail(self, job: Job, reason: str, *, split: bool) -> dict[str, Any]:
        """Publish a failure notice: the producer sends the chunk again (or splits it, or gives up).

        The notice is small ASCII JSON, so nothing in it can fail to encode. If even it cannot be
        published, the task fails; the producer finds the chunk overdue and sends it again.
        """
        chunk, worker = job.chunk, job.worker
        reason = reason.encode("ascii", "backslashreplace").decode("ascii")[:500]
        notice = json.dumps({"chunk": chunk, "worker": worker, "reason": reason, "split": split})
        log.warning("chunk %s: %s; the producer is told", chunk, reason)
        event = self.events_for(worker).entry("ERROR", "chunk.unpublished", f"chunk {chunk}: {reason}", chunk=chunk)
        try:
            self.publisher.publish(job.stream, job.ttl, {"f": notice}, event, wanted=job.request.text_key)
        except BatchEnded:
            return self._ended(job, "while it ran")
        except Exception:
            log.exception("chunk %s: not even its failure notice could be published", chunk)
            raise
        return {"chunk": chunk, "not_finished": reason[:200]}

    def _ended(self, job: Job, when: str) -> dict[str, Any]:
        """The chunk's batch ended (its producer has every record): nothing is published for it."""
        log.info("chunk %s: its batch ended %s; nothing published", job.chunk, when)
        return {"chunk": job.chunk, "batch_ended": True}

    def _misplaced(self, request: ChunkRequest, queue: str | None) -> str | None:
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
        reply: Reply | None = None,
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
        self.publisher.allow(0.75 * self.settings.chunk_time_limit_s)
        notice = json.dumps({"chunk": chunk, "worker": worker, "reason": reason})
        self.publisher.publish(reply.stream, reply.ttl, {contract.NOTICE_REFUSED: notice}, event)

    def _engine_gone(self, exc: Exception, worker: str, chunk: Any) -> bool:
        """True when the sandbox failed because its engine is gone and this worker has stopped
        taking container work: the chunk is then let go without a result.

        Waits (a few heartbeats at most) for the main process's
        :class:`~hermes_worker.watches.EngineWatch` to withdraw the worker from
        ``hermes.container``; only then may the chunk go, since producers send a chunk again once
        the worker that announced it no longer serves the queue. False when the engine is fine
        (the chunk itself is the problem) or the worker is still registered as serving: the
        chunk then gets error records, as before.
        """
        from .sandbox.errors import SandboxError

        if not isinstance(exc, SandboxError):
            return False
        sandbox = backend(self.settings.container_backend)
        reason = sandbox.health(self.settings)
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
                log.warning("chunk %s let go: the %s engine is gone (%s)", chunk, sandbox.engine_name, reason)
                self.events_for(worker).emit(
                    "WARNING", "chunk.returned", f"chunk {chunk} let go: {reason}", chunk=chunk, reason=reason
                )
                return True
            time.sleep(0.2)
        return False


def outcome_summary(chunk: int, result: ChunkResult) -> dict[str, Any]:
    """A published chunk as monitoring shows it: its counts, and its error records by code.

    >>> from hermes_worker.processing import failed_chunk_result
    >>> payload = {"chunk": 3, "first": 1, "text": "a\\nb"}
    >>> failed = failed_chunk_result(payload, "too_slow", "slow", mode="local", worker="w")
    >>> outcome_summary(3, failed)
    {'chunk': 3, 'ok': 0, 'failed': 2, 'errors': {'too_slow': 2}}
    """
    errors: dict[str, int] = {}
    for error in result.errors:
        errors[error.code] = errors.get(error.code, 0) + 1
    return {"chunk": chunk, "ok": result.ok, "failed": result.failed, "errors": errors}


def _encodes(line: str) -> bool:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
