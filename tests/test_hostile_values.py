"""Values that crash instead of being refused (issue 11, class 7), and text that commands the terminal.

The promise: any value a user can give Hermes (an option, a HERMES_* variable, a file) that it
cannot use is refused with exit 2 and a message naming the value, before any work starts; no
input of any kind makes a traceback reach the user; Ctrl-C is exit 130; and text that came from
input (ids, messages, prompts, file names) is shown on a terminal, never obeyed by it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hermes_worker import settings as hermes_settings
from hermes_worker.settings import Settings, SettingsError

from .support.fixture_types import HermesProcessFactory, HermesRunner
from .support.inputs import read_records
from .support.waiting import wait_until

BIG = "99999999999999999999999"
NOT_UTF8 = os.fsdecode(b"caf\xff")  # what Python makes of a byte that is not UTF-8 in argv or environ


def case(*argv: str, env: dict[str, str] | None = None, stdin: bytes | None = None, code: int = 2,
         says: tuple[str, ...] = (), id: str) -> Any:  # fmt: skip
    return pytest.param(list(argv), env or {}, stdin, code, says, id=id)


VALUES = [
    # -- the issue's own list
    case("run", "--prompt", "x", "--wait-for-workers", "nan", says=("--wait-for-workers", "'nan'"), id="wait-nan"),
    case("run", "--prompt", "x", env={"HERMES_WAIT_FOR_WORKERS": "nan"}, says=("HERMES_WAIT_FOR_WORKERS", "'nan'"),
         id="env-wait-nan"),
    case("run", "--prompt", "x", env={"HERMES_CHUNK_TIME_LIMIT": "inf"}, says=("HERMES_CHUNK_TIME_LIMIT", "'inf'"),
         id="env-chunk-limit-inf"),
    case("run", "--prompt", "x", env={"HERMES_HEARTBEAT": "inf"}, says=("HERMES_HEARTBEAT", "'inf'"),
         id="heartbeat-inf"),
    case("history", "--export", "²:x", says=("--export", "'²:x'"), id="export-superscript-id"),
    case("history", "--export", f"{BIG}:x", says=("--export", BIG), id="export-huge-id"),
    case("task", "--delete", BIG, says=("--delete", BIG), id="delete-huge-id"),
    case("task", "--prompt", NOT_UTF8, says=("--prompt", "not valid UTF-8", "0xff"), id="prompt-not-utf8"),
    case("task", "--prompt", "-", stdin=b"caf\xff", says=("standard input", "not valid UTF-8", "0xff at offset 3"),
         id="stdin-prompt-not-utf8"),
    # -- float options and settings: NaN, infinities, -0, out of range
    case("run", "--prompt", "x", "--wait-for-workers", "inf", says=("'inf'",), id="wait-inf"),
    case("run", "--prompt", "x", "--wait-for-workers", "1e309", says=("'1e309'", "finite"), id="wait-1e309"),
    case("run", "--prompt", "x", "--wait-for-workers", "-1", says=("'-1'", "between 0 and 86400"), id="wait-negative"),
    case("run", "--prompt", "x", "--wait-for-workers", "1e9", says=("'1e9'", "between 0 and 86400"), id="wait-huge"),
    case("queue", "--all", "--wait-for-workers", "nan", says=("'nan'",), id="queue-wait-nan"),
    case("run", "--prompt", "x", env={"HERMES_HEARTBEAT": "1e9"}, says=("HERMES_HEARTBEAT", "between 0.1 and 3600"),
         id="heartbeat-huge"),
    case("run", "--prompt", "x", env={"HERMES_HEARTBEAT": "1e-300"}, says=("HERMES_HEARTBEAT",), id="heartbeat-tiny"),
    case("run", "--prompt", "x", env={"HERMES_BROKER_TIMEOUT": "-inf"}, says=("HERMES_BROKER_TIMEOUT",),
         id="broker-timeout-minus-inf"),
    case("run", "--prompt", "x", env={"HERMES_OUTAGE_TIMEOUT": "-0"}, says=("HERMES_OUTAGE_TIMEOUT", "'-0'"),
         id="outage-minus-zero"),
    case("run", "--prompt", "x", env={"HERMES_DOCKER_TIMEOUT": "NaN"}, says=("HERMES_DOCKER_TIMEOUT",),
         id="docker-timeout-nan"),
    case("run", "--prompt", "x", env={"HERMES_CONTAINER_CPUS": "inf"}, says=("HERMES_CONTAINER_CPUS",), id="cpus-inf"),
    # -- integers that reach C: SQLite, Redis EXPIRE, timers, the process table
    case("run", "--prompt", "x", env={"HERMES_RESULT_TTL": BIG}, says=("HERMES_RESULT_TTL", "between 1 and"),
         id="result-ttl-huge"),
    case("run", "--prompt", "x", env={"HERMES_PROCESSES": "1000000"}, says=("HERMES_PROCESSES",), id="env-processes"),
    case("run", "--prompt", "x", env={"HERMES_CHUNK_SIZE": "٣"}, says=("HERMES_CHUNK_SIZE", "whole number"),
         id="chunk-size-arabic-digit"),
    case("run", "--prompt", "x", env={"HERMES_CONTAINER_PIDS": "0"}, says=("HERMES_CONTAINER_PIDS",), id="pids-zero"),
    case("run", "--prompt", "x", env={"HERMES_CONTAINER_MEMORY": "1m"}, says=("HERMES_CONTAINER_MEMORY", "6m"),
         id="memory-below-docker-minimum"),
    case("run", "--prompt", "x", env={"HERMES_FLOWER_PORT": "70000"}, says=("HERMES_FLOWER_PORT",), id="flower-port"),
    case("run", "--prompt", "x", env={"HERMES_MAX_VALIDATION": BIG}, says=("HERMES_MAX_VALIDATION",),
         id="env-max-validation-huge"),
    case("run", "--prompt", "x", env={"HERMES_MAX_PROMPT_BYTES": NOT_UTF8}, says=("HERMES_MAX_PROMPT_BYTES",),
         id="env-not-utf8"),
    case("batch", "in.jsonl", "-o", "-", "--chunk-size", str(10**12), says=("--chunk-size", "between 1 and 100000"),
         id="chunk-size-huge"),
    case("batch", "in.jsonl", "-o", "-", "--processes", str(10**6), says=("--processes", "between 1 and 1024"),
         id="processes-huge"),
    case("batch", "in.jsonl", "-o", "-", "--max-prompt-bytes", str(10**18), says=("--max-prompt-bytes",),
         id="max-prompt-bytes-huge"),
    case("task", "--prompt", "x", "--max-validation", str(10**20), says=("--max-validation",),
         id="max-validation-huge"),
    case("task", "--delete", "0", says=("--delete",), id="delete-zero"),
    case("history", "-n", str(10**20), says=("-n",), id="history-n-huge"),
    case("queue", "-n", str(10**20), says=("-n",), id="queue-n-huge"),
    case("log", "-n", str(10**20), says=("-n",), id="log-n-huge"),
    case("worker", "--concurrency", str(10**6), says=("--concurrency",), id="worker-concurrency-huge"),
    case("log", "--since", "garbage", says=("--since",), id="log-since"),
    case("metrics", "--port", "9808", "--address", "999.1.1.1", says=("--address", "999.1.1.1"),
         id="metrics-address"),
    case("flower", "--insecure-no-auth", "--address", NOT_UTF8, says=("--address", "not an address"),
         id="flower-address-not-utf8"),
    # -- URLs: a typo is a usage error, not a traceback from the Redis client
    case("run", "--prompt", "x", env={"HERMES_BROKER_URL": "redis://[::1"}, says=("HERMES_BROKER_URL", "IPv6"),
         id="broker-url-bracket"),
    case("run", "--prompt", "x", env={"HERMES_BROKER_URL": "redis://h:99999/0"}, says=("HERMES_BROKER_URL", "Port"),
         id="broker-url-port"),
    case("run", "--prompt", "x", env={"HERMES_RESULT_BACKEND": "unix://"}, says=("HERMES_RESULT_BACKEND", "socket"),
         id="result-backend-unix-no-path"),
    case("run", "--prompt", "x", env={"HERMES_BROKER_URL": "redis://:s3cret@h/0?socket_timeout=x"},
         says=("HERMES_BROKER_URL", "socket_timeout"), id="broker-url-option"),
    # -- files a user names
    case("run", "--prompt", "x", "--profile-file", "deep.toml", says=("deep.toml", "nested too deeply"),
         id="profile-nested-5000"),
    case("run", "--prompt", "x", "--profile-file", "/dev/zero", says=("/dev/zero", "not a regular file"),
         id="profile-dev-zero"),
    case("run", "--prompt", "x", "--profile-file", "fifo.toml", says=("fifo.toml", "not a regular file"),
         id="profile-fifo"),
    case("run", "--prompt", "x", "--profile-file", "big.toml", says=("big.toml", "larger than"), id="profile-huge"),
    case("run", "--prompt", "x", "--profile-file", "steps.toml", says=("steps.toml", "at most 100"),
         id="profile-many-steps"),
    case("run", "--prompt", "x", "--profile-file", "many.toml", says=("many.toml", "at most 256"),
         id="profile-many-profiles"),
    case("run", "--prompt", "x", "--profile-file", "control.toml", says=("control.toml", "\\x1b[2J", "invalid"),
         id="profile-name-with-escape"),
    case("run", "--prompt", "x", "--profile-file", "latin1.toml", says=("latin1.toml", "not UTF-8"),
         id="profile-not-utf8"),
    case("run", "--prompt", "-", stdin=b"x" * 2000, env={"HERMES_MAX_PROMPT_BYTES": "1000"},
         says=("standard input", "larger than 1,000 bytes"), id="stdin-prompt-too-big"),
    case("task", "--list", env={"HERMES_HOME": "home-is-a-file"}, says=("HERMES_HOME", "not a directory"),
         id="home-is-a-file"),
    case("batch", "in.jsonl", "-o", "x" * 300, says=("File name too long",), id="output-name-too-long"),
    case("batch", "in.jsonl", "-o", "", says=("empty",), id="output-empty"),
    case("batch", NOT_UTF8, "-o", "-", says=("cannot read input", "caf\\xff"), id="input-name-not-utf8"),
    case("batch", "/proc/self/mem", "-o", "-", says=("cannot read input /proc/self/mem", "Input/output error"),
         id="input-fails-on-first-read"),
    case("run", "--prompt", "x", "--profile", "", says=("unknown profile ''",), id="profile-empty"),
    # -- a worker's name: every reader of the registry must take it (else a worker consumes chunks
    #    that no producer knows it holds), and it reaches terminals, Flower and metrics labels
    case("worker", "--name", "", says=("--name", "'' is not a worker name"), id="worker-name-empty"),
    case("worker", "--name", "a b", says=("'a b' is not a worker name",), id="worker-name-space"),
    case("worker", "--name", "\x1b[2J", says=("'\\x1b[2J' is not a worker name",), id="worker-name-escape"),
    case("worker", "--name", "local@x", says=("'local@x' is not a worker name",), id="worker-name-at"),
    case("worker", "--name", "-x", says=("'-x' is not a worker name",), id="worker-name-dash"),
    case("worker", "--name", "../x", says=("'../x' is not a worker name",), id="worker-name-path"),
    case("worker", "--name", "w" * 201, says=("is not a worker name", "at most 200"), id="worker-name-long"),
]


@pytest.fixture
def hostile_files(tmp_path: Path) -> Path:
    """The files the table names, in the directory commands run in."""
    (tmp_path / "in.jsonl").write_text('{"prompt": "x"}\n')
    (tmp_path / "deep.toml").write_text("[profiles.a]\nsteps = " + "[" * 5000 + "]" * 5000 + "\n")
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "big.toml").write_text("# " + "x" * 2_000_000 + "\n")
    (tmp_path / "steps.toml").write_text("[profiles.a]\nsteps = [" + ", ".join(['"nfc"'] * 10**5) + "]\n")
    (tmp_path / "many.toml").write_text("".join(f'[profiles.p{n}]\nsteps = ["nfc"]\n' for n in range(5000)))
    (tmp_path / "control.toml").write_text('[profiles."a\\u001b[2J"]\nsteps = ["nfc"]\n')
    (tmp_path / "latin1.toml").write_bytes(b'[profiles.caf\xe9]\nsteps = ["nfc"]\n')
    (tmp_path / "home-is-a-file").write_text("")
    return tmp_path


@pytest.mark.parametrize(("argv", "env", "stdin", "code", "says"), VALUES)
def test_a_hostile_value_is_refused_by_name_never_a_traceback(
    argv: list[str],
    env: dict[str, str],
    stdin: bytes | None,
    code: int,
    says: tuple[str, ...],
    hostile_files: Path,
    hermes: HermesRunner,
) -> None:
    """Each row: a value Hermes cannot use. It exits 2 with a message naming it, and no traceback."""
    # Given a command line, an environment and standard input holding one hostile value
    full_env = {k: str(hostile_files / v) if k == "HERMES_HOME" else v for k, v in env.items()}

    # When hermes runs
    done = hermes(*argv, env=full_env, input=stdin if stdin is not None else b"", timeout=60)

    # Then it is refused with the documented code, naming the value, before doing anything
    assert done.returncode == code, done.stderr
    for word in says:
        assert word in done.stderr, (word, done.stderr)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "processing" not in done.stderr  # refused before any work started


def test_every_numeric_setting_has_bounds_in_the_readme() -> None:
    """The README's limits table lists every bounded HERMES_* variable with the bounds the code uses."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    show = hermes_settings.show_number
    for name, (low, high) in hermes_settings.LIMITS.items():
        assert f"| `{name}` | {show(low)} | {show(high)} |" in readme, name


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309", "-1", BIG, "", " ", "0x10", "١", NOT_UTF8])
def test_every_numeric_setting_refuses_or_ignores_absurd_text(value: str) -> None:
    """Every bounded HERMES_* variable with each absurd value: SettingsError naming it, or the default if blank."""
    for name in hermes_settings.LIMITS:
        if not value.strip():
            assert Settings.from_env({name: value}) == Settings.from_env({}), name
            continue
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({name: value})
        assert str(refused.value).startswith(f"{name}={value!r} is invalid"), (name, value)


