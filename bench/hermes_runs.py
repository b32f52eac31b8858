"""Run the real ``hermes batch`` command (and ``hermes worker``) and measure what it costs.

Every run is a fresh ``python -m hermes_producer batch`` process, as a user would start it:
its rate comes from the batch's own summary (read, normalize, write; start-up excluded), its
wall time and CPU from the kernel (``wait4``), its peak memory from ``VmHWM``. Worker and Redis
CPU come from :class:`bench.infra.CpuMeter` around the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import redis

if TYPE_CHECKING:
    import psutil

from .infra import CpuMeter, Meter, PeakRss, RedisServer, stop, wait_serving

__all__ = ["BatchRun", "HermesWorkers", "hermes_env", "run_batch", "run_parallel"]

NO_BROKER = "redis://127.0.0.1:1/0"  # port 1 refuses at once: the batch runs in-process


def hermes_env(home: Path, broker_url: str | None) -> dict[str, str]:
    """The environment of a Hermes command: its own home, no HERMES_* from the caller.

    Except ``HERMES_SANDBOX_IMAGE``: the image under test, e.g. a checkout's own build next to
    another checkout's ``hermes-sandbox:latest``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_") or k == "HERMES_SANDBOX_IMAGE"}
    env.update(HERMES_HOME=str(home), HERMES_LOG_LEVEL="WARNING", HERMES_BROKER_URL=broker_url or NO_BROKER)
    return env


@dataclass(slots=True)
class BatchRun:
    """One ``hermes batch`` run: its counts, time, CPU by process group and producer memory."""

    prompts: int
    seconds: float
    wall_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss: int = 0
    exit_code: int = 0
    # The producer's minor page faults (``wait4``): the fresh pages the kernel handed it.
    faults: int = 0

    @property
    def rate(self) -> float:
        return self.prompts / self.seconds if self.seconds > 0 else 0.0

    def cpu_us_per_prompt(self) -> float:
        return sum(self.cpu_s.values()) / max(1, self.prompts) * 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "seconds": round(self.seconds, 4),
            "wall_s": round(self.wall_s, 3),
            "prompts_per_s": round(self.rate, 1),
            "cpu_s": {k: round(v, 4) for k, v in self.cpu_s.items()},
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "exit_code": self.exit_code,
            "faults": self.faults,
        }


def batch_command(source: Path, out: Path, *args: str) -> list[str]:
    """The quiet ``hermes batch SOURCE -o OUT ARGS...`` command line, run by this interpreter."""
    return [sys.executable, "-m", "hermes_producer", "-q", "batch", str(source), "-o", str(out), *args]


def run_batch(
    source: Path,
    out_dir: Path,
    env: dict[str, str],
    args: list[str],
    meter: Meter | None = None,
    verify: Callable[[Path], None] | None = None,
) -> BatchRun:
    """``hermes batch SOURCE`` with ``args``; raises if it did not write every record.

    ``verify`` is given the output file before it is removed (and raises if it is wrong).
    """
    out, summary = out_dir / "out.jsonl", out_dir / "summary.json"
    command = batch_command(source, out, "--summary-json", str(summary), *args)
    if meter is not None:
        meter.start()
    errors = out_dir / "stderr.txt"
    started = time.perf_counter()
    with errors.open("wb") as stderr_file:  # a file, not a pipe: nothing reads it until the end
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file)
        with PeakRss(process.pid) as peak:
            _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    used = meter.stop() if meter is not None else {}
    stderr = errors.read_text(encoding="utf-8", errors="replace")
    if process.returncode not in (0, 1) or not summary.exists():
        raise RuntimeError(f"hermes batch {' '.join(args)} exited {process.returncode}: {stderr[-2000:]}")
    report = json.loads(summary.read_text())
    if verify is not None:
        verify(out)
    for path in (out, summary):
        path.unlink(missing_ok=True)
    cpu = {"producer": usage.ru_utime + usage.ru_stime, **used}
    return BatchRun(report["total"], float(report["seconds"]), wall, cpu, peak.peak, process.returncode,
                    usage.ru_minflt)  # fmt: skip


