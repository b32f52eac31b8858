"""Secrets and private data (issue 11, class 5): what Hermes logs, leaves on disk and listens on
(tests/test_hostile_secrets.py: what it prints and shows).

- No prompt, no id and no password reaches any log: the file log, a worker's output, the
  cluster log, ``hermes log`` and ``hermes debug``, in-process and on real workers (container
  workers and their sandbox sessions too). Secrets already in old logs are masked when read.
- HERMES_HOME is 0700 and its files 0600 whatever the umask.
- A worker's metrics listen on 127.0.0.1 unless told otherwise.

The rule for logs: no input-derived text (prompts, ids, item error messages, which quote
input) in any log, only line and chunk numbers, counts, error codes and what the
infrastructure said; a user's own terminal (the batch summary on stderr) may show item errors.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .support.environment import free_port
from .support.leaks import PYTHON, Workers, debug_env, everything_logged, hermes, registered, unique
from .support.processes import WorkerProcess
from .support.redis_server import RedisServer
from .support.waiting import wait_until

RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with its own HERMES_HOME, no HERMES_* from the caller, DEBUG logging."""
    return debug_env(tmp_path)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Start `hermes worker` processes (output to a file); all stopped after the test."""
    with Workers(tmp_path) as start:
        yield start


# Logs -------------------------------------------------------------------------------------------------


def write_marked_batch(path: Path, marker: str, count: int = 40) -> None:
    """Prompts and ids that carry ``marker``; a reused id (its error quotes the id), a prompt
    of the wrong type with a marked id, and a broken line holding the marker."""
    lines = [json.dumps({"id": f"{marker}-{i}", "prompt": f"private prompt {marker} no. {i}  "}) for i in range(count)]
    lines += [json.dumps({"id": f"{marker}-0", "prompt": f"again {marker}"}),
              json.dumps({"id": f"{marker}-bad", "prompt": 5}),
              f'{{"id": "{marker}-broken", "prompt": "{marker}']  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_the_log_records_command_and_option_names_never_values(env: dict[str, str]) -> None:
    """Given `hermes run --prompt SECRET` (in-process, DEBUG logging), the cli.invoked record
    names the command and its options, numbers and choices as given, the prompt only by size."""
    secret = unique("sk-LIVE-SECRET")

    done = hermes(env, "run", "--prompt", secret, "--isolation", "local", "--max-validation", "2")

    assert done.returncode == 0, done.stderr
    log = (Path(env["HERMES_HOME"]) / "log" / "hermes.log").read_text()
    assert secret not in log
    invoked = [json.loads(line) for line in log.splitlines() if '"cli.invoked"' in line]
    assert invoked[0]["argv"] == ["run", "--prompt", f"<{len(secret)} chars>", "--isolation", "local",
                                  "--max-validation", "2"]  # fmt: skip


@pytest.mark.cluster
@pytest.mark.slow
def test_no_prompt_id_or_password_reaches_any_log(
    redis_factory: RedisFactory, env: dict[str, str], workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Given a password-protected Redis, DEBUG logging everywhere and a batch whose prompts and
    ids carry a unique marker (with items whose errors quote their ids),
    when the batch, `hermes run --prompt` and a task run in-process and then on a real worker
    (at Celery's DEBUG level),
    then the output holds the marker and no log does: not the files under HERMES_HOME/log,
    not the worker's output, not the cluster log stream, not `hermes log` or `hermes debug`;
    nor does any of them hold the password."""
    marker, password = unique("sk-LIVE-MARK"), unique("redis-pw")
    server = redis_factory(password=password)
    src = tmp_path / "in.jsonl"
    write_marked_batch(src, marker)

    # In-process first (the broker URL answers nothing), then on a real local worker.
    alone = hermes(env, "batch", str(src), "-o", str(tmp_path / "alone.jsonl"))
    run_alone = hermes(env, "run", "--prompt", f"one {marker}")
    cluster = env | {"HERMES_BROKER_URL": server.url(), "HERMES_NO_FALLBACK": "1"}
    worker = workers(cluster, "w1", "--mode", "local", "-l", "debug")
    registered(server.client(), worker, "local@w1")
    on_worker = hermes(cluster, "batch", str(src), "-o", str(tmp_path / "worker.jsonl"), "--chunk-size", "7")
    run_worker = hermes(cluster, "run", "--prompt", f"two {marker}")
    scheduled = hermes(cluster, "task", "--prompt", f"three {marker}")
    queued = hermes(cluster, "queue", "--all")

    for done in (alone, on_worker):
        assert done.returncode == 1, done.stderr  # the reused id and the bad lines are item errors
    for done in (run_alone, run_worker, scheduled, queued):
        assert done.returncode == 0, done.stderr
    records = (tmp_path / "worker.jsonl").read_text()
    assert records.count(marker) >= 40 and '"worker":"local@w1"' in records and "duplicate_id" in records
    assert (tmp_path / "alone.jsonl").read_text().count(marker) >= 40

    logged = everything_logged(cluster, server.client(), [worker.log_path])
    assert "batch.finished" in logged and "chunk.started" in logged and "Task hermes.normalize_chunk" in logged
    assert marker not in logged
    assert password not in logged


