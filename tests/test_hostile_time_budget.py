"""Issue 11, class 1, defence in depth: an item over its CPU-time budget becomes a ``too_slow``
record of its own, and the other items of its chunk go on, in-process, on a Celery worker and in
the sandbox.

No step is slow on purpose: the tests use a tiny budget (``HERMES_ITEM_TIME_BUDGET``, which
travels in the chunk request) and an input that is genuinely slow, a 1 MiB line that ftfy peels
one character a pass (its work is bounded, but it is seconds of it). The budget's mechanism (a
CPU timer whose signal interrupts even a regular expression running in C) has its own tests.
"""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hermes_worker import contract
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.contract import ContractError
from hermes_worker.engine import BUILTIN_PROFILES
from hermes_worker.engine import budget as budget_module
from hermes_worker.engine.budget import ItemTooSlow, item_budget_s, normalize_within_budget
from hermes_worker.processing import process_chunk
from hermes_worker.settings import Settings, SettingsError
from hermes_worker.wire import ChunkRequest, Item

from .support.fixture_types import HermesRunner, WorkerFactory
from .support.inputs import read_records

MIB = 1024 * 1024
# Two-byte characters: 1 MiB of UTF-8, a line ftfy repairs by removing one "Â" a pass.
SLOW_PROMPT = "\u00c2" * (MIB // 2 - 1) + "\u00a9"
# At this scale a 1 MiB prompt gets 1.55 s of CPU (the slow prompt needs many more), a short
# one 50 ms (it needs well under one).
TEST_SCALE = 0.05


def _restored() -> bool:
    return signal.getsignal(signal.SIGPROF) == signal.SIG_DFL and signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


# --- the mechanism ----------------------------------------------------------------------------


def test_a_runaway_regular_expression_in_c_is_interrupted() -> None:
    """Python 3.11's re engine checks for signals while it matches: the budget stops it there."""
    # Given the pattern rstrip_lines used before issue 11, and a line it needs minutes for
    runaway = re.compile(r"[^\S\n]+$", re.MULTILINE)
    line = " " * 200_000 + "x"
    # When it runs under a budget of 0.2 s of CPU
    start = time.process_time()
    with budget_module._SignalClock.installed() as clock, pytest.raises(ItemTooSlow) as raised:
        assert clock is not None  # the test runs in the main thread
        clock.run(0.2, line, lambda: runaway.sub("", line))
    # Then it stops at the budget, with a message naming it, and leaves no handler or timer behind
    assert time.process_time() - start < 5
    assert raised.value.code == contract.TOO_SLOW
    assert raised.value.message == (
        "normalization took longer than its budget of 0.2 s of CPU time (prompt of 200,001 bytes)"
    )
    assert _restored()


def test_outside_the_main_thread_the_budget_is_checked_between_steps() -> None:
    """Signals only reach the main thread; a library user's thread still gets its too_slow."""
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            normalize_within_budget("a \u00a0 b\n" * 100_000, BUILTIN_PROFILES["compact"], scale=1e-6)
            outcome.append(None)
        except BaseException as exc:  # the test reads it below
            outcome.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert isinstance(outcome[0], ItemTooSlow)
    assert _restored()


def test_a_budget_defers_to_a_sigprof_handler_that_is_not_its_own() -> None:
    """A sampling profiler owns SIGPROF: the budget leaves it alone and checks between steps."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGPROF, lambda signum, frame: calls.append(signum))
    try:
        with pytest.raises(ItemTooSlow):
            normalize_within_budget("a \u00a0 b\n" * 100_000, BUILTIN_PROFILES["compact"], scale=1e-6)
        assert signal.getsignal(signal.SIGPROF) is not signal.SIG_DFL  # still the profiler's
    finally:
        signal.signal(signal.SIGPROF, previous)


def test_the_default_budget_grows_with_the_prompt_and_zero_turns_it_off() -> None:
    assert item_budget_s("hello") == pytest.approx(1.0, abs=1e-3)
    assert item_budget_s("x" * MIB) == 31.0
    assert item_budget_s(SLOW_PROMPT) == 31.0  # bytes, not characters
    assert item_budget_s("x" * MIB, 2) == 62.0
    assert item_budget_s("x" * MIB, 0) is None
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="budget scale"):
            normalize_within_budget("x", BUILTIN_PROFILES["nfc"], scale=bad)


# --- one chunk: the slow item fails alone ----------------------------------------------------


def _chunk(prompts: list[str], scale: Any = TEST_SCALE) -> ChunkRequest:
    return ChunkRequest(
        options=ChunkOptions(max_validation=1, explain=False, max_prompt_bytes=MIB, item_time_budget=scale),
        chunk=1,
        profile=BUILTIN_PROFILES["prompt"].spec(),
        items=[Item(n, f"p{n}", prompt) for n, prompt in enumerate(prompts, 1)],
    )


def test_the_slow_item_of_a_chunk_fails_alone_and_names_its_budget() -> None:
    # Given a chunk whose second item is far slower than its budget
    prompts = ["caf\u00c3\u00a9", SLOW_PROMPT, "fine  ", "ﬁne\u200b"]
    # When the chunk runs
    result = process_chunk(_chunk(prompts), mode="local", worker="test")
    records = [json.loads(line) for line in result.record_lines()]
    # Then exactly one record per item, the slow one too_slow, the others normalized
    assert [r["id"] for r in records] == ["p1", "p2", "p3", "p4"]
    assert [r.get("text") for r in records] == ["café", None, "fine", "fine"]
    assert records[1]["error"] == {
        "code": "too_slow",
        "message": "normalization took longer than its budget of 1.55 s of CPU time (prompt of 1,048,576 bytes)",
        "line": 2,
    }
    assert (result.ok, result.failed) == (3, 1)
    assert _restored()


def test_with_the_budget_off_the_slow_item_finishes() -> None:
    """Scale 0: no budget; the engine's own bound still ends ftfy's work on the line."""
    result = process_chunk(_chunk(["\u00c2" * 5_000 + "\u00a9", "ok"], scale=0), mode="local", worker="test")
    assert (result.ok, result.failed) == (2, 0)


@pytest.mark.parametrize("bad", [-1, 101, math.nan, math.inf, True, "1", None, [1]])
def test_a_chunk_request_with_a_hostile_budget_is_refused(bad: Any) -> None:
    payload = _chunk(["x"]).to_payload()
    payload["item_time_budget"] = bad
    with pytest.raises(ContractError, match="'item_time_budget' must be a number from 0 to 100"):
        ChunkRequest.from_payload(payload)


def test_a_chunk_request_without_a_budget_gets_the_default() -> None:
    """Requests of producers older than the field keep the protection."""
    payload = _chunk(["x"]).to_payload()
    del payload["item_time_budget"]
    assert ChunkRequest.from_payload(payload).options.item_time_budget == 1.0


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "101", "fast", "1e400"])
def test_a_bad_budget_setting_is_refused_with_its_name(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"HERMES_ITEM_TIME_BUDGET=.* is invalid: "):
        Settings.from_env({"HERMES_ITEM_TIME_BUDGET": raw})


def test_the_budget_setting_reads_off_and_scales() -> None:
    assert Settings.from_env({}).item_time_budget == 1.0
    assert Settings.from_env({"HERMES_ITEM_TIME_BUDGET": "0"}).item_time_budget == 0.0
    assert Settings.from_env({"HERMES_ITEM_TIME_BUDGET": "2.5"}).item_time_budget == 2.5


# --- end to end: in-process, a Celery worker, the sandbox -------------------------------------


def _input(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for prompt in ["hello", "caf\u00c3\u00a9", SLOW_PROMPT, "world  "]:
            handle.write(json.dumps({"prompt": prompt}, ensure_ascii=False) + "\n")
    return path


def _assert_only_the_slow_item_failed(out: Path, mode: str) -> None:
    records = read_records(out)
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r.get("text") for r in records] == ["hello", "café", None, "world"]
    assert records[2]["error"]["code"] == "too_slow"
    assert "budget of 1.55 s of CPU time (prompt of 1,048,576 bytes)" in records[2]["error"]["message"]
    assert {r["provenance"]["mode"] for r in records} == {mode}


def _batch(run: HermesRunner, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Path:
    out = tmp_path / "out.jsonl"
    env = {"HERMES_ITEM_TIME_BUDGET": str(TEST_SCALE), **(env or {})}
    done = run("batch", str(_input(tmp_path / "in.jsonl")), "-o", str(out), *args, env=env)
    assert done.returncode == 1, done.stderr  # some items failed: their records say why
    assert "Traceback" not in done.stderr
    return out


@pytest.mark.parametrize("processes", ["1", "2"], ids=["inline", "process pool"])
def test_in_process_the_slow_item_fails_alone(hermes: HermesRunner, tmp_path: Path, processes: str) -> None:
    out = _batch(hermes, tmp_path, "--processes", processes)
    _assert_only_the_slow_item_failed(out, "local")


@pytest.mark.cluster
def test_on_a_celery_worker_the_slow_item_fails_alone(
    start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    # Given a local worker; the budget is the producer's setting, carried by the chunk request
    start_worker("w1", mode="local")
    out = _batch(chermes, tmp_path, "--isolation", "local", "--no-fallback")
    _assert_only_the_slow_item_failed(out, "local")
    assert {r["provenance"]["worker"] for r in read_records(out)} == {"local@w1"}


@pytest.mark.docker
def test_in_the_sandbox_the_slow_item_fails_alone(
    hermes: HermesRunner, sandbox_image: Any, docker_client: Any, tmp_path: Path
) -> None:
    label = f"hermes-test={uuid.uuid4().hex}"
    env = {"HERMES_SANDBOX_IMAGE": sandbox_image.tag, "HERMES_CONTAINER_LABELS": label}
    out = _batch(hermes, tmp_path, "--isolation", "container", "--processes", "1", env=env)
    _assert_only_the_slow_item_failed(out, "container")
    assert docker_client.containers.list(all=True, filters={"label": label}) == []


@pytest.mark.cluster
@pytest.mark.slow
def test_a_chunk_of_items_each_within_budget_that_outlasts_its_time_limit_is_split_not_failed(
    start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    """Every item is within its own budget, but together they outlast the chunk's soft time limit:
    the item running at that moment is not to blame. The worker says so, the producer splits the
    chunk, and every line gets its normal record (before: that item became `engine_failure`)."""
    # Given a worker whose chunks may run 3 s (soft limit 2.4 s), and eight items of ~0.5 s each
    limit = {"HERMES_CHUNK_TIME_LIMIT": "3"}
    start_worker("w1", mode="local", env=limit)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": "Â" * 20_000 + "©"}) + "\n" for _ in range(8)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    # When they go in one chunk
    done = chermes("batch", str(source), "-o", str(out), "--chunk-size", "8", "--isolation", "local", "--no-fallback",
                   env=limit, timeout=240)  # fmt: skip
    # Then every line has its normal record, and the producer said it split the chunk
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    assert [r["line"] for r in records] == list(range(1, 9))
    assert all("error" not in r for r in records), [r.get("error") for r in records]
    assert "split into" in done.stderr
