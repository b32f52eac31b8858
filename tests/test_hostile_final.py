"""The last attacker pass of issue 11: siblings of the listed classes that nobody had tried.

Each test names the attack and the promise it broke before its fix: a value nested too deeply
for Python's JSON parser in any place a broker writer can reach (registry, result stream,
cluster log, sandbox frame); a FIFO or a link planted in place of Hermes' own log; a resume
journal that claims chunks the output does not hold; metrics fields Hermes never writes; and
text from input that a terminal or ``click`` would otherwise rewrite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.processing import process_chunk
from hermes_worker.wire import ChunkRequest, Item

from .support.fixture_types import HermesRunner
from .support.redis_server import RedisServer
from .support.waiting import wait_until

# Deeper than any JSON parser in Python follows: json.loads raises RecursionError, which is not
# a ValueError, so code that catches only ValueError lets it through.
DEEP = "[" * 100_000 + "]" * 100_000


# -- nested too deeply: every place a Redis writer or a sandbox can put JSON --------------------


@pytest.mark.cluster
def test_a_deeply_nested_registry_entry_is_ignored_not_a_crash_of_every_command(
    redis_server: RedisServer, chermes: HermesRunner
) -> None:
    """One `SET hermes:worker:x [[[[...]]]]` made run, batch, workers and status exit 3 ("internal error")."""
    # Given a forged registry entry nested 100,000 deep next to nothing else
    redis_server.client().set("hermes:worker:deep", DEEP)

    # When cluster commands read the registry
    for command in (("workers", "--json"), ("status",), ("run", "--prompt", "x")):
        done = chermes(*command)

        # Then the entry is not a worker, and the command does its job
        assert done.returncode == 0, (command, done.stderr)
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr, command
    assert json.loads(chermes("workers", "--json").stdout) == []


@pytest.mark.cluster
def test_a_deeply_nested_entry_on_a_result_stream_is_skipped(cluster_env: dict[str, str]) -> None:
    """A forged entry nested too deeply on a batch's stream crashed the producer mid-batch."""
    from hermes_producer.celery_executor import CeleryExecutor
    from hermes_producer.chunk_events import render
    from hermes_producer.cluster import Cluster, Route
    from hermes_worker.registry import WorkerInfo
    from hermes_worker.settings import Settings

    cluster = Cluster.connect(Settings.from_env(cluster_env))
    route = Route("hermes.local", "local", [WorkerInfo("local@w", "local", 1, ["hermes.local"], "h", 1, {}, {})])
    messages: list[str] = []
    executor = CeleryExecutor(cluster, route, on_event=lambda event: messages.append(render(event)))

    def answer(payload: dict[str, Any], queue: str) -> None:
        # Given a forged result and a forged notice, each nested too deeply, before the real result
        result = process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="local@w")
        cluster.redis.xadd(executor.stream, {"r": DEEP})
        cluster.redis.xadd(executor.stream, {"s": DEEP})
        cluster.redis.xadd(executor.stream, result.to_stream())  # type: ignore[arg-type]

    executor.transport.send = answer  # type: ignore[method-assign]
    nfc = {"name": "nfc", "steps": ["nfc"]}
    options = ChunkOptions(max_validation=0, max_prompt_bytes=100)
    payload = ChunkRequest(0, nfc, options=options, items=[Item(1, "a", "x")])

    # When the producer reads the stream
    [result] = list(executor.map_ordered([payload.to_payload()]))

    # Then the forged entries are skipped and the real result is the one taken
    assert result.ok == 1
    assert sum("ignored a malformed entry on the result stream (RecursionError)" in m for m in messages) == 2


