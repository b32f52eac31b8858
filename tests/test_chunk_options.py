"""Chunk options are declared once (hermes_worker/chunk_options.py) and everything else follows.

The wire form, the flags of every command that runs prompts, the defaults from settings and the
resume header are derived from the declarations: a new option cannot be left out of any of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hermes_producer.batch import BatchOptions
from hermes_producer.cli import main
from hermes_producer.cli.options import chunk_options
from hermes_worker.chunk_options import ChunkOptions, declarations
from hermes_worker.contract import ContractError
from hermes_worker.engine import resolve_profile
from hermes_worker.settings import SETTINGS, Settings

from .support.fixture_types import HermesRunner
from .support.waiting import wait_until


def _changed(default: Any) -> Any:
    """A value other than ``default`` that its option accepts (a switch flipped, a number plus one)."""
    return not default if isinstance(default, bool) else default + 1


# A value other than the default for every option, whatever options are declared.
CHANGED = {name: _changed(getattr(ChunkOptions(), name)) for name, _ in declarations()}


def test_chunk_options_survive_their_wire_and_unknown_fields_are_ignored() -> None:
    options = ChunkOptions(**CHANGED)
    assert ChunkOptions.from_wire(json.loads(json.dumps(options.to_wire())) | {"newer": 1}) == options


@pytest.mark.parametrize("name", [name for name, _ in declarations()])
@pytest.mark.parametrize("value", ["1", None, -1, 10**9, float("nan"), float("inf"), [], {}, "true"])
def test_a_hostile_option_value_is_refused_naming_the_option(name: str, value: Any) -> None:
    with pytest.raises(ContractError, match=f"^chunk payload: {name!r} must be "):
        ChunkOptions.from_wire(ChunkOptions().to_wire() | {name: value})


@pytest.mark.parametrize("name", ["max_validation", "max_prompt_bytes", "item_time_budget"])
def test_a_number_option_refuses_a_boolean(name: str) -> None:
    with pytest.raises(ContractError, match=repr(name)):
        ChunkOptions.from_wire(ChunkOptions().to_wire() | {name: True})


def test_options_older_producers_always_sent_are_required_and_newer_ones_default() -> None:
    required = {name for name, declared in declarations() if declared.required}
    assert required == {"max_validation", "max_prompt_bytes"}
    for name in required:
        with pytest.raises(ContractError, match=repr(name)):
            ChunkOptions.from_wire({k: v for k, v in ChunkOptions().to_wire().items() if k != name})
    assert ChunkOptions.from_wire({"max_validation": 1, "max_prompt_bytes": 10}) == ChunkOptions(max_prompt_bytes=10)


def test_an_option_with_a_setting_takes_the_setting_of_the_same_name() -> None:
    by_variable = {spec.variable: spec.name for spec in SETTINGS}
    for name, declared in declarations():
        if declared.setting is not None:
            assert by_variable[declared.setting] == name
    settings = Settings.from_env({"HERMES_MAX_VALIDATION": "3", "HERMES_ITEM_TIME_BUDGET": "0"})
    assert chunk_options(settings) == ChunkOptions(max_validation=3, item_time_budget=0.0)
    assert chunk_options(settings, explain=True, max_validation=0) == ChunkOptions(
        max_validation=0, explain=True, item_time_budget=0.0
    )


@pytest.mark.parametrize("command", ["run", "batch"])
def test_every_declared_flag_is_an_option_of_the_commands_that_run_prompts(command: str) -> None:
    params = {opt for param in main.commands[command].params for opt in param.opts}
    assert {declared.flag for _, declared in declarations() if declared.flag} <= params


def test_the_resume_header_holds_every_field_of_the_batch_options() -> None:
    base = BatchOptions(resolve_profile("prompt"), "jsonl")
    changes: dict[str, Any] = {
        "profile": resolve_profile("nfc"),
        "input_format": "text",
        "chunk_size": 7,
        "chunk": ChunkOptions(),
    }
    assert set(changes) == {each.name for each in dataclasses.fields(BatchOptions)}
    for name, value in changes.items():
        if name != "chunk":
            assert dataclasses.replace(base, **{name: value}).header() != base.header(), name
    for name, value in CHANGED.items():
        changed = dataclasses.replace(base, chunk=ChunkOptions(**{name: value}))
        assert changed.header() != base.header(), name


# -- the same, end to end: `hermes batch --resume` refuses every changed option -------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch killed after writing some chunks: its input, partial output and journal."""
    where = tmp_path_factory.mktemp("interrupted")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    env |= {"HERMES_HOME": str(where / "home"), "HERMES_BROKER_URL": "redis://127.0.0.1:1/0"}
    env["HERMES_ISOLATION"] = "local"  # as the hermes fixture: no broker, no sandbox
    source = where / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{n}", "prompt": f"prompt  {n}"}) + "\n" for n in range(40_000)))
    journal = where / "out.jsonl.partial.journal"
    command = [sys.executable, "-m", "hermes_producer", "batch", str(source), "-o", str(where / "out.jsonl"),
               "--chunk-size", "100", "--processes", "1"]  # fmt: skip
    producer = subprocess.Popen(command, env=env, cwd=where, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: journal.exists() and journal.read_text().count("\n") >= 5, 60, 0.02, "5 chunks written")
    finally:
        producer.kill()
        producer.wait()
    assert not (where / "out.jsonl").exists()
    return where


def _resume(hermes: HermesRunner, interrupted: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    for name in ("out.jsonl.partial", "out.jsonl.partial.journal"):
        shutil.copy(interrupted / name, tmp_path / name)
    return hermes("batch", str(interrupted / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--resume",
                  "--chunk-size", "100", "--processes", "1", *flags)  # fmt: skip


def _changed_flags() -> list[list[str]]:
    """Every option of `hermes batch` that changes the records, set to something else."""
    chunk = [
        [declared.flag] if isinstance(CHANGED[name], bool) else [declared.flag, str(CHANGED[name])]
        for name, declared in declarations()
        if declared.flag
    ]
    return [*chunk, ["--profile", "nfc"], ["--format", "text"], ["--chunk-size", "7"]]


@pytest.mark.parametrize("flags", _changed_flags(), ids=lambda flags: flags[0])
def test_resume_refuses_every_changed_option(
    flags: list[str], hermes: HermesRunner, interrupted: Path, tmp_path: Path
) -> None:
    done = _resume(hermes, interrupted, tmp_path, *flags)
    assert done.returncode == 2, done.stderr
    assert "cannot resume: the options changed since the batch started" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_resume_with_the_same_options_finishes_the_batch(
    hermes: HermesRunner, interrupted: Path, tmp_path: Path
) -> None:
    done = _resume(hermes, interrupted, tmp_path)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert ids == [f"p{n}" for n in range(40_000)]
