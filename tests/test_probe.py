"""The start-up probe against the real engine, and against engines that fail in real ways."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.probe import SELF_TEST_PROMPTS, ProbeResult, probe

from .support.environment import needs_module

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

# Replaces NFC/NFKC by NFD inside the interpreter: the sandbox then answers, but wrongly.
WRONG_ENGINE = (
    "import unicodedata\n_real = unicodedata.normalize\nunicodedata.normalize = lambda form, s: _real('NFD', s)\n"
)


def no_containers_of(client: Any, worker: str) -> bool:
    return not client.containers.list(all=True, filters={"label": f"hermes.worker={worker}"})


def test_docker_up_gives_container_with_details(sandbox_settings: Any, docker_client: Any, worker_id: str) -> None:
    result = probe(sandbox_settings, worker_id)
    assert result.tag == "container", result
    assert result.fix == "" and "passed the self-test" in result.reason
    details = result.details
    assert details["self_test"] == "passed" and details["docker_version"].startswith("20.")
    assert details["image"] == docker_client.images.get(sandbox_settings.sandbox_image).id
    assert set(details["timings_ms"]) == {"engine", "image", "session_start", "self_test", "close"}
    assert details["sandbox_python"].startswith("3.11")
    assert no_containers_of(docker_client, worker_id)


def test_no_daemon_at_docker_host_gives_local(sandbox_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = probe(sandbox_settings)
    assert result == ProbeResult("local", result.reason, result.fix, result.details)
    assert "daemon not running" in result.reason and "/nonexistent/docker.sock" in result.reason
    assert "systemctl start docker" in result.fix


@pytest.fixture
def silent_engine() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: an engine that hangs."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"


def test_an_engine_that_does_not_answer_in_time_gives_local(sandbox_settings: Any, silent_engine: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("DOCKER_HOST", silent_engine)
    result = probe(sandbox_settings.with_overrides(docker_timeout_s=0.5))
    assert result.tag == "local" and "did not answer within 0.5 s" in result.reason, result
    assert result.details["timings_ms"]["engine"] < 3000


PROBE_SCRIPT = """
import json, sys
from pathlib import Path
from hermes_worker.settings import Settings
from hermes_worker.probe import probe
result = probe(Settings(home=Path(sys.argv[1])))
print(json.dumps({"tag": result.tag, "reason": result.reason, "fix": result.fix}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_permission_denied_on_the_socket_gives_local(tmp_path: Path) -> None:
    # Given a Docker socket owned by another user, mode 600, and a process without capabilities
    # (root without CAP_DAC_OVERRIDE is refused like any user outside the docker group)
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        os.chown(path, 65534, 65534)
        path.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")} | {"DOCKER_HOST": f"unix://{path}"}
        # When the probe runs there
        command = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", PROBE_SCRIPT]
        done = subprocess.run([*command, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    # Then it falls back, saying why and what to do
    assert done.returncode == 0, done.stderr
    assert '"tag": "local"' in done.stdout and "permission denied on the Docker socket" in done.stdout
    assert "usermod -aG docker" in done.stdout


def test_missing_image_gives_local(sandbox_settings: Any) -> None:
    result = probe(sandbox_settings.with_overrides(sandbox_image="hermes-sandbox:never-built"))
    assert result.tag == "local" and "hermes-sandbox:never-built is not built" in result.reason
    assert "hermes image build" in result.fix


@pytest.fixture
def wrong_image(docker_client: Any, sandbox_image: Any) -> Iterator[str]:
    """The sandbox image with an interpreter patched to normalize differently."""
    files = {
        "Dockerfile": f"FROM {sandbox_image.tag}\nCOPY sitecustomize.py /opt/hermes/\n",
        "sitecustomize.py": WRONG_ENGINE,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    buffer.seek(0)
    tag = "hermes-sandbox-test:wrong-engine"
    docker_client.images.build(fileobj=buffer, custom_context=True, tag=tag, rm=True, network_mode="none")
    yield tag
    docker_client.images.remove(tag, force=True)


def test_self_test_mismatch_gives_local(sandbox_settings: Any, wrong_image: str, docker_client: Any,
                                        worker_id: str) -> None:  # fmt: skip
    result = probe(sandbox_settings.with_overrides(sandbox_image=wrong_image), worker_id)
    assert result.tag == "local" and result.reason.startswith("sandbox self-test failed"), result
    assert result.details["self_test"].startswith("mismatch") and "hermes image build" in result.fix
    assert no_containers_of(docker_client, worker_id)


def test_dagger_backend_without_cli_gives_local(sandbox_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_module("dagger", reason="dagger-io is not installed (pip install -e '.[dagger]' in the checkout)")
    monkeypatch.delenv("_EXPERIMENTAL_DAGGER_CLI_BIN", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    result = probe(sandbox_settings.with_overrides(container_backend="dagger"))
    assert result.tag == "local" and "no Dagger CLI" in result.reason and result.fix


def test_the_self_test_covers_the_tricky_strings() -> None:
    joined = "".join(SELF_TEST_PROMPTS)
    for needle in ("Ã", "\u200d", "\x1b", "\r\n", "\u2028", "ﬁ", "\ud800", "\x00"):
        assert needle in joined
