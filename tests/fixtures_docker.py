"""Fixtures for tests against the real Docker engine (no mocks of Docker anywhere).

A missing engine skips these tests on a developer's machine and fails them in CI (CI=true),
where `.ci/run` is expected to have started it. The ladder: a session-scoped client, the
sandbox image built once per run, settings pointing at it, and a factory of sessions that are
always closed and whose containers are always gone after the test. The chunks the sandbox
tests feed are made by :mod:`tests.support.chunks`.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support.environment import BASE_IMAGE, REPO, TEST_DEPLOYMENT
from .support.fixture_types import SessionFactory


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
