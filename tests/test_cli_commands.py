"""`hermes run`, `task`, `queue`, `history`, `log`, `debug`, `--version` and help, as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hermes_worker import __version__

from .support.fixture_types import HermesRunner


def test_run_prints_the_normalized_text(hermes: HermesRunner) -> None:
    done = hermes("run", "--prompt", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.  ")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "The Mona Lisa doesn't have eyebrows.\n"
    assert "in-process" in done.stderr  # says once what it is doing


def test_run_json_has_text_changed_validation_and_provenance(hermes: HermesRunner) -> None:
    done = hermes("run", "--prompt", "ﬁne\u200b", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["text"] == "fine" and result["changed"] is True
    assert result["validation"] == {"rounds": 1, "converged": True}
    assert result["provenance"]["mode"] == "local"
    assert result["provenance"]["profile"] == "prompt"


def test_run_explain_lists_the_steps_that_changed_the_text(hermes: HermesRunner) -> None:
    done = hermes("run", "--prompt", "cafÃ©  \r\n", "--explain")
    assert done.stdout == "café\n"
    assert "explain: round 1: ftfy (encode:" in done.stderr
    as_json = json.loads(hermes("run", "--prompt", "cafÃ©  ", "--explain", "--json").stdout)
    assert [e["step"] for e in as_json["explain"]] == ["ftfy", "rstrip_lines"]


def test_run_reads_standard_input_with_dash(hermes: HermesRunner) -> None:
    done = hermes("run", "--prompt", "-", "--profile", "compact", input="  many\n\n  lines  \n")
    assert done.stdout == "many lines\n"


def test_run_with_a_bad_prompt_exits_1_and_says_why(hermes: HermesRunner) -> None:
    done = hermes("run", "--prompt", "")
    assert done.returncode == 1
    assert "empty_prompt: prompt is empty" in done.stderr


def test_run_max_validation_zero_skips_validation(hermes: HermesRunner) -> None:
    result = json.loads(hermes("run", "--prompt", "x", "--json", "--max-validation", "0").stdout)
    assert result["validation"] == {"rounds": 1, "converged": None}


def test_tasks_are_scheduled_run_oldest_first_and_kept_in_history(hermes: HermesRunner, tmp_path: Path) -> None:
    assert "task 1 scheduled" in hermes("task", "--prompt", "first  ").stdout
    assert "task 2 scheduled" in hermes("task", "--prompt", "", "--profile", "compact").stdout
    assert "task 3 scheduled" in hermes("task", "--prompt", "third\u200b").stdout
    listing = hermes("task", "--list").stdout
    assert [line.split()[0] for line in listing.splitlines()] == ["1", "2", "3"]
    assert "task 3 deleted" in hermes("task", "--delete", "3").stdout

    done = hermes("queue", "-n", "1")
    assert done.returncode == 0 and "ran 1 task(s): 1 ok, 0 failed" in done.stderr
    done = hermes("queue", "--all")
    assert done.returncode == 1 and "ran 1 task(s): 0 ok, 1 failed" in done.stderr
    assert "no scheduled tasks" in hermes("queue", "--all").stderr

    history = hermes("history").stdout.splitlines()
    assert [line.split()[0] for line in history] == ["2", "1"]  # newest first
    assert "error empty_prompt" in history[0] and "first" in history[1]

    exported = tmp_path / "task1.json"
    assert hermes("history", "--export", f"1:{exported}").returncode == 0
    document = json.loads(exported.read_text(encoding="utf-8"))
    assert document["prompt"] == "first  " and document["result"]["text"] == "first"
    assert document["result"]["provenance"]["mode"] == "local"


def test_task_errors_are_clear(hermes: HermesRunner) -> None:
    missing = hermes("task", "--delete", "42")
    assert missing.returncode == 2 and "42" in missing.stderr
    both = hermes("task", "--list", "--delete", "1")
    assert both.returncode == 2 and "exactly one of" in both.stderr
    assert hermes("history", "--export", "nonsense").returncode == 2
    assert hermes("queue").returncode == 2


def test_log_and_debug_show_what_happened(hermes: HermesRunner, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("ok\n\n", encoding="utf-8")
    assert hermes("batch", str(src), "-o", str(tmp_path / "out.jsonl")).returncode == 1
    log = hermes("log", "-n", "50").stdout
    assert "batch.started" in log and "batch.finished" in log
    assert "cli.invoked" not in log  # debug records only in `hermes debug`
    debug = hermes("debug", "-n", "100").stdout
    assert "cli.invoked" in debug and "item.failed" in debug
    records = [json.loads(line) for line in hermes("log", "--json").stdout.splitlines()]
    finished = next(r for r in records if r["event"] == "batch.finished")
    assert finished["total"] == 2 and finished["failed"] == 1
    assert hermes("debug", "--error").stdout == ""  # a bad item is a warning, not a Hermes error


def test_version_and_every_help_has_an_example(hermes: HermesRunner) -> None:
    assert hermes("--version").stdout.strip() == f"hermes, version {__version__}"
    assert "Example" in hermes("--help").stdout
    for command in ("run", "batch", "task", "queue", "history", "log", "debug", "profiles"):
        shown = hermes(command, "--help")
        assert shown.returncode == 0
        assert "Example" in shown.stdout, command


def test_invalid_settings_are_usage_errors(hermes: HermesRunner) -> None:
    done = hermes("run", "--prompt", "x", env={"HERMES_CHUNK_SIZE": "zero"})
    assert done.returncode == 2 and "HERMES_CHUNK_SIZE='zero' is invalid" in done.stderr


@pytest.mark.parametrize(
    ("labels", "says"),
    [("team", "is not KEY=VALUE"), ("hermes.pid=1", "keys starting with 'hermes.' are Hermes' own")],
)
def test_container_labels_must_be_key_value_pairs_outside_hermes_own(
    hermes: HermesRunner, labels: str, says: str
) -> None:
    done = hermes("run", "--prompt", "x", env={"HERMES_CONTAINER_LABELS": labels})
    assert done.returncode == 2 and "HERMES_CONTAINER_LABELS" in done.stderr and says in done.stderr


@pytest.mark.parametrize("profile", ["prompt", "nfc", "nfkc", "compact"])
def test_every_builtin_profile_runs_from_the_cli(hermes: HermesRunner, profile: str) -> None:
    done = hermes("run", "--prompt", "Ｆｕｌｌ  width\u00a0", "--profile", profile, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["provenance"]["profile"] == profile
