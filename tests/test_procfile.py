"""`honcho start` runs the Procfile's cluster: Redis, a worker and Flower; a batch goes through it.

Everything runs on free ports, set in an env file, exactly as a user would set them; the test
then stops honcho and checks that every process it started is gone.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from .support.environment import free_port, missing
from .support.fixture_types import HermesRunner
from .support.inputs import read_records
from .support.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``: pid -> its start time (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        started[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def running(pid: int, start: str) -> bool:
    """Whether ``pid`` is still the process that started at ``start``, and not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"


def get(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class Honcho:
    """`honcho start` with the repository's Procfile, and what it started."""

    def __init__(self, env: dict[str, str], env_file: Path, log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "honcho", "-f", str(REPO / "Procfile"), "-e", str(env_file),
                 "-d", str(env_file.parent), "start"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.seen: dict[int, str] = {}

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, what: str, ready: Callable[[], object], timeout: float = 60) -> None:
        """Wait until ``ready()`` is truthy (a service not up yet may refuse), noting every process seen."""

        def up() -> object:
            self.seen.update(descendants(self.process.pid))
            if self.process.poll() is not None:
                pytest.fail(f"honcho exited ({self.process.returncode}) before {what}:\n{self.log[-4000:]}")
            try:
                return ready()
            except (redis.RedisError, OSError):
                return False

        wait_until(up, timeout, 0.2, lambda: f"{what}:\n{self.log[-4000:]}")

    def stop(self) -> int:
        self.seen.update(descendants(self.process.pid))
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """Teardown of last resort: only the processes this test started."""
        for pid, start in {**self.seen, **descendants(self.process.pid)}.items():
            if running(pid, start):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def honcho(hermes_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Honcho, dict[str, int]]]:
    if subprocess.run([sys.executable, "-c", "import honcho"], capture_output=True).returncode != 0:
        missing("honcho is not installed (pip install -e '.[test]' in the checkout)")
    ports = {"redis": free_port(), "flower": free_port()}
    # Given: the settings a user would put in .env: free ports, Flower's credentials, a local worker
    env_file = tmp_path / "cluster.env"
    env_file.write_text(
        f"HERMES_REDIS_PORT={ports['redis']}\n"
        f"HERMES_FLOWER_PORT={ports['flower']}\n"
        "HERMES_FLOWER_USER=ops\n"
        "HERMES_FLOWER_PASSWORD=procfile-test\n"
        "HERMES_WORKER_MODE=local\n"
        "HERMES_CONCURRENCY=1\n"
        "HERMES_HEARTBEAT=1\n"
        f"HERMES_HOME={tmp_path / 'home'}\n",
        encoding="utf-8",
    )
    # The Procfile derives the broker URL from HERMES_REDIS_PORT: no HERMES_BROKER_URL from outside.
    env = {k: v for k, v in hermes_env.items() if k != "HERMES_BROKER_URL"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # hermes, as in an activated venv
    started = Honcho(env, env_file, tmp_path / "honcho.log")
    try:
        yield started, ports
    finally:
        if started.process.poll() is None:
            started.kill()


def test_honcho_start_runs_a_cluster_that_processes_a_batch(
    honcho: tuple[Honcho, dict[str, int]], hermes: HermesRunner, tmp_path: Path
) -> None:
    cluster, ports = honcho
    client = redis.Redis(port=ports["redis"], socket_connect_timeout=0.5)
    flower = f"http://127.0.0.1:{ports['flower']}"
    # When: Redis answers, a worker registers and Flower is up
    cluster.wait_ready("worker registered in Redis", lambda: list(client.scan_iter("hermes:worker:*")))
    cluster.wait_ready("Flower", lambda: get(f"{flower}/healthcheck") == 200)
    (node,) = [key.decode().removeprefix("hermes:worker:") for key in client.scan_iter("hermes:worker:*")]
    assert node.startswith("local@")
    # And: a small batch goes through the cluster, never in-process
    prompts = [{"id": n, "prompt": f"caf\u00c3\u00a9 n\u00ba{n}  "} for n in range(1, 13)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")
    done = hermes("batch", "in.jsonl", "-o", "out.jsonl", "--isolation", "local", "--no-fallback",
                  "--chunk-size", "4", env={"HERMES_BROKER_URL": f"redis://127.0.0.1:{ports['redis']}/0"})  # fmt: skip
    # Then: every record is there, cleaned, and came from the Procfile's worker
    assert done.returncode == 0, done.stderr + cluster.log[-3000:]
    records = read_records(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == list(range(1, 13))
    assert all(r["text"].startswith("café nº") for r in records)
    assert {r["provenance"]["worker"] for r in records} == {node}
    assert {r["provenance"]["mode"] for r in records} == {"local"}
    # And: Flower wants its credentials, and knows the worker
    assert get(f"{flower}/api/workers") == 401
    assert get(f"{flower}/api/workers", auth=("ops", "procfile-test")) == 200
    # And: Redis keeps an append-only file in HERMES_HOME
    assert list((tmp_path / "home" / "redis").rglob("*.aof*"))

    # When: honcho is stopped
    seen = dict(cluster.seen)
    assert len(seen) >= 3, cluster.log  # redis, the worker (and its pool), flower
    cluster.stop()
    # Then: every process it started is gone, and the ports are free
    def still_running() -> set[int]:
        return {pid for pid, start in seen.items() if running(pid, start)}

    wait_until(lambda: not still_running(), 15, 0.2,
               lambda: f"every process to end; still running: {still_running()}\n{cluster.log[-3000:]}")  # fmt: skip
    with pytest.raises(redis.ConnectionError):
        client.ping()
