"""The test harness itself: waiting, the private Redis server the chaos tests break, the tiers, and
the zygote `hermes` commands fork from."""

from __future__ import annotations

import ast
import itertools
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from .support import environment
from .support import zygote as zygotes
from .support.processes import start_worker_process
from .support.redis_server import RedisServer
from .support.waiting import wait_until
from .support.zygote import Zygote


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = itertools.count(1)
    assert wait_until(lambda: max(0, next(calls) - 2), 5, 0.001, "the third call") == 1


def test_wait_until_fails_naming_what_it_waited_for_and_asks_once_more_at_the_deadline() -> None:
    calls = itertools.count(1)
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0\.05 s waiting for the log: empty"):
        wait_until(lambda: next(calls) < 0, 0.05, 0.01, lambda: "the log: empty")
    assert next(calls) >= 3  # at the start, between, and at the deadline


@pytest.mark.cluster
def test_a_private_redis_can_be_flushed_paused_killed_and_started_again_on_its_port(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        port = server.port
        server.client().set("k", "v")
        server.flush()
        assert server.client().get("k") is None
        # Paused: connections open, nothing answered
        server.pause()
        slow = redis.Redis.from_url(server.url(), socket_connect_timeout=0.5, socket_timeout=0.5)
        with pytest.raises(redis.TimeoutError):
            slow.ping()
        server.resume()
        assert server.client().ping()
        # Killed: refused; started again: the same port answers
        server.kill()
        with pytest.raises(redis.ConnectionError):
            server.client().ping()
        server.start()
        assert server.port == port and server.client().ping()


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    """Shared helpers live in tests/support, fixtures in the plugins conftest registers."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                names += [alias.name for alias in node.names] if not node.module else []
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            last = [name.rsplit(".", 1)[-1] for name in names]
            if any(part.startswith("test_") or part == "conftest" for part in last):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_the_service_starters_refuse_a_test_without_the_cluster_mark(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fast tier needs no service: a test not marked cluster starts no redis-server and no worker."""
    monkeypatch.setattr(environment, "running_marks", frozenset({"slow"}))
    with pytest.raises(pytest.fail.Exception, match="starts a redis-server but is not marked cluster"):
        RedisServer(tmp_path / "redis").start()
    with pytest.raises(pytest.fail.Exception, match="starts a hermes worker but is not marked cluster"):
        start_worker_process({}, tmp_path / "worker.log", "w1")
    assert not (tmp_path / "redis").exists() and not (tmp_path / "worker.log").exists()


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["run", "--prompt", "Ｆｕｌｌ  width\u00a0", "--json"], None),
        (["run", "--prompt", os.fsdecode(b"caf\xff")], None),
        (["batch", "-", "-o", "-"], b'{"id": 1, "prompt": "a  b"}\n{"id": 2}\n\xff\n'),
        (["batch", "in.jsonl", "-o", "out.jsonl", "--summary-json", "summary.json"], None),
        (["run", "--prompt", "x", "--wait-for-workers", "nan"], None),
    ],
    ids=["run-json", "argv-not-utf8", "stdin-to-stdout", "files-under-a-umask", "usage-error"],
)
def test_a_command_forked_from_the_zygote_does_what_it_does_in_a_fresh_interpreter(
    zygote: Zygote | None, hermes_env: dict[str, str], tmp_path: Path, args: list[str], stdin: bytes | None
) -> None:
    """The same exit code, output, error output, and files (their bytes and modes under a umask)."""
    if zygote is None:
        pytest.skip("HERMES_TEST_FRESH_PROCESSES=1: every command runs in a fresh interpreter")
    assert zygote.serves(hermes_env), "the suite's commands would all run in fresh interpreters"
    seen = {}
    for how in ("fresh", "forked"):
        cwd = tmp_path / how
        cwd.mkdir()
        (cwd / "in.jsonl").write_text('{"id": "a", "prompt": "  one  "}\n{"id": "a", "prompt": "two"}\n')
        env = dict(hermes_env, HERMES_HOME=str(cwd / "home"))
        umask = os.umask(0o027)
        try:
            if how == "fresh":
                done = subprocess.run([sys.executable, "-m", "hermes_producer", *args], input=stdin or b"",
                                      capture_output=True, env=env, cwd=cwd, timeout=120)  # fmt: skip
                code, out, err = done.returncode, done.stdout, done.stderr
            else:
                code, out, err = zygote.run(args, env, cwd, stdin, timeout=120)
        finally:
            os.umask(umask)
        files = {p.name: (oct(stat.S_IMODE(p.stat().st_mode)), timeless(p.read_bytes())) for p in cwd.iterdir()
                 if p.is_file()}  # fmt: skip
        seen[how] = (code, out, timeless(err.replace(str(cwd).encode(), b"<cwd>")), files)
    assert seen["forked"] == seen["fresh"]


