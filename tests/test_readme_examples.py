"""Every command of the README's "Using it" block works verbatim, as a new user types it.

Each line is run by bash as written (comments cut), from a directory holding a copy of
`examples/`, with `hermes` on the PATH and no broker (the embedded default). A `# -> TEXT`
comment is what the command prints, and is checked. `--follow` commands run until killed.

The block "On a cluster" runs line by line too, against a redis-server and real workers of the
test's own (what is changed for that, outside the lines, is said in its test), and the signing
block runs, then a command that checks the files it made. Two ```bash blocks are not run here:
"Two commands" installs system packages (with sudo) and a virtual environment into the checkout
(ops/test.sh is how the suite itself is run; ops/demo.sh's one batch is the "Using it" block's
`hermes batch examples/prompts.jsonl -o cleaned.jsonl`), and "compose" is what
tests/test_compose.py does, with a project, env file and batch folder of its own.

Every ```python block runs too, as it is, the same way; the plain Celery client's block runs
against a private Redis and a real `hermes worker` (its URL replaced by that Redis'), and prints
what its comments say. And every command of `hermes` is in the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .support import zygote as zygotes
from .support.environment import EXAMPLES, free_port, missing, needs_mark
from .support.fixture_types import WorkerFactory
from .support.redis_server import RedisServer
from .support.waiting import wait_until

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str) -> list[str]:
    """The lines of the first ```bash block after ``heading``."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block is not None, heading
    return [line for line in block.group(1).splitlines() if line.strip()]


def commands(lines: list[str]) -> list[tuple[str, str | None]]:
    """(command, expected output or None) for every command of ``lines``; `a ; b` is two."""
    found = []
    for line in lines:
        command, comment = line, ""
        if (mark := re.search(r"\s{2,}# ", line)) is not None:
            command, comment = line[: mark.start()], line[mark.end() :]
        expected = comment.removeprefix("-> ").split(" (")[0] if comment.startswith("-> ") else None
        parts = [part.strip() for part in command.split(" ; ")]
        found += [(part, expected if part == parts[-1] else None) for part in parts]
    return found


USING_IT = commands(readme_block("## Using it"))


def test_the_block_is_read_as_the_commands_it_shows() -> None:
    assert ("hermes task list --json", None) in USING_IT
    mona_lisa = "hermes run 'The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.'"
    assert (mona_lisa, "The Mona Lisa doesn't have eyebrows.") in USING_IT
    assert len(USING_IT) >= 15


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A directory with the examples and an environment with `hermes` on the PATH, nothing else."""
    where = tmp_path_factory.mktemp("newcomer")
    shutil.copytree(EXAMPLES, where / "examples")
    bin_dir = where / "bin"
    bin_dir.mkdir()
    forker = zygotes.shared()
    launchers = {"celery": f'"{sys.executable}" -m celery',
                 # Forked from the session's zygote (as the suite's other commands are): a fresh
                 # interpreter's imports are what tests/test_module_graph.py is about.
                 "hermes": f'"{sys.executable}" -I -S "{zygotes.CLIENT}" "{forker.path}"' if forker
                 else f'"{sys.executable}" -m hermes_producer'}  # fmt: skip
    for command, launcher in launchers.items():
        shim = bin_dir / command
        shim.write_text(f'#!/bin/sh\nexec {launcher} "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "HERMES_HOME": str(where / "home"),
            "HERMES_BROKER_URL": "redis://127.0.0.1:1/0", "HERMES_ISOLATION": "local",
            "PYTHONPATH": str(README.parent)}  # fmt: skip
    return where, env


@pytest.mark.parametrize(("command", "expected"), USING_IT, ids=[command for command, _ in USING_IT])
def test_every_command_of_using_it_works_verbatim(
    command: str, expected: str | None, newcomer: tuple[Path, dict[str, str]]
) -> None:
    where, env = newcomer
    try:
        done = subprocess.run(["bash", "-c", command], cwd=where, env=env, capture_output=True, text=True,
                              timeout=1.5 if "--follow" in command else 120)  # fmt: skip
    except subprocess.TimeoutExpired:
        assert "--follow" in command, f"{command} did not finish"
        return
    assert done.returncode in (0, 1), f"{command}: exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr and "hermes: error:" not in done.stderr, done.stderr
    if done.returncode == 1:  # documented: some items failed (the examples hold bad lines on purpose)
        assert command.startswith("hermes batch"), done.stderr
    if expected is not None:
        assert done.stdout.strip() == expected


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def celery_client(block: str) -> bool:
    """Whether ``block`` is a plain Celery client's: it needs a broker and a Hermes worker."""
    return "Celery(broker=" in block


def test_the_readme_has_python_examples() -> None:
    assert any("Client" in block for block in python_blocks())
    assert sum(celery_client(block) for block in python_blocks()) == 1


@pytest.mark.parametrize("block", [b for b in python_blocks() if not celery_client(b)],
                         ids=lambda block: block.splitlines()[0][:40])  # fmt: skip
def test_every_python_block_of_the_readme_runs(block: str, newcomer: tuple[Path, dict[str, str]]) -> None:
    where, env = newcomer
    done = subprocess.run([sys.executable, "-c", block], cwd=where, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


README_BROKER = "redis://localhost:6379/0"  # the URL the README's Celery client names (HERMES_BROKER_URL's default)


@pytest.mark.cluster
def test_the_plain_celery_client_of_the_readme_prints_what_it_says(
    newcomer: tuple[Path, dict[str, str]], start_worker: WorkerFactory, redis_server: RedisServer
) -> None:
    """Given a Hermes worker; when the README's Celery block runs (aimed at this test's Redis);
    then it prints, line by line, what its ``# ...`` comments say."""
    [block] = [b for b in python_blocks() if celery_client(b)]
    assert block.count(README_BROKER) == 2 and len(block.strip().splitlines()) <= 10
    start_worker("w1")
    where, env = newcomer
    done = subprocess.run([sys.executable, "-c", block.replace(README_BROKER, redis_server.url())], cwd=where,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [line.split("  # ", 1)[1].strip() for line in block.splitlines() if line.startswith("print(")]
    assert done.stdout.splitlines() == said


def test_the_readmes_sample_records_are_what_a_new_user_gets(newcomer: tuple[Path, dict[str, str]]) -> None:
    import json

    where, env = newcomer
    text = README.read_text(encoding="utf-8")
    heading = r"The first two\nrecords of `hermes batch examples/prompts.jsonl`"
    sample = re.search(heading + r".*?```json\n(.*?)```", text, re.S)
    assert sample is not None
    shown = [json.loads(line) for line in sample.group(1).splitlines()]
    done = subprocess.run(["hermes", "-q", "batch", "examples/prompts.jsonl"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    got = [json.loads(line) for line in done.stdout.splitlines()[: len(shown)]]
    for record in got:  # what differs from machine to machine, as the README says
        record["provenance"] |= {"python": "3.11.7", "worker": "embedded@host"}
    assert got == shown


def test_every_hermes_variable_the_code_reads_is_in_the_readme() -> None:
    root = README.parent
    named = set()
    for path in [*root.glob("hermes_worker/**/*.py"), *root.glob("hermes_producer/**/*.py")]:
        named |= set(re.findall(r"\bHERMES_[A-Z][A-Z_]*[A-Z]\b", path.read_text(encoding="utf-8")))
    assert named - set(re.findall(r"\bHERMES_[A-Z][A-Z_]*[A-Z]\b", README.read_text(encoding="utf-8"))) == set()


# -- every command is in the README --


def hermes_commands() -> list[str]:
    """Every command and subcommand of `hermes`, as typed: `hermes task delete`."""
    import click

    from hermes_producer.cli import main

    found = []

    def walk(group: click.Command, path: str) -> None:
        for name, command in sorted(getattr(group, "commands", {}).items()):
            if not command.hidden:
                found.append(f"{path} {name}")
                walk(command, f"{path} {name}")

    walk(main, "hermes")
    return found


def readme_code() -> str:
    """The README's code: its blocks and its `inline` spans, where commands are shown as typed."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + spans)


def test_every_command_of_hermes_is_shown_in_the_readme() -> None:
    code = readme_code()
    assert {"hermes batches", "hermes task delete", "hermes image build"} <= set(hermes_commands())
    missing_ones = [c for c in hermes_commands() if not re.search(re.escape(c) + r"(?![\w-])", code)]
    assert missing_ones == [], f"commands the README never shows: {missing_ones}"


# -- the cluster block, line by line --

CLUSTER = commands(readme_block("### On a cluster"))


def long_running(command: str) -> bool:
    """A worker: started in a terminal of its own (here, in the background) and left running."""
    words = command.split()
    return words[:2] == ["hermes", "worker"] or ("celery" in words and "worker" in words)


def test_the_cluster_block_is_read_as_the_commands_it_shows() -> None:
    assert CLUSTER[0][0] == "redis-server --daemonize yes"
    assert sum(long_running(c) for c, _ in CLUSTER) == 3
    assert {"hermes batches", "hermes metrics", "hermes doctor"} <= {c for c, _ in CLUSTER}


@pytest.fixture
def background(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts in sessions of their own; each is stopped (its group) after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
def daemon_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A port for the README's `redis-server --daemonize yes`, and its pid file; the server it
    starts there is stopped (by that pid) after the test."""
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed (ops/bootstrap.sh)")
    needs_mark("cluster", "a redis-server")
    port, pidfile = free_port(), tmp_path / "redis.pid"
    yield port, pidfile
    if pidfile.exists():
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


def start_worker_line(command: str, port: int, env: dict[str, str], cwd: Path, log: Path
                      ) -> subprocess.Popen[bytes]:  # fmt: skip
    """Run a worker line in a session of its own; return once one more worker is ready (fail at
    once, with its output, if it exits instead)."""
    before = set(live_workers(port))
    with log.open("wb") as output:
        process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip

    def started() -> set[str]:
        if process.poll() is not None:
            pytest.fail(f"{command}: exit {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        return set(live_workers(port)) - before

    wait_until(started, 90, 0.2, f"{command} to be ready")
    return process


def live_workers(port: int) -> dict[str, dict[str, object]]:
    """The registry entries of the workers consuming their queues (ready), by name."""
    client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=5)
    try:
        entries = [json.loads(raw) for key in client.scan_iter("hermes:worker:*") if (raw := client.get(key))]
    except redis.RedisError:
        return {}
    finally:
        client.close()
    return {e["name"]: e for e in entries if e.get("queues")}


@pytest.mark.cluster
@pytest.mark.slow
def test_the_cluster_block_works_verbatim_on_one_machine(
    newcomer: tuple[Path, dict[str, str]], daemon_redis: tuple[int, Path], background: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:  # fmt: skip
    """Every line of "On a cluster" as typed, in order, on one machine whose Docker engine is not
    there (DOCKER_HOST names none): then `hermes worker` in terminal 1 is `local@HOST`, the case
    where two workers on one machine must have names of their own.

    Outside the lines: `redis-server --daemonize yes` gets `--port P` and a pid file, since its
    default port 6379 may be another's Redis here, and HERMES_BROKER_URL names P (as the line's
    comment says to). Workers run in the background, each until it is ready.
    """
    port, pidfile = daemon_redis
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    _where, base = newcomer
    env = {k: v for k, v in base.items() if k != "HERMES_ISOLATION"}  # the default, as users have it
    env |= {"HERMES_BROKER_URL": f"redis://127.0.0.1:{port}/0", "HERMES_HOME": str(tmp_path / "home"),
            "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # fmt: skip
    said: dict[str, subprocess.CompletedProcess[str]] = {}
    for number, (command, _expected) in enumerate(CLUSTER):
        if command.startswith("redis-server"):
            command += f" --port {port} --bind 127.0.0.1 --pidfile {pidfile} --dir {tmp_path} --save '' --appendonly no"
        if long_running(command):
            background.append(start_worker_line(command, port, env, tmp_path, tmp_path / f"worker-{number}.log"))
            continue
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=180)  # fmt: skip
        assert "Traceback" not in done.stderr and "hermes: error:" not in done.stderr, f"{command}: {done.stderr}"
        failed_checks = [line for line in done.stdout.splitlines() if line.startswith("[FAIL]")]
        # Exit 1: `hermes doctor` finds no Docker engine (as arranged), and nothing else wrong.
        allowed = (0, 1) if command == "hermes doctor" and all("Docker" in line for line in failed_checks) else (0,)
        assert done.returncode in allowed, f"{command}: exit {done.returncode}: {done.stderr}{done.stdout}"
        said[command] = done
    # The batch fanned out over both workers of terminals 1 and 2, one record a line, in order.
    lines = (tmp_path / "examples" / "prompts.jsonl").read_bytes().count(b"\n")
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == list(range(1, lines + 1))
    assert {r["provenance"]["worker"] for r in records} <= set(live_workers(port)) - {"local@cpu3"}
    workers = said["hermes workers"].stdout
    assert "local@cpu2" in workers and workers.count("local@") == 2
    assert "[ok  ] broker" in said["hermes doctor"].stdout and "worker local@cpu2" in said["hermes doctor"].stdout
    assert "no batch is running" in said["hermes batches"].stdout
    assert "hermes_workers_live" in said["hermes metrics"].stdout
    # And terminal 3's worker, started the Celery way, joined the other two.
    assert set(live_workers(port)) >= {"local@cpu2", "local@cpu3"} and len(live_workers(port)) == 3


def test_the_signing_example_makes_files_hermes_accepts(tmp_path: Path, newcomer: tuple[Path, dict[str, str]]) -> None:
    """The README's openssl and export lines, then a command that reads the three settings (and
    checks that the key, the certificate and the trusted folder belong together)."""
    if shutil.which("openssl") is None:
        missing("openssl is not installed")
    lines = readme_block("### Flower, remote control and signed messages")
    assert lines[0].startswith("openssl req") and lines[-1].startswith("export HERMES_SIGNING_KEY=")
    _where, env = newcomer
    script = "\n".join([*lines, "hermes run 'a  b' --profile compact"])
    done = subprocess.run(["bash", "-ec", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a b\n"
    # A certificate the trusted folder does not hold would be refused: the check above is a real one.
    (tmp_path / "trusted" / "hermes.pem").unlink()
    refused = subprocess.run(["bash", "-c", f"{lines[-1]}\nhermes run x"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "HERMES_SIGNING" in refused.stderr, refused.stderr
