"""A batch's entry on the cluster's board of running batches, kept by the Celery executor
(and by :class:`OnBoard` for a batch that runs in-process while Redis answers).

:class:`BatchProgress` counts (no I/O, no clock: time comes in as values): what the batch read,
wrote and failed, who made its records, and its rate and ETA over the last seconds.
:class:`BatchBoard` writes its :class:`~hermes_worker.batch_status.BatchStatus` to Redis at
most once a second, with an expiry, and deletes it when the batch ends. Progress is for people:
the board never raises and never retries, and after a Redis error it stays quiet for a while,
so it can neither break nor slow the batch.

The board lives in Redis: a batch that runs where no broker answers is on no board (its
progress line is on its own terminal). Every other batch is on it, wherever its chunks run: on
workers, in-process because no worker was alive when it started (:class:`OnBoard`), or
in-process after its workers were lost mid-way (the Celery executor goes on publishing).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import redis

from hermes_worker.batch_status import ENTRY_TTL_S, MAX_TEXT, MAX_WORKERS, UNKNOWN_CODE, BatchStatus, escaped
from hermes_worker.contract import ERROR_CODES, KEY_BATCH
from hermes_worker.wire import ChunkResult

from .executors import ChunkExecutor
from .reader import READ_BLOCK

__all__ = ["BatchBoard", "BatchProgress", "OnBoard", "input_position", "input_size", "producer_name"]

PUBLISH_EVERY_S = 1.0
RATE_WINDOW_S = 10.0  # the rate and the ETA are measured over about this long
QUIET_AFTER_ERROR_S = 5.0


def producer_name() -> str:
    """This producer as the board names it: ``hermes-producer@HOST``."""
    return f"hermes-producer@{socket.gethostname()}"


def input_size(source: BinaryIO) -> int | None:
    """The input's size in bytes when it is a regular file (a pipe's is not known)."""
    try:
        status = os.fstat(source.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) and status.st_size > 0 else None


def input_position(source: BinaryIO) -> Callable[[], int]:
    """How far into ``source`` reading is, as a callable (0 when it cannot tell)."""

    def position() -> int:
        try:
            return source.tell()
        except (OSError, ValueError):
            return 0

    return position


def _clip(text: str) -> str:
    """A name as the board takes it: printable (controls spelled as escapes), cut to its bound."""
    text = escaped(text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


class BatchProgress:
    """The counts of one batch, and its rate over the last :data:`RATE_WINDOW_S` seconds.

    Args:
        batch: the batch id.
        producer: this producer's name.
        queue: where its chunks go.
        now: the monotonic time it started at; ``wall``: the same moment as Unix time.
    """

    def __init__(self, batch: str, producer: str, queue: str, now: float, wall: float) -> None:
        self.batch, self.producer, self.queue = batch, producer, queue
        self.input = "-"
        self.size: int | None = None
        self.profile = ""
        self.records = self.failed = self.read = 0
        self.errors: dict[str, int] = {}
        self.workers: dict[str, int] = {}
        self._position: Callable[[], int] | None = None
        # chunk -> how far the input was read when the chunk was handed out, and its characters
        self._read_at: dict[int, tuple[int, int]] = {}
        self._started_mono, self._started_wall = now, wall
        self._samples: deque[tuple[float, int, int]] = deque([(now, 0, 0)])

    def follow_input(self, name: str, size: int | None, position: Callable[[], int] | None) -> None:
        """The input this batch reads: its name, its size in bytes if known, how far it is read."""
        self.input, self.size, self._position = _clip(name), size, position

    def pulled(self, payload: dict[str, Any]) -> None:
        """Chunk ``payload`` was taken from the input."""
        if not self.profile:
            profile = payload.get("profile")
            self.profile = _clip(str(profile.get("name", "?"))) if isinstance(profile, dict) else "?"
        if self._position is not None:
            text = payload.get("text")
            self._read_at[payload["chunk"]] = (self._position(), len(text) + 1 if isinstance(text, str) else 0)

    def written(self, chunk: int, result: ChunkResult) -> None:
        """Chunk ``chunk``'s records were handed to the writer."""
        self.records += result.count
        self.failed += result.failed
        if chunk in self._read_at:
            # The chunk ends at most one read block before where reading was when it was handed
            # out, and about its characters (its bytes, if ASCII) after the previous chunk's end:
            # smooth progress, which catches up with a resumed batch's skipped chunks at once.
            position, chars = self._read_at.pop(chunk)
            self.read = max(self.read, min(max(self.read + chars, position - READ_BLOCK), position))
        for error in result.errors:
            code = error.code if error.code in ERROR_CODES else UNKNOWN_CODE
            self.errors[code] = self.errors.get(code, 0) + 1
        worker = str(result.provenance.get("worker", "?"))
        self.workers[worker] = self.workers.get(worker, 0) + result.count

    def status(self, now: float, wall: float, holding: Iterable[str]) -> BatchStatus:
        """The entry as of ``now`` (monotonic; ``wall`` the same moment as Unix time)."""
        samples = self._samples
        samples.append((now, self.records, self.read))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        since, records_then, read_then = samples[0]
        elapsed = now - since
        rate = (self.records - records_then) / elapsed if elapsed > 0 else 0.0
        eta = None
        if self.size and elapsed > 0 and self.read > read_then:
            eta = max(self.size - self.read, 0) / ((self.read - read_then) / elapsed)
        top = sorted(self.workers.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_WORKERS]
        return BatchStatus(
            batch=self.batch, producer=_clip(self.producer), pid=os.getpid(), input=self.input,
            profile=self.profile, queue=_clip(self.queue), started=self._started_wall, updated=wall,
            records=self.records, failed=self.failed, errors=dict(self.errors), read=self.read, size=self.size,
            rate=round(rate, 1), eta_s=None if eta is None else round(eta, 1),
            workers={_clip(name): count for name, count in top},
            holding=tuple(_clip(name) for name in sorted(holding))[:MAX_WORKERS],
        )  # fmt: skip


