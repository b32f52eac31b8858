"""Session reuse against a container per chunk, measured in one run on the real Docker engine.

``python -m bench.session_vs_run [--image hermes-sandbox:latest] [--rounds 30]`` prints:

- the containers Docker created while one session normalized a 5,000-prompt batch (counted
  from Docker's own events API, by the session's worker label);
- the HostConfig fields that isolate a session container, as ``docker inspect`` shows them;
- the round trip of one 256-prompt chunk: in-process (no container), through the session
  (one long-running container), and through ``docker run --rm -i`` per chunk with the same
  hardening flags (the server's ``--once`` mode); and a 1-prompt chunk through the session,
  which is mostly transport.

Build the image first: ``ops/ensure-images.sh`` (or ``hermes image build``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.sandbox.docker_backend import DockerSession, connect
from hermes_worker.settings import Settings
from hermes_worker.wire import ChunkRequest, Item

REPO = Path(__file__).resolve().parent.parent
HOST_CONFIG_FIELDS = ("NetworkMode", "ReadonlyRootfs", "Tmpfs", "CapDrop", "CapAdd", "SecurityOpt", "Privileged",
                      "PidsLimit", "Memory", "MemorySwap", "NanoCpus", "IpcMode", "Binds", "LogConfig")  # fmt: skip


def prompts(total: int) -> list[str]:
    texts: list[str] = []
    for path in sorted((REPO / "tests" / "golden").glob("*.json")):
        texts += [case["input"] for case in json.loads(path.read_text(encoding="utf-8")) if "input" in case]
    with (REPO / "examples" / "prompts.jsonl").open(encoding="utf-8") as handle:
        texts += [json.loads(line)["prompt"] for line in handle if line.strip()]
    return list(islice(cycle(texts), total))


def chunks(total: int, size: int = 256) -> list[ChunkRequest]:
    texts, spec = prompts(total), resolve_profile("prompt").spec()
    result = []
    for start in range(0, total, size):
        items = [Item(start + n + 1, f"p{start + n}", text) for n, text in enumerate(texts[start : start + size])]
        options = ChunkOptions(max_validation=1, explain=False, max_prompt_bytes=1 << 20)
        result.append(ChunkRequest(start // size, spec, options=options, items=items))
    return result


def timed(action: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(label: str, times: list[float]) -> str:
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else times * 9
    return f"  {label:<37} median {statistics.median(times):9.2f} ms   p90 {q[8]:9.2f} ms   (n={len(times)})"


def docker_run_once(image: str, settings: Settings, request: dict[str, Any]) -> dict[str, Any]:
    command = ["docker", "run", "--rm", "-i", "--network", "none", "--read-only", "--tmpfs",
               "/tmp:rw,noexec,nosuid,nodev,size=16m", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "--pids-limit", str(settings.container_pids), "--memory", settings.container_memory,
               "--cpus", str(settings.container_cpus), "--user", "10001:10001", "--log-driver", "none",
               image, "python3", "-m", "hermes_worker.sandbox.server", "--once"]  # fmt: skip
    done = subprocess.run(command, input=json.dumps(request).encode(), capture_output=True, check=True)
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=None, help="sandbox image (default: HERMES_SANDBOX_IMAGE or latest)")
    parser.add_argument("--rounds", type=int, default=30, help="session round trips to time (docker run: a third)")
    args = parser.parse_args()
    settings = Settings.from_env()
    if args.image:
        settings = settings.with_overrides(sandbox_image=args.image)
    client = connect()
    worker = f"bench-{uuid.uuid4().hex[:8]}"
    batch = chunks(5000)
    chunk = batch[0]

    since = int(time.time()) - 1
    with DockerSession(settings, worker) as session:
        started = time.perf_counter()
        lines = sum(session.run_chunk(c, worker).count for c in batch)
        batch_s = time.perf_counter() - started
        host = client.containers.get(session.container_id).attrs["HostConfig"]
        session_ms = timed(lambda: session.run_chunk(chunk, worker), args.rounds)
        tiny = replace(chunk, items=(chunk.items or [])[:1])
        tiny_ms = timed(lambda: session.run_chunk(tiny, worker), args.rounds)
        digest = session.image_digest
    wanted = {"type": "container", "event": "create", "label": f"hermes.worker={worker}"}
    events = client.events(since=since, until=int(time.time()) + 1, decode=True, filters=wanted)
    created = sum(1 for _ in events)
    local_ms = timed(lambda: process_chunk(chunk, mode="local", worker=worker), args.rounds)
    request = {"op": "chunk", "id": 1, "worker": worker, "image": digest, "payload": chunk.to_payload()}
    run_ms = timed(lambda: docker_run_once(settings.sandbox_image, settings, request), max(3, args.rounds // 3))
    client.close()

    print(f"image {settings.sandbox_image} ({digest[:19]}), Docker host {os.environ.get('DOCKER_HOST', 'default')}")
    print(
        f"5,000-prompt batch through one session: {lines} records in {batch_s:.2f} s, "
        f"containers created (Docker events): {created}"
    )
    print("HostConfig of the session container:")
    for name in HOST_CONFIG_FIELDS:
        print(f"  {name}: {json.dumps(host.get(name))}")
    print(f"One {len(chunk.items or [])}-prompt chunk, round trip:")
    print(summary("in-process (no container)", local_ms))
    print(summary("session (one long-running container)", session_ms))
    print(summary("docker run --rm per chunk", run_ms))
    local, reused, per_run = (statistics.median(t) for t in (local_ms, session_ms, run_ms))
    print(f"  session minus in-process: {reused - local:.2f} ms a chunk (the sandbox's Python may be faster or slower)")
    print(summary("session, 1-prompt chunk (transport)", tiny_ms))
    print(f"  docker run per chunk / session: {per_run / reused:.0f}x")


if __name__ == "__main__":
    main()
