"""Things chaos tests break on purpose, and the harness that checks nothing was lost.

- :func:`redis_factory`: private redis-servers (:class:`~tests.support.redis_server.RedisServer`,
  append-only on) that a test may stop, kill, pause and start again on the same port;
  optionally with a password and/or TLS (certificates made in the test with ``openssl``).
- the network and Docker faults (a proxy to cut, a private dockerd): :mod:`tests.fixtures_faults`.
- :class:`Cluster`: workers (``hermes worker``) and producers (``hermes batch``) as real
  processes against any of the above (on other hosts too: ``prefix``); every scenario checks its
  output with the checker (:mod:`tests.support.checker`), and :class:`Report` collects the table
  the chaos run ends with, one row per scenario, with the checker's counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from .support.checker import Verdict
from .support.environment import ARTIFACTS
from .support.inputs import journal_chunks as journal_chunks  # the chaos tests import it from here
from .support.processes import (
    Producer,
    WorkerProcess,
    descendants,
    registry_entry,
    start_hermes,
    start_worker_process,
    wait_registered,
    worker_options,
)
from .support.redis_server import RedisServer, SentinelGroup
from .support.redis_server import make_tls_files as make_tls_files  # the chaos tests import it from here
from .support.waiting import wait_until

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """:func:`~tests.support.waiting.wait_until` with the argument order the chaos tests were written with."""
    return wait_until(condition, timeout, interval, what)


# Redis -----------------------------------------------------------------------------------------


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private Redis servers (``factory(password=None, tls=None, appendonly=True)``),
    append-only unless told otherwise; all killed afterwards."""
    made: list[RedisServer] = []

    def make(**options: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(made)}", **{"appendonly": True, **options})
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.kill()


@pytest.fixture
def sentinel_factory(tmp_path: Path) -> Iterator[Callable[..., SentinelGroup]]:
    """Start private Sentinel groups (``factory(password=None, sentinel_password=None, settle=True)``):
    a primary, a replica and three sentinels each; all stopped afterwards."""
    made: list[SentinelGroup] = []

    def make(settle: bool = True, **options: Any) -> SentinelGroup:
        group = SentinelGroup(tmp_path / f"sentinel-group-{len(made)}", **options)
        made.append(group)
        return group.start(settle=settle)

    yield make
    for group in made:
        group.stop()


@pytest.fixture
def container_env(sandbox_image: Any) -> dict[str, str]:
    """The environment a container worker of the chaos tests needs: this run's sandbox image."""
    return {"HERMES_SANDBOX_IMAGE": sandbox_image.tag}


# The cluster under test ----------------------------------------------------------------------------


@dataclass
class Cluster:
    """Workers and producers against one broker, with the environment they share."""

    env: dict[str, str]
    client: Callable[[], redis.Redis]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)

    def worker(self, name: str, mode: str = "local", concurrency: int = 1, env: dict[str, str] | None = None,
               expect_tag: str = "local", wait: bool = True, prefix: Sequence[str] = ()) -> WorkerProcess:  # fmt: skip
        """Start ``hermes worker`` (through ``prefix``: on another host); by default wait until it serves."""
        worker = start_worker_process(dict(self.env, **(env or {})), self.tmp / f"worker-{name}.log", name,
                                      *worker_options(mode, concurrency), prefix=prefix)  # fmt: skip
        self.workers.append(worker)
        if wait:
            self.wait_registered(worker, f"{expect_tag}@{name}")
        return worker

    def entry(self, node: str) -> dict[str, Any] | None:
        try:
            return registry_entry(self.client(), node)
        except redis.RedisError:
            return None

    def wait_registered(self, worker: WorkerProcess, node: str, timeout: float = 90) -> None:
        wait_registered(worker, node, self.client, timeout)

    def hermes(self, *args: str, env: dict[str, str] | None = None, name: str = "producer", stdin: Any = None,
               prefix: Sequence[str] = ()) -> Producer:  # fmt: skip
        """Start `hermes ARGS...` (through ``prefix``: on another host); standard output is discarded
        (batches write to files).

        ``stdin=subprocess.PIPE``: the test feeds its standard input (``producer.process.stdin``).
        """
        stderr_path = self.tmp / f"{name}-{len(self.producers)}.err"
        producer = start_hermes(list(args), dict(self.env, **(env or {})), self.tmp, stderr_path, stdin=stdin,
                                prefix=prefix)  # fmt: skip
        self.producers.append(producer)
        return producer

    def logged_at(self, event: str, text: str) -> float | None:
        """When (epoch seconds) a producer first logged ``event`` with ``text`` in its message."""
        path = Path(self.env["HERMES_HOME"]) / "log" / "hermes.log"
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            record = json.loads(line)
            if record.get("event") == event and text in record.get("message", ""):
                stamp = record["ts"].replace("Z", "+00:00")
                return datetime.fromisoformat(stamp).timestamp()
        return None

    def logged(self, text: str) -> int:
        """How many records of the shared Hermes log (producers and workers) contain ``text``."""
        path = Path(self.env["HERMES_HOME"]) / "log" / "hermes.log"
        return path.read_text(encoding="utf-8").count(text) if path.exists() else 0

    def stop_all(self) -> None:
        for producer in self.producers:
            if producer.process.poll() is None:
                producer.kill()
        running = [worker for worker in self.workers if worker.process.poll() is None]
        for worker in running:  # all at once: each warm shutdown takes a second or two
            with contextlib.suppress(OSError):
                worker.process.send_signal(signal.SIGTERM)
        for worker in running:
            try:
                worker.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()


