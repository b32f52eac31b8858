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


def test_the_summary_names_where_records_really_ran() -> None:
    from collections import Counter

    from hermes_producer.batch import BatchSummary
    from hermes_producer.cli.batch import summary_text

    planned = "on 1 local worker(s) via hermes.local (local@vm)"
    mixed = BatchSummary(total=150, ok=150, records_by_worker=Counter({"local@vm": 100, "embedded@vm": 50}))
    assert summary_text(mixed, planned).endswith("; on 1 worker (local@vm) and in-process (50 records)")
    as_planned = BatchSummary(total=100, ok=100, records_by_worker=Counter({"local@vm": 100}))
    assert summary_text(as_planned, planned).endswith(f"; {planned}")
    here = BatchSummary(total=9, ok=9, records_by_worker=Counter({"embedded@vm": 9}))
    assert summary_text(here, "in-process (2 processes)").endswith("; in-process (2 processes)")


def _on_a_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120, stdin: Path | None = None
                   ) -> str:  # fmt: skip
    """Run ``args`` with standard error on a pseudo-terminal (standard input: a pipe from the file
    ``stdin``, else nothing); what the terminal received."""
    import os
    import pty
    import subprocess
    import time

    leader, follower = pty.openpty()
    feeder = subprocess.Popen(["cat", str(stdin)], stdout=subprocess.PIPE) if stdin is not None else None
    process = subprocess.Popen(args, env=env, cwd=cwd, stdin=feeder.stdout if feeder else subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=follower)  # fmt: skip
    if feeder is not None and feeder.stdout is not None:
        feeder.stdout.close()  # the batch's end of the pipe is its own
    os.close(follower)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        received += chunk
    process.wait(timeout=10)
    if feeder is not None:
        feeder.wait(timeout=10)
    os.close(leader)
    return received.decode("utf-8", "replace")


def test_progress_on_a_terminal_shows_records_rate_bytes_and_an_eta(
    hermes_env: dict[str, str], tmp_path: Path
) -> None:
    import sys

    source = tmp_path / "in.jsonl"
    # Over a megabyte (the size shows in MB), of prompts that need little work.
    source.write_text("".join(f'{{"id": {n}, "prompt": "a plain prompt, number {n}"}}\n' for n in range(30_000)))
    shown = _on_a_terminal([sys.executable, "-m", "hermes_producer", "batch", str(source), "-o", "out.jsonl",
                            "--chunk-size", "500", "--processes", "1"], hermes_env, tmp_path)  # fmt: skip
    assert "records, " in shown and "/s" in shown and "ETA" in shown
    assert f"/{source.stat().st_size / 1e6:.1f} MB" in shown  # the input's size, in rich's units
    assert "30,000 of 30,000 records" in shown  # its line count, once the reader reached the end
    assert "30,000 prompts in" in shown  # and the summary after it


def test_progress_of_a_stream_on_a_terminal_shows_its_line_count_once_known(
    hermes_env: dict[str, str], tmp_path: Path
) -> None:
    import re
    import sys

    # Given 30,000 prompts on standard input (a pipe: no size), and standard error on a terminal,
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": {n}, "prompt": "a plain prompt, number {n}"}}\n' for n in range(30_000)))
    shown = _on_a_terminal([sys.executable, "-m", "hermes_producer", "batch", "-", "-o", "out.jsonl",
                            "--chunk-size", "500", "--processes", "1"], hermes_env, tmp_path, stdin=source)  # fmt: skip
    frames = shown.replace("\r", "\n").split("\n")
    # Then the line shows records and their rate while the count is not known (no made-up total),
    assert any(re.search(r"\b[1-9][0-9,]* records, [0-9,]+/s", frame) for frame in frames), shown[-2000:]
    # and the count once the reader has reached the end of the stream,
    assert "30,000 of 30,000 records" in shown
    assert {total for _done, total in re.findall(r"([0-9,]+) of ([0-9,]+) records", shown)} == {"30,000"}
    assert "30,000 prompts in" in shown


def test_a_pipe_gets_no_progress_line_whatever_the_input(hermes: HermesRunner, tmp_path: Path) -> None:
    # stderr is a pipe here (captured): no progress line, no terminal control, no carriage return;
    # only the notices and the summary, one line each.
    source = tmp_path / "in.txt"
    source.write_text("hello\n" * 5000)
    cases = ((["batch", str(source), "-o", "a.jsonl"], b""), (["batch", "-", "-o", "b.jsonl"], b"hi\n" * 5000))
    for args, stdin in cases:
        done = hermes(*args, "--chunk-size", "100", input=stdin)  # bytes in: stderr as it came, \r and all
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stderr and "\r" not in done.stderr and " records, " not in done.stderr
        assert all(line.startswith(("hermes: ", "  ")) for line in done.stderr.splitlines()), done.stderr


def test_a_notice_while_the_progress_line_shows_is_printed_above_it(tmp_path: Path) -> None:
    import os
    import sys

    script = tmp_path / "notice.py"
    script.write_text(
        "import io, logging, time\n"
        "from hermes_producer.cli.batch import progress_bar\n"
        "from hermes_producer.context import Context\n"
        "from hermes_worker.settings import Settings\n"
        "ctx = Context(Settings.from_env({}), logging.getLogger('t'), quiet=False)\n"
        "with progress_bar(ctx, io.BytesIO()) as update:\n"
        "    for n in range(30):\n"
        "        update(n * 1000, None)\n"
        "        if n == 15:\n"
        "            ctx.notice('NOTICE-IN-THE-MIDDLE')\n"
        "        time.sleep(0.02)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")} | {
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HERMES_HOME": str(tmp_path / "home")}
    shown = _on_a_terminal([sys.executable, str(script)], env, tmp_path)
    (line,) = [part for part in shown.replace("\r", "\n").split("\n") if "NOTICE-IN-THE-MIDDLE" in part]
    assert "records" not in line  # its own line, not written into the progress line


# Commands without --json, and why: each prints no data on standard output, or data in a format of
# its own that its readers expect. A new command must either take --json or be listed here.
WITHOUT_JSON = {
    "hermes batch": "its records are JSON Lines already; its summary is --summary-json",
    "hermes metrics": "Prometheus' text format, which is what scrapers read",
    "hermes queue": "prints notices only; the results are in hermes history --json",
    "hermes task delete": "prints a confirmation, no data",
    "hermes history export": "writes the task's record as JSON",
    "hermes worker": "a server: its output is its log",
    "hermes flower": "a server: its output is its log",
    "hermes image build": "builds an image and says so; hermes doctor --json checks it",
}


def test_every_command_that_prints_data_takes_json() -> None:
    import click

    from hermes_producer.cli import main

    found: dict[str, bool] = {}

    def walk(group: click.Command, path: str) -> None:
        for name, command in getattr(group, "commands", {}).items():
            runs_itself = not isinstance(command, click.Group) or command.invoke_without_command
            if runs_itself:
                found[f"{path} {name}"] = any("--json" in getattr(p, "opts", ()) for p in command.params)
            walk(command, f"{path} {name}")

    walk(main, "hermes")
    assert {path for path, has in found.items() if not has} == set(WITHOUT_JSON)
    assert {"hermes run", "hermes task list", "hermes history list", "hermes batches", "hermes doctor"} <= {
        path for path, has in found.items() if has
    }
