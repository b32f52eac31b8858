"""One line never sinks a batch (issue 11, class 2): whatever a line holds, it gets its own record.

A line's failure is that line's error record, in-process and on a cluster: an id of 5,000
digits or with a lone surrogate, duplicate keys, deep nesting, huge numbers. And a chunk whose
result or lines Redis refuses, or whose task raises, ends with records or a bounded resend,
never a producer waiting for ever. Every record is valid UTF-8 JSON on one physical line.
Processes that die or hang under a batch: tests/test_hostile_processes.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hermes_producer.batch import BatchOptions, guard_duplicates, text_chunk_requests
from hermes_producer.reader import read_chunks
from hermes_producer.seen_ids import SeenIds
from hermes_producer.splitting import merge_results, split_request
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.redis_conn import refused_for_size
from hermes_worker.wire import ChunkRequest, Item, request_span

from .support.fixture_types import HermesRunner, WorkerFactory
from .support.inputs import strict_records
from .support.processes import wait_registered
from .support.redis_server import RedisServer
from .support.waiting import wait_until

BIG_ID = "9" * 5000


def pipeline(data: bytes, chunk_size: int = 4, fmt: str = "jsonl", max_bytes: int = 1000) -> list[dict[str, Any]]:
    """The records ``hermes batch`` writes for ``data``: raw chunks, the worker's parser, the guard."""
    options = BatchOptions(resolve_profile("nfc"), fmt, ChunkOptions(max_prompt_bytes=max_bytes), chunk_size)  # type: ignore[arg-type]
    seen, out = SeenIds(), b""
    for payload in text_chunk_requests(read_chunks(io.BytesIO(data), fmt, max_bytes, chunk_size), options):  # type: ignore[arg-type]
        result = guard_duplicates(process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="w"), seen)
        assert result.count == request_span(payload)[1]
        out += result.records.encode("utf-8")
    return strict_records(out)


