"""One error root: every Hermes exception is a HermesError; only the command line turns one into
an exit code, in one place (hermes_producer/cli/guard.py), as one line (and a fix), never a traceback.

The classes are found by walking every module of both packages, so a new exception that does not
derive from the root, or a library module that exits the process itself, fails here.
"""

from __future__ import annotations

import ast
import builtins
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from hermes_worker.engine import ItemError
from hermes_worker.errors import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_ITEMS_FAILED, EXIT_USAGE, HermesError
from hermes_worker.sandbox.errors import DockerUnavailable

from .support.fixture_types import HermesRunner
from .support.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("hermes_worker", "hermes_producer")

# Imports every module (in a fresh interpreter: some patch third-party classes when imported)
# and lists the exception classes each defines: module.Class -> its bases in order, its exit code.
WALK = """
import importlib, json, pkgutil
import hermes_worker, hermes_producer
found = {}
for package in (hermes_worker, hermes_producer):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith(".__main__"):
            continue  # `python -m hermes_producer` runs the command when imported
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{value.__qualname__}"] = {
                    "mro": [f"{c.__module__}.{c.__qualname__}" for c in value.__mro__],
                    "exit_code": getattr(value, "exit_code", None),
                }
print(json.dumps(found))
"""

# What each error means to a script calling `hermes` (README, "Exit codes"): the specification.
EXIT_CODES = {
    "hermes_worker.errors.HermesError": EXIT_INFRA,
    "hermes_worker.settings.SettingsError": EXIT_USAGE,
    "hermes_worker.signing.SigningError": EXIT_USAGE,
    "hermes_worker.engine.errors.ProfileError": EXIT_USAGE,
    "hermes_worker.engine.errors.ItemError": EXIT_ITEMS_FAILED,
    "hermes_worker.engine.budget.ItemTooSlow": EXIT_ITEMS_FAILED,
    "hermes_worker.contract.ContractError": EXIT_INFRA,
    "hermes_worker.public.PublicTaskError": EXIT_INFRA,
    "hermes_worker.public.BadArguments": EXIT_USAGE,
    "hermes_worker.public.NotRun": EXIT_INFRA,
    "hermes_worker.sandbox.errors.SandboxError": EXIT_INFRA,
    "hermes_worker.sandbox.errors.DockerUnavailable": EXIT_INFRA,
    "hermes_worker.sandbox.errors.ImageMissing": EXIT_INFRA,
    "hermes_producer.cluster.ClusterUnavailable": EXIT_INFRA,
    "hermes_producer.cluster.ClusterRefused": EXIT_USAGE,
    "hermes_producer.dispatch.NowhereToRun": EXIT_INFRA,
    "hermes_producer.executors.ExecutorError": EXIT_INFRA,
    "hermes_producer.journal.JournalError": EXIT_USAGE,
    "hermes_producer.output.OutputError": EXIT_USAGE,
    "hermes_producer.store.StoreError": EXIT_INFRA,
    "hermes_producer.store.TaskNotFound": EXIT_USAGE,
}