class BatchBoard:
    """Publishes a :class:`BatchProgress` as the batch's entry, and removes it at the end.

    Args:
        client: the result Redis.
        progress: the counts to publish.
        every_s: publish at most this often.
        ttl_s: the entry's expiry (a producer that dies leaves it this long).
    """

    def __init__(
        self, client: redis.Redis, progress: BatchProgress, every_s: float = PUBLISH_EVERY_S,
        ttl_s: int = ENTRY_TTL_S,
    ) -> None:  # fmt: skip
        self.progress = progress
        self._redis = client
        self._key = KEY_BATCH.format(batch=progress.batch)
        self._every_s = every_s
        self._ttl_s = ttl_s
        self._next_at = float("-inf")
        self._published = False

    def tick(self, now: float, holding: Iterable[str]) -> None:
        """Publish the entry if it is due (once a second); a Redis error delays the next try."""
        if now < self._next_at:
            return
        self._next_at = now + self._every_s
        entry = self.progress.status(now, time.time(), holding).to_json()
        self._published = True  # even if the answer is lost, the write may have been done
        try:
            self._redis.set(self._key, entry, ex=self._ttl_s)
        except redis.RedisError:
            self._next_at = now + QUIET_AFTER_ERROR_S

    def close(self) -> None:
        """The batch is over (done, failed or interrupted): its entry goes."""
        if self._published:
            with contextlib.suppress(redis.RedisError):
                self._redis.delete(self._key)
            self._published = False


class OnBoard:
    """An in-process executor whose batch is on the board: Redis answers, but no worker was there
    for it when it started. The entry is written as chunks are handed out and written (at most
    once a second), says ``in-process`` as its queue, and goes when the batch ends.

    Args:
        inner: the in-process executor that runs the chunks.
        board: the batch's entry.
    """

    on_board = True

    def __init__(self, inner: ChunkExecutor, board: BatchBoard) -> None:
        self.inner = inner
        self.board = board

    @classmethod
    def in_process(cls, inner: ChunkExecutor, client: redis.Redis, batch_id: str) -> OnBoard:
        """``inner``'s batch on the board of the Redis ``client`` as ``batch_id``, queue ``in-process``."""
        return cls(inner, BatchBoard(client, BatchProgress(batch_id, producer_name(), "in-process", time.monotonic(),
                                                           time.time())))  # fmt: skip

    @property
    def mode(self) -> str:
        return self.inner.mode

    def describe(self) -> str:
        return self.inner.describe()

    def __enter__(self) -> OnBoard:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.board.close()
        self.inner.__exit__(*exc_info)

    def finish(self) -> None:
        self.inner.finish()

    def follow_input(self, name: str, size: int | None, position: Callable[[], int] | None) -> None:
        self.board.progress.follow_input(name, size, position)

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[ChunkResult]:
        """The inner executor's results, each counted on the board."""
        progress = self.board.progress

        def pulled() -> Iterator[dict[str, Any]]:
            for payload in payloads:
                progress.pulled(payload)
                self.board.tick(time.monotonic(), ())
                yield payload

        for result in self.inner.map_ordered(pulled()):
            progress.written(result.chunk, result)
            self.board.tick(time.monotonic(), ())
            yield result
