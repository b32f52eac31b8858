"""End-to-end throughput: in-process `hermes batch` versus the same batch over local Celery workers.

Measured in one run, on one input file, with a private Redis:

    python -m bench.e2e_local INPUT.jsonl [--profile prompt] [--repeat 3]

Prints prompts/s for: in-process with 1 process, in-process with every core, and Celery with
one local worker of 1 process and of 2 processes; each figure is the median of ``--repeat``
runs, and ratios are to the in-process figure with the same number of processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from .infra import wait_serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_batch(src: Path, env: dict[str, str], *args: str) -> float:
    out = Path(tempfile.mkdtemp()) / "out.jsonl"
    summary = out.with_suffix(".summary.json")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hermes_producer", "-q", "batch", str(src), "-o", str(out),
                    "--summary-json", str(summary), *args], env=env, check=False)
    elapsed = time.perf_counter() - started
    report = json.loads(summary.read_text())
    shutil.rmtree(out.parent)
    return float(report["total"]) / elapsed


def start_worker(env: dict[str, str], name: str, concurrency: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "hermes_producer", "worker", "--mode", "local", "-c",
                                str(concurrency), "--name", name, "-l", "warning"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(redis.Redis.from_url(env["HERMES_BROKER_URL"]), f"local@{name}", process, 60, f"worker {name}")
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path)
    parser.add_argument("--profile", default="prompt")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-size", default=None)
    parser.add_argument("--json", dest="json_out", type=Path, default=None)
    options = parser.parse_args()

    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    home = tempfile.mkdtemp()
    base = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    base.update(HERMES_HOME=home, HERMES_LOG_LEVEL="INFO")
    no_broker = dict(base, HERMES_BROKER_URL="redis://127.0.0.1:1/0")
    cluster = dict(base, HERMES_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    common = ["--profile", options.profile] + (["--chunk-size", options.chunk_size] if options.chunk_size else [])
    cores = os.cpu_count() or 1

    def median(env: dict[str, str], *args: str) -> float:
        return statistics.median(run_batch(options.input, env, *common, *args) for _ in range(options.repeat))

    results: dict[str, float] = {}
    try:
        time.sleep(0.3)
        results["in_process_1"] = median(no_broker, "--processes", "1")
        results[f"in_process_{cores}"] = median(no_broker, "--processes", str(cores))
        for concurrency in (1, 2):
            worker = start_worker(cluster, f"bench{concurrency}", concurrency)
            try:
                results[f"celery_local_{concurrency}"] = median(cluster, "--isolation", "local", "--no-fallback")
            finally:
                worker.terminate()
                worker.wait(timeout=60)
                redis.Redis(port=port).flushall()
    finally:
        server.terminate()
        shutil.rmtree(home, ignore_errors=True)

    lines = sum(1 for _ in options.input.open("rb"))
    print(f"input: {options.input} ({lines:,} lines), profile {options.profile}, median of {options.repeat}")
    for name, rate in results.items():
        print(f"  {name:18} {rate:>10,.0f} prompts/s")
    ratios = {
        "celery_1_vs_in_process_1": results["celery_local_1"] / results["in_process_1"],
        "celery_2_vs_in_process_1x2": results["celery_local_2"] / (2 * results["in_process_1"]),
    }
    for name, ratio in ratios.items():
        print(f"  {name:28} {ratio:.2f}")
    if options.json_out:
        options.json_out.write_text(json.dumps({"rates": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