@pytest.mark.cluster
def test_following_the_cluster_log_loses_no_event_appended_between_reads(redis_server: RedisServer) -> None:
    """follow() read from "$" after every empty read: an event appended while it was not
    blocked in XREAD (here: while it asks whether to stop, between two reads) was lost."""
    from hermes_worker.events import ClusterLog

    events = ClusterLog(redis_server.client(), "test")
    events.emit("INFO", "before", "not followed: it came before following began")
    asked = 0

    def stop() -> bool:  # called between reads: the first read came back empty
        nonlocal asked
        asked += 1
        if asked == 2:
            events.emit("INFO", "between", "appended between two reads")
        return asked > 4

    assert [record["event"] for record in events.follow(stop=stop, block_ms=50)] == ["between"]


@pytest.mark.cluster
def test_a_forged_cluster_event_cannot_hide_the_others(redis_server: RedisServer, cluster_env: dict[str, str]) -> None:
    """An event nested too deeply, or with a level that is a list, hid the whole cluster log.

    `hermes log` said "cluster log unavailable"; `hermes log --follow` printed a thread's
    traceback and stopped following the cluster.
    """
    from hermes_worker.events import ClusterLog

    client = redis_server.client()
    events = ClusterLog(client, "test")
    events.emit("INFO", "before", "shown")
    # Given forged events between real ones
    client.xadd("hermes:events", {"r": DEEP})
    client.xadd("hermes:events", {"r": json.dumps({"ts": "t", "level": ["INFO"], "event": "x", "message": "m"})})
    client.xadd("hermes:events", {"r": json.dumps({"ts": "t", "level": {"a": 1}, "event": "x", "message": "m"})})
    events.emit("INFO", "after", "shown")

    # When the cluster log is read, and followed while more forged events arrive
    assert [r["event"] for r in events.read(10)] == ["before", "after"]
    followed: list[str] = []
    stop = threading.Event()

    def follow() -> None:
        for record in events.follow(stop=stop.is_set, block_ms=100):
            followed.append(record["event"])

    reader = threading.Thread(target=follow)
    reader.start()
    # The follower reads from "$", what is added from now on: wait until its read is blocking.
    wait_until(lambda: any(c.get("cmd") == "xread" and "b" in c.get("flags", "") for c in client.client_list()),
               10, 0.02, "the follower to block in XREAD")  # fmt: skip
    client.xadd("hermes:events", {"r": json.dumps({"ts": "t", "level": ["INFO"], "event": "x", "message": "m"})})
    client.xadd("hermes:events", {"r": DEEP})
    events.emit("INFO", "later", "shown")
    wait_until(lambda: "later" in followed or not reader.is_alive(), 10, 0.05, "the follower to show the real event")
    stop.set()
    reader.join(timeout=10)

    # Then only the real events are shown, and following goes on past the forged ones
    assert followed == ["later"]


@pytest.mark.cluster
def test_hermes_log_shows_the_cluster_log_whatever_a_redis_writer_added(
    redis_server: RedisServer, chermes: HermesRunner
) -> None:
    """The CLI view of the same attack: no "cluster log unavailable", the real event shown."""
    client = redis_server.client()
    client.xadd("hermes:events", {"r": json.dumps({"ts": "2030-01-01", "level": "INFO", "event": "real",
                                                   "message": "m", "worker": "w"})})  # fmt: skip
    client.xadd("hermes:events", {"r": json.dumps({"ts": "t", "level": ["INFO"], "event": "x", "message": "m"})})
    client.xadd("hermes:events", {"r": DEEP})
    done = chermes("log", "-n", "5")
    assert done.returncode == 0, done.stderr
    assert "unavailable" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "real" in done.stdout


