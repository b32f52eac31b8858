"""Chunk requests the sandbox tests feed: the golden cases, the examples, and made-up texts."""

from __future__ import annotations

import json
from itertools import cycle, islice
from typing import Any

from hermes_worker.contract import PAYLOAD_VERSION
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.sandbox.session import SandboxSession
from hermes_worker.wire import ChunkRequest, ChunkResult

from .environment import EXAMPLES, REPO

GOLDEN = REPO / "tests" / "golden"


def golden_inputs() -> list[str]:
    """Every input string of the golden files (or of examples/prompts.jsonl when there are none)."""
    texts: list[str] = []
    for path in sorted(GOLDEN.glob("*.json")):
        texts += [case["input"] for case in json.loads(path.read_text(encoding="utf-8")) if "input" in case]
    if not texts:
        with (EXAMPLES / "prompts.jsonl").open(encoding="utf-8") as handle:
            texts = [json.loads(line)["prompt"] for line in handle if line.strip()]
    return texts


def golden_chunks() -> list[dict[str, Any]]:
    """One chunk per golden profile and per golden step (a one-step profile), explained."""
    by_profile: dict[str, list[str]] = {}
    for path in sorted(GOLDEN.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            if "profile" in case:
                by_profile.setdefault(json.dumps(resolve_profile(case["profile"]).spec()), []).append(case["input"])
            elif "step" in case:
                spec = {"name": "only-" + case["step"].replace("_", "-"), "steps": [case["step"]]}
                by_profile.setdefault(json.dumps(spec), []).append(case["input"])
    if not by_profile:
        by_profile[json.dumps(resolve_profile("prompt").spec())] = golden_inputs()
    return [chunk(texts, profile=json.loads(spec), explain=True) for spec, texts in by_profile.items()]


def chunk(texts: list[Any], *, start: int = 1, number: int = 0, profile: dict[str, Any] | None = None,
          explain: bool = False) -> dict[str, Any]:  # fmt: skip
    """A chunk request with one item per text; lines and ids count from ``start``."""
    items = [[n, f"p{n}", text, None] for n, text in enumerate(texts, start)]
    spec = profile or resolve_profile("prompt").spec()
    return {"v": PAYLOAD_VERSION, "chunk": number, "profile": spec, "max_validation": 1,
            "explain": explain, "max_prompt_bytes": 1 << 20, "items": items}  # fmt: skip


def batch_chunks(total: int, size: int = 256) -> list[dict[str, Any]]:
    """``total`` prompts (the golden inputs, over and over) in chunks of ``size``."""
    texts = list(islice(cycle(golden_inputs()), total))
    return [chunk(texts[i : i + size], start=i + 1, number=i // size) for i in range(0, total, size)]


def run(session: SandboxSession, payload: dict[str, Any]) -> ChunkResult:
    """``payload`` (an encoded request, as the fixtures build them) run in ``session`` for worker w1."""
    return session.run_chunk(ChunkRequest.from_payload(payload), "w1")


def locally(payload: dict[str, Any]) -> ChunkResult:
    return process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="w1")


def records(result: ChunkResult) -> list[dict[str, Any]]:
    """A result's records without provenance (which says where they ran, and so differs)."""
    return [{k: v for k, v in json.loads(line).items() if k != "provenance"} for line in result.record_lines()]
