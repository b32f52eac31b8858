"""Every command of the README's "Using it" block works verbatim, as a new user types it.

Each line is run by bash as written (comments cut), from a directory holding a copy of
`examples/`, with `hermes` on the PATH and no broker (the embedded default). A `# -> TEXT`
comment is what the command prints, and is checked. `--follow` commands run until killed.

Every ```python block runs too, as it is, the same way; the plain Celery client's block runs
against a private Redis and a real `hermes worker` (its URL replaced by that Redis'), and prints
what its comments say.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .support.environment import EXAMPLES
from .support.fixture_types import WorkerFactory
from .support.redis_server import RedisServer

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str) -> list[str]:
    """The lines of the first ```bash block after ``heading``."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block is not None, heading
    return [line for line in block.group(1).splitlines() if line.strip()]


def commands(lines: list[str]) -> list[tuple[str, str | None]]:
    """(command, expected output or None) for every command of ``lines``; `a ; b` is two."""
    found = []
    for line in lines:
        command, comment = line, ""
        if (mark := re.search(r"\s{2,}# ", line)) is not None:
            command, comment = line[: mark.start()], line[mark.end() :]
        expected = comment.removeprefix("-> ").split(" (")[0] if comment.startswith("-> ") else None
        parts = [part.strip() for part in command.split(" ; ")]
        found += [(part, expected if part == parts[-1] else None) for part in parts]
    return found


USING_IT = commands(readme_block("## Using it"))


def test_the_block_is_read_as_the_commands_it_shows() -> None:
    assert ("hermes task list --json", None) in USING_IT
    mona_lisa = "hermes run 'The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.'"
    assert (mona_lisa, "The Mona Lisa doesn't have eyebrows.") in USING_IT
    assert len(USING_IT) >= 15


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A directory with the examples and an environment with `hermes` on the PATH, nothing else."""
    where = tmp_path_factory.mktemp("newcomer")
    shutil.copytree(EXAMPLES, where / "examples")
    bin_dir = where / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "hermes"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hermes_producer "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "HERMES_HOME": str(where / "home"),
            "HERMES_BROKER_URL": "redis://127.0.0.1:1/0", "HERMES_ISOLATION": "local",
            "PYTHONPATH": str(README.parent)}  # fmt: skip
    return where, env


@pytest.mark.parametrize(("command", "expected"), USING_IT, ids=[command for command, _ in USING_IT])
def test_every_command_of_using_it_works_verbatim(
    command: str, expected: str | None, newcomer: tuple[Path, dict[str, str]]
) -> None:
    where, env = newcomer
    try:
        done = subprocess.run(["bash", "-c", command], cwd=where, env=env, capture_output=True, text=True,
                              timeout=3 if "--follow" in command else 120)  # fmt: skip
    except subprocess.TimeoutExpired:
        assert "--follow" in command, f"{command} did not finish"
        return
    assert done.returncode in (0, 1), f"{command}: exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr and "hermes: error:" not in done.stderr, done.stderr
    if done.returncode == 1:  # documented: some items failed (the examples hold bad lines on purpose)
        assert command.startswith("hermes batch"), done.stderr
    if expected is not None:
        assert done.stdout.strip() == expected


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def celery_client(block: str) -> bool:
    """Whether ``block`` is a plain Celery client's: it needs a broker and a Hermes worker."""
    return "Celery(broker=" in block


def test_the_readme_has_python_examples() -> None:
    assert any("Client" in block for block in python_blocks())
    assert sum(celery_client(block) for block in python_blocks()) == 1


@pytest.mark.parametrize("block", [b for b in python_blocks() if not celery_client(b)],
                         ids=lambda block: block.splitlines()[0][:40])  # fmt: skip
def test_every_python_block_of_the_readme_runs(block: str, newcomer: tuple[Path, dict[str, str]]) -> None:
    where, env = newcomer
    done = subprocess.run([sys.executable, "-c", block], cwd=where, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


README_BROKER = "redis://localhost:6379/0"  # the URL the README's Celery client names (HERMES_BROKER_URL's default)


@pytest.mark.cluster
def test_the_plain_celery_client_of_the_readme_prints_what_it_says(
    newcomer: tuple[Path, dict[str, str]], start_worker: WorkerFactory, redis_server: RedisServer
) -> None:
    """Given a Hermes worker; when the README's Celery block runs (aimed at this test's Redis);
    then it prints, line by line, what its ``# ...`` comments say."""
    [block] = [b for b in python_blocks() if celery_client(b)]
    assert block.count(README_BROKER) == 2 and len(block.strip().splitlines()) <= 10
    start_worker("w1")
    where, env = newcomer
    done = subprocess.run([sys.executable, "-c", block.replace(README_BROKER, redis_server.url())], cwd=where,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [line.split("  # ", 1)[1].strip() for line in block.splitlines() if line.startswith("print(")]
    assert done.stdout.splitlines() == said


def test_the_readmes_sample_records_are_what_a_new_user_gets(newcomer: tuple[Path, dict[str, str]]) -> None:
    import json

    where, env = newcomer
    text = README.read_text(encoding="utf-8")
    heading = r"The first two\nrecords of `hermes batch examples/prompts.jsonl`"
    sample = re.search(heading + r".*?```json\n(.*?)```", text, re.S)
    assert sample is not None
    shown = [json.loads(line) for line in sample.group(1).splitlines()]
    done = subprocess.run(["hermes", "-q", "batch", "examples/prompts.jsonl"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    got = [json.loads(line) for line in done.stdout.splitlines()[: len(shown)]]
    for record in got:  # what differs from machine to machine, as the README says
        record["provenance"] |= {"python": "3.11.7", "worker": "embedded@host"}
    assert got == shown


def test_every_hermes_variable_the_code_reads_is_in_the_readme() -> None:
    root = README.parent
    named = set()
    for path in [*root.glob("hermes_worker/**/*.py"), *root.glob("hermes_producer/**/*.py")]:
        named |= set(re.findall(r"\bHERMES_[A-Z][A-Z_]*[A-Z]\b", path.read_text(encoding="utf-8")))
    assert named - set(re.findall(r"\bHERMES_[A-Z][A-Z_]*[A-Z]\b", README.read_text(encoding="utf-8"))) == set()