def test_a_sandbox_frame_nested_too_deeply_is_a_protocol_error() -> None:
    """A compromised sandbox answering `[[[[...]]]]` raised RecursionError past the session's checks.

    As a ProtocolError it is handled like any broken framing: the container is replaced and the
    chunk's items are retried and isolated (tests/test_hostile_sandbox.py shows that path).
    """
    from hermes_worker.sandbox.errors import ProtocolError
    from hermes_worker.sandbox.protocol import decode_body

    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):
        decode_body(DEEP.encode())
    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):
        decode_body(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


# -- Hermes' own files: a FIFO or a link planted in place of the log ------------------------------


@pytest.mark.parametrize("planted", ["fifo", "link", "dangling-link"])
def test_a_fifo_or_link_in_place_of_the_log_is_never_opened(
    planted: str, hermes: HermesRunner, hermes_env: dict[str, str], tmp_path: Path
) -> None:
    """A FIFO at HERMES_HOME/log/hermes.log made every command (run, log, ...) hang for ever;
    a link there made Hermes append its log to whatever file the link named."""
    # Given something planted where the log goes
    log = Path(hermes_env["HERMES_HOME"]) / "log" / "hermes.log"
    log.parent.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    if planted == "fifo":
        os.mkfifo(log)
    else:
        if planted == "link":
            victim.write_text("precious\n")
        log.symlink_to(victim)

    # When commands that write and read the log run
    ran = hermes("run", "--prompt", "x", timeout=30)
    shown = hermes("log", "-n", "5", timeout=30)
    debug = hermes("debug", "-n", "5", timeout=30)

    # Then they finish, without a log, saying so; nothing is written through the link
    assert ran.returncode == 0 and ran.stdout == "x\n", ran.stderr
    why = "not a regular file" if planted == "fifo" else "a symbolic link, not followed"
    assert "running without a log" in ran.stderr and why in ran.stderr, ran.stderr
    assert shown.returncode == 0 and debug.returncode == 0, shown.stderr + debug.stderr
    assert "Traceback" not in ran.stderr + shown.stderr + debug.stderr
    if planted == "link":
        assert victim.read_text() == "precious\n"
    if planted == "dangling-link":
        assert not victim.exists()
    assert log.is_symlink() or log.is_fifo()


def test_follow_skips_a_fifo_in_place_of_the_log(tmp_path: Path) -> None:
    """`hermes log --follow` opened the log as it found it: a FIFO blocked it before it printed anything."""
    from hermes_producer import logs

    os.mkfifo(tmp_path / "hermes.log")
    stop = threading.Event()
    done = threading.Event()
    read: list[Any] = []
    polls: list[bool] = []

    def asked() -> bool:  # follow() asks between polls: it got past the FIFO
        polls.append(stop.is_set())
        return polls[-1]

    def drain() -> None:
        list(logs.follow(tmp_path, stop=asked, poll_s=0.01))
        read.extend(logs.read(tmp_path, 5))
        done.set()

    threading.Thread(target=drain, daemon=True).start()  # daemon: a thread blocked on the FIFO ends with the test
    wait_until(lambda: len(polls) >= 3, 10, 0.01, "follow to poll, not block on the FIFO")
    stop.set()
    assert done.wait(10), "follow or read blocked on the FIFO"
    assert read == []


# -- metrics: fields of a shape Hermes never writes ----------------------------------------------


@pytest.mark.cluster
def test_metrics_fields_hermes_never_writes_cannot_make_a_second_family_or_series(
    redis_server: RedisServer, chermes: HermesRunner
) -> None:
    """A known metric with other labels made a second `# HELP`/`# TYPE` of the same name; another
    spelling of the same label value (%6c for l) a second series of the same labels; NaN, -5 and
    1e999 were exported as counter values. The exposition format allows none of these."""
    # Given a worker's real counters and, next to them, forged fields of every such kind
    client = redis_server.client()
    client.hset("hermes:metrics:local@w", mapping={
        "items_ok|mode=local|profile=prompt": 5,
        "chunks|mode=local": 2,
        "chunk_seconds_bucket|le=0.5|mode=local": 2,
        "items_ok|mode=%6cocal|profile=prompt": 7,          # the same series, spelled otherwise
        "items_ok|mode=local": 3,                           # the same metric, other labels
        "items_ok|mode=local|profile=prompt|extra=x": 1,
        "chunk_seconds_bucket|le=nan|mode=local": 1,        # a bound that is not one of ours
        "items_failed|code=too_large|mode=local|profile=prompt": "-5",
        "session_restarts": "nan",
        "chunk_seconds_sum|mode=local": "1e999",
    })  # fmt: skip

    # When the cluster's metrics are exported
    done = chermes("metrics")

    # Then each family appears once, each series once, every value a finite count
    assert done.returncode == 0, done.stderr
    helps = [line for line in done.stdout.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps)), helps
    series = [line.rsplit(" ", 1) for line in done.stdout.splitlines() if line and not line.startswith("#")]
    names = [name for name, _value in series]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert all(value not in ("NaN", "+Inf", "-Inf") and float(value) >= 0 for _name, value in series), series
    assert 'hermes_items_processed_total{mode="local",profile="prompt",worker="local@w"} 5.0' in done.stdout
    assert "hermes_metrics_unreadable_fields 7.0" in done.stdout


