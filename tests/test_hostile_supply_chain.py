"""Supply chain: nothing Hermes installs or runs comes from a name anyone could publish, or from
bytes nobody pinned.

- Hermes is not on a package index: the CI example and every message install it from its
  checkout, never ``pip install hermes-prompts`` by name (anyone could upload that name).
- Every ``pip install`` in the CI example and the worker Dockerfile installs hash-locked
  requirements (``--require-hashes``) or a local build with no index; the lock is exactly the
  runtime closure of the tested virtualenv, and it installs and builds Hermes for real.
- Actions are pinned to commit SHAs, third-party images to digests.
- The sandbox image gets its text libraries from site-packages only as pip installed them, and
  the offline base image is debootstrapped with Debian's signatures checked.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support.environment import missing

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "ops" / "ci" / "github-actions.yml"
DOCKERFILE = REPO / "ops" / "worker" / "Dockerfile"
REQUIREMENTS = REPO / "ops" / "worker" / "requirements.txt"
BUILD_REQUIREMENTS = REPO / "ops" / "worker" / "requirements-build.txt"
COMPOSE = REPO / "compose.yaml"
K8S = REPO / "ops" / "k8s"
DIGEST = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
SHA = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}")
OWN_IMAGES = {"hermes-worker"}  # built from this repository (ops/worker/Dockerfile), pinned where pushed


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (continuations joined, split on ;, &&, || and |)."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:  # a line of a here-document (Python code), not a command
                words = part.split()
            if words:
                commands.append(words)
    return commands


_VALUED = {"-r", "--requirement", "-f", "--find-links", "-c", "--constraint"}


def pip_install_problems(script: str) -> list[str]:
    """Every ``pip install`` that could fetch something unpinned from an index, explained."""
    problems = []
    for words in shell_commands(script):
        if not any(w.endswith("pip") or w == "pip3" for w in words[:3]) or "install" not in words:
            continue
        args = words[words.index("install") + 1 :]
        # Targets: the words that are neither options nor the value of one.
        targets = [a for n, a in enumerate(args) if not a.startswith("-") and (n == 0 or args[n - 1] not in _VALUED)]
        command = " ".join(words)
        if "--require-hashes" in args:
            if targets:
                problems.append(f"{command}: hashed install with unhashed targets {targets}")
        elif "--no-index" in args:
            if "--no-deps" not in args:
                problems.append(f"{command}: a local install must not resolve dependencies")
        else:
            problems.append(f"{command}: neither --require-hashes nor --no-index")
    return problems


def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def workflow_steps() -> list[dict[str, Any]]:
    return [step for job in workflow()["jobs"].values() for step in job["steps"]]


def dockerfile_runs() -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]


# Hermes by name --------------------------------------------------------------------------------


def test_nothing_tells_anyone_to_install_hermes_by_name_from_an_index() -> None:
    """No file in the repository says `pip install hermes-prompts...` (a name on an index that is
    not ours); every how-to installs from the checkout."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"pip3?\s+install\b[^\n]*?(?<![\w./-])['\"]?hermes-prompts\b")
    offenders = []
    for name in files:
        path = REPO / name
        if path.suffix in {".png", ".gz", ".whl"} or not path.is_file() or path.resolve() == Path(__file__).resolve():
            continue  # binaries, and this file, which quotes the commands it looks for
        text = path.read_text(encoding="utf-8", errors="replace")
        # A local build installed with --no-index (the worker Dockerfile) looks at no index at all.
        offenders += [f"{name}: {m.group(0)}" for m in pattern.finditer(text) if "--no-index" not in m.group(0)]
    assert offenders == []


def test_the_ci_example_installs_hermes_from_its_checkout_with_locked_dependencies() -> None:
    runs = [step["run"] for step in workflow_steps() if "run" in step]
    assert all(pip_install_problems(run) == [] for run in runs), [pip_install_problems(r) for r in runs]
    install = next(run for run in runs if "requirements.txt" in run)
    assert "--require-hashes" in install and "ops/worker/requirements.txt" in install
    assert "--no-index ./.hermes-src" in install
    checkout = [s for s in workflow_steps() if s.get("with", {}).get("path") == ".hermes-src"]
    assert len(checkout) == 1 and checkout[0]["with"]["ref"] == "${{ env.HERMES_REF }}"


def test_pip_install_checks_catch_what_they_should() -> None:
    """The checker itself, on the commands it must refuse and accept."""
    assert pip_install_problems('python -m pip install "hermes-prompts==0.1.0"')
    assert pip_install_problems("pip install -r requirements.txt")
    assert pip_install_problems("pip install --require-hashes -r r.txt ftfy")
    assert pip_install_problems("pip install --no-index ./src")  # would still resolve dependencies
    assert not pip_install_problems("pip install --require-hashes --no-deps -r a.txt -r b.txt")
    assert not pip_install_problems("x && /v/bin/pip install --no-deps --no-index --find-links /d hermes-prompts==1")


def test_every_action_is_pinned_to_a_commit() -> None:
    uses = [step["uses"] for step in workflow_steps() if "uses" in step]
    assert uses and all(SHA.fullmatch(u) for u in uses), uses


# Images ----------------------------------------------------------------------------------------


def compose_images() -> dict[str, str]:
    """The image of every service not built here; ``${VARIABLE:-DEFAULT}`` counts as its default."""
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    images = {name: svc["image"] for name, svc in services.items() if "build" not in svc}
    return {name: re.sub(r"^\$\{[A-Z_]+:-(.+)\}$", r"\1", image) for name, image in images.items()}


def k8s_images() -> dict[str, str]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            spec = ((doc or {}).get("spec") or {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                found[f"{path.name}:{container['name']}"] = container["image"]
    return found


def test_third_party_images_are_pinned_by_digest() -> None:
    services = {name: svc["image"] for name, svc in workflow()["jobs"]["clean"]["services"].items()}
    images = compose_images() | k8s_images() | services
    unpinned = {where: im for where, im in images.items() if im not in OWN_IMAGES and not DIGEST.fullmatch(im)}
    assert len(images) >= 6 and unpinned == {}
    env = workflow()["jobs"]["clean"]["env"]
    assert DIGEST.fullmatch(env["SANDBOX_BASE"])
    build = next(step["run"] for step in workflow_steps() if "image build" in step.get("run", ""))
    assert 'docker pull "$SANDBOX_BASE"' in build


# The worker image ------------------------------------------------------------------------------


def lock_module() -> Any:
    spec = importlib.util.spec_from_file_location("hermes_lock", REPO / "ops" / "worker" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a requirements file; fails on anything but ``name==version``."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        name, sep, version = words[0].partition("==")
        assert sep and version, f"{path.name}: {words[0]} is not pinned with =="
        hashes = [w.removeprefix("--hash=sha256:") for w in words[1:] if w.startswith("--hash=sha256:")]
        assert hashes and all(re.fullmatch("[0-9a-f]{64}", h) for h in hashes), f"{name} has no sha256 hash"
        assert len(hashes) == len(words) - 1, f"{name}: only --hash options may follow"
        pins[name.lower()] = (version, hashes)
    return pins


def test_the_worker_image_installs_only_hash_locked_wheels_and_hermes_from_the_checkout() -> None:
    runs = dockerfile_runs()
    assert runs and all(pip_install_problems(run) == [] for run in runs), [pip_install_problems(r) for r in runs]
    text = " ".join(runs)
    assert "--only-binary=:all:" in text and "--require-hashes" in text and "pip check" in text
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert f"hermes-prompts=={version}" in text  # the wheel built from this checkout, nothing else
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert base is not None and DIGEST.fullmatch(base.group(1))


def test_the_lock_is_exactly_the_runtime_closure_of_the_tested_environment() -> None:
    """Every distribution Hermes needs at run time, at the version installed here, and nothing
    else (Hermes itself least of all: it is never fetched)."""
    pins = locked(REQUIREMENTS)
    closure = lock_module().closure()
    assert {name: version for name, (version, _) in pins.items()} == closure
    assert "hermes-prompts" not in pins and {"ftfy", "celery", "redis", "docker"} <= set(pins)
    assert set(locked(BUILD_REQUIREMENTS)) == {"setuptools"}


FROM_PYTHON = """
import sys
import hermes_producer
from hermes_producer import Client, normalize
print(sys.prefix if hermes_producer.__file__.startswith(sys.prefix) else hermes_producer.__file__)
cleaned = normalize("cafÃ©  ", profile="prompt")
print(cleaned.text, cleaned.changed)
with Client(isolation="local", processes=1) as client:
    print([record["text"] for record in client.map(["ﬁrst   line", "a  b"], profile="compact")])
"""


@pytest.mark.slow
def test_the_locked_wheels_install_and_hermes_builds_with_no_index(tmp_path: Path) -> None:
    """The Dockerfile's install steps, for real (outside Docker: the base image needs a registry):
    the locked wheels install with --require-hashes, Hermes builds from a copy of the checkout
    with no index, and `pip check` finds every dependency satisfied."""
    build, venv = tmp_path / "build", tmp_path / "hermes"
    # The new environments must see only what they install: a PYTHONPATH pointing at a checkout
    # (with its hermes_prompts.egg-info) would make pip think Hermes is installed already.
    run = functools.partial(subprocess.run, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    # Environments without a pip of their own, driven by this one's (pip --python): installing pip
    # into each took ~4 s of CPU, and is no step of the Dockerfile's. No bytecode either (half the
    # install's CPU): what is proved is which files install, and that they work.
    for env in (build, venv):
        run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)

    def pip(env: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), *args]

    fetch = ["install", "--quiet", "--no-compile", "--require-hashes", "--no-deps", "--only-binary=:all:"]
    done = run(pip(build, *fetch, "-r", str(BUILD_REQUIREMENTS)), capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and ("NewConnectionError" in done.stderr or "No matching distribution" in done.stderr):
        missing(f"the package index is not reachable: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr
    done = run(pip(venv, *fetch, "-r", str(REQUIREMENTS)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("hermes_worker", "hermes_producer"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    run(pip(build, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir",
            str(src / "dist"), str(src)), check=True, timeout=300)  # fmt: skip
    run(pip(venv, "install", "--quiet", "--no-compile", "--no-deps", "--no-index", "--find-links", str(src / "dist"),
            "hermes-prompts"), check=True, timeout=300)  # fmt: skip
    check = run(pip(venv, "check"), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    user = {"HERMES_HOME": str(tmp_path / "home"), "HERMES_BROKER_URL": "redis://127.0.0.1:1/0",
            "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = run([str(venv / "bin" / "hermes"), "run", "--prompt", "ﬁne", "--isolation", "local", "--json"],
               capture_output=True, text=True, timeout=60, env=user)  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout)["text"] == "fine", done.stderr
    # And from Python, as the README's "From Python" shows (issue 14, "done when" (a)): the
    # installed package, not the checkout (the working directory is elsewhere).
    api = run([str(venv / "bin" / "python"), "-c", FROM_PYTHON], capture_output=True, text=True, timeout=120,
              env=user, cwd=tmp_path)  # fmt: skip
    assert api.returncode == 0, api.stderr
    assert api.stdout.splitlines() == [str(venv), "café True", "['first line', 'a b']"]


# The sandbox image and its base ----------------------------------------------------------------


TAMPERED = """
import sys
from hermes_worker.sandbox.errors import SandboxError
from hermes_worker.sandbox.image import context_files
try:
    files = context_files()
except SandboxError as exc:
    print("REFUSED", exc.reason)
else:
    print("COPIED", files["site/" + sys.argv[1]][-40:])
"""


def _changed_file(dist_name: str) -> str:
    """The file of ``dist_name`` the test changes: ftfy's package module, orjson's compiled one."""
    from importlib import metadata

    files = [entry.as_posix() for entry in metadata.distribution(dist_name).files or ()]
    return next(f for f in files if f.endswith(".so")) if dist_name == "orjson" else f"{dist_name}/__init__.py"


@pytest.mark.parametrize("dist_name", ["ftfy", "orjson"])
def test_a_text_library_changed_after_install_never_reaches_the_sandbox_image(tmp_path: Path, dist_name: str) -> None:
    """Given ftfy (pure Python) or orjson (a compiled module) as pip installed it, then one of its
    files changed on disk, building the sandbox context refuses it (naming the file), where it
    used to copy the changed bytes."""
    from importlib import metadata

    site = tmp_path / "site"
    for name in ("ftfy", "wcwidth", "orjson"):
        for entry in metadata.distribution(name).files or ():
            if entry.as_posix().startswith(".."):
                continue
            target = site / entry.as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(str(entry.locate())), target)
    changed = _changed_file(dist_name)
    env = {"PYTHONPATH": f"{site}:{REPO}", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-c", TAMPERED, changed]
    honest = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert honest.stdout.startswith("COPIED"), honest.stdout + honest.stderr
    with (site / changed).open("ab") as handle:
        handle.write(b"\n# planted\n")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.startswith("REFUSED") and changed in done.stdout, done.stdout + done.stderr


def test_the_offline_base_image_is_debootstrapped_with_debians_signatures_checked() -> None:
    """Regression-proof static check (building it takes a minute and Debian's mirror): the
    Release signature is required (--force-check-gpg) against Debian's keyring, never skipped."""
    script = (REPO / "ops" / "build-base-image.sh").read_text(encoding="utf-8")
    (call,) = [c for c in shell_commands(script) if "debootstrap" in c and "--variant=minbase" in c]
    assert "--force-check-gpg" in call and "--keyring=$KEYRING" in " ".join(call).replace('"', "")
    assert "--no-check-gpg" not in script
    assert "KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg" in script
    assert "debian-archive-keyring" in script.split("apt-get install", 1)[1].splitlines()[0]
