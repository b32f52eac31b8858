"""Building the sandbox image with no registry: its context, its tag, its contents, its command."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from hermes_worker import __version__
from hermes_worker.sandbox.errors import ImageMissing
from hermes_worker.sandbox.image import DEFAULT_BASE, DOCKERFILE, build_image, content_tag, context_files

from .support.environment import BASE_IMAGE, REPO


def test_context_holds_the_engine_and_its_text_libraries_only() -> None:
    files = context_files()
    names = set(files)
    expected = {"Dockerfile", "site/ftfy/__init__.py", "site/wcwidth/__init__.py"} | {
        f"site/hermes_worker/{name}" for name in ("sandbox/server.py", "processing.py", "engine/normalize.py")
    }
    assert expected <= names
    # Nothing that talks to Docker, Celery or Redis goes into the sandbox
    assert not {n for n in names if n.endswith(("docker_backend.py", "dagger_backend.py", "image.py", "probe.py",
                                                "tasks.py", "app.py"))}  # fmt: skip
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # Compiled modules only of the accelerators (orjson): not wcwidth's optional C extension
    assert {n.split("/")[1] for n in names if n.endswith(".so")} == {"orjson"}
    for dist in ("ftfy", "wcwidth", "orjson"):
        version = metadata.version(dist)
        assert any(n.startswith(f"site/{dist}-{version}.dist-info/") for n in names), dist


def test_the_sandbox_server_imports_from_the_context_alone(tmp_path: Path) -> None:
    """Every module the server imports is in the image: the context's site, the standard library,
    nothing else (a module that wire.py came to import, missing from the list, broke the image)."""
    for name, data in context_files().items():
        if name.startswith("site/"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); "
            "import hermes_worker.sandbox.server, hermes_worker.wire, hermes_worker.processing")  # fmt: skip
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_content_tag_follows_every_byte_and_the_base() -> None:
    files = context_files()
    tag = content_tag(files, "sha256:base")
    assert tag.startswith(f"hermes-sandbox:{__version__}-") and tag == content_tag(dict(files), "sha256:base")
    assert content_tag(files, "sha256:other") != tag
    assert content_tag(files | {"site/ftfy/__init__.py": files["site/ftfy/__init__.py"] + b"\n"}, "sha256:base") != tag


def test_dockerfile_defaults_to_an_official_slim_python() -> None:
    assert f"ARG BASE={DEFAULT_BASE}" in DOCKERFILE.read_text() and DEFAULT_BASE == "python:3.11-slim"


@pytest.mark.docker
def test_build_is_skipped_when_the_content_tag_exists(sandbox_image: Any, docker_client: Any) -> None:
    again = build_image(base=BASE_IMAGE, tags=("hermes-sandbox-test:extra",))
    try:
        assert again.built is False and again.tag == sandbox_image.tag and again.digest == sandbox_image.digest
        assert docker_client.images.get("hermes-sandbox-test:extra").id == sandbox_image.digest
    finally:
        docker_client.images.remove("hermes-sandbox-test:extra")


@pytest.mark.docker
def test_image_runs_the_host_versions_as_a_non_root_user(sandbox_image: Any, docker_client: Any) -> None:
    image = docker_client.images.get(sandbox_image.tag)
    assert image.attrs["Config"]["User"] == "10001:10001"
    assert image.attrs["Config"]["Cmd"] == ["python3", "-m", "hermes_worker.sandbox.server"]
    code = ("import ftfy, wcwidth, orjson, os; from hermes_worker import fast_json; print(ftfy.__version__, "
            "wcwidth.__version__, orjson.__version__, fast_json.ACCELERATED, os.getuid())")  # fmt: skip
    out = docker_client.containers.run(sandbox_image.tag, ["python3", "-c", code], network_mode="none", remove=True)
    import ftfy
    import orjson
    import wcwidth

    # orjson's compiled module loads there: the base's Python is the one it was built for
    assert out.decode().split() == [ftfy.__version__, wcwidth.__version__, orjson.__version__, "True", "10001"]


@pytest.mark.docker
def test_a_missing_base_is_reported_with_the_offline_fix(docker_client: Any) -> None:
    with pytest.raises(ImageMissing) as caught:
        build_image(base="hermes-base:no-such-base")
    assert "never pulls" in caught.value.reason and "ops/build-base-image.sh" in caught.value.fix


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    return subprocess.run([sys.executable, "-m", "hermes_producer", "image", "build", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.docker
def test_cli_prints_tag_and_digest(sandbox_image: Any, docker_client: Any) -> None:
    done = cli("--base", BASE_IMAGE, "--tag", "hermes-sandbox-test:cli")
    try:
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [sandbox_image.tag, sandbox_image.digest]
        assert "tagged hermes-sandbox-test:cli" in done.stderr
    finally:
        docker_client.images.remove("hermes-sandbox-test:cli")
    missing = cli("--base", "hermes-base:no-such-base")
    assert missing.returncode == 3 and "hermes: fix:" in missing.stderr
