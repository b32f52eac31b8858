"""``python -m bench.dashboard``: ops/grafana/hermes.json over a real cluster, drawn as docs/dashboard.png.

Grafana cannot be installed here (it is neither in Debian nor on PyPI, and AGPL), so this draws
the dashboard's own panels with matplotlib (:mod:`bench.panels`) from real Prometheus data:

1. a private ``redis-server``, ``hermes worker``s, ``hermes metrics --port`` (the cluster
   exporter), and Debian's ``prometheus`` scraping it every second, with ops/prometheus/alerts.yml;
2. a scenario: a batch with ``--isolation auto`` and no container worker (it falls back to local
   workers), a worker killed mid-batch (its chunks are sent again), a third worker joining; then,
   with ``--docker``, a container worker and two batches at once, one in containers whose sandbox
   containers are killed twice (session restarts), one on local workers; inputs with error records;
3. every panel's queries asked of Prometheus' HTTP API over the run, as Grafana would (with
   ``$__rate_interval`` = 10 s), drawn where the dashboard places them; the alerts firing at the end
   in the title. ``OUT.json`` beside the picture says how many series each panel got.

Takes ``--seconds`` (default 150) plus start-up. Leaves nothing running: its processes are stopped and the
sandbox containers it started (labelled with its own deployment) removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .infra import free_port, stop
from .panels import Prometheus, render

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "dashboard.png"


class Run:
    """The processes of one rendering, in a scratch directory; everything is stopped on exit."""

    def __init__(self, scratch: Path, sandbox_image: str) -> None:
        self.dir = scratch
        self.deployment = f"dashboard-{uuid.uuid4().hex[:8]}"
        self.redis_port, self.metrics_port, self.prometheus_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
        self.env.update(
            HERMES_HOME=str(scratch / "home"), HERMES_BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            HERMES_HEARTBEAT="1", HERMES_DEPLOYMENT=self.deployment, HERMES_SANDBOX_IMAGE=sandbox_image,
            HERMES_LOG_LEVEL="WARNING", PYTHONPATH=str(REPO),
        )  # fmt: skip
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(args, env=self.env, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        self.processes.append(process)
        return process

    def hermes(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.start(name, sys.executable, "-m", "hermes_producer", *args)

    def worker(self, name: str, mode: str = "local") -> subprocess.Popen[bytes]:
        return self.hermes(f"worker-{name}", "worker", "--name", name, "--mode", mode, "-c", "1")

    def services(self) -> Prometheus:
        """Redis, the exporter and Prometheus (scraping every second, evaluating alerts.yml), all answering."""
        self.start("redis", "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.dir))  # fmt: skip
        _wait(lambda: _answers(["redis-cli", "-p", str(self.redis_port), "ping"]), "redis-server")
        self.hermes("metrics", "metrics", "--port", str(self.metrics_port))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(REPO / "ops" / "prometheus" / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "hermes", "static_configs": [{"targets": [f"127.0.0.1:{self.metrics_port}"]}]}
            ],
        }  # fmt: skip
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.start("prometheus", "prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
                   f"--storage.tsdb.path={self.dir / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{self.prometheus_port}")  # fmt: skip
        prometheus = Prometheus(f"http://127.0.0.1:{self.prometheus_port}")
        _wait(prometheus.ready, "Prometheus")
        return prometheus

    def registered(self, node: str) -> bool:
        return _answers(["redis-cli", "-p", str(self.redis_port), "exists", f"hermes:worker:{node}"], b"1")

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process, timeout=30)
        if shutil.which("docker"):  # the sandbox containers of this run's workers, and only those
            found = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=hermes.deployment={self.deployment}"],
                                   capture_output=True, text=True, check=False).stdout.split()  # fmt: skip
            if found:
                subprocess.run(["docker", "rm", "-f", *found], capture_output=True, check=False)


def _answers(command: list[str], expected: bytes | None = None) -> bool:
    done = subprocess.run(command, capture_output=True, check=False)
    return done.returncode == 0 and (expected is None or done.stdout.strip() == expected)


def _wait(ready: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.dashboard: {what} did not come up within {timeout:.0f} s")
        time.sleep(0.3)


def make_input(path: Path, lines: int, every: int, bad: str) -> Path:
    """``lines`` JSONL prompts in need of cleaning; every ``every``-th line is ``bad`` instead."""
    with path.open("w", encoding="utf-8") as out:
        for n in range(lines):
            prompt = f"The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.  {n}\u00a0\u00a0cafe\u0301 ﬁle"
            out.write(bad if n % every == every - 1 else json.dumps({"id": n, "prompt": prompt}) + "\n")
    return path


def scenario(run: Run, seconds: float, docker: bool) -> float:
    """Drive the cluster for about ``seconds``; the time (Unix) at which both batches of phase 2 ran."""
    phase = seconds / 2
    run.worker("w1")
    doomed = run.worker("w2")
    _wait(lambda: run.registered("local@w1") and run.registered("local@w2"), "the local workers")
    big = make_input(run.dir / "prompts.jsonl", 400_000, 97, '{"prompt": ""}\n')
    odd = make_input(run.dir / "mixed.jsonl", 400_000, 61, "not json\n")
    started = time.monotonic()
    first = run.hermes("batch-auto", "batch", big.name, "-o", "auto.jsonl", "--isolation", "auto",
                       "--chunk-size", "512")  # fmt: skip
    time.sleep(0.3 * phase)
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its pool: its chunks are sent again
    time.sleep(0.2 * phase)
    run.worker("w3")
    if docker:
        run.worker("c1", mode="container")
        _wait(lambda: run.registered("container@c1"), "the container worker", timeout=120)
    time.sleep(max(0.0, phase - (time.monotonic() - started)))
    first.send_signal(signal.SIGINT)
    isolation = "container" if docker else "local"
    second = run.hermes("batch-second", "batch", odd.name, "-o", "second.jsonl", "--isolation", isolation,
                        "--chunk-size", "512")  # fmt: skip
    third = run.hermes("batch-third", "batch", big.name, "-o", "third.jsonl", "--isolation", "local",
                       "--chunk-size", "256")  # fmt: skip
    for share in (0.3, 0.3):
        time.sleep(share * phase)
        if docker:  # a sandbox container dies mid-chunk: its worker makes a new session
            found = subprocess.run(["docker", "ps", "-q", "--filter", f"label=hermes.deployment={run.deployment}"],
                                   capture_output=True, text=True, check=False).stdout.split()  # fmt: skip
            subprocess.run(["docker", "kill", *found[:1]], capture_output=True, check=False)
    time.sleep(0.3 * phase)
    snapshot = time.time()
    time.sleep(0.1 * phase)
    for batch in (second, third):
        batch.send_signal(signal.SIGINT)
    time.sleep(4)  # the last scrapes
    return snapshot


@contextlib.contextmanager
def cluster(keep: Path | None, sandbox_image: str) -> Iterator[Run]:
    scratch = keep or Path(tempfile.mkdtemp(prefix="hermes-dashboard-"))
    scratch.mkdir(parents=True, exist_ok=True)
    run = Run(scratch, sandbox_image)
    try:
        yield run
    finally:
        run.close()
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the picture (default docs/dashboard.png)")
    parser.add_argument("--seconds", type=float, default=150.0, help="how long the scenario runs (default 150)")
    parser.add_argument("--docker", action="store_true", help="add a container worker, and kill its sandboxes")
    parser.add_argument("--sandbox-image", default=os.environ.get("HERMES_SANDBOX_IMAGE", "hermes-sandbox:latest"))
    parser.add_argument("--keep", type=Path, help="keep the processes' logs and data in this directory")
    args = parser.parse_args(argv)
    for tool in ("redis-server", "redis-cli", "prometheus"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install redis-server prometheus)")
    with cluster(args.keep, args.sandbox_image) as run:
        prometheus = run.services()
        # The counters' zeros scraped before anything counts: an alert on increase() sees a
        # series that first appears at 1 as no increase at all.
        _wait(lambda: bool(prometheus.query('hermes_fallbacks_total{kind="local_instead_of_container"}', time.time())),
              "Prometheus to scrape the counters at 0", timeout=60)  # fmt: skip
        begin = time.time()
        snapshot = scenario(run, args.seconds, args.docker)
        summary = render(prometheus, REPO / "ops" / "grafana" / "hermes.json", args.out, begin, time.time(), snapshot)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"bench.dashboard: {args.out} ({summary['seconds']:.0f} s of data, alerts: {summary['alerts'] or 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