@pytest.fixture
def cluster_factory(hermes_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``factory(broker_url, client)``: a Cluster on that broker; its processes are stopped afterwards."""
    made: list[Cluster] = []

    def make(broker_url: str, client: Callable[[], redis.Redis], **env: str) -> Cluster:
        full = dict(hermes_env, HERMES_BROKER_URL=broker_url, HERMES_HEARTBEAT="1", HERMES_CONCURRENCY="1",
                    HERMES_ISOLATION="auto")  # fmt: skip
        full.update(env)
        cluster = Cluster(full, client, tmp_path)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()


# Checking output -------------------------------------------------------------------------------


def read_output(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


DEFAULT_PROMPTS = [
    "cafÃ©  au lait",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "ﬁrst\u200b line\r\n",
    "plain prompt",
    "  indented\tcode()  ",
    "日本語のテキスト",
    "family \U0001f469\u200d\U0001f467",
]


def write_prompts(path: Path, count: int, prompts: Iterable[str] | None = None, prefix: str = "p") -> list[str]:
    """``count`` JSONL items with ids ``p0``, ``p1``, ... cycling through ``prompts``; returns the ids."""
    texts = list(prompts or DEFAULT_PROMPTS)
    ids = [f"{prefix}{n}" for n in range(count)]
    with path.open("w", encoding="utf-8") as handle:
        for n, item_id in enumerate(ids):
            handle.write(json.dumps({"id": item_id, "prompt": f"{texts[n % len(texts)]} #{n}"}, ensure_ascii=False))
            handle.write("\n")
    return ids


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size (VmHWM) of a live process, in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler(threading.Thread):
    """Samples the peak RSS of processes (and their descendants) until stopped; keeps the maximum."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peaks: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            self.sample()
            self._stopped.wait(0.1)

    def sample(self) -> None:
        for label, pid in self.pids.items():
            peak = max([peak_rss_mb(pid), *(peak_rss_mb(child) for child in descendants(pid))])
            self.peaks[label] = max(self.peaks[label], peak)

    def stop(self) -> dict[str, float]:
        self._stopped.set()
        self.join(timeout=5)
        return {label: round(mb, 1) for label, mb in self.peaks.items()}


# The report ------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    items_in: int
    counts: tuple[int, int, int, int, int, int] | None  # records out, lost, duplicated, unexpected, leftovers, errors
    recover_s: float | None
    notes: str = ""


class Report:
    """The chaos table: one row per scenario, written to artifacts/chaos-report.md as rows come.

    A row's counts are the checker's (:class:`~tests.support.checker.Verdict`): lost, duplicated
    and unexpected records, and what the batch left in Redis; ``errors`` are error records (each
    still the one record of its line).

    Under pytest-xdist each worker process has a Report of its own: each keeps its rows in a file
    of this run (``PYTEST_XDIST_TESTRUNUID``), and the table is written from all of them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[Row] = []
        run, worker = os.environ.get("PYTEST_XDIST_TESTRUNUID"), os.environ.get("PYTEST_XDIST_WORKER")
        self._mine = path.parent / f".chaos-rows-{run}-{worker}.json" if run and worker else None

    def add(self, scenario: str, verdict: Verdict | None = None, recover_s: float | None = None, notes: str = "",
            items_in: int | None = None) -> None:  # fmt: skip
        counts = None if verdict is None else (
            verdict.records_out, len(verdict.lost), verdict.duplicated, len(verdict.unexpected),
            sum(verdict.leftovers.values()), verdict.errors)  # fmt: skip
        items = verdict.items_in if verdict is not None else (items_in or 0)
        self.rows.append(Row(scenario, items, counts, None if recover_s is None else round(recover_s, 1), notes))
        self.write()

    def add_verdict(self, scenario: str, verdict: Verdict, recover_s: float | None, notes: str = "") -> None:
        """:meth:`add`, for a scenario that always has the checker's verdict."""
        self.add(scenario, verdict, recover_s, notes)

    def _all_rows(self) -> list[Row]:
        """This process' rows, and those the run's other worker processes have written."""
        if self._mine is None:
            return self.rows
        partial = self._mine.with_suffix(".part")  # renamed into place: another process never reads half a file
        partial.write_text(json.dumps([dataclasses.asdict(row) for row in self.rows]), encoding="utf-8")
        partial.replace(self._mine)
        rows = []
        for kept in sorted(self._mine.parent.glob(self._mine.name.rsplit("-", 1)[0] + "-*.json")):
            rows += [Row(**row) for row in json.loads(kept.read_text(encoding="utf-8"))]
        return rows

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["| scenario | items in | records out | lost | duplicated | unexpected | leftovers | errors "
                 "| time to recover (s) | notes |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in self._all_rows():
            recover = "-" if r.recover_s is None else f"{r.recover_s:g}"
            counts = " | ".join(f"{n:,}" for n in r.counts) if r.counts else " | ".join(["-"] * 6)
            lines.append(f"| {r.scenario} | {r.items_in:,} | {counts} | {recover} | {r.notes} |")
        self.path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# One table for the whole run: each chaos module imports the fixture, and pytest would give each
# importing module a session fixture of its own, each rewriting the file with its rows alone.
_REPORTS: dict[Path, Report] = {}


@pytest.fixture(scope="session")
def chaos_report() -> Report:
    """The table of this run's chaos scenarios (artifacts/chaos-report.md), shared by every module."""
    path = ARTIFACTS / "chaos-report.md"
    return _REPORTS.setdefault(path, Report(path))