def run_parallel(source: Path, out_dir: Path, env: dict[str, str], args: list[str], processes: int) -> BatchRun:
    """``processes`` independent ``hermes batch SOURCE`` commands at once, with no coordination at all:
    what the machine can do for this work (issue 13, section 4).

    The run's prompts are all of theirs, its time the longest batch time (each batch's own, start-up
    excluded, as for every rate here), its CPU all of theirs.
    """
    started = time.perf_counter()
    running = []
    for k in range(processes):
        where = out_dir / f"parallel-{k}"
        where.mkdir(exist_ok=True)
        command = batch_command(source, where / "out.jsonl", "--summary-json", str(where / "summary.json"), *args)
        with (where / "stderr.txt").open("wb") as stderr_file:
            running.append((where, subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file)))
    prompts, seconds, cpu, worst = 0, 0.0, 0.0, 0
    for where, process in running:
        _pid, status, usage = os.wait4(process.pid, 0)
        code = process.returncode = os.waitstatus_to_exitcode(status)
        if code not in (0, 1) or not (where / "summary.json").exists():
            stderr = (where / "stderr.txt").read_text(encoding="utf-8", errors="replace")
            raise RuntimeError(f"hermes batch {' '.join(args)} (parallel) exited {code}: {stderr[-2000:]}")
        report = json.loads((where / "summary.json").read_text())
        prompts, seconds = prompts + report["total"], max(seconds, float(report["seconds"]))
        cpu, worst = cpu + usage.ru_utime + usage.ru_stime, max(worst, code)
        for name in ("out.jsonl", "summary.json"):
            (where / name).unlink(missing_ok=True)
    return BatchRun(prompts, seconds, time.perf_counter() - started, {"producer": cpu}, 0, worst)


class HermesWorkers:
    """``hermes worker --mode MODE -c N`` on its own private Redis, alive for many batches."""

    def __init__(self, home: Path, mode: str, concurrency: int, name: str) -> None:
        self.mode, self.concurrency, self.name = mode, concurrency, name
        self.home = home
        self.redis = RedisServer()
        self.process: psutil.Popen | None = None
        self.env: dict[str, str] = {}

    def __enter__(self) -> HermesWorkers:
        self.redis.__enter__()
        import psutil

        self.env = hermes_env(self.home, self.redis.url)
        command = [
            sys.executable,
            "-m",
            "hermes_producer",
            "worker",
            "--mode",
            self.mode,
            "-c",
            str(self.concurrency),
            "--name",
            self.name,
            "-l",
            "warning",
        ]
        self.process = psutil.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_serving(self.redis.client(), f"{self.mode}@{self.name}", self.process, 120,
                         f"hermes worker --mode {self.mode} ({self.name})")  # fmt: skip
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            stop(self.process, timeout=60)
        self.redis.__exit__()

    def args(self) -> list[str]:
        """The batch options that send work to these workers and nowhere else."""
        return ["--isolation", self.mode, "--no-fallback"]

    def meter(self) -> CpuMeter:
        """A meter over these workers, their Redis and (container mode) their session containers."""
        assert self.process is not None and self.redis.process is not None
        groups = {"workers": [self.process], "redis": [self.redis.process]}
        containers = {"containers": self.containers()} if self.mode == "container" else None
        return CpuMeter(groups, containers)

    def containers(self) -> list[str]:
        """Ids of the session containers owned by this worker's processes."""
        assert self.process is not None
        import docker

        from hermes_worker.sandbox.docker_backend import deployment_id, session_filters
        from hermes_worker.settings import Settings

        pids = {str(p.pid) for p in self.process.children(recursive=True)}
        # Only this worker set's deployment (its own Redis): another checkout's containers never count.
        deployment = deployment_id(Settings.from_env(self.env))
        client = docker.from_env()
        try:
            found = client.containers.list(filters=session_filters(deployment))
            return [c.id for c in found if c.labels.get("hermes.pid") in pids]
        finally:
            client.close()

    def flush_results(self) -> None:
        """Drop leftovers between runs (result streams expire anyway); keep the registry."""
        client: redis.Redis = self.redis.client()
        for key in client.scan_iter("hermes:results:*"):
            client.delete(key)


class Fleet:
    """Sets of Hermes workers, each on its own Redis, started on first use and kept for the whole run.

    Keeping them alive lets runs on different sets alternate (limit, 1 process, 2 processes,
    containers, then again), so load from elsewhere on the machine hits every figure alike.
    """

    SETS: ClassVar[dict[str, tuple[str, int]]] = {
        "celery_1": ("local", 1),
        "celery_2": ("local", 2),
        "container_2": ("container", 2),
    }

    def __init__(self, home: Path, warm_source: Path, work: Path) -> None:
        self.home, self.warm_source, self.work = home, warm_source, work
        self._sets: dict[str, HermesWorkers] = {}
        self.failed: dict[str, str] = {}

    def get(self, name: str) -> HermesWorkers | None:
        """The named set, started and warmed up; None (and ``failed[name]`` says why) if it cannot run."""
        if name in self.failed:
            return None
        if name not in self._sets:
            mode, concurrency = self.SETS[name]
            workers = HermesWorkers(self.home, mode, concurrency, f"bench-{name.replace('_', '')}")
            try:
                workers.__enter__()
                # Small chunks so that every worker process takes some (and opens its session).
                run_batch(self.warm_source, self.work, workers.env, ["--chunk-size", "16", *workers.args()])
            except Exception as exc:
                workers.__exit__()
                self.failed[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
                return None
            self._sets[name] = workers
        return self._sets[name]

    def close(self) -> None:
        for workers in self._sets.values():
            workers.__exit__()
        self._sets.clear()