# Lines and what becomes of each: the error code (None: normalized) and words of its message.
HOSTILE_LINES: list[tuple[bytes, str | None, str]] = [
    (b'{"id": %s, "prompt": "x"}' % BIG_ID.encode(), "bad_id", "integer of 5,000 digits"),
    (b'{"id": -%s, "prompt": "x"}' % (b"9" * 30), "bad_id", "integer of 30 digits"),
    (b'{"id": 18446744073709551615, "prompt": "64-bit ids are fine"}', None, ""),
    (b'{"id": "\\ud800", "prompt": "x"}', "bad_id", "lone surrogate U+D800"),
    (b'{"id": "a\\udfffb", "prompt": "x"}', "bad_id", "lone surrogate U+DFFF at offset 1"),
    (b'{"id": "%s", "prompt": "x"}' % (b"k" * 2000), "bad_id", "2,000 characters"),
    (b'{"id": 1e999, "prompt": "x"}', "bad_id", "got a JSON number"),
    (b'{"id": NaN, "prompt": "x"}', "bad_id", "got a JSON number"),
    (b'{"prompt": "a", "prompt": 5}', "malformed_json", "'prompt' more than once"),
    (b'{"id": "d1", "id": "d2", "prompt": "a"}', "malformed_json", "'id' more than once"),
    (b'{"prompt": "nested duplicates are not ours", "x": {"k": 1, "k": 2}}', None, ""),
    (b'{"prompt": "a huge extra number", "n": %s}' % (b"7" * 10000), None, ""),
    (b'{"prompt": "a deep extra", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed_json", "too deeply"),
    (b"[" * 200_000, "malformed_json", "too deeply"),
    (b'{"prompt": %s}' % BIG_ID.encode(), "prompt_not_string", "got a JSON number"),
    (b'{"id": %s}' % BIG_ID.encode(), "missing_prompt", "no 'prompt'"),
    (b'{"id": "\\ud800"}', "missing_prompt", "no 'prompt'"),
    (b'\xef\xbb\xbf{"prompt": "a BOM on a later line (files joined with cat)"}', None, ""),
    (b"\xef\xbb\xbf", "malformed_json", "blank"),
    (b'{"prompt": "lone \\udc80 in the prompt"}', "lone_surrogate", "U+DC80"),
    (b'{"prompt": "crlf"}\r', None, ""),
]


def test_every_hostile_line_becomes_its_own_record_in_input_order() -> None:
    """Each line above, between two good lines, in chunks of four: one record each, in order."""
    # Given every hostile line, each followed by a good one (so each shares a chunk with good lines)
    lines = [b'{"prompt": "first"}']
    for line, _code, _part in HOSTILE_LINES:
        lines += [line, b'{"prompt": "good"}']
    # When the lines go through the pipeline
    records = pipeline(b"\n".join(lines) + b"\n", chunk_size=4, max_bytes=1_000_000)
    # Then there is one record per line, in order, and each hostile line failed alone, as expected
    assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
    for index, (line, code, part) in enumerate(HOSTILE_LINES):
        record = records[1 + 2 * index]
        got = record.get("error", {}).get("code")
        assert got == code, (line[:80], record)
        assert part in record.get("error", {}).get("message", ""), (line[:80], record)
        assert records[2 + 2 * index]["text"] == "good"
    # And a failed line's record names the line itself, never an id it could not carry
    big = records[1]
    assert big["id"] == 2 and big["error"]["line"] == 2


def test_items_built_elsewhere_with_unwritable_ids_get_bad_id_records() -> None:
    """``hermes run``/``queue`` and hand-made requests send parsed items: their ids are checked too."""
    # Given items whose ids cannot be written as UTF-8 JSON, or are absurd
    items: list[list[Any]] = [
        [1, "\ud800", "x", None],
        [2, 10**30, "x", None],
        [3, 1.5, "x", None],
        [4, ["a"], "x", None],
        [5, "fine", "x", None],
        [6, "\udfff", None, ["malformed_json", "pre-failed, message with \udfff in it"]],
        [7, 7, None, ["engine_failure", "line one\nline two \x1b[2J"]],
    ]
    payload = BatchOptions(resolve_profile("nfc"), "jsonl").request(0, items=[Item.from_wire(i) for i in items])
    # When they are processed
    result = process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="w")
    # Then each gets its record, all writable, the bad ids as bad_id records under the line number
    records = strict_records(result.records.encode("utf-8"))
    codes = [r.get("error", {}).get("code") for r in records]
    assert codes == ["bad_id"] * 4 + [None, "malformed_json", "engine_failure"]
    assert [r["id"] for r in records] == [1, 2, 3, 4, "fine", 6, 7]
    assert "U+D800" in records[0]["error"]["message"] and "31 digits" in records[1]["error"]["message"]
    # And messages are printable: what a terminal, a log or JUnit XML shows cannot be driven by input
    assert records[5]["error"]["message"] == "pre-failed, message with \\udfff in it"
    assert records[6]["error"]["message"] == "line one\\u000aline two \\u001b[2J"
    json.dumps(result.to_wire(), ensure_ascii=False).encode("utf-8")  # the counts and errors too


def test_the_prompt_size_limit_counts_bytes_after_json_unescaping() -> None:
    """A prompt at the limit passes however it is escaped; one byte more is too_large."""
    # Given prompts of exactly 1,000 UTF-8 bytes written with 6- and 12-byte escapes, and 1,001
    lines = [
        b'{"prompt": "%s"}' % (b"\\u0041" * 1000),
        b'{"prompt": "%s"}' % (b"\\ud83d\\ude00" * 250),
        b'{"prompt": "%s"}' % (b"\\u0041" * 1001),
        b'{"prompt": "%s"}' % (b"\\u00e9" * 500 + b"A"),
    ]
    # When they run with a 1,000-byte limit
    records = pipeline(b"\n".join(lines), max_bytes=1000)
    # Then the first two are normalized and the last two are too_large, named in bytes
    assert [r.get("error", {}).get("code") for r in records] == [None, None, "too_large", "too_large"]
    assert "1,001 bytes" in records[2]["error"]["message"] and "1,001 bytes" in records[3]["error"]["message"]


