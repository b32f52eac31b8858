"""A batch's id, and which batches are on the board (issue 14: what a user sees).

`hermes batch` says its id on stderr before any record is written (and puts it in its
summary), never among the records; with it, `hermes batches ID` follows the batch. The board
lives in Redis: a batch run where no broker answers is on no board, and `hermes batches` says so
in words; every other batch is on it, wherever its chunks run: on workers, in-process because
no worker was alive when it started, or in-process after its workers were lost mid-way.
"""

from __future__ import annotations

import io
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from hermes_producer.journal import Journal, JournalError
from hermes_worker.contract import KEY_BATCH

from .support.fixture_types import HermesProcessFactory, HermesRunner, WorkerFactory
from .support.processes import Producer
from .support.redis_server import RedisServer
from .support.waiting import wait_until

STARTED = re.compile(r"^hermes: batch ([0-9a-f]{32}): ", re.M)


def started_id(stderr: str) -> str:
    """The id a batch's first notice names (the test fails if there is not exactly one)."""
    (batch,) = STARTED.findall(stderr)
    return str(batch)


def long_input(path: Path, lines: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for n in range(lines):
            handle.write(json.dumps({"id": n, "prompt": f"caf\u00c3\u00a9  na\u00c3\u00afve  {n}"}) + "\n")
    return path


# -- no broker: the id is said, there is no board --


def test_a_batch_says_its_id_on_stderr_and_in_its_summary_never_among_its_records(
    hermes: HermesRunner, tmp_path: Path
) -> None:
    # Given two prompts on standard input and no broker,
    done = hermes("batch", "-", "--format", "text", "--summary-json", str(tmp_path / "summary.json"),
                  input="a  b\nx\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Then standard output holds the two records and nothing else,
    assert [json.loads(line)["line"] for line in done.stdout.splitlines()] == [1, 2]
    # the id comes first on stderr, before the summary, and the summary file carries the same id,
    batch = started_id(done.stderr)
    assert done.stderr.index(batch) < done.stderr.index("2 prompts in")
    assert json.loads((tmp_path / "summary.json").read_text())["batch"] == batch
    # and since no broker answers, it is on no board: no `hermes batches` hint that would lead nowhere.
    assert "hermes batches" not in done.stderr
    # The log has it too (to find the batch afterwards).
    assert batch in hermes("log", "-n", "50").stdout


def test_quiet_batches_say_nothing_and_their_summary_still_has_the_id(hermes: HermesRunner, tmp_path: Path) -> None:
    done = hermes("-q", "batch", "-", "-o", str(tmp_path / "out.jsonl"), "--summary-json", "-", "--format", "text",
                  input="one\n")  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    assert re.fullmatch(r"[0-9a-f]{32}", json.loads(done.stdout)["batch"])


@pytest.mark.parametrize(
    "args", [["batches"], ["batches", "--json"], ["batches", "abcd"], ["status", "--batch", "abcd"],
             ["batches", "--watch", "1"]],
)  # fmt: skip
def test_with_no_broker_hermes_batches_says_there_is_no_board(hermes: HermesRunner, args: list[str]) -> None:
    done = hermes(*args)
    assert done.returncode == 3 and done.stdout == ""
    first, fix = done.stderr.splitlines()
    assert first.startswith("hermes: error: no board of running batches: Redis at redis://127.0.0.1:1/0 is not")
    assert "a batch that runs with no broker is on no board" in first
    assert fix == "hermes: fix: start Redis, or point HERMES_BROKER_URL (or --broker) at the cluster's"


@pytest.mark.parametrize(
    "batch_id",
    ["0123456789abcdef0123", "0123456789ABCDEF", "0" * 33, "../../etc", "\x1b[2J0123456789abcdef", 12345, None, ""],
    ids=["20-digits", "upper-case", "33-digits", "path", "escape", "number", "null", "empty"],
)
def test_a_journal_whose_batch_id_no_producer_writes_is_not_resumed(batch_id: Any, tmp_path: Path) -> None:
    # A resumed batch takes its id from the journal: one edited by hand must not name other keys
    # (nor an entry no reader of the board would accept), whatever it holds.
    header = {"input": {"path": "in.jsonl"}, "options": {}}
    written = io.StringIO()
    Journal(written, "out.jsonl.partial.journal").start(header | {"batch_id": batch_id})
    output = tmp_path / "out.jsonl.partial"
    output.write_bytes(b"")
    with output.open("rb") as partial, pytest.raises(JournalError, match="the batch id is damaged"):
        Journal(io.StringIO(written.getvalue()), "out.jsonl.partial.journal").resume(header, partial.fileno())


@pytest.mark.parametrize("batch_id", ["0123456789abcdef", "0123456789abcdef" * 2], ids=["in-process-before", "now"])
def test_a_journal_with_an_id_a_producer_writes_is_resumed(batch_id: str, tmp_path: Path) -> None:
    header = {"input": {"path": "in.jsonl"}, "options": {}}
    written = io.StringIO()
    Journal(written, "j").start(header | {"batch_id": batch_id})
    (tmp_path / "partial").write_bytes(b"")
    with (tmp_path / "partial").open("rb") as partial:
        assert Journal(io.StringIO(written.getvalue()), "j").resume(header, partial.fileno()).batch_id == batch_id


# -- a cluster: the board has every batch, wherever it runs --


def board(chermes: HermesRunner) -> list[dict[str, Any]]:
    done = chermes("batches", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def on_board_with(chermes: HermesRunner, producer: Producer, **wanted: Any) -> dict[str, Any]:
    """The producer's entry, once it has records and each field of ``wanted`` (a value, or a test)."""

    def matches() -> dict[str, Any] | None:
        for entry in board(chermes):
            if entry["records"] > 0 and all(v(entry[k]) if callable(v) else entry[k] == v for k, v in wanted.items()):
                return entry
        return None

    return wait_until(matches, 90, 0.3, lambda: f"the batch on the board with {wanted}:\n{producer.stderr[-3000:]}")


def interrupted(producer: Producer, redis_server: RedisServer, batch: str) -> None:
    """Ctrl-C ends the batch (exit 130) and takes its entry with it."""
    producer.process.send_signal(signal.SIGINT)
    assert producer.wait(60) == 130, producer.stderr
    assert redis_server.client().exists(KEY_BATCH.format(batch=batch)) == 0


@pytest.mark.cluster
def test_a_batch_on_workers_says_the_id_its_entry_has_and_how_to_follow_it(
    start_worker: WorkerFactory, chermes: HermesRunner, hermes_process: HermesProcessFactory,
    cluster_env: dict[str, str], redis_server: RedisServer, tmp_path: Path,
) -> None:  # fmt: skip
    start_worker("w1")
    source = long_input(tmp_path / "in.jsonl", 200_000)
    producer = hermes_process("batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--chunk-size", "256",
                              env=cluster_env)  # fmt: skip
    entry = on_board_with(chermes, producer, queue="hermes.local")
    batch = started_id(producer.stderr)
    assert entry["batch"] == batch
    assert f"follow it with: hermes batches {batch[:8]}" in producer.stderr
    assert chermes("batches", batch[:8], "--json").returncode == 0
    interrupted(producer, redis_server, batch)


@pytest.mark.cluster
def test_a_batch_run_in_process_because_no_worker_is_alive_is_on_the_board(
    chermes: HermesRunner, hermes_process: HermesProcessFactory, cluster_env: dict[str, str],
    redis_server: RedisServer, tmp_path: Path,
) -> None:  # fmt: skip
    # Given Redis and no worker, a batch that runs in-process from its start
    source = long_input(tmp_path / "in.jsonl", 300_000)
    producer = hermes_process("batch", str(source), "-o", "-", "--processes", "1", env=cluster_env)
    # Then it is on the board under the id it printed, as in-process, with its input's size and progress
    entry = on_board_with(chermes, producer, queue="in-process")
    batch = started_id(producer.stderr)
    assert entry["batch"] == batch and f"hermes batches {batch[:8]}" in producer.stderr
    assert "no live Hermes worker" in producer.stderr
    assert entry["size"] == source.stat().st_size and 0 < entry["read"] <= entry["size"]
    assert entry["holding"] == [] and all(worker.startswith("embedded@") for worker in entry["workers"])
    detail = chermes("status", "--batch", batch[:8])
    assert detail.returncode == 0 and "queue in-process" in detail.stdout, detail.stdout
    # And when it ends, the entry goes with it.
    interrupted(producer, redis_server, batch)


@pytest.mark.cluster
def test_a_batch_whose_workers_are_lost_mid_way_stays_on_the_board_as_in_process(
    start_worker: WorkerFactory, chermes: HermesRunner, hermes_process: HermesProcessFactory,
    cluster_env: dict[str, str], redis_server: RedisServer, tmp_path: Path,
) -> None:  # fmt: skip
    # Given a batch running on one worker,
    worker = start_worker("w1")
    source = long_input(tmp_path / "in.jsonl", 300_000)
    producer = hermes_process("batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--chunk-size", "256",
                              env=cluster_env)  # fmt: skip
    on_board_with(chermes, producer, queue="hermes.local", records=lambda n: n >= 1_000)
    batch = started_id(producer.stderr)
    # When the worker is killed, and the batch goes on in-process,
    worker.kill()
    entry = on_board_with(chermes, producer, queue="in-process",
                          workers=lambda w: any(name.startswith("embedded@") for name in w))  # fmt: skip
    # Then it is still on the board, under its id, with what each made so far, and still moving.
    assert entry["batch"] == batch and entry["workers"]["local@w1"] >= 1_000
    on_board_with(chermes, producer, queue="in-process", records=lambda n: n > entry["records"])
    assert "in-process" in producer.stderr
    interrupted(producer, redis_server, batch)
