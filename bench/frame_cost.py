"""CPU per prompt of the container path against the local path, for one or more source trees.

``python -m bench.frame_cost [--tree before=/tmp/old-checkout] [--rounds 20] [--reps 2]`` runs,
for each tree (this checkout is ``after``), a child process with that tree first on
``PYTHONPATH``: it builds (or finds) that tree's content-tagged sandbox image on the offline
base, then times a 1,024-line JSONL text chunk (what ``hermes batch`` sends) two ways:

- local: ``process_chunk`` in the process (the local worker's engine call);
- container: ``DockerSession.run_chunk`` (frame out, the engine in the container, frame back,
  every reply check); CPU = this process (``time.process_time``) + the container's cgroup.

Trees alternate (``--reps`` times) so that both see the same load on a shared machine. Prints
one row per tree: local, host side, container side, container total, and the overhead of the
container path over the local one, in CPU µs per prompt (medians over the reps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .infra import cgroup_cpu
from .session_vs_run import prompts

REPO = Path(__file__).resolve().parent.parent
CHUNK = 1024


def _cgroup_cpu(container_id: str) -> float:
    used = cgroup_cpu(container_id)
    if not used:
        raise SystemExit(f"no cgroup CPU counter found for container {container_id}")
    return used


def child(rounds: int, base: str) -> dict[str, Any]:
    """One tree's figures (runs with that tree on PYTHONPATH)."""
    from hermes_worker.chunk_options import ChunkOptions
    from hermes_worker.engine import resolve_profile
    from hermes_worker.processing import process_chunk
    from hermes_worker.sandbox.docker_backend import DockerSession
    from hermes_worker.sandbox.image import build_image
    from hermes_worker.settings import Settings
    from hermes_worker.wire import ChunkRequest

    lines = [json.dumps({"id": f"p{n}", "prompt": t}, ensure_ascii=False) for n, t in enumerate(prompts(CHUNK))]
    options = ChunkOptions(max_validation=1, explain=False, max_prompt_bytes=1 << 20)
    request = ChunkRequest(0, resolve_profile("prompt").spec(), options=options, text="\n".join(lines), first=1)
    image = build_image(base=base)
    settings = Settings.from_env().with_overrides(sandbox_image=image.tag)
    worker = f"bench-{uuid.uuid4().hex[:8]}"
    process_chunk(request, mode="local", worker=worker)
    started = time.process_time()
    for _ in range(rounds):
        process_chunk(request, mode="local", worker=worker)
    local = time.process_time() - started
    with DockerSession(settings, worker) as session:
        session.run_chunk(request, worker)  # warm: imports inside the container
        cid = str(session.container_id)
        cg, started = _cgroup_cpu(cid), time.process_time()
        for _ in range(rounds):
            assert session.run_chunk(request, worker).count == CHUNK
        host, inside = time.process_time() - started, _cgroup_cpu(cid) - cg
    per = 1e6 / (rounds * CHUNK)
    return {"image": image.tag, "local": local * per, "host": host * per, "container": inside * per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout (repeatable)")
    parser.add_argument("--rounds", type=int, default=20, help="chunks timed per path and child")
    parser.add_argument("--reps", type=int, default=2, help="children per tree, alternating")
    parser.add_argument("--base", default=os.environ.get("HERMES_TEST_BASE_IMAGE", "hermes-base:bookworm"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.rounds, args.base)))
        return
    trees = dict(t.split("=", 1) for t in args.tree) | {"after": str(REPO)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for _ in range(args.reps):
        for name, path in trees.items():
            env = os.environ | {"PYTHONPATH": path}
            # As a module of the tree (its bench/ and hermes_worker/ first on the path): run as a
            # script, the child could not import its own package's helpers.
            command = [sys.executable, "-m", "bench.frame_cost", "--child", "--rounds", str(args.rounds),
                       "--base", args.base]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=path)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {name}: {runs[name][-1]}", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    print(f"CPU µs per prompt ({CHUNK}-line JSONL chunk, prompt profile, medians of {args.reps} x {args.rounds}):")
    print(f"{'tree':<8} {'local':>8} {'host':>8} {'contnr':>8} {'total':>8} {'over local':>11}")
    for name, rows in runs.items():
        local, host, inside = (statistics.median(r[k] for r in rows) for k in ("local", "host", "container"))
        total = host + inside
        print(f"{name:<8} {local:8.1f} {host:8.1f} {inside:8.1f} {total:8.1f} {100 * (total / local - 1):+10.1f}%")


if __name__ == "__main__":
    main()
