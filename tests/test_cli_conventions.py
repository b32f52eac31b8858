"""The command line behaves as people who know other CLIs expect (issue 14, part 2).

A prompt is an argument (or standard input), a batch without -o writes to standard output,
every command that prints data has --json, subcommands read as verbs (the old flags still
work), a global --broker, and a near-miss profile name gets a suggestion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .support.environment import EXAMPLES
from .support.fixture_types import HermesRunner


def test_run_takes_the_prompt_as_an_argument(hermes: HermesRunner) -> None:
    done = hermes("run", "ﬁrst line  ")
    assert (done.returncode, done.stdout) == (0, "first line\n")


@pytest.mark.parametrize("args", [[], ["-"], ["--prompt", "-"]], ids=["nothing", "dash", "prompt-dash"])
def test_run_reads_the_prompt_from_standard_input(hermes: HermesRunner, args: list[str]) -> None:
    done = hermes("run", *args, "--json", input="cafÃ©")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == "café"


def test_run_keeps_the_prompt_option_for_scripts(hermes: HermesRunner) -> None:
    assert hermes("run", "--prompt", "ﬁx  ").stdout == "fix\n"


def test_run_refuses_a_prompt_given_twice(hermes: HermesRunner) -> None:
    done = hermes("run", "a", "--prompt", "b")
    assert done.returncode == 2 and "give the prompt once" in done.stderr


def test_batch_without_an_output_writes_records_to_standard_output(hermes: HermesRunner) -> None:
    done = hermes("-q", "batch", str(EXAMPLES / "prompts.jsonl"))
    assert done.returncode == 0, done.stderr
    lines = (EXAMPLES / "prompts.jsonl").read_bytes().count(b"\n")
    records = [json.loads(line) for line in done.stdout.split("\n")[:-1]]
    assert [r["line"] for r in records] == list(range(1, lines + 1))


def test_tasks_are_added_listed_and_deleted_with_subcommands(hermes: HermesRunner) -> None:
    added = json.loads(hermes("task", "add", "Hello\u00a0world", "--profile", "compact", "--json").stdout)
    assert (added["prompt"], added["profile"]["name"], added["status"]) == ("Hello\u00a0world", "compact", "pending")
    hermes("task", "add", "-", input="second")
    listed = json.loads(hermes("task", "list", "--json").stdout)
    assert [t["prompt"] for t in listed] == ["Hello\u00a0world", "second"]
    assert hermes("task", "delete", str(added["task"])).returncode == 0
    assert [t["prompt"] for t in json.loads(hermes("task", "--list", "--json").stdout)] == ["second"]
    gone = hermes("task", "delete", str(added["task"]))
    assert gone.returncode == 2 and "hermes: error:" in gone.stderr and "Traceback" not in gone.stderr


def test_the_old_task_flags_still_work(hermes: HermesRunner) -> None:
    assert "task 1 scheduled" in hermes("task", "--prompt", "a").stdout
    assert "a" in hermes("task", "--list").stdout
    assert hermes("task", "--delete", "1").stdout == "task 1 deleted\n"


@pytest.mark.parametrize(
    "args",
    [["task", "--list", "list"], ["task", "--delete", "1", "delete", "1"], ["history", "--export", "1:-", "list"]],
    ids=["task-list", "task-delete", "history-export"],
)
def test_a_flag_and_a_subcommand_for_the_same_thing_are_refused(hermes: HermesRunner, args: list[str]) -> None:
    done = hermes(*args)
    assert done.returncode == 2 and "not both" in done.stderr


def test_task_without_anything_to_do_says_what_it_takes(hermes: HermesRunner) -> None:
    done = hermes("task")
    assert done.returncode == 2 and "hermes task add TEXT, hermes task list, hermes task delete ID" in done.stderr


def test_history_lists_and_exports_as_json(hermes: HermesRunner, tmp_path: Path) -> None:
    hermes("task", "add", "caf\u00c3\u00a9")
    assert hermes("-q", "queue", "--all").returncode == 0
    (finished,) = json.loads(hermes("history", "--json").stdout)
    assert (finished["status"], finished["result"]["text"]) == ("done", "café")
    assert json.loads(hermes("history", "list", "-n", "1", "--json").stdout) == [finished]
    assert json.loads(hermes("history", "export", str(finished["task"])).stdout) == finished
    assert hermes("history", "export", str(finished["task"]), "out.json").returncode == 0
    assert json.loads((tmp_path / "out.json").read_text()) == finished
    assert json.loads(hermes("history", "--export", f"{finished['task']}:-").stdout) == finished


def test_profiles_as_json_name_every_step_of_every_profile(hermes: HermesRunner) -> None:
    listed = json.loads(hermes("profiles", "--json").stdout)
    steps = {step["name"] for step in listed["steps"]}
    assert {p["name"] for p in listed["profiles"]} >= {"prompt", "nfc", "nfkc", "compact"}
    assert all(set(p["steps"]) <= steps and p["description"] for p in listed["profiles"])


def test_doctor_as_json_lists_its_checks_and_still_fails_without_a_broker(hermes: HermesRunner) -> None:
    done = hermes("doctor", "--json", timeout=180)
    checks = json.loads(done.stdout)
    assert done.returncode == 1  # no broker answers on port 1
    assert {tuple(sorted(check)) for check in checks} == {("fix", "ok", "what")}
    assert any(check["ok"] is False and "not answering" in check["what"] for check in checks)


def test_the_broker_can_be_given_on_the_command_line(hermes: HermesRunner) -> None:
    done = hermes("--broker", "redis://127.0.0.1:2/0", "run", "x")
    assert done.returncode == 0 and "redis://127.0.0.1:2/0 is not answering" in done.stderr


@pytest.mark.parametrize(
    "url", ["redis://:s3cret-pw@127.0.0.1:1/0", "redis://u:s3cret-pw@h/0", "redis://h/0?password=s3cret-pw"]
)
def test_a_broker_with_a_password_on_the_command_line_is_refused_and_not_echoed(
    hermes: HermesRunner, url: str
) -> None:
    done = hermes("--broker", url, "workers")
    assert done.returncode == 2 and "set HERMES_BROKER_URL" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


@pytest.mark.parametrize("url", ["abc", "", "redis://h:99999/0", "\x1b[2Jredis://h/0"])
def test_a_malformed_broker_is_named_as_the_option(hermes: HermesRunner, url: str) -> None:
    done = hermes("--broker", url, "workers")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("hermes: error: --broker") and "\x1b" not in done.stderr


def test_a_near_miss_profile_gets_a_suggestion(hermes: HermesRunner) -> None:
    done = hermes("run", "x", "--profile", "promt")
    assert done.returncode == 2 and "did you mean 'prompt'?" in done.stderr