@pytest.mark.cluster
def test_secrets_in_old_logs_are_masked_when_read(env: dict[str, str], redis_server: Any) -> None:
    """Given a log file and a cluster log written before redaction, holding a password URL
    and a secret-named field, `hermes log` and `hermes debug --json` show them masked."""
    password = unique("old-pw")
    log_dir = Path(env["HERMES_HOME"]) / "log"
    log_dir.mkdir(parents=True)
    message = f"Redis at redis://:{password}@db:6379/0 is not answering"
    old = {"ts": "2026-01-01T00:00:00.000Z", "level": "WARNING", "event": "dispatch.in_process", "pid": 1,
           "message": message, "flower_password": password}  # fmt: skip
    (log_dir / "hermes.log").write_text(json.dumps(old) + "\n")
    client = redis_server.client()
    client.flushall()
    client.xadd("hermes:events", {"r": json.dumps(old | {"ts": "2026-01-01T00:00:01.000Z", "worker": "old@w"})})
    cluster = env | {"HERMES_BROKER_URL": redis_server.url()}

    shown = [hermes(cluster, "log"), hermes(cluster, "debug", "--json")]

    for done in shown:
        assert done.returncode == 0, done.stderr
        assert password not in done.stdout and done.stdout.count("redis://:***@db:6379/0") == 2, done.stdout