def timeless(data: bytes) -> bytes:
    """``data`` with the durations and rates a batch reports, and its random id, left out (no two
    runs take as long, nor have the same id)."""
    data = re.sub(rb"in [0-9.]+ s \([0-9,.]+/s\)", b"in <time>", data)
    data = re.sub(rb"batch [0-9a-f]{32}: ", b"batch <id>: ", data)
    data = re.sub(rb'"batch": "[0-9a-f]{32}"', b'"batch": "<id>"', data)
    return re.sub(rb'"(seconds|prompts_per_second)": [0-9.]+', rb'"\1": <n>', data)


def _client(zygote: Zygote, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`hermes ARGS` as the README's shim runs it: the zygote's client program."""
    command = [sys.executable, "-I", "-S", str(zygotes.CLIENT), zygote.path, *args]
    return subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def test_the_zygote_client_exits_as_its_command_did(
    zygote: Zygote | None, hermes_env: dict[str, str], tmp_path: Path
) -> None:
    if zygote is None:
        pytest.skip("HERMES_TEST_FRESH_PROCESSES=1: every command runs in a fresh interpreter")
    done = _client(zygote, ["run", "--prompt", "a  b", "--profile", "compact"], hermes_env, tmp_path)
    assert done.communicate(timeout=60)[0] == b"a b\n" and done.returncode == 0
    refused = _client(zygote, ["run", "--wait-for-workers", "nan", "x"], hermes_env, tmp_path)
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and b"--wait-for-workers" in err, err


def test_a_signal_to_the_zygote_client_reaches_its_command(
    zygote: Zygote | None, hermes_env: dict[str, str], tmp_path: Path
) -> None:
    """Ctrl-C on the client is Ctrl-C on the command: it ends as an interrupted command does."""
    if zygote is None:
        pytest.skip("HERMES_TEST_FRESH_PROCESSES=1: every command runs in a fresh interpreter")
    reading = _client(zygote, ["batch", "-", "-o", str(tmp_path / "out.jsonl")], hermes_env, tmp_path)
    assert reading.stdin is not None
    reading.stdin.write(b'{"prompt": "a"}\n')  # the input stays open: the batch waits for more
    reading.stdin.flush()
    wait_until(lambda: list(tmp_path.glob("out.jsonl.partial*")), 30, 0.01, "the batch to start")
    reading.send_signal(signal.SIGINT)
    _, err = reading.communicate(timeout=60)
    assert reading.returncode == 130 and b": interrupted: rerun with --resume" in err.splitlines()[-1], err


def test_a_killed_zygote_client_takes_its_command_with_it(
    zygote: Zygote | None, hermes_env: dict[str, str], tmp_path: Path
) -> None:
    """A client killed outright (a timeout's SIGKILL) cannot pass the signal on: the zygote sees
    its connection close and kills the command, whose copy of the output pipe then closes too."""
    if zygote is None:
        pytest.skip("HERMES_TEST_FRESH_PROCESSES=1: every command runs in a fresh interpreter")
    following = _client(zygote, ["log", "--follow"], hermes_env, tmp_path)
    wait_until(lambda: (Path(hermes_env["HERMES_HOME"]) / "log").exists(), 30, 0.01, "the command to start")
    following.kill()
    assert following.communicate(timeout=30) == (b"", b"")  # end of file: nobody holds the pipes
    assert following.returncode == -signal.SIGKILL