@pytest.mark.parametrize("ways", [2, 3, 8, 100])
def test_a_chunk_split_into_parts_merges_back_into_the_same_records(ways: int) -> None:
    """The producer's split (for chunks that keep failing) loses, doubles and reorders nothing."""
    # Given a raw chunk with good lines, bad lines, an unshippable line and a repeated id
    options = BatchOptions(resolve_profile("nfc"), "jsonl", ChunkOptions(max_prompt_bytes=1000))
    rows = ['{"id": "a", "prompt": "x"}', "nope", "", '{"prompt": "caf\\u00e9"}', '{"id": "a", "prompt": "y"}']
    text = "\n".join(rows)
    payload = options.request(9, text=text, first=41, format="jsonl", bad=[[2, "invalid_utf8", "not valid UTF-8"]])
    whole = process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="w")
    # When it is split into parts, each part processed, and the results merged
    parts = split_request(payload, ways)
    assert 2 <= len(parts) <= min(ways, 5) and request_span(parts[0])[0] == 41
    results = [process_chunk(ChunkRequest.from_payload(part), mode="local", worker="w") for part in parts]
    merged = merge_results(payload, results)
    # Then the merged result is the whole chunk's
    assert merged == whole  # records, counts, errors, the guard's ids, the chunk number
    assert (merged.first, merged.chunk) == (41, 9)
    # And a chunk of one line cannot be split
    assert split_request(options.request(1, text="x", first=3, format="text", bad=[])) == []


# In-process, through the real CLI ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostile", "message"),
    [
        (b'{"id": %s, "prompt": "x"}' % BIG_ID.encode(), "integer of 5,000 digits"),
        (b'{"id": "\\ud800", "prompt": "x"}', "lone surrogate U+D800"),
    ],
    ids=["5000-digit-id", "lone-surrogate-id"],
)
def test_a_hostile_id_fails_its_line_alone_in_process(
    hermes: HermesRunner, tmp_path: Path, hostile: bytes, message: str
) -> None:
    """Was: exit 3 "the sandbox failed: not enough values to unpack" (digits), a traceback (surrogate)."""
    # Given the hostile line in the middle of a file
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b'{"id": "a", "prompt": "one"}\n' + hostile + b'\n{"id": "c", "prompt": "three"}\n')
    # When it runs in-process
    done = hermes("batch", str(src), "-o", str(out), "--processes", "2")
    # Then the batch finishes with exit 1: that line is a bad_id record, its neighbours are normalized
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    records = strict_records(out.read_bytes())
    assert [r.get("text") for r in records] == ["one", None, "three"]
    assert records[1]["id"] == 2 and records[1]["error"]["code"] == "bad_id"
    assert message in records[1]["error"]["message"] and message in done.stderr
    assert not (tmp_path / "out.jsonl.partial").exists()


