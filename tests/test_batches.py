"""Running batches, watched: the producer's entry, `hermes batches`, `hermes status --batch`, the gauges.

The counting (rate, ETA, bytes done) is pure and specified first, without Redis. Then hostile
entries in a real Redis (what anyone who can write there could leave), and a real batch on a
real worker, watched while it runs and gone when it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hermes_producer.batch_board import QUIET_AFTER_ERROR_S, BatchBoard, BatchProgress
from hermes_producer.batch_view import batch_detail, batch_table
from hermes_producer.reader import READ_BLOCK
from hermes_worker.batch_status import ENTRY_TTL_S, MAX_BATCHES, MAX_ENTRY_BYTES, BatchStatus, Board, read_board
from hermes_worker.contract import KEY_BATCH, ContractError
from hermes_worker.redis_conn import connect
from hermes_worker.wire import ChunkResult, ItemFailure

from .support.fixture_types import HermesProcessFactory, HermesRunner, WorkerFactory
from .support.redis_server import RedisServer
from .support.waiting import wait_until

BATCH = "0123456789abcdef0123456789abcdef"
ESC = "\x1b"


def result(chunk: int, ok: int, codes: tuple[str, ...] = (), worker: str = "local@w1") -> ChunkResult:
    errors = tuple(ItemFailure(line, code, "why") for line, code in enumerate(codes, start=1))
    return ChunkResult(chunk, "", ok, len(codes), errors, {"worker": worker, "mode": "local"})


def text_payload(chunk: int, lines: list[str]) -> dict[str, Any]:
    return {"chunk": chunk, "profile": {"name": "prompt", "steps": []}, "text": "\n".join(lines)}


class Reader:
    """Stands in for the input file: how far reading is."""

    def __init__(self) -> None:
        self.at = 0

    def __call__(self) -> int:
        return self.at


# -- counting, without Redis --


def test_rate_and_eta_come_from_the_last_ten_seconds() -> None:
    # Given a 10,000-byte ASCII input, read at once, in chunks of 100 lines of 10 bytes.
    reader = Reader()
    progress = BatchProgress(BATCH, "hermes-producer@test", "hermes.local", now=100.0, wall=1.7e9)
    progress.follow_input("in.txt", 10_000, reader)
    reader.at = 10_000
    # When a chunk is written each second for three seconds,
    for second in range(3):
        progress.pulled(text_payload(second, ["x" * 9] * 100))
        progress.written(second, result(second, 100))
    status = progress.status(now=103.0, wall=1.7e9 + 3, holding=["local@w1"])
    # Then the bytes done are exact (ASCII), the rate is 100 records a second, the ETA 7 s.
    assert (status.records, status.read, status.size) == (300, 3_000, 10_000)
    assert status.fraction == pytest.approx(0.3)
    assert status.rate == pytest.approx(100.0) and status.eta_s == pytest.approx(7.0)
    assert status.profile == "prompt" and status.holding == ("local@w1",)
    # And once nothing comes for ten seconds, the rate is 0 and there is no ETA.
    progress.status(now=110.0, wall=1.7e9 + 10, holding=[])
    stalled = progress.status(now=121.0, wall=1.7e9 + 21, holding=[])
    assert stalled.rate == 0.0 and stalled.eta_s is None


def test_bytes_done_stay_within_a_read_block_of_the_reader_and_catch_up_on_a_resume() -> None:
    # A resumed batch: the reader skipped 5 MB of chunks already written before the first one came.
    reader = Reader()
    progress = BatchProgress(BATCH, "p", "hermes.local", now=0.0, wall=0.0)
    progress.follow_input("big.jsonl", 8_000_000, reader)
    reader.at = 5_000_000
    progress.pulled(text_payload(5000, ["é" * 50] * 10))  # 510 characters, 1,010 bytes
    progress.written(5000, result(5000, 10))
    assert 5_000_000 - READ_BLOCK <= progress.read <= 5_000_000
    # Done never passes where reading was, nor goes back.
    reader.at = 5_000_100
    before = progress.read
    progress.pulled(text_payload(5001, ["a" * 2_000_000]))
    progress.written(5001, result(5001, 1))
    assert before <= progress.read <= 5_000_100


def test_errors_by_code_workers_and_names_are_bounded() -> None:
    progress = BatchProgress(BATCH, "p" * 500, "hermes.local", now=0.0, wall=0.0)
    progress.follow_input("n" * 500, None, None)
    progress.written(0, result(0, 5, ("empty_prompt", "empty_prompt", "a code from a newer worker")))
    for number in range(40):
        progress.written(number + 1, result(number + 1, number, worker=f"local@w{number:02}" + "x" * 300))
    status = progress.status(now=1.0, wall=1.0, holding=[f"h{n}" for n in range(40)])
    assert status.errors == {"empty_prompt": 2, "unknown": 1} and status.failed == 3
    assert len(status.workers) == 16 and len(status.holding) == 16
    assert all(len(name) <= 200 for name in [status.input, status.producer, *status.workers, *status.holding])
    assert "local@w39" + "x" * 190 + "…" in status.workers  # the workers that made the most records
    # And the entry reads back as written, well under the size a reader accepts.
    raw = status.to_json().encode()
    assert len(raw) < MAX_ENTRY_BYTES / 2 and BatchStatus.from_json(raw, BATCH) == status


def entry(**changes: Any) -> dict[str, Any]:
    """A valid entry as JSON data, with ``changes``."""
    status = BatchProgress(BATCH, "hermes-producer@vm", "hermes.local", now=0.0, wall=1.7e9).status(1.0, 1.7e9, [])
    return json.loads(status.to_json()) | changes


@pytest.mark.parametrize(
    ("label", "raw"),
    [
        ("too large", json.dumps(entry(input="x" * MAX_ENTRY_BYTES)).encode()),
        ("not JSON", b"\xff{"),
        ("nested too deeply", b"[" * 100_000),
        ("another version", json.dumps(entry(v=2)).encode()),
        ("another batch's", json.dumps(entry(batch="f" * 32)).encode()),
        ("a negative count", json.dumps(entry(records=-1)).encode()),
        ("a count that is a bool", json.dumps(entry(failed=True)).encode()),
        ("a count past 2**62", json.dumps(entry(read=1 << 63)).encode()),
        ("a NaN rate", json.dumps(entry(rate=float("nan"))).encode()),
        ("an infinite ETA", json.dumps(entry(eta_s=float("inf"))).encode()),
        ("an error code Hermes does not define", json.dumps(entry(errors={"\x1b[2J": 1})).encode()),
        ("too many workers", json.dumps(entry(workers={f"w{n}": 1 for n in range(17)})).encode()),
        ("a name too long", json.dumps(entry(holding=["w" * 201])).encode()),
        ("a name that is not a string", json.dumps(entry(profile=["prompt"])).encode()),
    ],
)
def test_an_entry_no_producer_writes_is_refused(label: str, raw: bytes) -> None:
    with pytest.raises(ContractError):
        BatchStatus.from_json(raw, BATCH)


def test_names_reach_the_board_printable_and_are_printed_escaped_and_cut_to_their_column() -> None:
    # A producer spells what a terminal would obey as escapes (a file may be named anything),
    progress = BatchProgress(BATCH, f"p{ESC}[2J", "hermes.local", now=0.0, wall=1.7e9)
    progress.follow_input(f"in{ESC}]0;pwned\x07\u202e.jsonl\nfake line", None, None)
    progress.written(0, result(0, 3, worker=f"local@{ESC}[1A" + "w" * 150))
    written = progress.status(1.0, 1.7e9 + 1, holding=["\r\u2028"])
    status = BatchStatus.from_json(written.to_json().encode(), BATCH)
    assert status.input == "in\\x1b]0;pwned\\x07\\u202e.jsonl\\x0afake line"
    # and a reader refuses an entry that does not (anyone may write to Redis).
    with pytest.raises(ContractError):
        BatchStatus.from_json(json.dumps(entry(input=f"in{ESC}[2J")).encode(), BATCH)
    # Printers escape again whatever they print, and keep each batch on its line, cut to its columns.
    raw = dataclasses.replace(status, input=f"a{ESC}[2J\nb", holding=(f"{ESC}[1A",))
    lines = batch_table(Board((raw, status))) + batch_detail(raw, now=1.7e9 + 5)
    shown = "\n".join(lines)
    for unsafe in (ESC, "\x07", "\u202e", "\r", "\u2028"):
        assert unsafe not in shown
    assert len(lines) == 3 + 6 and "a\\x1b[2J\\x0ab" in shown
    assert max(len(line) for line in batch_table(Board((raw, status)))) < 200


# -- hostile entries in a real Redis --


@pytest.mark.cluster
def test_the_board_skips_what_no_producer_wrote_and_reads_at_most_200_entries(redis_server: RedisServer) -> None:
    redis_server.flush()
    client = redis_server.client()
    client.set(KEY_BATCH.format(batch=BATCH), json.dumps(entry()))
    client.set(KEY_BATCH.format(batch="not-a-batch-id"), json.dumps(entry()))
    client.hset(KEY_BATCH.format(batch="1" * 32), "a", "b")  # another type
    client.set(KEY_BATCH.format(batch="2" * 32), b"x" * (8 * 1024 * 1024))  # 8 MB: read 16 KiB of it, no more
    client.set(KEY_BATCH.format(batch="3" * 32), json.dumps(entry(batch="3" * 32, records=-5)))
    board = read_board(client)
    assert [b.batch for b in board.batches] == [BATCH]
    assert board.unreadable == 4 and not board.truncated
    pipe = client.pipeline()
    for number in range(MAX_BATCHES + 50):
        batch = f"{number:032x}"
        pipe.set(KEY_BATCH.format(batch=batch), json.dumps(entry(batch=batch)))
    pipe.execute()
    many = read_board(client)
    assert len(many.batches) <= MAX_BATCHES and many.truncated


@pytest.mark.cluster
def test_hermes_batches_and_metrics_show_hostile_entries_harmlessly(
    redis_server: RedisServer, chermes: HermesRunner
) -> None:
    client = redis_server.client()  # chermes flushed it
    # Printable, but shaped to break out of a label or a column: shown as it is, and only as a value.
    hostile = 'a"} 1 hermes_fake{x="9 [bold]' + "w" * 150
    client.set(KEY_BATCH.format(batch=BATCH), json.dumps(entry(input=hostile, records=7)))
    client.set(KEY_BATCH.format(batch="e" * 32), json.dumps(entry(batch="e" * 32, input=f"a{ESC}]0;x\x07")))
    client.set(KEY_BATCH.format(batch="f" * 32), b"{" * 20_000)
    listed = chermes("batches")
    assert listed.returncode == 0, listed.stderr
    assert ESC not in listed.stdout and "\x07" not in listed.stdout
    assert "0123456789ab" in listed.stdout and "skipped 2 unreadable entries" in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) < 200
    as_json = json.loads(chermes("batches", "--json").stdout)
    assert [b["batch"] for b in as_json] == [BATCH] and as_json[0]["records"] == 7
    detail = chermes("status", "--batch", "01234567")
    assert detail.returncode == 0 and f"batch {BATCH}" in detail.stdout and hostile in detail.stdout
    assert chermes("batches", "fedc").returncode == 1  # not running
    wrong = chermes("batches", f"x{ESC}[2J")
    assert wrong.returncode == 2 and ESC not in wrong.stderr
    # The exporter escapes the label: one sample, no series of the attacker's making.
    families = {f.name: f for f in text_string_to_metric_families(chermes("metrics").stdout)}
    assert "hermes_fake" not in families
    (info,) = families["hermes_batch_info"].samples
    assert info.labels["input"] == hostile
    assert families["hermes_batch_entries_unreadable"].samples[0].value == 2


# -- a real batch on a real worker --


def metrics_of(chermes: HermesRunner) -> dict[str, Any]:
    done = chermes("metrics")
    assert done.returncode == 0, done.stderr
    return {f.name: f for f in text_string_to_metric_families(done.stdout)}


@pytest.mark.cluster
def test_a_running_batch_is_shown_while_it_runs_and_gone_when_it_ends(
    start_worker: WorkerFactory, chermes: HermesRunner, hermes_process: HermesProcessFactory,
    cluster_env: dict[str, str], redis_server: RedisServer, tmp_path: Path,
) -> None:  # fmt: skip
    # Given a worker and a batch far too long to finish during the test, one line in 500 malformed,
    start_worker("w1")
    source = tmp_path / "big.jsonl"
    with source.open("w") as handle:
        for n in range(200_000):
            line = json.dumps({"id": n, "prompt": f"caf\u00c3\u00a9  {n}"})
            handle.write('{"prompt": \n' if n % 500 == 0 else line + "\n")
    producer = hermes_process("batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--chunk-size", "256",
                              env=cluster_env)  # fmt: skip

    # When it has written a few thousand records,
    def running() -> dict[str, Any] | None:
        shown = json.loads(chermes("batches", "--json").stdout)
        return shown[0] if shown and shown[0]["records"] >= 2_000 and shown[0]["holding"] else None

    status = wait_until(running, 90, 0.5, lambda: f"the batch on the board:\n{producer.stderr[-2000:]}")
    # Then `hermes batches --json` has its input, size, progress, rate, ETA, errors and worker,
    assert status["input"] == str(source) and status["size"] == source.stat().st_size
    assert 0 < status["read"] < status["size"] and status["rate"] > 0 and status["eta_s"] > 0
    assert status["errors"] == {"malformed_json": status["failed"]} and status["failed"] >= 3
    assert status["workers"] == {"local@w1": status["records"]} and status["holding"] == ["local@w1"]
    assert status["profile"] == "prompt" and status["queue"] == "hermes.local"
    batch = status["batch"]
    key = KEY_BATCH.format(batch=batch)
    assert 0 < redis_server.client().ttl(key) <= ENTRY_TTL_S
    # the table and the detail print it,
    table = chermes("batches").stdout
    assert batch[:12] in table and f"of {source.stat().st_size / 1e6:.1f} MB" in table and "local@w1" in table

    def holding() -> str | None:  # a worker between two chunks holds none for a moment: wait for one
        shown = chermes("status", "--batch", batch[:8]).stdout
        return shown if "(holding a chunk)" in shown else None

    detail = wait_until(holding, 30, 0.2, "the batch's detail to show a worker holding a chunk")
    assert "local@w1" in detail and "malformed_json" in detail
    # and the cluster exporter has the same figures, with the queue and who consumes it.
    families = metrics_of(chermes)
    labels = {"batch": batch}
    assert next(s.value for s in families["hermes_batch_records"].samples if s.labels == labels) >= 2_000
    assert [s.value for s in families["hermes_batch_input_bytes"].samples if s.labels == labels] == [
        source.stat().st_size
    ]
    workers = {s.labels["worker"] for s in families["hermes_batch_worker_records"].samples}
    assert workers == {"local@w1"}
    consumers = {s.labels["queue"]: s.value for s in families["hermes_queue_consumers"].samples}
    assert consumers == {"hermes.local": 1, "hermes.container": 0}
    assert {s.labels["queue"] for s in families["hermes_queue_depth"].samples} == {"hermes.local", "hermes.container"}

    # When the batch is interrupted (Ctrl-C), its entry goes with it, at once.
    producer.process.send_signal(signal.SIGINT)
    assert producer.wait(60) == 130, producer.stderr
    assert redis_server.client().exists(key) == 0
    assert "no batch is running" in chermes("batches").stdout


@pytest.mark.cluster
def test_a_batch_that_finishes_leaves_no_entry_and_one_killed_leaves_one_that_expires(
    start_worker: WorkerFactory, chermes: HermesRunner, hermes_process: HermesProcessFactory,
    cluster_env: dict[str, str], redis_server: RedisServer, tmp_path: Path,
) -> None:  # fmt: skip
    start_worker("w1")
    source = tmp_path / "in.txt"
    # Long enough to be on the board for a few seconds (it is written once a second) on a fast machine.
    source.write_text("".join(f"prompt {n}\n" for n in range(200_000)))
    client = redis_server.client()
    # A batch that runs to its end removes its entry.
    producer = hermes_process("batch", str(source), "-o", str(tmp_path / "a.jsonl"), "--chunk-size", "1024",
                              env=cluster_env)  # fmt: skip
    wait_until(lambda: client.keys(KEY_BATCH.format(batch="*")), 60, 0.2, "the batch's entry")
    assert producer.wait(300) == 0, producer.stderr
    assert client.keys(KEY_BATCH.format(batch="*")) == []
    # One whose producer is killed leaves its entry to expire by itself.
    killed = hermes_process("batch", str(source), "-o", str(tmp_path / "b.jsonl"), "--chunk-size", "256",
                            env=cluster_env)  # fmt: skip
    (key,) = wait_until(lambda: client.keys(KEY_BATCH.format(batch="*")), 60, 0.2, "the batch's entry")
    killed.process.kill()
    killed.process.wait(timeout=30)
    assert 0 < client.ttl(key) <= ENTRY_TTL_S


def test_the_board_survives_a_redis_that_fails_and_stays_quiet_a_while() -> None:
    # Progress is for people: a Redis that fails never breaks (nor stops) the batch, and is not
    # asked again for a while. This "Redis" drops each connection at once, and counts them.
    accepted: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def drop_each_connection() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection = listener.accept()[0]
                    accepted.append(1)  # before the close the client sees
                    connection.close()

        threading.Thread(target=drop_each_connection, daemon=True).start()
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        board = BatchBoard(connect(url, 0.2), BatchProgress(BATCH, "p", "hermes.local", now=0.0, wall=0.0))
        board.tick(0.0, [])  # runs into the error: no exception
        tried = len(accepted)
        board.tick(0.5, [])
        board.tick(QUIET_AFTER_ERROR_S - 0.1, [])  # quiet after the error: not even tried
        assert tried >= 1 and len(accepted) == tried
        board.tick(QUIET_AFTER_ERROR_S + 0.1, [])  # then it tries again
        assert len(accepted) > tried
        board.close()  # a failed delete is no exception either


@pytest.mark.cluster
def test_watch_prints_the_board_again_until_interrupted(
    redis_server: RedisServer, hermes_process: HermesProcessFactory, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    client = redis_server.client()
    redis_server.flush()
    client.set(KEY_BATCH.format(batch=BATCH), json.dumps(entry(records=5)))
    printed = tmp_path / "watch.out"

    def seen() -> list[int]:
        lines = printed.read_text(encoding="utf-8").splitlines()
        return [json.loads(line)[0]["records"] for line in lines[:-1]]  # the last may be half-written

    with printed.open("wb") as out:
        watching = hermes_process("batches", "--watch", "0.5", "--json", env=cluster_env, stdout=out)
    wait_until(lambda: seen().count(5) >= 2, 60, 0.1, "the board printed twice")
    client.set(KEY_BATCH.format(batch=BATCH), json.dumps(entry(records=9)))
    wait_until(lambda: seen().count(9) >= 2, 60, 0.1, "the changed board printed twice")
    watching.process.send_signal(signal.SIGINT)
    assert watching.wait(30) == 130
    assert set(seen()) == {5, 9} and seen().index(9) > seen().index(5)
