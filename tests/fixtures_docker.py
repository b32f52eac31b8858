"""Fixtures for tests against the real Docker engine (no mocks of Docker anywhere).

A missing engine skips these tests on a developer's machine and fails them in CI (CI=true),
where `.ci/run` is expected to have started it. The ladder: a session-scoped client, the
sandbox image built once per run, settings pointing at it, and a factory of sessions that are
always closed and whose containers are always gone after the test. Below them, the data the
sandbox tests feed: chunks of the golden cases and of the examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.contract import PAYLOAD_VERSION
from hermes_worker.engine import resolve_profile

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
BASE_IMAGE = os.environ.get("HERMES_TEST_BASE_IMAGE", "hermes-base:bookworm")
# This test run's deployment: every container it starts carries it, and every reap or cleanup it
# does looks at nothing else, so runs of other checkouts on the same engine never meet ours.
TEST_DEPLOYMENT = f"test-{uuid.uuid4().hex[:12]}"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs a Docker engine and the sandbox image: {reason}")
    pytest.skip(f"no Docker engine: {reason}")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client of the engine under test; skips (or fails in CI) when none answers."""
    from hermes_worker.sandbox.docker_backend import connect
    from hermes_worker.sandbox.errors import SandboxError

    try:
        client = connect(10.0)
    except SandboxError as exc:
        _unavailable(f"{exc.reason} ({exc.fix})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> Any:
    """The sandbox image of this work tree, built on the offline base (made first if missing)."""
    from hermes_worker.sandbox.errors import SandboxError
    from hermes_worker.sandbox.image import build_image

    if not docker_client.images.list(name=BASE_IMAGE):
        done = subprocess.run(["bash", str(REPO / "ops" / "build-base-image.sh"), BASE_IMAGE],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        if done.returncode != 0:
            _unavailable(f"cannot build the base image {BASE_IMAGE}: {done.stderr.strip()[-400:]}")
    try:
        return build_image(base=BASE_IMAGE)
    except SandboxError as exc:
        _unavailable(f"cannot build the sandbox image: {exc}")


@pytest.fixture
def sandbox_settings(sandbox_image: Any, tmp_path: Path) -> Any:
    """Settings whose sandbox_image is the image built for this run (not hermes-sandbox:latest)."""
    from hermes_worker.settings import Settings

    return Settings(home=tmp_path / "hermes-home", sandbox_image=sandbox_image.tag, chunk_time_limit_s=60.0,
                    deployment=TEST_DEPLOYMENT)  # fmt: skip


@pytest.fixture
def worker_id() -> str:
    """A worker id no other test uses, so label filters see only this test's containers."""
    return f"test-{uuid.uuid4().hex[:12]}"


SessionFactory = Callable[..., Any]


@pytest.fixture
def session_factory(sandbox_settings: Any, worker_id: str, docker_client: Any) -> Iterator[SessionFactory]:
    """Open Docker sessions (``factory(settings=None, test_hooks=False)``); all closed afterwards,
    and the test fails if any of its containers outlived them."""
    from hermes_worker.sandbox.docker_backend import DockerSession, session_filters

    opened: list[Any] = []

    def factory(settings: Any = None, *, test_hooks: bool | str = False, start: bool = True) -> Any:
        session = DockerSession(settings or sandbox_settings, worker_id, test_hooks=test_hooks)
        opened.append(session)
        if start:
            session.start()
        return session

    yield factory
    for session in opened:
        session.close()
    mine = session_filters(TEST_DEPLOYMENT, **{"hermes.worker": worker_id})
    left = docker_client.containers.list(all=True, filters=mine)
    for container in left:
        container.remove(force=True)
    assert not left, f"containers left behind: {[c.id for c in left]}"


# Data ----------------------------------------------------------------------------------------


def golden_inputs() -> list[str]:
    """Every input string of the golden files (or of examples/prompts.jsonl when there are none)."""
    texts: list[str] = []
    for path in sorted(GOLDEN.glob("*.json")):
        texts += [case["input"] for case in json.loads(path.read_text(encoding="utf-8")) if "input" in case]
    if not texts:
        with (REPO / "examples" / "prompts.jsonl").open(encoding="utf-8") as handle:
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


def records(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A result's records without provenance (which says where they ran, and so differs)."""
    return [{k: v for k, v in json.loads(line).items() if k != "provenance"} for line in result["lines"]]