@pytest.mark.slow
def test_resume_after_an_interrupted_batch_gets_past_a_5000_digit_id(
    hermes_env: dict[str, str], hermes: HermesRunner, tmp_path: Path
) -> None:
    """Was: the batch, and every ``--resume`` of it, stopped at the line with exit 3, for ever."""
    # Given a batch killed part-way through a file whose last line has a 5,000-digit id (5,000
    # one-line chunks: a second or more of work once the first 20 are written, while the kill
    # comes within a poll of them; the resume does the rest of them, whatever their number)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [json.dumps({"id": n, "prompt": f"prompt  {n} caf\u00c3\u00a9"}).encode() for n in range(5_000)]
    src.write_bytes(b"\n".join([*rows, b'{"id": %s, "prompt": "x"}' % BIG_ID.encode()]) + b"\n")
    command = [sys.executable, "-m", "hermes_producer", "batch", str(src), "-o", str(out)]
    first = subprocess.Popen(
        [*command, "--processes", "1", "--chunk-size", "1"], env=hermes_env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    journal = tmp_path / "out.jsonl.partial.journal"
    wait_until(lambda: journal.exists() and journal.read_text().count("\n") > 20, 60, 0.05, "the batch to write chunks")
    assert first.poll() is None, "the batch finished before it could be interrupted"
    first.kill()
    first.wait(10)
    # When it is resumed
    done = hermes("batch", str(src), "-o", str(out), "--processes", "1", "--chunk-size", "1", "--resume")
    # Then it finishes: every line once, in order, the last one a bad_id record
    assert done.returncode == 1, done.stderr
    assert "resuming after" in done.stderr
    records = strict_records(out.read_bytes())
    assert [r["line"] for r in records] == list(range(1, 5_002))
    assert records[-1]["error"]["code"] == "bad_id" and "5,000 digits" in records[-1]["error"]["message"]
    assert all("text" in r for r in records[:-1])


# On a cluster: one real local worker ----------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("hostile", "message"),
    [
        (b'{"id": %s, "prompt": "x"}' % BIG_ID.encode(), "integer of 5,000 digits"),
        (b'{"id": "\\ud800", "prompt": "x"}', "lone surrogate U+D800"),
    ],
    ids=["5000-digit-id", "lone-surrogate-id"],
)
def test_a_hostile_id_fails_its_line_alone_on_a_cluster(
    start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path, hostile: bytes, message: str
) -> None:
    """Was: every line of the chunk an engine_failure (digits); a producer waiting for ever (surrogate)."""
    # Given a worker, and the hostile line in the middle of the only chunk
    start_worker("hostile")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b'{"id": "a", "prompt": "one"}\n' + hostile + b'\n{"id": "c", "prompt": "three"}\n')
    # When the batch runs on the cluster (a timeout proves the producer does not hang)
    done = chermes("batch", str(src), "-o", str(out), "--isolation", "local", "--no-fallback", timeout=60)
    # Then that line alone is a bad_id record, written by the worker
    assert done.returncode == 1, done.stderr
    records = strict_records(out.read_bytes())
    assert [r.get("text") for r in records] == ["one", None, "three"]
    assert records[1]["error"]["code"] == "bad_id" and message in records[1]["error"]["message"]
    assert {r["provenance"]["worker"] for r in records} == {"local@hostile"}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Private Redis servers started with extra options, stopped after the test (and its workers)."""
    started: list[RedisServer] = []

    def start(*options: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", options=options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def worker_on(start_worker: WorkerFactory, server: RedisServer, name: str, url: str, **env: str) -> int:
    """Start a worker on ``url`` (a private Redis), wait until it registers; return its main pid."""
    worker = start_worker(name, env={"HERMES_BROKER_URL": url, **env}, wait=False)
    wait_registered(worker, f"local@{name}", server.client, timeout=60)
    return worker.process.pid


@pytest.mark.cluster
def test_a_write_redis_drops_for_its_size_is_told_from_an_outage(own_redis: Callable[..., RedisServer]) -> None:
    """The one rule the worker (a chunk's result) and the producer (a chunk's lines) both apply:
    Redis drops the connection on a value over its proto-max-bulk-len, as if it were down."""
    # Given a Redis that refuses values over 1 MB
    server = own_redis("--proto-max-bulk-len", "1mb")
    client, big = server.client(), b"x" * 1_200_000
    # When a value over that limit is written (Redis says why, then drops the connection: the
    # client gets one or the other, as it reads the answer before or after the drop)
    with pytest.raises((redis.ConnectionError, redis.ResponseError)) as dropped:
        client.set("big", big)
    # Then Redis still answers, and either is read as a refusal of that size
    assert refused_for_size(client, len(big), dropped.value)
    assert refused_for_size(client, len(big), redis.ResponseError("Protocol error: invalid bulk length"))
    assert refused_for_size(client, len(big), redis.ConnectionError("Connection reset by peer"))
    # But not for a small write, nor for an error that is not a dropped connection
    assert not refused_for_size(client, 1000, dropped.value)
    assert not refused_for_size(client, len(big), redis.ResponseError("WRONGTYPE"))
    # And a dropped connection is not one when Redis does not answer either: that is an outage,
    # to wait out (Redis' own "invalid bulk length", read before the drop, says it was the size)
    server.stop()
    assert not refused_for_size(client, len(big), redis.ConnectionError("Connection reset by peer"))
    assert refused_for_size(client, len(big), redis.ResponseError("Protocol error: invalid bulk length"))


@pytest.mark.cluster
@pytest.mark.slow
def test_a_chunk_whose_result_or_lines_redis_refuses_is_split_not_lost(
    own_redis: Callable[..., RedisServer], start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    """Was: the worker retried the refused write until its deadline, then failed the task, and the
    producer waited for ever (records); the producer retried the refused lines as an outage for
    five minutes, then exit 3 (lines). Now the chunk is split until its parts fit."""
    # Given a Redis that refuses values over 1 MB, as an operator may set it (proto-max-bulk-len)
    server = own_redis("--proto-max-bulk-len", "1mb")
    worker_on(start_worker, server, "bulk", server.url())
    env = {"HERMES_BROKER_URL": server.url()}
    # And a chunk whose lines fit (60 KB) but whose 4,000 records (1.2 MB) do not
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": n, "prompt": f"p{n}"}) + "\n" for n in range(4000)))
    # When the batch runs as one chunk
    done = chermes("batch", str(src), "-o", str(out), "--chunk-size", "4000", "--isolation", "local",
                   env=env, timeout=90)  # fmt: skip
    # Then the worker said so, the chunk was split, and every record arrived
    assert done.returncode == 0, done.stderr
    assert "cannot be published" in done.stderr and "split into" in done.stderr
    records = strict_records(out.read_bytes())
    assert [r["id"] for r in records] == list(range(4000)) and all("text" in r for r in records)

    # Given a chunk whose lines do not fit (1.5 MB), one of them alone 1.2 MB
    rows = [{"id": n, "prompt": f"{n} " + "x" * 50_000} for n in range(30)]
    rows[17]["prompt"] = "y" * 1_200_000
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # When the batch runs as one chunk
    done = chermes("batch", str(src), "-o", str(out), "--chunk-size", "30", "--isolation", "local", "--no-fallback",
                   env=env, timeout=90)  # fmt: skip
    # Then it is split before it is sent; the line that alone does not fit gets its record saying so
    assert done.returncode == 1, done.stderr
    records = strict_records(out.read_bytes())
    assert [r["id"] for r in records] == list(range(30))
    assert [r["line"] for r in records if "error" in r] == [18]
    assert "Redis refused its 1,200,0" in records[17]["error"]["message"]


@pytest.mark.cluster
@pytest.mark.slow
def test_a_task_that_raises_is_sent_again_then_gets_error_records(
    own_redis: Callable[..., RedisServer], start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    """Was: the chunk was sent again every few seconds, for ever. Now a bounded number of times."""
    # Given a worker whose Redis user may not append to streams: every task it takes raises
    server = own_redis()
    server.client().acl_setuser("noxadd", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                                commands=["+@all", "-xadd"])  # fmt: skip
    worker_on(start_worker, server, "raises", f"redis://noxadd:pw@127.0.0.1:{server.port}/0")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": "a", "prompt": "one"}\n{"id": "b", "prompt": "two"}\n')
    # When a batch is sent to it
    done = chermes("batch", str(src), "-o", str(out), "--isolation", "local",
                   env={"HERMES_BROKER_URL": server.url()}, timeout=120)  # fmt: skip
    # Then the producer sends the chunk again a few times, then writes error records saying why
    assert done.returncode == 1, done.stderr
    assert "sent again" in done.stderr and "gave up" in done.stderr
    records = strict_records(out.read_bytes())
    assert [r["id"] for r in records] == ["a", "b"]
    assert {r["error"]["code"] for r in records} == {"engine_failure"}
    assert "never taken by a worker" in records[0]["error"]["message"]
    assert records[0]["provenance"]["worker"].startswith("hermes-producer@")
