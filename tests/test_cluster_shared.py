"""`hermes batch --shared` over real workers and a private Redis: the same output as the normal
mode byte for byte, the lines never through Redis, a file changed under the batch refused, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .support.fixture_types import HermesRunner, WorkerFactory
from .support.inputs import make_input, read_records
from .support.processes import run_until_chunks_then_kill
from .support.redis_server import RedisServer
from .support.waiting import wait_until

pytestmark = pytest.mark.cluster


def hostile_input(path: Path, count: int) -> Path:
    """``count`` good lines, then bad ones: invalid UTF-8, malformed JSON, a duplicate id, an empty line."""
    make_input(path, count)
    with path.open("ab") as handle:
        handle.write(b'\xff\n{"prompt": \n{"id": "p3", "prompt": "again"}\n\n{"id": "last", "prompt": " end "}')
    return path


def killed_shared_batch(cluster_env: dict[str, str], root: Path, count: int) -> tuple[list[str], dict[str, str], Path]:
    """A `--shared` batch of ``count`` lines under ``root``, killed after some chunks are written:
    its command (to run again with ``--resume``), environment and output."""
    env = dict(cluster_env, HERMES_SHARED_ROOT=str(root))
    src = make_input(root / "in.jsonl", count)
    out, journal = root / "out.jsonl", root / "out.jsonl.partial.journal"
    command = [sys.executable, "-m", "hermes_producer", "batch", str(src), "-o", str(out), "--shared",
               "--chunk-size", "100", "--isolation", "local"]  # fmt: skip
    run_until_chunks_then_kill(command, env, root, journal)
    return command, env, out


def net_input(redis_server: RedisServer) -> int:
    return int(redis_server.client().info("stats")["total_net_input_bytes"])


def test_shared_mode_writes_the_same_bytes_and_keeps_the_lines_out_of_redis(
    start_worker: WorkerFactory, chermes: HermesRunner, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"HERMES_SHARED_ROOT": str(tmp_path)}
    start_worker("w1", env=env)
    start_worker("w2", env=env)
    src = hostile_input(tmp_path / "in.jsonl", 20_000)
    outputs = {}
    traffic = {}
    for mode in ("plain", "shared"):
        before = net_input(redis_server)
        out = tmp_path / f"{mode}.jsonl"
        done = chermes("batch", str(src), "-o", str(out), "--chunk-size", "500", "--isolation", "local",
                       *(["--shared"] if mode == "shared" else []), env=env, timeout=300)  # fmt: skip
        assert done.returncode == 1, done.stderr  # the bad lines' error records
        traffic[mode] = net_input(redis_server) - before
        # Byte for byte but for which of the two workers made each chunk (its provenance says).
        outputs[mode] = out.read_bytes().replace(b'"worker":"local@w2"', b'"worker":"local@w1"')
    assert outputs["plain"] == outputs["shared"]
    records = read_records(tmp_path / "shared.jsonl")
    assert len(records) == 20_005 and {r["provenance"]["worker"] for r in records} <= {"local@w1", "local@w2"}
    codes = [r.get("error", {}).get("code") for r in records[20_000:]]
    assert codes[:3] == ["invalid_utf8", "malformed_json", "duplicate_id"], codes
    # The lines (some 2 MB) and the records (some 5 MB) went through Redis in the normal mode
    # only: shared, the workers wrote the records to part files, which are gone once written.
    size = src.stat().st_size + (tmp_path / "shared.jsonl").stat().st_size
    assert traffic["plain"] - traffic["shared"] > 0.9 * size, traffic
    assert list((tmp_path / ".hermes-parts").iterdir()) == []


def test_a_file_changed_under_the_batch_stops_it_with_a_clear_error(
    start_worker: WorkerFactory, chermes: HermesRunner, redis_server: RedisServer, cluster_env: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    env = {"HERMES_SHARED_ROOT": str(tmp_path)}
    worker = start_worker("w1", env=env)
    src = make_input(tmp_path / "in.jsonl", 2_000)
    # The worker takes nothing until the file has changed: it is stopped while the producer sends.
    os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        command = [sys.executable, "-m", "hermes_producer", "batch", str(src), "-o", str(tmp_path / "out.jsonl"),
                   "--shared", "--chunk-size", "500", "--isolation", "local"]  # fmt: skip
        errors = tmp_path / "producer.err"
        with errors.open("wb") as stderr:
            producer = subprocess.Popen(command, env=dict(cluster_env, **env), cwd=tmp_path,
                                        stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
        client = redis_server.client()
        wait_until(lambda: bool(client.keys("hermes:chunk:*")), 30, 0.02,
                   lambda: f"the first chunk to be sent:\n{errors.read_text()}")  # fmt: skip
        data = bytearray(src.read_bytes())
        data[data.index(b'"p0"') + 1] = ord("q")  # the same size, one byte changed
        src.write_bytes(bytes(data))
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
    assert producer.wait(timeout=120) == 3, errors.read_text()
    said = errors.read_text()
    assert "chunk 0 was refused" in said and "the file changed under the batch" in said, said
    assert "Traceback" not in said and "rerun with --resume" in said
    # The records of the chunks that were done are not left on the shared storage, where nothing
    # expires them (a resumed batch runs those chunks again).
    assert list((tmp_path / ".hermes-parts").iterdir()) == []


def test_a_worker_without_the_root_refuses_shared_chunks(
    start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    start_worker("w1")  # no HERMES_SHARED_ROOT on the worker
    src = make_input(tmp_path / "in.jsonl", 100)
    done = chermes("batch", str(src), "-o", str(tmp_path / "out.jsonl"), "--shared", "--isolation", "local",
                   env={"HERMES_SHARED_ROOT": str(tmp_path)}, timeout=120)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "HERMES_SHARED_ROOT is not set on it" in done.stderr and "Traceback" not in done.stderr


def test_a_killed_shared_producer_resumes_losing_and_duplicating_nothing(
    start_worker: WorkerFactory, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    start_worker("w1", env={"HERMES_SHARED_ROOT": str(tmp_path)})
    start_worker("w2", env={"HERMES_SHARED_ROOT": str(tmp_path)})
    command, env, out = killed_shared_batch(cluster_env, tmp_path, count := 60_000)
    assert not out.exists()
    resumed = subprocess.run([*command, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after" in resumed.stderr
    assert [r["id"] for r in read_records(out)] == [f"p{n}" for n in range(count)]
    assert list((tmp_path / ".hermes-parts").iterdir()) == []  # the parts of both runs are gone


def test_a_link_planted_in_place_of_the_part_directory_is_not_followed_and_the_records_come_by_redis(
    start_worker: WorkerFactory, chermes: HermesRunner, redis_server: RedisServer, tmp_path: Path
) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / ".hermes-parts").symlink_to(elsewhere)
    env = {"HERMES_SHARED_ROOT": str(root)}
    start_worker("w1", env=env)
    src = make_input(root / "in.jsonl", 2_000)
    before = net_input(redis_server)
    done = chermes("batch", str(src), "-o", str(tmp_path / "out.jsonl"), "--chunk-size", "500", "--shared",
                   "--isolation", "local", env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == [f"p{n}" for n in range(2_000)]
    # Nothing was made or written where the link points; the records came through Redis instead.
    assert list(elsewhere.iterdir()) == []
    assert net_input(redis_server) - before > (tmp_path / "out.jsonl").stat().st_size


def test_a_resumed_producer_that_cannot_take_its_part_directory_gets_the_records_by_redis(
    start_worker: WorkerFactory, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a killed shared batch whose part directory is someone else's when it resumes (another
    # user resuming, or the directory replaced), which the producer therefore does not read
    start_worker("w1", env={"HERMES_SHARED_ROOT": str(tmp_path)})
    command, env, out = killed_shared_batch(cluster_env, tmp_path, count := 60_000)
    [batch_dir] = (tmp_path / ".hermes-parts").iterdir()
    os.chown(batch_dir, 12345, 12345)
    # When it resumes, the workers (root here: they could write there) are not told to use it
    resumed = subprocess.run([*command, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    # Then the records come through Redis and the batch completes, the directory left as it is
    assert resumed.returncode == 0, resumed.stderr
    assert [r["id"] for r in read_records(out)] == [f"p{n}" for n in range(count)]
    assert batch_dir.is_dir()
