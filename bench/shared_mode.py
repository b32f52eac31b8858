"""Redis traffic and producer CPU per prompt: `hermes batch` normal vs `--shared` (issue 13 §3).

One private Redis, two local workers (HERMES_SHARED_ROOT = the input's directory), the same
input through both modes in turn. Per prompt: bytes Redis received and sent (INFO stats
``total_net_input_bytes``/``total_net_output_bytes`` deltas), Redis CPU (INFO cpu), the
producer's CPU (user + system of the `hermes batch` process, from ``wait4``), and wall time;
the two outputs are compared (byte for byte but for the worker named in each record's provenance).

    python -m bench.shared_mode --prompts 200000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .e2e_local import start_worker
from .infra import RedisServer, redis_cpu_s, stop


def make_input(path: Path, count: int) -> Path:
    """``count`` JSONL prompts of the examples, cycled, with ids (about 100 bytes a line)."""
    examples = Path(__file__).resolve().parent.parent / "examples" / "prompts.jsonl"
    prompts = [json.loads(line)["prompt"] for line in examples.read_text(encoding="utf-8").split("\n") if line]
    with path.open("w", encoding="utf-8") as handle:
        for n in range(count):
            handle.write(json.dumps({"id": f"p{n}", "prompt": prompts[n % len(prompts)]}, ensure_ascii=False) + "\n")
    return path


def run_mode(server: RedisServer, env: dict[str, str], src: Path, out: Path, *args: str) -> dict[str, Any]:
    client = server.client()
    stats, cpu = client.info("stats"), redis_cpu_s(client)
    started = time.perf_counter()
    command = [sys.executable, "-m", "hermes_producer", "-q", "batch", str(src), "-o", str(out),
               "--isolation", "local", *args]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    after = client.info("stats")
    return {
        "wall_s": wall,
        "producer_cpu_s": usage.ru_utime + usage.ru_stime,
        "redis_in_bytes": after["total_net_input_bytes"] - stats["total_net_input_bytes"],
        "redis_out_bytes": after["total_net_output_bytes"] - stats["total_net_output_bytes"],
        "redis_cpu_s": redis_cpu_s(client) - cpu,
    }


def per_prompt(row: dict[str, Any], prompts: int) -> dict[str, float]:
    return {
        "redis_in_B": row["redis_in_bytes"] / prompts,
        "redis_out_B": row["redis_out_bytes"] / prompts,
        "redis_cpu_us": row["redis_cpu_s"] / prompts * 1e6,
        "producer_cpu_us": row["producer_cpu_s"] / prompts * 1e6,
        "wall_s": row["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", dest="json_out", type=Path, default=None)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hermes-bench-shared-"))
    src = make_input(work / "in.jsonl", options.prompts)
    with RedisServer() as server:
        base = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
        env = dict(base, HERMES_HOME=str(work / "home"), HERMES_BROKER_URL=server.url,
                   HERMES_SHARED_ROOT=str(work), HERMES_LOG_LEVEL="WARNING")  # fmt: skip
        workers = [start_worker(env, f"w{n}", 1) for n in range(options.workers)]
        try:
            rows = {mode: run_mode(server, env, src, work / f"{mode}.jsonl", *extra)
                    for mode, extra in (("normal", ()), ("shared", ("--shared",)))}  # fmt: skip
        finally:
            for worker in workers:
                stop(worker)
    same = [(work / f"{mode}.jsonl").read_bytes() for mode in ("normal", "shared")]
    names = [f'"worker":"local@w{n}"'.encode() for n in range(options.workers)]
    for name in names[1:]:
        same = [data.replace(name, names[0]) for data in same]
    report = {
        "prompts": options.prompts,
        "input_bytes": src.stat().st_size,
        "identical_output": same[0] == same[1],
        "modes": {mode: row | {"per_prompt": per_prompt(row, options.prompts)} for mode, row in rows.items()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if options.json_out is not None:
        options.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