@pytest.fixture(scope="module")
def exception_classes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    env = {"PATH": "/usr/bin:/bin", "HERMES_HOME": str(tmp_path_factory.mktemp("home")), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", WALK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    found: dict[str, dict[str, object]] = json.loads(done.stdout)
    return found


# -- the hierarchy --------------------------------------------------------------------------------


def test_every_exception_class_of_both_packages_derives_from_the_root(
    exception_classes: dict[str, dict[str, object]],
) -> None:
    root = "hermes_worker.errors.HermesError"
    assert len(exception_classes) >= len(EXIT_CODES)  # the walk found them
    strays = sorted(name for name, found in exception_classes.items() if root not in found["mro"])  # type: ignore[operator]
    assert strays == [], f"raise a HermesError subclass (hermes_worker/errors.py), not: {strays}"


def test_no_exception_class_hides_inside_a_function(exception_classes: dict[str, dict[str, object]]) -> None:
    """The walk sees module-level classes only: an exception class defined in a function or a
    class body would escape it, so there must be none."""
    exception_names = {name.rpartition(".")[2] for name in exception_classes}
    exception_names |= {name for name, value in vars(builtins).items()
                        if isinstance(value, type) and issubclass(value, BaseException)}  # fmt: skip
    nested = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top_level = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and id(node) not in top_level:
                    bases = {ast.unparse(base).rpartition(".")[2] for base in node.bases}
                    if bases & exception_names:
                        nested.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert nested == []


def test_each_error_carries_the_exit_code_its_meaning_gives(exception_classes: dict[str, dict[str, object]]) -> None:
    codes = {name: found["exit_code"] for name, found in exception_classes.items()}
    assert {name: codes.get(name) for name in EXIT_CODES} == EXIT_CODES
    # Whatever a new error means, it is one of the documented codes.
    assert set(codes.values()) <= {EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_INFRA}


def test_an_error_has_a_reason_an_optional_fix_and_an_exit_code_the_raiser_may_change() -> None:
    plain = HermesError("the journal names another input")
    assert (plain.reason, plain.fix, plain.exit_code, str(plain)) == ("the journal names another input", "", 3,
                                                                      "the journal names another input")  # fmt: skip
    fixed = DockerUnavailable("nothing answers at unix:///x", "start Docker")
    assert str(fixed) == "nothing answers at unix:///x (fix: start Docker)" and fixed.exit_code == EXIT_INFRA
    assert HermesError("interrupted", exit_code=EXIT_INTERRUPTED).exit_code == 130
    assert HermesError("x").exit_code == 3  # an instance's code never changes its class's


def test_errors_come_back_from_a_pool_process_intact() -> None:
    """Pool processes send errors back pickled: every field survives, whatever the class's arguments."""
    item = pickle.loads(pickle.dumps(ItemError("bad_id", "id must be a string", "a7")))
    assert (type(item), item.code, item.message, item.item_id, item.exit_code) == (
        ItemError, "bad_id", "id must be a string", "a7", EXIT_ITEMS_FAILED)  # fmt: skip
    docker = pickle.loads(pickle.dumps(DockerUnavailable("gone", "start it")))
    assert (type(docker), docker.reason, docker.fix, str(docker)) == (DockerUnavailable, "gone", "start it",
                                                                      "gone (fix: start it)")  # fmt: skip
    assert pickle.loads(pickle.dumps(HermesError("x", exit_code=EXIT_USAGE))).exit_code == EXIT_USAGE


# -- library code raises; only the command line exits ------------------------------------------


def _is_cli_module(path: Path) -> bool:
    """The command line: the entry point (guard.py, __main__.py) and the click commands."""
    return path.stem == "__main__" or path.stem.endswith("_cli") or "cli" in path.relative_to(REPO).parts[1:-1]


# Where a library module must end the process itself, and why nothing else will do.
ALLOWED_EXITS = {
    # Celery's signal dispatcher logs and swallows any Exception a receiver raises: only a
    # SystemExit stops `celery -A hermes_worker.app worker --mode container` without Docker.
    ("hermes_worker/runtime.py", "_on_celeryd_init"),
}


def _exits(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, enclosing function) of every sys.exit()/exit()/quit() call and ``raise SystemExit``,
    outside ``if __name__ == "__main__":`` blocks (a script's own entry point)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "exit", "quit"):
            found.append((node.lineno, function))
        if isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc):
            found.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return found


def test_no_library_module_exits_the_process() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if _is_cli_module(path):
                continue
            where = path.relative_to(REPO).as_posix()
            for line, function in _exits(ast.parse(path.read_text(encoding="utf-8"))):
                if (where, function) not in ALLOWED_EXITS:
                    offenders.append(f"{where}:{line} in {function}")
    assert offenders == [], "raise a HermesError with an exit code instead; the command line exits"


def test_the_exit_check_sees_every_way_of_exiting() -> None:
    source = """
import sys
def a():
    sys.exit(3)
def b():
    raise SystemExit("no")
def c():
    exit(2)
if __name__ == "__main__":
    sys.exit(main())
"""
    assert _exits(ast.parse(source)) == [(4, "a"), (6, "b"), (8, "c")]


# -- the command line maps each error to its exit code, one line, no traceback ------------------


GUARDED = """
import sys
import click
from hermes_producer.cli.guard import GuardedGroup
from hermes_worker.errors import HermesError
from hermes_worker.redact import remember

@click.group(cls=GuardedGroup)
def main():
    remember("s3cret-pw")

@main.command()
def fail():
    raise HermesError("cannot use redis://:s3cret-pw@db:6379/0 \\x1b[2J now", "check HERMES_BROKER_URL", exit_code=2)

main(sys.argv[1:], prog_name="hermes")
"""


def test_the_entry_point_prints_a_hermes_error_as_its_reason_and_fix_and_exits_with_its_code() -> None:
    done = subprocess.run([sys.executable, "-c", GUARDED, "fail"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    # Masked and shown, never obeyed by the terminal; the fix on a line of its own.
    assert done.stderr.splitlines() == [
        "hermes: error: cannot use redis://:***@db:6379/0 \\x1b[2J now",
        "hermes: fix: check HERMES_BROKER_URL",
    ]


def _one_error(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of stderr, checked to be Hermes' own error lines and never a traceback."""
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert lines and lines[0].startswith("hermes: error: ") and all(
        line.startswith(("hermes: error: ", "hermes: fix: ")) for line in lines), done.stderr  # fmt: skip
    return lines


def test_a_settings_error_exits_2_naming_the_variable(hermes: HermesRunner) -> None:
    done = hermes("profiles", env={"HERMES_CONCURRENCY": "lots"})
    assert done.returncode == 2
    assert _one_error(done) == ["hermes: error: HERMES_CONCURRENCY='lots' is invalid: must be a whole number"]


def test_a_journal_that_cannot_resume_exits_2(hermes: HermesRunner, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    (tmp_path / "out.jsonl.partial").write_text("")
    (tmp_path / "out.jsonl.partial.journal").write_text("not a journal\n")
    done = hermes("batch", "in.jsonl", "-o", "out.jsonl", "--resume")
    assert done.returncode == 2
    assert _one_error(done) == [
        "hermes: error: out.jsonl.partial.journal is not a Hermes journal; run without --resume to start over"
    ]


def test_a_damaged_task_store_exits_3(hermes: HermesRunner, tmp_path: Path) -> None:
    home = tmp_path / "hermes-home"
    home.mkdir(mode=0o700)
    (home / "hermes.db").write_bytes(b"this is not SQLite" * 100)
    done = hermes("task", "--list")
    assert done.returncode == 3
    (line,) = _one_error(done)
    assert "is not a Hermes task store (or is damaged)" in line


def test_a_sandbox_error_exits_3_with_its_fix(hermes: HermesRunner) -> None:
    done = hermes("image", "build", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 3
    assert _one_error(done) == [
        "hermes: error: Docker daemon not running: nothing answers at unix:///nonexistent/docker.sock",
        "hermes: fix: start it: sudo systemctl start docker (or ops/ensure-docker.sh); check DOCKER_HOST",
    ]


def test_nowhere_to_run_exits_3(hermes: HermesRunner) -> None:
    """No broker, and --no-fallback: dispatch raises, the command line exits."""
    done = hermes("run", "--prompt", "x", "--no-fallback")
    assert done.returncode == 3
    (line,) = _one_error(done)
    assert line.startswith("hermes: error: ") and line.endswith("; --no-fallback forbids processing in-process")


def test_a_container_worker_without_docker_exits_3(hermes: HermesRunner) -> None:
    done = hermes("worker", "--mode", "container", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 3
    (line,) = _one_error(done)
    assert line.startswith("hermes: error: --mode container, but the Docker probe failed: Docker daemon not running")


@pytest.mark.cluster
def test_a_cluster_that_refuses_the_credentials_exits_2(hermes: HermesRunner, redis_server: RedisServer) -> None:
    url = f"redis://nobody:wrong-pw@127.0.0.1:{redis_server.port}/0"
    done = hermes("run", "--prompt", "x", env={"HERMES_BROKER_URL": url})
    assert done.returncode == 2
    (line,) = _one_error(done)
    assert "authentication failed" in line and "wrong-pw" not in done.stderr
