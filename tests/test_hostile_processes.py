"""A process that dies or hangs under a batch never sinks it (issue 11): the batch ends with
every record, or with error records that say why, never with a producer waiting for ever.

In-process, a pool process killed mid-batch (also while it sends a result) costs no record. On a
cluster, a fault injector that watches the result stream as anyone could (:class:`StartWatcher`)
freezes or kills a worker's pool process when it takes a chunk: a chunk whose process hangs is
sent again once overdue, a worker stuck between chunks ends the batch, and a line that kills
every process running it gets an error record of its own. Hostile lines: test_hostile_items.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from .support.fixture_types import HermesProcessFactory, HermesRunner, WorkerFactory
from .support.inputs import strict_records
from .support.processes import children, pool_processes
from .support.redis_server import RedisServer
from .support.waiting import wait_until

# In-process ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_pool_process_killed_mid_batch_costs_no_record_in_process(
    hermes_process: HermesProcessFactory, hermes_env: dict[str, str], tmp_path: Path
) -> None:
    """Was: exit 3 "a normalization process died unexpectedly". Now the pool is replaced, and the
    chunk it may have died on runs alone; an outside kill (or the OOM killer) costs no record."""
    # Given an in-process batch on two pool processes
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [json.dumps({"id": n, "prompt": f"caf\u00c3\u00a9  {n}  " * 20}) for n in range(10_000)]
    src.write_text("".join(row + "\n" for row in rows))
    batch = hermes_process("batch", str(src), "-o", str(out), "--processes", "2", "--chunk-size", "100", env=hermes_env)
    journal = tmp_path / "out.jsonl.partial.journal"
    wait_until(lambda: journal.exists() and journal.read_text().count("\n") > 5, 60, 0.05, "the batch to get going")
    # When one of its pool processes is killed
    pool = wait_until(lambda: pool_processes(batch.process.pid), 10, 0.05, "the pool processes")
    os.kill(pool[0], signal.SIGKILL)
    # Then the batch finishes with every record, all normalized
    assert batch.wait(timeout=240) == 0, batch.stderr
    assert "Traceback" not in batch.stderr
    records = strict_records(out.read_bytes())
    assert [r["id"] for r in records] == list(range(10_000))
    assert all("text" in r for r in records)


# A race hunt: six batches of 100,000 two-KiB prompts, each with a pool process killed (about 20 s
# of CPU): chaos, like the other kill-until-it-breaks tests, not the fast tier.
@pytest.mark.chaos
@pytest.mark.slow
def test_a_pool_process_killed_while_it_sends_a_result_never_hangs_the_batch(
    hermes_process: HermesProcessFactory, hermes_env: dict[str, str], tmp_path: Path
) -> None:
    """CPython's pool hangs for ever when a process dies while it sends a result (the dead one
    holds the result pipe's lock; the pool's manager waits for the rest of the message): a
    batch waited for ever, or finished and then hung at exit. Large results make that window
    wide: about one kill in four or eight landed in it. Now the executor sees a dead process
    the pool never reports, releases that pool and runs its chunks again."""
    # Given batches whose chunks send back about 2 MB of records each (fast to normalize)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": n, "prompt": f"word{n} " * 300}) + "\n" for n in range(100_000)))
    for attempt in range(6):
        out = tmp_path / f"out-{attempt}.jsonl"
        batch = hermes_process("batch", str(src), "-o", str(out), "--processes", "2", "--chunk-size", "1000",
                               "--profile", "nfc", env=hermes_env)  # fmt: skip
        journal = tmp_path / f"out-{attempt}.jsonl.partial.journal"
        wait_until(lambda: journal.exists() and journal.read_text().count("\n") > 5, 60, 0.02, "the batch to get going")  # noqa: B023
        # When one of its pool processes is killed, wherever it is
        pool = wait_until(lambda: pool_processes(batch.process.pid), 10, 0.02, "the pool processes")  # noqa: B023
        os.kill(pool[0], signal.SIGKILL)
        # Then the batch ends, with every record
        assert batch.wait(timeout=120) == 0, batch.stderr
        assert out.read_bytes().count(b"\n") == 100_000


# On a cluster: a fault injector on the result stream ------------------------------------------


class StartWatcher(threading.Thread):
    """Calls ``act(chunk, lines)`` for every start notice on the batch's result stream (a real
    fault injector: it reads Redis as anyone could, and signals the worker's processes)."""

    def __init__(self, client: redis.Redis, act: Callable[[int, bytes], None]) -> None:
        super().__init__(daemon=True)
        self.client, self.act, self.done = client, act, threading.Event()
        self.errors: list[str] = []  # what ended the watch early (the test shows it when it fails)

    def run(self) -> None:
        try:
            self._watch()
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _watch(self) -> None:
        stream: bytes | None = None
        last: Any = b"0"
        while not self.done.is_set():
            if stream is None:
                found: Any = self.client.keys("hermes:results:*")
                stream = found[0] if found else None
                time.sleep(0.005)
                continue
            reply: Any = self.client.xread({stream: last}, block=100)
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if b"s" in fields:
                        chunk = json.loads(fields[b"s"])["chunk"]
                        batch = stream.decode().rsplit(":", 1)[-1]
                        lines: Any = self.client.get(f"hermes:chunk:{batch}:{chunk}")
                        self.act(chunk, lines or b"")


