"""Things chaos tests break on purpose, and the harness that checks nothing was lost.

- :class:`RedisInstance`: a private redis-server on its own port and directory, append-only on,
  that a test may stop, kill and start again on the same port; optionally with a password
  and/or TLS (certificates made in the test with ``openssl``).
- the network and Docker faults (a proxy to cut, a private dockerd): :mod:`tests.fixtures_faults`.
- :class:`Cluster`: workers (``hermes worker``) and producers (``hermes batch``) as real
  processes against any of the above; :func:`check_output` counts records, duplicates,
  missing ids, ok and errors; :class:`Report` collects the table the chaos run ends with.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from .fixtures_cluster import WorkerProcess, free_port, missing

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("HERMES_TEST_ARTIFACTS", REPO / "artifacts"))


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# Redis -----------------------------------------------------------------------------------------


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    if shutil.which("openssl") is None:
        missing("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=hermes-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")


@dataclass
class RedisInstance:
    """A redis-server of the test's own that can be stopped and started again on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    tls: TlsFiles | None = None
    appendonly: bool = True
    process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, port: int | None = None) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{port or self.port}/{db}"
        return f"rediss://{auth}127.0.0.1:{port or self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_connect_timeout=1, socket_timeout=10)

    def start(self) -> RedisInstance:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed (apt-get install redis-server)")
        assert binary is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "no"]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        wait_for(answers, 30, f"redis-server on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (the append-only file is flushed); SIGKILL: a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisInstance]]:
    """Start private Redis servers (``factory(password=None, tls=None)``); all stopped afterwards."""
    made: list[RedisInstance] = []

    def make(**options: Any) -> RedisInstance:
        instance = RedisInstance(tmp_path / f"redis-{len(made)}", **options)
        made.append(instance)
        return instance.start()

    yield make
    for instance in made:
        instance.stop(signal.SIGKILL)


# The cluster under test ----------------------------------------------------------------------------


@dataclass
class Producer:
    """A `hermes batch` (or other command) running as a process; stderr goes to a file."""

    process: subprocess.Popen[bytes]
    stderr_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
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


@dataclass
class Cluster:
    """Workers and producers against one broker, with the environment they share."""

    env: dict[str, str]
    client: Callable[[], redis.Redis]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)

    def worker(self, name: str, mode: str = "local", concurrency: int = 1, env: dict[str, str] | None = None,
               expect_tag: str = "local", wait: bool = True) -> WorkerProcess:  # fmt: skip
        log_path = self.tmp / f"worker-{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "hermes_producer", "worker", "--mode", mode, "-c", str(concurrency),
                 "--name", name, "-l", "info"],
                env=dict(self.env, **(env or {})), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(name, process, log_path)
        self.workers.append(worker)
        if wait:
            self.wait_registered(worker, f"{expect_tag}@{name}")
        return worker

    def entry(self, node: str) -> dict[str, Any] | None:
        try:
            raw = self.client().get(f"hermes:worker:{node}")
        except redis.RedisError:
            return None
        return json.loads(raw) if raw else None

    def wait_registered(self, worker: WorkerProcess, node: str, timeout: float = 90) -> None:
        def registered() -> bool:
            if worker.process.poll() is not None:
                pytest.fail(f"worker {node} exited with {worker.process.returncode}:\n{worker.log[-3000:]}")
            return self.entry(node) is not None

        wait_for(registered, timeout, f"worker {node} to register")

    def hermes(self, *args: str, env: dict[str, str] | None = None, name: str = "producer") -> Producer:
        """Start `hermes ARGS...`; standard output is discarded (batches write to files)."""
        stderr_path = self.tmp / f"{name}-{len(self.producers)}.err"
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "hermes_producer", *args],
                env=dict(self.env, **(env or {})), cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        producer = Producer(process, stderr_path)
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
        for worker in self.workers:
            if worker.process.poll() is None:
                try:
                    worker.stop(timeout=20)
                except Exception:
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


@dataclass
class Outcome:
    """What an output file holds, record by record, against the ids that went in."""

    records: list[dict[str, Any]]
    items_in: int
    duplicates: int
    missing: list[Any]
    unexpected: list[Any]
    in_order: bool

    @property
    def ok(self) -> int:
        return sum(1 for r in self.records if "error" not in r)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if "error" in r)

    def error_codes(self) -> Counter[str]:
        return Counter(r["error"]["code"] for r in self.records if "error" in r)

    def by(self, key: str) -> Counter[str]:
        """Records per provenance field (``worker``, ``mode``)."""
        return Counter(str(r["provenance"].get(key)) for r in self.records)

    def assert_exactly_once(self) -> None:
        assert len(self.records) == self.items_in, f"{len(self.records)} records for {self.items_in} items"
        assert self.duplicates == 0, f"{self.duplicates} duplicate ids"
        assert not self.missing, f"{len(self.missing)} ids missing, e.g. {self.missing[:5]}"
        assert not self.unexpected, f"unexpected ids, e.g. {self.unexpected[:5]}"
        assert self.in_order, "records are not in input order"


def read_output(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def check_output(path: Path, expected_ids: list[Any]) -> Outcome:
    records = read_output(path)
    ids = [r.get("id") for r in records]
    counts = Counter(json.dumps(i) for i in ids)
    wanted = {json.dumps(i) for i in expected_ids}
    return Outcome(
        records=records,
        items_in=len(expected_ids),
        duplicates=sum(n - 1 for n in counts.values() if n > 1),
        missing=[i for i in expected_ids if json.dumps(i) not in counts],
        unexpected=[i for i in ids if json.dumps(i) not in wanted],
        in_order=ids == expected_ids,
    )


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


def journal_chunks(output: Path) -> int:
    """How many chunks the running batch has written (lines of its journal after the header)."""
    try:
        return max(0, (output.with_name(output.name + ".partial.journal")).read_text().count("\n") - 1)
    except FileNotFoundError:
        return 0


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size (VmHWM) of a live process, in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of children too)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                todo.append(child)
    return found


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
    records_out: int
    duplicates: int
    errors: int
    recover_s: float | None
    notes: str = ""


class Report:
    """The chaos table: one row per scenario, written to artifacts/chaos-report.md as rows come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[Row] = []

    def add(self, scenario: str, outcome: Outcome | None = None, recover_s: float | None = None, notes: str = "",
            items_in: int | None = None) -> None:  # fmt: skip
        self.rows.append(Row(
            scenario,
            outcome.items_in if outcome else (items_in or 0),
            len(outcome.records) if outcome else 0,
            outcome.duplicates if outcome else 0,
            outcome.errors if outcome else 0,
            None if recover_s is None else round(recover_s, 1),
            notes,
        ))  # fmt: skip
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["| scenario | items in | records out | duplicates | errors | time to recover (s) | notes |",
                 "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in self.rows:
            recover = "-" if r.recover_s is None else f"{r.recover_s:g}"
            lines.append(f"| {r.scenario} | {r.items_in:,} | {r.records_out:,} | {r.duplicates} | {r.errors:,} "
                         f"| {recover} | {r.notes} |")  # fmt: skip
        self.path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def chaos_report() -> Report:
    """The table of this run's chaos scenarios (artifacts/chaos-report.md)."""
    return Report(ARTIFACTS / "chaos-report.md")
