"""Session round trip against ``docker run`` per chunk, on corpus chunks (reuses bench.session_vs_run).

One 256-prompt chunk of the corpus (``prompt`` profile): in-process, through one long-running
sandbox session, and through ``docker run --rm -i`` with the same hardening per chunk; a
1-prompt chunk through the session shows the transport alone.
"""

from __future__ import annotations

import statistics
import uuid
from typing import Any

from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.settings import Settings
from hermes_worker.wire import ChunkRequest, Item

from .session_vs_run import docker_run_once, timed

__all__ = ["chunk_request", "session_vs_run"]


def chunk_request(texts: list[str], profile: str = "prompt", number: int = 0) -> ChunkRequest:
    """A contract chunk request holding ``texts``."""
    items = [Item(n + 1, n, text) for n, text in enumerate(texts)]
    spec = resolve_profile(profile).spec()
    return ChunkRequest(
        number, spec, options=ChunkOptions(max_validation=1, explain=False, max_prompt_bytes=1 << 20), items=items
    )


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "n": len(times)}


def session_vs_run(texts: list[str], rounds: int, run_rounds: int) -> dict[str, Any]:
    """Round-trip times (ms) of one chunk: in-process, session, ``docker run`` per chunk."""
    from hermes_worker.sandbox.docker_backend import DockerSession

    settings = Settings.from_env()
    worker = f"bench-{uuid.uuid4().hex[:8]}"
    chunk = chunk_request(texts[:256])
    tiny = chunk_request(texts[:1])
    with DockerSession(settings, worker) as session:
        session.run_chunk(chunk, worker)  # warm: the first call pays for imports inside
        session_ms = timed(lambda: session.run_chunk(chunk, worker), rounds)
        tiny_ms = timed(lambda: session.run_chunk(tiny, worker), rounds)
        digest = session.image_digest
    local_ms = timed(lambda: process_chunk(chunk, mode="local", worker=worker), rounds)
    request = {"op": "chunk", "id": 1, "worker": worker, "image": digest, "payload": chunk.to_payload()}
    run_ms = timed(lambda: docker_run_once(settings.sandbox_image, settings, request), run_rounds)
    rows = {
        "in_process": _stats(local_ms),
        "session": _stats(session_ms),
        "docker_run_per_chunk": _stats(run_ms),
        "session_1_prompt": _stats(tiny_ms),
    }
    session_med, run_med, local_med = (rows[k]["median_ms"] for k in ("session", "docker_run_per_chunk", "in_process"))
    return {
        "chunk_prompts": len(chunk.items or []),
        "image": settings.sandbox_image,
        "rows": rows,
        "session_minus_in_process_ms": round(session_med - local_med, 3),
        "docker_run_over_session": round(run_med / session_med, 1) if session_med else None,
    }
