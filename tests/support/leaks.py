"""What the secrets tests share (tests/test_hostile_secrets*.py): markers, a private DEBUG
environment, the real `hermes` and `hermes worker` run in it, and every log there is as one text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import redis

from .processes import WorkerProcess, run_hermes, start_worker_process
from .waiting import wait_until

PYTHON = sys.executable


def unique(prefix: str) -> str:
    """A marker no other text in the run contains, shaped like a real secret."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def debug_env(tmp_path: Path) -> dict[str, str]:
    """An environment with its own HERMES_HOME, no HERMES_* from the caller, DEBUG logging."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    return clean | {
        "HERMES_HOME": str(tmp_path / "home"),
        "HERMES_BROKER_URL": "redis://127.0.0.1:1/0",
        "HERMES_ISOLATION": "local",
        "HERMES_LOG_LEVEL": "DEBUG",
        "HERMES_HEARTBEAT": "1",
        "HERMES_CONCURRENCY": "1",
    }


def hermes(env: dict[str, str], *args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run the real `hermes ARGS...` with ``env`` (plus ``extra`` variables)."""
    code, out, err = run_hermes(list(args), env | extra, Path(env["HERMES_HOME"]).parent, timeout=timeout)

    def text(data: bytes) -> str:  # as subprocess.run(text=True, errors="replace") decodes
        return data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")

    return subprocess.CompletedProcess([PYTHON, "-m", "hermes_producer", *args], code, text(out), text(err))


class Workers:
    """Starts `hermes worker` processes (output to a file each, under ``directory``); as a context
    manager, stops them all when it ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[WorkerProcess] = []

    def __call__(self, env: dict[str, str], name: str, *args: str) -> WorkerProcess:
        worker = start_worker_process(env, self.directory / f"worker-{name}.out", name, "-c", "1", *args)
        self.started.append(worker)
        return worker

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.started:
            worker.halt()


def registered(client: redis.Redis, worker: WorkerProcess, node: str, timeout: float = 90) -> dict[str, Any]:
    """Wait until ``node`` is ready in the registry; fail with the worker's output if it exits."""

    def entry() -> dict[str, Any] | None:
        assert worker.process.poll() is None, f"worker {node} exited:\n{worker.log[-3000:]}"
        raw = client.get(f"hermes:worker:{node}")
        found = json.loads(raw) if raw else None
        # Ready when it lists its queues: a starting worker's name claim lists none.
        return found if found and found.get("queues") else None

    found: dict[str, Any] = wait_until(entry, timeout, 0.1, f"worker {node} to be ready")
    return found


def everything_logged(env: dict[str, str], client: redis.Redis | None, extra: list[Path] = ()) -> str:  # type: ignore[assignment]
    """Every log there is, as one text: the files under HERMES_HOME/log, the given outputs
    (workers'), the raw cluster log stream, and what `hermes log` and `hermes debug` print."""
    parts = [path.read_text("utf-8", "replace") for path in sorted((Path(env["HERMES_HOME"]) / "log").glob("*"))]
    parts += [path.read_text("utf-8", "replace") for path in extra]
    if client is not None:
        parts += [json.dumps({k.decode(): v.decode() for k, v in fields.items()})
                  for _id, fields in client.xrange("hermes:events")]  # fmt: skip
    for command in (["log", "-n", "100000"], ["debug", "-n", "100000"], ["debug", "-n", "100000", "--json"]):
        shown = hermes(env, *command)
        assert shown.returncode == 0, shown.stderr
        parts += [shown.stdout, shown.stderr]
    return "\n".join(parts)