# -- text from input on standard output ------------------------------------------------------------

HOSTILE_TEXT = "a\x1b[2Jb\x9b31m\u202egnp"  # a clear-screen, a one-byte CSI, a right-to-left override


def on_a_terminal(hermes_env: dict[str, str], cwd: Path, *args: str) -> tuple[int, bytes]:
    """Run hermes with its standard output on a pseudo-terminal; returns the exit code and what it printed."""
    import pty

    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "hermes_producer", *args],
            stdout=slave,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=hermes_env,
            cwd=cwd,
        )
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            shown += chunk
        return process.wait(timeout=60), shown
    finally:
        os.close(master)


@pytest.fixture
def nfc_only(tmp_path: Path) -> Path:
    """A profile that keeps control characters (the built-in ones strip them)."""
    path = tmp_path / "keep.toml"
    path.write_text('[profiles.keep]\nsteps = ["nfc"]\n')
    return path


def test_hermes_run_prints_the_exact_text_to_a_pipe(hermes: HermesRunner, nfc_only: Path) -> None:
    """click.echo stripped what looked like colour codes from the text when not on a terminal:
    `hermes run ... > file` silently wrote another text than the record's."""
    done = hermes("run", "--prompt", HOSTILE_TEXT, "--profile-file", str(nfc_only), "--profile", "keep")
    as_json = hermes("run", "--prompt", HOSTILE_TEXT, "--profile-file", str(nfc_only), "--profile", "keep", "--json")
    assert done.returncode == 0 and as_json.returncode == 0, done.stderr + as_json.stderr
    assert done.stdout == HOSTILE_TEXT + "\n"
    assert json.loads(as_json.stdout)["text"] == HOSTILE_TEXT


def test_text_from_input_reaches_a_terminal_escaped(
    hermes_env: dict[str, str], tmp_path: Path, nfc_only: Path
) -> None:
    """On a terminal, `hermes run` printed the normalized text raw and `hermes batch -o -` the
    records' ids and texts with their C1 controls and bidi overrides raw: input commanded the
    terminal (SECURITY.md promises it cannot)."""
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": HOSTILE_TEXT, "prompt": HOSTILE_TEXT}) + "\n")
    profile = ("--profile-file", str(nfc_only), "--profile", "keep")

    runs = {
        "run": on_a_terminal(hermes_env, tmp_path, "run", "--prompt", HOSTILE_TEXT, *profile),
        "run --json": on_a_terminal(hermes_env, tmp_path, "run", "--prompt", HOSTILE_TEXT, "--json", *profile),
        "batch -o -": on_a_terminal(hermes_env, tmp_path, "batch", str(source), "-o", "-", *profile),
    }
    for command, (code, shown) in runs.items():
        assert code == 0, command
        text = shown.decode("utf-8")
        for raw in ("\x1b", "\x9b", "\u202e"):
            assert raw not in text, (command, text)
    assert "a\\x1b[2Jb\\x9b31m\\u202egnp" in runs["run"][1].decode()
    record = json.loads(runs["batch -o -"][1].decode())  # still the same JSON, the escapes spelled out
    assert record["id"] == HOSTILE_TEXT and record["text"] == HOSTILE_TEXT
