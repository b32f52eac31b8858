"""Profiler evidence for the report: where the CPU goes, from py-spy samples and cProfile.

- :func:`pyspy_batch` runs one ``hermes batch`` over the cluster with py-spy sampling the
  producer (started under py-spy) and every worker process (attached, ``--subprocesses``), and
  sums the samples by package and by function (self time, the innermost frame).
- :func:`cprofile_engine` runs ``normalize`` over prompts under cProfile (functions by own time).
"""

from __future__ import annotations

import cProfile
import pstats
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from hermes_worker.engine import normalize, resolve_profile

from .hermes_runs import HermesWorkers, batch_command
from .infra import stop

__all__ = ["available", "cprofile_engine", "pyspy_batch", "summarize_raw"]

# Inclusive time under these frames (a sample may count for several).
_AREAS = (
    ("process_chunk (", "process_chunk: engine + record encoding"),
    ("normalize (", "engine normalize()"),
    ("Publisher.publish (", "worker: publish start notice + result to Redis"),
    ("Producer._publish (", "kombu: publish a message"),
    ("send_offset (", "Celery prefork: payload piped to the child"),
    ("CeleryExecutor.map_ordered (", "producer: executor loop (send, read results)"),
    ("ChunkTransport.send (", "producer: send_task"),
    ("decode_entry (", "producer: decode results"),
    ("summarize (", "producer: argsrepr summary (sha256 of prompts)"),
    ("read_chunks (", "producer: read + split input"),
    ("items_from_text (", "worker: parse input lines"),
    ("guard_duplicates (", "producer: duplicate-id guard"),
    ("SeenIds._spill_if_full (", "producer: duplicate-id guard moving fingerprints to disk"),
)
_ROOT = str(Path(__file__).resolve().parent.parent) + "/"  # this checkout, wherever it is
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None


def _package(path: str) -> str:
    """A short owner for a source file: hermes_worker.engine, celery, kombu, json, redis, ..."""
    for marker in ("site-packages/", "dist-packages/", _ROOT, "/lib/python3.11/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            parts = rest.split("/")
            if parts[0] in {"hermes_worker", "hermes_producer"} and len(parts) > 2:
                return f"{parts[0]}.{parts[1]}"
            return parts[0].removesuffix(".py")
    return path.rsplit("/", 1)[-1] or "?"


def summarize_raw(raw: Path, top: int = 12) -> dict[str, Any]:
    """Self samples by package and by function from py-spy's ``--format raw`` output."""
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = startup = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if any("<frozen importlib" in f for f in frames):
            startup += count  # imports at start-up: paid once per process, not per prompt
            continue
        total += count
        match = _FRAME.match(frames[-1])
        func, path = (match["func"], match["file"]) if match else (frames[-1], "?")
        package = _package(path)
        by_package[package] += count
        by_function[f"{package}:{func}"] += count
        for marker, area in _AREAS:
            if any(marker in f for f in frames):
                by_area[area] += count

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(n / max(1, total), 3)] for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "startup_import_samples": startup,
        "inclusive": {area: round(n / max(1, total), 3) for area, n in by_area.most_common()},
        "by_package": shares(by_package),
        "by_function": shares(by_function),
    }


def pyspy_batch(workers: HermesWorkers, source: Path, work: Path, args: list[str], rate: int = 250) -> dict[str, Any]:
    """One profiled ``hermes batch`` on ``workers``: producer and worker samples summarized."""
    assert workers.process is not None
    producer_raw, worker_raw = work / "producer.raw", work / "workers.raw"
    attach = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(workers.process.pid),
            "--subprocesses",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "-o",
            str(worker_raw),
            "--nonblocking",
            "--full-filenames",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    command = [
        "py-spy",
        "record",
        "--rate",
        str(rate),
        "--format",
        "raw",
        "-o",
        str(producer_raw),
        "--nonblocking",
        "--full-filenames",
        "--gil",
        "--",
        *batch_command(source, work / "p.jsonl", *args),
    ]
    try:
        subprocess.run(command, env=workers.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    finally:
        attach.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
        try:
            attach.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop(attach)
    found = {}
    for name, raw in (("producer", producer_raw), ("workers", worker_raw)):
        found[name] = summarize_raw(raw) if raw.exists() else {"error": "py-spy wrote nothing"}
    return found


def cprofile_engine(texts: list[str], profile_name: str = "prompt", top: int = 10) -> list[list[Any]]:
    """``normalize`` over ``texts`` under cProfile: the functions with the most own time, as shares."""
    profile = resolve_profile(profile_name)
    profiler = cProfile.Profile()
    profiler.enable()
    for text in texts:
        normalize(text, profile)
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [
        [f"{Path(file).name}:{line}({func})", calls, round(own / total, 3), round(cumulative / total, 3)]
        for (file, line, func), (_prim, calls, own, cumulative, _callers) in rows
    ]
