"""Processes the benchmarks run and measure: private Redis servers, CPU and memory meters.

CPU is read from the kernel (psutil over /proc): user + system seconds of a process tree,
children included, before and after a run. Container sessions run under containerd, not under
their worker, so their CPU comes from their cgroup (``cpuacct.usage``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import redis

from hermes_worker.contract import KEY_WORKER
from hermes_worker.registry import WorkerInfo

if TYPE_CHECKING:  # psutil comes with the bench extra; in-process runs need none of it
    import psutil

__all__ = [
    "CpuMeter", "Meter", "PeakRss", "RedisServer", "free_port", "redis_cpu_s", "stop", "tree_cpu_s", "wait_serving",
]  # fmt: skip


def free_port() -> int:
    """A TCP port nobody listens on now (never 6379: that one belongs to people)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


def wait_serving(client: redis.Redis, name: str, process: Any, timeout: float, what: str) -> None:
    """Wait until worker ``name``'s registry entry lists the queues it consumes.

    A worker writes its entry, with no queue, as soon as it claims its name, and lists its queues
    only once it consumes them: a producer started between the two finds no live worker for its
    route (with ``--no-fallback``, exit 3). ``process`` (a Popen) ending first ends the wait too.

    Raises:
        RuntimeError: ``what`` did not start within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        raw = client.get(KEY_WORKER.format(name=name))
        info = None if raw is None else WorkerInfo.from_json(raw)  # None: not an entry a worker writes
        if info is not None and info.queues:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes] | psutil.Popen, timeout: float = 30) -> None:
    """SIGTERM, wait, then SIGKILL the whole process group if it lingers (this process's own children only)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class RedisServer:
    """A private ``redis-server`` on a free port, without persistence, removed on exit."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="hermes-bench-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--loglevel",
            "warning",
        ]
        # A plain Popen (no psutil): the scale section and its smoke test run without the bench extra.
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            stop(self.process)
        shutil.rmtree(self._dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=30)


def _tree(roots: Iterable[psutil.Process | subprocess.Popen[bytes]]) -> list[psutil.Process]:
    import psutil

    found: dict[int, psutil.Process] = {}
    for given in roots:
        with contextlib.suppress(psutil.Error):
            root = given if isinstance(given, psutil.Process) else psutil.Process(given.pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
    return list(found.values())


def _cpu_of(proc: psutil.Process) -> float:
    import psutil

    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def cgroup_cpu(container_id: str) -> float:
    """CPU seconds a container has used, from its cgroup (cgroup v1 or v2); 0.0 when none is found."""
    for base in ("/sys/fs/cgroup/cpuacct/docker", "/sys/fs/cgroup/cpu,cpuacct/docker"):
        path = Path(base) / container_id / "cpuacct.usage"
        if path.exists():
            return int(path.read_text()) / 1e9
    unified = Path("/sys/fs/cgroup/system.slice") / f"docker-{container_id}.scope" / "cpu.stat"
    if unified.exists():
        fields = dict(line.split() for line in unified.read_text().splitlines())
        return int(fields["usage_usec"]) / 1e6
    return 0.0


class Meter(Protocol):
    """CPU seconds by group between :meth:`start` and :meth:`stop`."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, float]: ...


class CpuMeter:
    """CPU seconds used by named groups of process trees (and containers) between start and stop.

    A process that is in the tree at either end is counted; one that came and went in between
    is not (the benchmarks keep their processes alive across a measured run).
    """

    def __init__(
        self,
        groups: dict[str, list[psutil.Process | subprocess.Popen[bytes]]],
        containers: dict[str, list[str]] | None = None,
    ) -> None:
        self.groups = groups
        self.containers = containers or {}
        self._before: dict[str, dict[int, float]] = {}
        self._cg_before: dict[str, float] = {}

    def _snapshot(self) -> dict[str, dict[int, float]]:
        return {name: {p.pid: _cpu_of(p) for p in _tree(roots)} for name, roots in self.groups.items()}

    def start(self) -> None:
        self._before = self._snapshot()
        self._cg_before = {cid: cgroup_cpu(cid) for ids in self.containers.values() for cid in ids}

    def stop(self) -> dict[str, float]:
        after = self._snapshot()
        used = {}
        for name, now in after.items():
            before = self._before.get(name, {})
            used[name] = sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items())
        for name, ids in self.containers.items():
            used[name] = sum(cgroup_cpu(cid) - self._cg_before.get(cid, 0.0) for cid in ids)
        return used


def redis_cpu_s(client: redis.Redis) -> float:
    """User + system CPU seconds the Redis server has used since it started (``INFO cpu``)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


_TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                found += [int(child) for child in handle.read().split()]
    return found


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its living descendants, from /proc (no psutil).

    A descendant that exited and was reaped counts in its parent's ``cutime``/``cstime``, which
    this adds too, so a pool process replaced mid-run is not lost.
    """
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command: state is [0]; utime, stime, cutime, cstime are [11:15].
        total += sum(int(value) for value in fields[11:15]) / _TICKS
        todo += _children(current)
    return total


class PeakRss:
    """Follows a process's peak resident memory (bytes) until it exits or the block ends."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.peak = 0
        self._pid, self._every = pid, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # VmHWM is the kernel's own high-water mark of resident memory: a short spike between
        # two samples is not missed, only what happens after the last one.
        status = Path(f"/proc/{self._pid}/status")
        while not self._done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                return
            self._done.wait(self._every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def scratch(prefix: str = "hermes-bench-") -> Iterator[Path]:
    """A temporary directory, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