@pytest.mark.cluster
@pytest.mark.slow
def test_a_chunk_whose_process_hangs_is_sent_again_after_the_time_limit(
    start_worker: WorkerFactory, chermes: HermesRunner, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Was: the producer waited for ever. Celery kills the hung process at the hard time limit and
    acknowledges the chunk, so nobody sends it again, and no notice says so: the producer's
    watchdog finds it overdue."""
    # Given a worker with a 4 s chunk time limit, whose pool process freezes in the first chunk
    limit = {"HERMES_CHUNK_TIME_LIMIT": "4"}
    main = start_worker("hangs", env=limit).process.pid
    frozen: list[int] = []

    def freeze(_chunk: int, lines: bytes) -> None:
        if b"SLOW" in lines and not frozen:
            frozen.extend(children(main))
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)

    watcher = StartWatcher(redis_server.client(), freeze)
    watcher.start()
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": n, "prompt": f"p {n}"} for n in range(300)]
    rows[0]["prompt"] = "SLOW " + "caf\u00c3\u00a9 " * 100_000  # so that the freeze lands while it runs
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # When a batch runs
    try:
        done = chermes("batch", str(src), "-o", str(out), "--chunk-size", "50", "--isolation", "local",
                       env=limit, timeout=90)  # fmt: skip
    finally:
        watcher.done.set()
    # Then the frozen chunk was sent again once overdue, and every record arrived
    assert frozen, "no pool process was frozen"
    assert done.returncode == 0, done.stderr
    assert "never answered" in done.stderr and "sent again" in done.stderr
    assert [r["id"] for r in strict_records(out.read_bytes())] == list(range(300))


@pytest.mark.cluster
@pytest.mark.slow
def test_a_worker_stuck_between_chunks_ends_the_batch_instead_of_a_wait_for_ever(
    start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    """Was: the producer waited for ever. A worker whose only pool process is wedged keeps its
    heartbeat and takes nothing; after a chunk time limit of silence the batch gives up (exit 3,
    naming the workers) or, where allowed, finishes in-process."""
    # Given a registered worker whose only pool process is frozen before any chunk
    limit = {"HERMES_CHUNK_TIME_LIMIT": "4"}
    main = start_worker("stuck", env=limit).process.pid
    pool = wait_until(lambda: children(main), 10, 0.05, "the pool process")
    for pid in pool:
        os.kill(pid, signal.SIGSTOP)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": n, "prompt": f"p {n}"}) + "\n" for n in range(100)))
    try:
        # When a batch that may not fall back runs on it
        strict = chermes("batch", str(src), "-o", str(out), "--isolation", "local", "--no-fallback",
                         env=limit, timeout=60)  # fmt: skip
        # And one that may
        lenient = chermes("batch", str(src), "-o", str(out), "--isolation", "local", env=limit, timeout=60)
    finally:
        for pid in pool:
            os.kill(pid, signal.SIGCONT)
    # Then the first exits 3 naming the stuck worker, the second finishes in-process
    assert strict.returncode == 3, strict.stderr
    assert "no worker answered" in strict.stderr and "local@stuck" in strict.stderr
    assert lenient.returncode == 0, lenient.stderr
    assert "finishing the batch in-process" in lenient.stderr
    assert [r["id"] for r in strict_records(out.read_bytes())] == list(range(100))


@pytest.mark.cluster
@pytest.mark.slow
def test_a_line_that_kills_every_process_running_it_gets_its_own_error_record(
    start_worker: WorkerFactory, chermes: HermesRunner, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Was: Celery put the chunk back after each death, for ever. Now the producer splits the chunk
    until the line is alone, and gives it an error record; the other 63 lines are normalized."""
    # Given a worker whose pool process is killed whenever it takes a chunk holding the poison line
    main = start_worker("poisoned").process.pid
    kills: list[int] = []
    poisoned: set[int] = set()

    def kill_if_poisoned(chunk: int, lines: bytes) -> None:
        # Remembered by chunk: a chunk taken again after the producer split it has no lines left
        # in Redis for the watcher to read, but the worker that took it first read them all.
        if b"POISON" in lines:
            poisoned.add(chunk)
        if chunk in poisoned:
            for pid in children(main):
                with contextlib.suppress(ProcessLookupError):  # it ended since /proc was read
                    os.kill(pid, signal.SIGKILL)
            kills.append(chunk)

    watcher = StartWatcher(redis_server.client(), kill_if_poisoned)
    watcher.start()
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    # A slow line (mojibake ftfy peels a character a pass: about 4 s of work) so that the kill
    # lands while the process works on it. At 0.3 s of work, a watcher starved under CI load
    # came too late: the line was normalized and no record said it kills its process.
    rows = [{"id": n, "prompt": f"prompt {n}"} for n in range(64)]
    rows[37]["prompt"] = "POISON " + "\u00c2" * 200_000 + "\u00a9"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # When the batch runs as one chunk
    try:
        done = chermes("batch", str(src), "-o", str(out), "--chunk-size", "64", "--isolation", "local", timeout=180)
    finally:
        watcher.done.set()
    # Then line 38 alone is an error record naming why; every other line is normalized
    assert done.returncode == 1, f"{done.stderr}\nthe watcher killed for chunks {kills}; it ended: {watcher.errors}"
    records = strict_records(out.read_bytes())
    assert [r["id"] for r in records] == list(range(64))
    assert [r["line"] for r in records if "error" in r] == [38]
    assert records[37]["error"]["code"] == "engine_failure"
    assert "taken 4 times with no result" in records[37]["error"]["message"]
    assert "split into" in done.stderr and len(kills) >= 4
