"""Write ops/worker/requirements*.txt: what the worker image installs, exact versions, with hashes.

The worker image installs them with ``pip install --require-hashes --only-binary=:all:``, so a
build gets the very wheels locked here or fails: a new upload under a pinned version, a
compromised mirror or a look-alike package cannot slip in. Run it from the checkout, in the
virtualenv whose versions you tested (the versions are read from it), with the index reachable:

    .venv/bin/python ops/worker/lock.py            # rewrites requirements.txt, requirements-build.txt
    .venv/bin/python ops/worker/lock.py --check    # exit 1 if a file is not what it would write

requirements-build.txt pins the build backend (setuptools) that turns the checkout into a wheel
in the image's build stage; without it, ``pip install .`` would fetch whatever setuptools the
index offers at build time.

Wheels are fetched for CPython 3.11 on linux x86_64 and aarch64 (the image's Python, see
PYTHON_IMAGE in the Dockerfile) with pip's own ``download``, ignoring any local pip configuration
(``--isolated``: the public index only), and every file's sha256 is listed.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
TARGET = HERE / "requirements.txt"
BUILD_TARGET = HERE / "requirements-build.txt"
BUILD_PINS = {"setuptools": "80.9.0"}  # pyproject.toml: requires = ["setuptools>=68"]
PROJECT = "hermes-prompts"
# The Pythons the image is built on: the official python:3.11-slim (the tested virtualenv's patch
# level stands for it) and Debian bookworm's 3.11.2, the base ops/compose-images.sh builds where no
# registry answers. A distribution that only 3.11.2 needs is not installed here: pinned below.
DEBIAN_PYTHON = "3.11.2"
DEBIAN_ONLY_PINS = {"async-timeout": "5.0.1"}  # redis: async-timeout>=4.0.3; python_full_version < "3.11.3"
PLATFORMS = {"x86_64": ("manylinux2014", "manylinux_2_17", "manylinux_2_28"),
             "aarch64": ("manylinux2014", "manylinux_2_17", "manylinux_2_28")}  # fmt: skip


def closure(name: str = PROJECT) -> dict[str, str]:
    """Every distribution ``name`` needs at run time (no extras of its own), with its version here."""
    env = default_environment() | {"python_version": "3.11", "platform_system": "Linux", "sys_platform": "linux"}
    envs = (env, env | {"python_full_version": DEBIAN_PYTHON})
    found: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(name, ())]
    while todo:
        current, extras = todo.pop()
        key = current.lower().replace("_", "-")
        if key in DEBIAN_ONLY_PINS:  # not installed here; it needs nothing itself
            found[key] = DEBIAN_ONLY_PINS[key]
            continue
        dist = metadata.distribution(current)
        key = dist.metadata["Name"].lower().replace("_", "-")
        found[key] = dist.version
        for text in dist.requires or ():
            requirement = Requirement(text)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate(e | {"extra": extra}) for e in envs for extra in ("", *extras)
            )
            child = requirement.name.lower().replace("_", "-")
            if wanted and (child not in found or requirement.extras):
                todo.append((requirement.name, tuple(requirement.extras)))
    found.pop(name, None)  # Hermes itself is installed from the checkout, never from an index
    return dict(sorted(found.items()))


def hashes(pins: dict[str, str]) -> dict[str, list[str]]:
    """sha256 of every wheel the image may install, per distribution."""
    out: dict[str, set[str]] = {name: set() for name in pins}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp, "pins.txt")
        spec.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()), encoding="utf-8")
        for arch, tags in PLATFORMS.items():
            folder = Path(tmp, arch)
            command = [sys.executable, "-m", "pip", "download", "--isolated", "--quiet", "--no-deps",
                       "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                       "--abi", "cp311", "--abi", "abi3", "--abi", "none", "--platform", "any",
                       *(f"--platform={tag}_{arch}" for tag in tags), "-d", str(folder), "-r", str(spec)]  # fmt: skip
            subprocess.run(command, check=True)
            for wheel in folder.glob("*.whl"):
                name = wheel.name.split("-")[0].lower().replace("_", "-")
                match = next(n for n in out if n.replace("-", "_") == name.replace("-", "_"))
                out[match].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
    return {name: sorted(digests) for name, digests in out.items()}


def render(pins: dict[str, str], digests: dict[str, list[str]], what: str) -> str:
    lines = [
        f"# {what}: exact versions, wheels only, with hashes.",
        "# Generated by ops/worker/lock.py from the tested virtualenv; do not edit by hand.",
        "# Installed with: pip install --require-hashes --no-deps --only-binary=:all: -r <this file>",
    ]
    for name, version in pins.items():
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{digest} \\" for digest in digests[name]]
        lines[-1] = lines[-1].removesuffix(" \\")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args()
    pins = closure()
    files = {
        TARGET: render(pins, hashes(pins), "Hermes' runtime dependencies for the worker image"),
        BUILD_TARGET: render(BUILD_PINS, hashes(BUILD_PINS), "The build backend of the worker image's build stage"),
    }
    stale = [path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run ops/worker/lock.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