# -- the entry point: no traceback, whatever happens -------------------------------------


GUARDED = """
import sys
import click
from hermes_producer import logs
from hermes_producer.cli.guard import GuardedGroup

@click.group(cls=GuardedGroup)
def main():
    logs.configure(sys.argv[1])

@main.command()
@click.argument("what")
def fail(what):
    raise {"bug": RuntimeError("a bug \\x1b[2J here"), "ctrl-c": KeyboardInterrupt(), "abort": click.Abort(),
           "exception": click.ClickException("plain click error")}[what]

main(sys.argv[2:], prog_name="hermes")
"""


@pytest.mark.parametrize(
    ("what", "code", "says"),
    [
        ("bug", 3, "hermes: error: internal error: RuntimeError: a bug \\x1b[2J here (details: hermes debug --error)"),
        ("ctrl-c", 130, "hermes: interrupted"),
        ("abort", 130, "hermes: interrupted"),
        ("exception", 2, "Error: plain click error"),
    ],
)
def test_the_entry_point_ends_every_failure_with_one_line(what: str, code: int, says: str, tmp_path: Path) -> None:
    """Whatever a command raises: one line and a documented exit code; a bug's traceback goes to the log only."""
    log_dir = tmp_path / "log"
    done = subprocess.run([sys.executable, "-c", GUARDED, str(log_dir), "fail", what], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == code, done.stderr
    assert done.stderr.strip() == says
    if what == "bug":
        logged = [json.loads(line) for line in (log_dir / "hermes.log").read_text().splitlines()]
        assert logged[-1]["event"] == "cli.crashed" and "RuntimeError: a bug" in logged[-1]["traceback"]


def test_a_damaged_task_store_is_an_error_naming_the_task(hermes: HermesRunner, tmp_path: Path) -> None:
    """A task whose profile is not a JSON object (a store edited by hand): exit 3 naming the task, no crash."""
    import sqlite3

    assert hermes("task", "--prompt", "x").returncode == 0
    with sqlite3.connect(tmp_path / "hermes-home" / "hermes.db") as db:
        db.execute("UPDATE tasks SET profile = '[]'")
    db.close()

    done = hermes("task", "--list")

    assert done.returncode == 3 and "task 1" in done.stderr and "damaged" in done.stderr, done.stderr
    assert "internal error" not in done.stderr


def test_closed_standard_streams_are_refused_not_written_into_files(hermes_env: dict[str, str], tmp_path: Path) -> None:
    """`2>&-`: notices must not land in the output file that took descriptor 2; `<&-` / `>&-` are usage errors."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "x"}\n')
    no_stderr = subprocess.run(["sh", "-c", 'exec "$0" -m hermes_producer batch "$1" -o "$2" 2>&-', sys.executable,
                                str(source), str(tmp_path / "out.jsonl")],
                               env=hermes_env, cwd=tmp_path, timeout=60)  # fmt: skip
    assert no_stderr.returncode == 0
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["a"]

    no_stdin = subprocess.run(["sh", "-c", 'exec "$0" -m hermes_producer batch - -o - <&-', sys.executable],
                              env=hermes_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert no_stdin.returncode == 2 and "standard input is closed" in no_stdin.stderr
    no_stdout = subprocess.run(["sh", "-c", 'exec "$0" -m hermes_producer batch "$1" -o - >&-', sys.executable,
                                str(source)], env=hermes_env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                               timeout=60)  # fmt: skip
    assert no_stdout.returncode == 2 and "standard output is closed" in no_stdout.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly(hermes_env: dict[str, str], tmp_path: Path) -> None:
    """`hermes batch ... -o - | head -1`: no traceback, and the exit code of a command killed by SIGPIPE."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{n}"}) + "\n" for n in range(50_000)))
    command = [sys.executable, "-m", "hermes_producer", "batch", str(source), "-o", "-"]
    with subprocess.Popen(
        command, env=hermes_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()
        process.stdout.close()
        errors = process.stderr.read().decode()
        assert process.wait(timeout=120) == 141, errors
    assert "Traceback" not in errors and "Exception ignored" not in errors


@pytest.mark.cluster
def test_ctrl_c_while_waiting_for_workers_is_exit_130(
    hermes_process: HermesProcessFactory, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    """Ctrl-C during --wait-for-workers (a broker, no worker): "hermes: interrupted", exit 130, no "Aborted!"."""
    # Given a batch waiting for a worker that never comes
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    command = ["batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--isolation", "local",
               "--wait-for-workers", "60"]  # fmt: skip
    batch = hermes_process(*command, env=cluster_env)
    wait_until(lambda: "waiting up to" in batch.stderr, 30, 0.1, lambda: f"the batch to wait:\n{batch.stderr}")

    # When the user presses Ctrl-C
    batch.process.send_signal(signal.SIGINT)

    # Then
    assert batch.wait(timeout=30) == 130, batch.stderr
    rest = batch.stderr
    assert "hermes: interrupted" in rest and "Aborted!" not in rest and "Traceback" not in rest
    assert not (tmp_path / "out.jsonl.lock").exists()


# -- terminal injection --------------------------------------------------------------------

ESCAPES = ("\x1b", "\x07", "\x9b", "\u202e")


def assert_no_raw_controls(text: str) -> None:
    for char in ESCAPES:
        assert char not in text, (char, text)


def test_a_hostile_file_name_is_shown_not_obeyed(hermes: HermesRunner, tmp_path: Path) -> None:
    """An input named with escape sequences: notices, `hermes log` and `hermes log --json` show it escaped."""
    source = tmp_path / "in\x1b]0;pwned\x07\x9b2J\u202e.jsonl"
    source.write_text('{"prompt": "x"}\n')

    done = hermes("batch", str(source), "-o", "-")
    log = hermes("log", "-n", "20")
    as_json = hermes("log", "-n", "20", "--json")

    assert done.returncode == 0, done.stderr
    for shown in (done.stderr, log.stdout, as_json.stdout):
        assert_no_raw_controls(shown)
    assert "in\\x1b]0;pwned\\x07" in done.stderr and "in\\x1b]0;pwned\\x07" in log.stdout
    started = [json.loads(line) for line in as_json.stdout.splitlines() if '"batch.started"' in line]
    assert started and started[-1]["input"] == str(source)  # --json is still exact JSON


def test_task_list_and_history_show_prompts_and_results_escaped(hermes: HermesRunner) -> None:
    """A scheduled prompt (and its nfc result, which keeps control characters) never reaches the terminal raw."""
    hostile = "clear \x1b[2J title \x1b]0;pwned\x07 csi \x9b31m rtl \u202egnp.exe"
    assert hermes("task", "--prompt", hostile, "--profile", "nfc").returncode == 0

    listed = hermes("task", "--list")
    assert listed.returncode == 0 and "\\x1b[2J" in listed.stdout
    assert_no_raw_controls(listed.stdout)

    assert hermes("queue", "--all").returncode == 0
    history = hermes("history")
    exported = hermes("history", "--export", "1:-")
    assert "\\x1b[2J" in history.stdout
    for shown in (history.stdout, exported.stdout):
        assert_no_raw_controls(shown)
    assert json.loads(exported.stdout)["prompt"] == hostile  # escaped for the terminal, exact as JSON


def test_batch_summary_shows_hostile_error_messages_escaped(hermes: HermesRunner, tmp_path: Path) -> None:
    """Ids with escape sequences in the first errors of the summary are escaped."""
    source = tmp_path / "in.jsonl"
    hostile = "\u001b]0;pwned\u0007\u009b2J"
    rows = [{"id": hostile, "prompt": "x"}, {"id": hostile, "prompt": "y"}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))

    done = hermes("batch", str(source), "-o", "-")

    assert done.returncode == 1 and "duplicate_id" in done.stderr
    assert_no_raw_controls(done.stderr)