@pytest.mark.cluster
@pytest.mark.docker
@pytest.mark.slow
def test_a_container_worker_keeps_prompts_and_passwords_out_of_logs_and_sandboxes(
    redis_factory: RedisFactory,
    env: dict[str, str],
    workers: Callable[..., WorkerProcess],
    sandbox_image: Any,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    """Given a container worker on a password-protected Redis and a batch whose prompts and
    ids carry a marker, the batch runs in sandbox sessions; neither the marker nor the password
    is in any log, the session containers' configuration (what `docker inspect` shows:
    environment, command, labels) holds neither, and the engine keeps no log of their output."""
    marker, password = unique("sk-LIVE-MARK"), unique("redis-pw")
    server = redis_factory(password=password)
    label = unique("secrets-test")
    cluster = env | {"HERMES_BROKER_URL": server.url(), "HERMES_SANDBOX_IMAGE": sandbox_image.tag,
                     "HERMES_CONTAINER_LABELS": f"hermes-test={label}", "HERMES_NO_FALLBACK": "1"}  # fmt: skip
    worker = workers(cluster, "c1", "--mode", "container", "-l", "debug")
    registered(server.client(), worker, "container@c1")
    src = tmp_path / "in.jsonl"
    write_marked_batch(src, marker)

    done = hermes(cluster, "batch", str(src), "-o", str(tmp_path / "out.jsonl"), "--isolation", "container")
    sessions = docker_client.containers.list(all=True, filters={"label": f"hermes-test={label}"})
    inspected = json.dumps([container.attrs for container in sessions])

    assert done.returncode == 1, done.stderr
    assert '"mode":"container"' in (tmp_path / "out.jsonl").read_text()
    assert sessions, "no session container found"
    assert marker not in inspected and password not in inspected
    assert {c.attrs["HostConfig"]["LogConfig"]["Type"] for c in sessions} == {"none"}  # frames carry prompts
    logged = everything_logged(cluster, server.client(), [worker.log_path])
    assert "chunk.started" in logged
    assert marker not in logged and password not in logged


# Files on disk -----------------------------------------------------------------------------------------


OPEN_AND_ROTATE = """
import json, os, stat, sys
from pathlib import Path
from hermes_producer import logs
from hermes_producer.store import TaskStore

home = Path(sys.argv[1])
log = logs.configure(home / "log", max_bytes=2000, backup_count=2)
for n in range(40):
    logs.event(log, 20, "test.fill", "x" * 100)
with TaskStore(home / "hermes.db") as store:
    store.add("a private prompt", {"name": "prompt", "steps": []}, 1)
    modes = {str(p.relative_to(home)): stat.S_IMODE(os.lstat(p).st_mode) for p in [home, *home.rglob("*")]}
print(json.dumps(modes))
"""


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_hermes_home_is_private_whatever_the_umask(umask: int, env: dict[str, str], tmp_path: Path) -> None:
    """Given a umask of 022 or even 000, HERMES_HOME and its log directory are created 0700 and
    every file in them 0600: the task store and its -wal/-shm files (while open), the log and
    its rotated files; the same through the real CLI."""
    home = tmp_path / "deep" / "home"

    def under_umask() -> None:
        os.umask(umask)

    done = subprocess.run([PYTHON, "-c", OPEN_AND_ROTATE, str(home)], env=env, capture_output=True, text=True,
                          preexec_fn=under_umask, timeout=60)  # fmt: skip
    cli_home = tmp_path / "cli-home"
    cli = subprocess.run([PYTHON, "-m", "hermes_producer", "task", "--prompt", "private"],
                         env=env | {"HERMES_HOME": str(cli_home)}, capture_output=True, text=True,
                         preexec_fn=under_umask, timeout=60)  # fmt: skip

    assert done.returncode == 0, done.stderr
    modes = json.loads(done.stdout)
    assert {"hermes.db-wal", "hermes.db-shm", "log/hermes.log", "log/hermes.log.1", "log/hermes.log.2"} <= modes.keys()
    assert {name: mode for name, mode in modes.items() if mode != (0o700 if name in (".", "log") else 0o600)} == {}
    assert stat.S_IMODE((tmp_path / "deep").stat().st_mode) == 0o700  # a parent Hermes had to create
    assert cli.returncode == 0, cli.stderr
    for path in [cli_home, cli_home / "log", cli_home / "log" / "hermes.log", cli_home / "hermes.db"]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_loose_files_are_tightened_and_a_loose_home_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    """Given a HERMES_HOME an older Hermes left open (directories 0755, files 0644) and a
    rotated log that is a symbolic link to someone else's file,
    `hermes history` tightens Hermes' own files and log directory, warns about HERMES_HOME
    (the operator's choice: left as it is) with the fix, and never chmods through the link."""
    home = Path(env["HERMES_HOME"])
    (home / "log").mkdir(parents=True)
    outside = tmp_path / "not-hermes.txt"
    outside.write_text("someone else's\n")
    for path in (home / "hermes.db", home / "log" / "hermes.log", home / "log" / "hermes.log.1"):
        path.write_bytes(b"")
        path.chmod(0o644)
    (home / "log" / "hermes.log.2").symlink_to(outside)
    for path in (home, home / "log", outside):
        path.chmod(0o755 if path.is_dir() else 0o644)

    done = hermes(env, "history")

    assert done.returncode == 0, done.stderr
    assert f"{home} is open to other users (mode 0755)" in done.stderr and f"chmod 700 {home}" in done.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    assert stat.S_IMODE((home / "log").stat().st_mode) == 0o700
    for name in ("hermes.db", "log/hermes.log", "log/hermes.log.1"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


# Metrics ------------------------------------------------------------------------------------------


def listening(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(".".join(str(b) for b in raw[::-1]))
                else:
                    found.add("::" if raw == bytes(16) else raw.hex())
    return found


@pytest.mark.cluster
def test_worker_metrics_listen_on_loopback_unless_told(
    redis_server: Any, env: dict[str, str], workers: Callable[..., WorkerProcess]
) -> None:
    """Given `hermes worker --metrics-port P`, the metrics listen on 127.0.0.1 only;
    `--metrics-address 0.0.0.0` (or HERMES_METRICS_ADDRESS) opens them to the network on
    purpose; an address that is not one is refused with exit 2 before anything starts."""
    redis_server.client().flushall()
    cluster = env | {"HERMES_BROKER_URL": redis_server.url()}
    quiet_port, open_port, env_port = free_port(), free_port(), free_port()
    quiet = workers(cluster, "m1", "--mode", "local", "--metrics-port", str(quiet_port))
    wide = workers(cluster, "m2", "--mode", "local", "--metrics-port", str(open_port), "--metrics-address", "0.0.0.0")
    by_env = workers(cluster | {"HERMES_METRICS_ADDRESS": "0.0.0.0"}, "m3", "--mode", "local",
                     "--metrics-port", str(env_port))  # fmt: skip
    bad = hermes(cluster, "worker", "--mode", "local", "--metrics-address", "every interface please")

    for worker, node in ((quiet, "local@m1"), (wide, "local@m2"), (by_env, "local@m3")):
        registered(redis_server.client(), worker, node)
    wait_until(lambda: listening(quiet_port) and listening(open_port) and listening(env_port), 30, 0.1,
               "metrics listening")
    assert listening(quiet_port) == {"127.0.0.1"}
    assert listening(open_port) == {"0.0.0.0"} and listening(env_port) == {"0.0.0.0"}
    with urllib.request.urlopen(f"http://127.0.0.1:{quiet_port}/metrics", timeout=10) as response:
        assert b"hermes_probe" in response.read()
    assert bad.returncode == 2 and "--metrics-address" in bad.stderr
