"""What the benchmark ran on: the machine, the load on it, the versions of everything involved."""

from __future__ import annotations

import mmap
import os
import platform
import socket
import statistics
import subprocess
import time
import unicodedata
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["describe_machine", "fresh_page_us", "load_average"]

_PACKAGES = ("hermes-prompts", "ftfy", "celery", "kombu", "redis", "rq", "dramatiq", "docker", "psutil", "py-spy")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other people's work shows up here)."""
    return [round(x, 2) for x in os.getloadavg()]


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _code() -> dict[str, Any]:
    """The commit measured, and which engine/producer/worker files differed from it (a shared tree moves)."""
    repo = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    try:
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "hermes_worker", "hermes_producer"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        status = ""
    return {"commit": commit, "modified": [line[3:] for line in status.splitlines()]}


def fresh_page_us(mib: int = 64, rounds: int = 3) -> float:
    """CPU µs the kernel takes to hand this process one fresh 4 KiB page (a minor fault), median of ``rounds``.

    Each round maps ``mib`` MiB of new anonymous memory and writes a byte into every page, then
    writes them all again (resident by now: no fault) to take the loop's own cost away. Fresh
    pages cost far more in some virtual machines than on bare metal, where the hypervisor backs
    guest memory on first touch; a process that keeps taking fresh pages (a new half-megabyte
    buffer every chunk) pays that on every one.
    """
    page, costs = mmap.PAGESIZE, []
    for _ in range(rounds):
        with mmap.mmap(-1, mib << 20) as memory:
            offsets = range(0, mib << 20, page)
            started = time.process_time()
            for offset in offsets:
                memory[offset] = 1
            first = time.process_time() - started
            started = time.process_time()
            for offset in offsets:
                memory[offset] = 2
            again = time.process_time() - started
        costs.append(max(0.0, first - again) / len(offsets) * 1e6)
    return round(statistics.median(costs), 3)


def describe_machine() -> dict[str, Any]:
    """Host, CPU, memory, OS, Python/Unicode and package versions, Redis and Docker versions."""
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "unicode": unicodedata.unidata_version,
        "packages": _versions(),
        "redis_server": _first_line(["redis-server", "--version"]),
        "docker": _first_line(["docker", "version", "--format", "{{.Server.Version}}"]),
        "code": _code(),
        "load_average_start": load_average(),
    }
