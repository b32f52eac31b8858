"""Hermes as real processes: ``hermes worker`` (the one worker starter) and any other command
(``run_hermes``: to its end, forked from the zygote where it can be).

Workers run in a session of their own, so a test can SIGKILL a worker with its pool; every
process writes to a log file the test shows when something goes wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from . import zygote
from .environment import needs_mark
from .waiting import wait_until


@dataclass
class WorkerProcess:
    """A running ``hermes worker``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL after ``timeout`` seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL the whole worker: the main process and its pool children."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def halt(self) -> None:
        """Stop the worker whatever state it is in (after a test): SIGTERM, then SIGKILL."""
        if self.process.poll() is None:
            try:
                self.stop(timeout=20)
            except Exception:
                self.kill()


def worker_options(mode: str = "local", concurrency: int = 1) -> tuple[str, ...]:
    """The options most tests start a worker with: its mode, its concurrency, INFO logging."""
    return ("--mode", mode, "-c", str(concurrency), "-l", "info")


def start_worker_process(env: dict[str, str], log_path: Path, name: str, *options: str,
                         prefix: Sequence[str] = ()) -> WorkerProcess:  # fmt: skip
    """Start ``hermes worker --name NAME OPTIONS...`` with ``env``; it logs (appending) to ``log_path``.

    The worker has a process group of its own, so :meth:`WorkerProcess.kill` takes its pool too.
    ``prefix`` runs it through another command that execs it (``ip netns exec NS``: on another host).
    """
    needs_mark("cluster", "a hermes worker")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "hermes_producer", "worker", "--name", name, *options],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return WorkerProcess(name, process, log_path)


def registry_entry(client: redis.Redis, node: str) -> dict[str, Any] | None:
    """The registry entry of worker ``node`` (``local@w1``), or None while it has none."""
    raw = client.get(f"hermes:worker:{node}")
    return json.loads(raw) if raw else None


def wait_registered(worker: WorkerProcess, node: str, client: Callable[[], redis.Redis], timeout: float = 90) -> None:
    """Wait until ``node`` is in the registry, consuming its queues (ready: its name alone is claimed
    as soon as it starts, with no queue); fail at once, with its log, if the worker exits."""

    def registered() -> bool:
        if worker.process.poll() is not None:
            pytest.fail(f"worker {node} exited with {worker.process.returncode}:\n{worker.log[-3000:]}")
        try:
            entry = registry_entry(client(), node)
        except redis.RedisError:  # a chaos test may have stopped the server for a while
            return False
        return entry is not None and bool(entry["queues"])

    wait_until(registered, timeout, 0.1, f"worker {node} to register")


@dataclass
class Producer:
    """A ``hermes batch`` (or any other command) running as a process; stderr goes to a file."""

    process: subprocess.Popen[bytes] | zygote.Forked
    stderr_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code; the test fails (and the process is killed) after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the producer did not finish within {timeout:.0f} s:\n{self.stderr[-4000:]}")
        raise AssertionError

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def first_line_with(self, text: str) -> str | None:
        return next((line for line in self.stderr.splitlines() if text in line), None)


def run_hermes(args: list[str], env: dict[str, str], cwd: Path, input: bytes | None = None,
               timeout: float = 120) -> tuple[int, bytes, bytes]:  # fmt: skip
    """``hermes ARGS...`` to its end: (exit code, standard output, standard error), as
    ``subprocess.run(capture_output=True)`` gives them. Forked from the session's zygote when
    ``env`` differs from the session's environment only in HERMES_* settings, else run in a
    fresh interpreter (:mod:`.zygote`)."""
    forker = zygote.shared()
    if forker is not None and forker.serves(env):
        return forker.run(args, env, cwd, input, timeout)
    done = subprocess.run([sys.executable, "-m", "hermes_producer", *args], input=input, capture_output=True,
                          env=env, cwd=cwd, timeout=timeout)  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def start_hermes(args: list[str], env: dict[str, str], cwd: Path, stderr_path: Path, stdout: Any = None,
                 forked: bool = False, stdin: Any = None, prefix: Sequence[str] = ()) -> Producer:  # fmt: skip
    """Start ``hermes ARGS...``; standard output is discarded unless ``stdout`` (a file) says otherwise.

    ``stdin``: what the command reads (``subprocess.PIPE``: the test feeds it, ``process.stdin``);
    nothing otherwise.

    ``forked``: from the session's zygote when it serves ``env`` (see :func:`run_hermes`), for
    commands a test only starts, interrupts and waits for. ``prefix``: through a command that
    execs it (``ip netns exec NS``), never forked.
    """
    forker = zygote.shared() if forked and not prefix else None
    with stderr_path.open("wb") as stderr, open(os.devnull, "r+b") as devnull:
        if forker is not None and forker.serves(env) and stdin is None:
            fds = (devnull.fileno(), (devnull if stdout is None else stdout).fileno(), stderr.fileno())
            return Producer(forker.start(args, env, cwd, fds), stderr_path)
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "hermes_producer", *args],
            env=env, cwd=cwd, stdout=subprocess.DEVNULL if stdout is None else stdout, stderr=stderr,
            stdin=devnull if stdin is None else stdin,
        )  # fmt: skip
    return Producer(process, stderr_path)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of children too)."""
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def start_flower_process(
    env: dict[str, str], port: int, log_path: Path, *options: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``hermes flower --port PORT OPTIONS...`` (in ``cwd``) and return once its /healthcheck answers 200."""
    needs_mark("cluster", "Flower")
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "hermes_producer", "flower", "--port", str(port), *options],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)  # fmt: skip

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"Flower exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:  # not listening yet (URLError and HTTPError are OSErrors too)
            return False

    try:
        wait_until(healthy, 30, 0.2, "Flower to answer")
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return process


def run_until_chunks_then_kill(command: list[str], env: dict[str, str], cwd: Path, journal: Path,
                               chunks: int = 30) -> None:  # fmt: skip
    """Run the batch ``command`` and SIGKILL it once its journal holds ``chunks`` chunks."""
    from .waiting import wait_until

    errors = cwd / "producer.err"
    with errors.open("wb") as stderr:
        producer = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)

    def progressed() -> bool:
        assert producer.poll() is None, errors.read_text()
        return journal.exists() and journal.read_text().count("\n") >= chunks

    wait_until(progressed, 60, 0.05, f"the batch to write {chunks} chunks")
    producer.kill()
    producer.wait()


def children(pid: int) -> list[int]:
    """The live direct children of ``pid`` (a Celery worker's pool processes), as each of its
    threads lists them in /proc."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            continue
    return found


def pool_processes(pid: int) -> list[int]:
    """The pool processes of an in-process batch: children of its multiprocessing forkserver."""
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" in command:
            return children(child)
    return []
