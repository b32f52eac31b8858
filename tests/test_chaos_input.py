"""Nothing lost on bad or hostile input, and secured Redis works (issue 6: 9, 10, 11a-b); see test_chaos.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .chaos_support import (
    ClusterFactory,
    RedisFactory,
    container_env,
    local_cluster,
    session_containers_of,
)
from .fixtures_chaos import (
    Report,
    RssSampler,
    chaos_report,
    cluster_factory,
    make_tls_files,
    read_output,
    redis_factory,
    write_prompts,
)
from .support.checker import check

__all__ = ["chaos_report", "cluster_factory", "container_env", "redis_factory"]  # fixtures used below

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]


# 9. Corrupted input -----------------------------------------------------------------------------------


BAD_KINDS: list[tuple[str, Callable[[int], bytes]]] = [
    ("invalid_utf8", lambda n: b'{"id": "b%d", "prompt": "caf\xe9 \xff\xfe"}' % n),
    ("malformed_json", lambda n: b'{"id": "b%d", "prompt": "unterminated' % n),
    ("too_large", lambda n: json.dumps({"id": f"b{n}", "prompt": "x" * 3000}).encode()),
    ("too_large", lambda n: b'{"id": "b%d", "prompt": "' % n + b"y" * 100_000 + b'"}'),  # over the line cap
    ("nul_byte", lambda n: json.dumps({"id": f"b{n}", "prompt": "nul \x00 inside"}).encode()),
    ("malformed_json", lambda n: b'{"id": "b%d", "prompt": "raw \x00 byte"}' % n),
    ("prompt_not_string", lambda n: b'{"id": "b%d", "prompt": 42}' % n),
    ("prompt_not_string", lambda n: b'{"id": "b%d", "prompt": null}' % n),
    ("prompt_not_string", lambda n: b'{"id": "b%d", "prompt": ["a", "list"]}' % n),
    ("not_an_object", lambda n: b'["b%d", "an array"]' % n),
    ("missing_prompt", lambda n: b'{"id": "b%d", "text": "no prompt"}' % n),
    ("malformed_json", lambda n: b""),  # a blank line
]


def test_100000_lines_with_1_percent_corrupted(
    redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """100,000 lines (the spec's size), every 100th corrupted in one of twelve ways.

    Exactly 100,000 records in input order; each bad line an error record with its line number
    and the right code, every other line ok. Prompts are limited to 2,048 bytes for this run.
    """
    server, cluster = local_cluster(redis_factory, cluster_factory)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    expected: dict[int, str] = {}
    with src.open("wb") as handle:
        for line in range(1, 100_001):
            if line % 100 == 0:
                code, make = BAD_KINDS[(line // 100) % len(BAD_KINDS)]
                expected[line] = code
                handle.write(make(line) + b"\n")
            else:
                handle.write(json.dumps({"id": f"p{line}", "prompt": f"cafÃ© line {line}  "}).encode() + b"\n")
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "500",
                           "--max-prompt-bytes", "2048")  # fmt: skip
    assert batch.wait(300) == 1, batch.stderr  # exit 1: some items failed

    records = read_output(out)
    assert len(records) == 100_000
    assert [r["line"] for r in records] == list(range(1, 100_001))
    for record in records:
        line = record["line"]
        if line in expected:
            assert "error" in record and record["error"]["code"] == expected[line], record
            assert record["error"]["line"] == line
        else:
            assert record["id"] == f"p{line}" and record["text"] == f"café line {line}", record
    ids = [json.dumps(r["id"]) for r in records]
    assert len(set(ids)) == len(ids), "duplicate ids in the output"
    verdict = check(out, src, max_prompt_bytes=2048, client=server.client())
    verdict.assert_clean()
    assert verdict.errors == len(expected) == 1_000
    chaos_report.add("9. 100,000 lines, 1% corrupted (12 kinds)", verdict, None,
                     "each bad line an error with its line number and code")  # fmt: skip


# 10. Hostile input --------------------------------------------------------------------------------


# What hostile_prompts() lines become, in order: only the NUL one, the unparseable and the
# over-nested are errors; everything else is normalized like any prompt.
HOSTILE_CODES = ["ok", "nul_byte", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok",
                 "malformed_json", "malformed_json", "malformed_json"]  # fmt: skip


def hostile_prompts(prefix: str) -> list[bytes]:
    """Lines that try to break the framing, the terminal, the reader or memory; ids start with ``prefix``."""
    reply = json.dumps({"id": 2, "ok": True, "result": {"v": 2, "chunk": 0, "lines": ['{"id":"pwned"}'], "ok": 1,
                                                         "failed": 0, "errors": []}})  # fmt: skip
    frame_like = [
        "\x7f\x7f\x7f\x7f" + reply,  # our frame: a length, then a reply
        "\x00\x00\x01\x00" + reply,  # the same with NULs (refused: nul_byte)
        "\x01\x01\x01\x01\x01\x01\x01\x40" + reply,  # Docker's stream header
        f"{len(reply)}\n{reply}\n" * 50,  # newline-delimited replies
        '"}]}\n{"op":"chunk","id":99,"payload":{}}',  # tries to end a JSON string and a request
        "\u2028\u2029\x85" + reply,  # line breaks JSON allows raw
    ]
    terminal = ["\x1b[2J\x1b[H\x1b]0;pwned\x07 clear screen", "\x1b[31mred\x1b[0m \x1b[6n \x9b31m C1 CSI",
                "\x1bP+q6b31\x1b\\ DCS", "bell\x07\x07\x07 backspace\b\b\b"]  # fmt: skip
    items = [*frame_like, *terminal, ("\x7f\x7f\x7f\x7f" + reply) * 3000]  # the last one: near the size limit
    lines = [json.dumps({"id": f"{prefix}{n}", "prompt": text}).encode() for n, text in enumerate(items)]
    lines.append(b'{"id": "%sdeep", "prompt": ' % prefix.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}")
    lines.append(b"[" * 500_000)
    lines.append(b'{"id": "%smeta", "prompt": "fine", "meta": ' % prefix.encode() + b'{"a": ' * 5_000 + b"1"
                 + b"}" * 5_000 + b"}")  # fmt: skip
    return lines


@pytest.mark.docker
@pytest.mark.timeout(400)
def test_hostile_input_crashes_nothing_leaks_nothing_and_memory_stays_bounded(
    container_env: dict[str, str], docker_client: Any, redis_factory: RedisFactory, cluster_factory: ClusterFactory,
    chaos_report: Report, tmp_path: Path,
) -> None:  # fmt: skip
    """3,000 ordinary prompts with hostile items between them, and one 100 MB line, in containers.

    Items imitate the sandbox protocol's framing and Docker's stream headers, carry terminal
    escapes, nest JSON 100,000 deep; one line is 100 MB. No worker crashes; every record is
    what the engine gives in-process for that line, field for field (nothing leaks into a
    neighbour); peak memory of the producer and of the worker's processes stays bounded.
    """
    server = redis_factory()
    cluster = cluster_factory(server.url(), server.client, **container_env)
    worker = cluster.worker("c1", mode="container", expect_tag="container")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    hostile = hostile_prompts("h-")
    lines_written = 0
    with src.open("wb") as handle:

        def line(data: bytes) -> int:
            nonlocal lines_written
            handle.write(data + b"\n")
            lines_written += 1
            return lines_written

        for n in range(3_000):
            line(json.dumps({"id": f"p{n}", "prompt": f"neighbour {n}: cafÃ©"}).encode())
            if n % 200 == 100:
                line(hostile_prompts(f"h{n}-")[(n // 200) % len(hostile)])
            if n == 1_500:
                huge_line = line(b'{"id": "huge", "prompt": "' + b"A" * (100 << 20) + b'"}')
        for data in hostile:
            line(data)
    items_in = lines_written

    batch = cluster.hermes("batch", str(src), "-o", str(out), "--chunk-size", "100")
    sampler = RssSampler({"producer": batch.process.pid, "worker": worker.process.pid})
    sampler.start()
    code = batch.wait(300)
    peaks = sampler.stop()
    assert code == 1, batch.stderr  # some hostile items are errors by design
    assert worker.process.poll() is None and cluster.entry("container@c1") is not None, "the worker died"
    [sandbox] = session_containers_of(docker_client, worker.process.pid)  # the same one all along: it never died
    stats = sandbox.stats(stream=False)["memory_stats"]
    peaks["sandbox"] = round((stats.get("max_usage") or stats.get("usage", 0)) / (1 << 20), 1)

    # Every record is what the engine gives in-process for its line, field for field: nothing leaks
    # into a neighbour.
    verdict = check(out, src, client=server.client())
    verdict.assert_clean()
    records = verdict.records
    assert verdict.items_in == items_in
    assert all(r["provenance"]["mode"] == "container" for r in records)
    assert records[huge_line - 1]["error"]["code"] == "too_large"
    codes = [r["error"]["code"] if "error" in r else "ok" for r in records[-len(hostile) :]]
    assert codes == HOSTILE_CODES, codes
    assert not any("pwned" in r.get("id", "") for r in records if isinstance(r.get("id"), str))
    assert all("\x1b" not in r.get("text", "") for r in records)
    assert peaks["producer"] < 300, peaks
    assert peaks["worker"] < 600, peaks
    chaos_report.add("10. hostile input (framing, escapes, 100 MB line, deep JSON)", verdict, None,
                     f"peak memory: producer {peaks['producer']:.0f} MiB, worker {peaks['worker']:.0f} MiB (largest "
                     f"process), sandbox container {peaks['sandbox']:.0f} MiB; output equals in-process output")


# 11. Security --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["password", "tls"])
def test_redis_with_a_password_or_tls_works_end_to_end(
    kind: str, redis_factory: RedisFactory, cluster_factory: ClusterFactory, chaos_report: Report, tmp_path: Path
) -> None:
    """Workers and producers on a Redis that wants a password (and, for ``tls``, speaks only TLS
    with a certificate made here, checked against its CA: ``rediss://...?ssl_cert_reqs=required``).

    A wrong password, or a TLS client that cannot check the certificate, gets a clear refusal
    that never prints a password.
    """
    password = "s3cret-chaos-password"
    tls = make_tls_files(tmp_path / "tls") if kind == "tls" else None
    server = redis_factory(password=password, tls=tls)
    cluster = cluster_factory(server.url(), server.client)
    started = time.monotonic()
    cluster.worker("w1")
    registered = time.monotonic() - started
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    items_in = len(write_prompts(src, 5_000))
    batch = cluster.hermes("batch", str(src), "-o", str(out), "--isolation", "local", "--no-fallback")
    assert batch.wait(180) == 0, batch.stderr
    verdict = check(out, src, client=server.client())
    verdict.assert_clean()
    assert verdict.by("worker") == {"local@w1": items_in}

    wrong = server.url().replace(password, "wrong-password")
    refused = cluster.hermes("run", "--prompt", "x", "--no-fallback", env={"HERMES_BROKER_URL": wrong})
    assert refused.wait(60) == 2 and "authentication failed" in refused.stderr  # a configuration error
    if tls is not None:
        unchecked = server.url().split("?")[0]  # rediss:// without our CA: the certificate cannot be verified
        refused_tls = cluster.hermes("run", "--prompt", "x", "--no-fallback", env={"HERMES_BROKER_URL": unchecked})
        assert refused_tls.wait(60) == 2 and "certificate verify failed" in refused_tls.stderr
        plain = server.url().replace("rediss://", "redis://").split("?")[0]
        refused_plain = cluster.hermes("run", "--prompt", "x", "--no-fallback", env={"HERMES_BROKER_URL": plain})
        assert refused_plain.wait(60) == 3
    for producer in cluster.producers:
        assert password not in producer.stderr and "wrong-password" not in producer.stderr
    chaos_report.add(f"11. Redis with {'TLS + password' if tls else 'a password'}", verdict, None,
                     f"worker registered in {registered:.1f} s; wrong credentials refused, no password printed")


