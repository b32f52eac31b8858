"""The public task ``hermes.normalize`` without Celery or Redis: its arguments, its records, where it
runs, and what the worker's main process refuses before it runs (tests/test_celery_interop.py
proves the same against real Redis, real workers and a plain Celery client).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.contract import MAX_CHUNK_LINES, MAX_PUBLIC_MESSAGE_BYTES, QUEUE_PUBLIC, worker_queues
from hermes_worker.guard import public_message_problem
from hermes_worker.processing import process_chunk
from hermes_worker.public import BadArguments, Forward, NormalizeCall, NotRun, RunHere, placement, records
from hermes_worker.registry import WorkerInfo
from hermes_worker.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"HERMES_HOME": str(tmp_path / "home")})


def run(call: NormalizeCall, chunk_size: int = 2) -> list[dict[str, Any]]:
    """The call's records, run here as a local worker runs it."""
    return records([process_chunk(r, mode="local", worker="local@t") for r in call.requests(chunk_size)])


# Arguments ---------------------------------------------------------------------------------------


def test_one_record_per_prompt_in_order_with_its_position_as_id(settings: Settings) -> None:
    call = NormalizeCall.from_arguments([["a  b", "ﬁne", "x"]], {"profile": "compact"}, settings)
    got = run(call)
    assert [(r["id"], r["line"], r["text"], r["changed"]) for r in got] == [
        (1, 1, "a b", True), (2, 2, "fine", True), (3, 3, "x", False)]  # fmt: skip
    assert got[0]["provenance"]["profile"] == "compact" and got[0]["provenance"]["worker"] == "local@t"


def test_what_the_call_leaves_out_comes_from_the_workers_settings(tmp_path: Path) -> None:
    env = {"HERMES_HOME": str(tmp_path), "HERMES_PROFILE": "nfkc", "HERMES_MAX_VALIDATION": "3",
           "HERMES_ISOLATION": "container"}  # fmt: skip
    call = NormalizeCall.from_arguments([[]], {}, Settings.from_env(env))
    assert (call.profile["name"], call.options.max_validation, call.isolation) == ("nfkc", 3, "container")
    given = NormalizeCall.from_arguments([[]], {"profile": None, "max_validation": 0, "explain": True},
                                         Settings.from_env(env))  # fmt: skip
    assert (given.profile["name"], given.options.max_validation, given.options.explain) == ("nfkc", 0, True)


def test_a_prompt_that_is_not_a_string_is_its_own_error_record(settings: Settings) -> None:
    odd_error = {"error": {"code": ["not", "hashable"], "message": "x"}}
    got = run(NormalizeCall.from_arguments([["ok", 42, None, {"x": 1}, ["deeper"], odd_error]], {}, settings))
    assert got[0]["text"] == "ok"
    assert [r["error"]["code"] for r in got[1:]] == ["prompt_not_string"] * 5
    assert [r["line"] for r in got] == [1, 2, 3, 4, 5, 6]


def test_records_stand_for_their_text_and_a_chords_lists_are_taken_in_order(settings: Settings) -> None:
    """A chain passes records on; a chord hands its body the header's lists of records."""
    first = run(NormalizeCall.from_arguments([["cafÃ©  x", ""]], {"profile": "prompt"}, settings))
    assert first[0]["text"] == "café  x" and first[1]["error"]["code"] == "empty_prompt"
    again = run(NormalizeCall.from_arguments([first], {"profile": "compact"}, settings))
    assert again[0]["text"] == "café x" and again[1]["error"] == {**first[1]["error"], "line": 2}
    header = [first, [{"text": "ﬁne"}], []]
    body = run(NormalizeCall.from_arguments([header], {"profile": "nfkc"}, settings))
    assert [r.get("text") for r in body] == ["café  x", None, "fine"] and [r["line"] for r in body] == [1, 2, 3]


BAD_CALLS: list[tuple[str, list[Any], dict[str, Any], str]] = [
    ("not a list", ["a  b"], {}, "the prompts must be a list of strings, got str"),
    ("no prompts", [], {}, "takes one positional argument"),
    ("two positional", [["a"], "compact"], {}, "got 2 positional arguments"),
    ("unknown keyword", [["a"]], {"profle": "compact"}, "unknown keyword ['profle']"),
    ("unknown profile", [["a"]], {"profile": "promt"}, "unknown profile 'promt' (did you mean 'prompt'?)"),
    ("profile of a megabyte", [["a"]], {"profile": "p" * 2**20}, "'profile' must be a profile's name"),
    ("profile spec with an unknown step", [["a"]], {"profile": {"name": "p", "steps": ["rm_rf"]}}, "'rm_rf'"),
    ("isolation", [["a"]], {"isolation": "sandbox"}, "'isolation' must be one of auto, container, local"),
    ("max_validation huge", [["a"]], {"max_validation": 10**9}, "'max_validation' must be an integer"),
    ("explain a string", [["a"]], {"explain": "yes"}, "'explain' must be true or false"),
    ("max_prompt_bytes huge", [["a"]], {"max_prompt_bytes": 10**15}, "'max_prompt_bytes'"),
    ("too many prompts", [[""] * (MAX_CHUNK_LINES + 1)], {}, "at most 1,048,576 prompts a task, got 1,048,577"),
    ("too many in a chord's lists", [[[""] * MAX_CHUNK_LINES, [""]]], {}, "got 1,048,577"),
]


@pytest.mark.parametrize(("what", "args", "kwargs", "said"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_wrong_arguments_are_named_and_nothing_runs(
    what: str, args: list[Any], kwargs: dict[str, Any], said: str, settings: Settings
) -> None:
    with pytest.raises(BadArguments) as caught:
        NormalizeCall.from_arguments(args, kwargs, settings)
    assert said in str(caught.value) and str(caught.value).startswith("hermes.normalize")
    assert len(str(caught.value)) < 400  # a hostile value is never quoted whole


def test_a_profile_may_be_a_spec_or_one_of_the_workers_profile_file(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('[profiles.tidy]\nsteps = ["nfkc", "collapse_whitespace"]\n')
    settings = Settings.from_env({"HERMES_HOME": str(tmp_path), "HERMES_PROFILE_FILE": str(tmp_path / "p.toml")})
    assert run(NormalizeCall.from_arguments([["ﬁ  x"]], {"profile": "tidy"}, settings))[0]["text"] == "fi x"
    spec = {"name": "mine", "steps": ["nfkc"]}
    assert run(NormalizeCall.from_arguments([["ﬁ  x"]], {"profile": spec}, settings))[0]["text"] == "fi  x"


def test_the_call_is_cut_into_chunks_and_a_container_call_says_so(settings: Settings) -> None:
    call = NormalizeCall.from_arguments([[str(n) for n in range(5)]], {"isolation": "container"}, settings)
    requests = call.requests(2)
    assert [[item.line for item in r.items or []] for r in requests] == [[1, 2], [3, 4], [5]]
    assert {r.isolation for r in requests} == {"container"} and [r.chunk for r in requests] == [0, 1, 2]


def test_records_too_large_for_a_result_are_an_error(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import hermes_worker.public as public

    monkeypatch.setattr(public, "MAX_VALUE_BYTES", 1000)
    with pytest.raises(BadArguments, match="over the 1,000 a result may hold: send fewer prompts a task"):
        run(NormalizeCall.from_arguments([["x" * 600, "y" * 600]], {}, settings))


def test_records_of_a_chunk_share_one_provenance_object(settings: Settings) -> None:
    got = run(NormalizeCall.from_arguments([["a", "b", "c"]], {}, settings), chunk_size=3)
    assert got[0]["provenance"] is got[2]["provenance"]
    assert json.loads(json.dumps(got)) == got


# Where it runs -----------------------------------------------------------------------------------


def entry(name: str, tag: str, queues: list[str]) -> WorkerInfo:
    return WorkerInfo(name, tag, 1, queues, "h", 1, {}, {})


LOCAL = entry("local@a", "local", worker_queues("local", True))
BOX = entry("container@b", "container", worker_queues("container", True))
BOX_WITHOUT_ENGINE = entry("container@c", "container", [])


PLACES: list[tuple[str, str, str, list[WorkerInfo], RunHere | Forward]] = [
    ("auto prefers containers", "auto", "local", [LOCAL, BOX], Forward("hermes.container")),
    ("auto on the container worker", "auto", "container", [LOCAL, BOX], RunHere()),
    ("auto, local workers only", "auto", "local", [LOCAL, BOX_WITHOUT_ENGINE], RunHere()),
    ("local from a container worker", "local", "container", [LOCAL, BOX], Forward("hermes.local")),
    ("container from a local worker", "container", "local", [LOCAL, BOX], Forward("hermes.container")),
]


@pytest.mark.parametrize(("what", "isolation", "tag", "workers", "where"), PLACES, ids=[p[0] for p in PLACES])
def test_from_the_public_queue_a_call_goes_where_a_chunk_would(
    what: str, isolation: str, tag: str, workers: list[WorkerInfo], where: RunHere | Forward
) -> None:
    assert placement(isolation, tag, QUEUE_PUBLIC, workers) == where


def test_a_container_call_never_runs_unisolated() -> None:
    with pytest.raises(NotRun, match=r"no live container worker .* never runs outside a container"):
        placement("container", "local", QUEUE_PUBLIC, [LOCAL, BOX_WITHOUT_ENGINE])
    with pytest.raises(NotRun, match="never run outside a container"):
        placement("container", "local", "hermes.local", [])  # a hand-made message on the tag's queue
    assert placement("container", "container", "hermes.container", []) == RunHere()
    with pytest.raises(NotRun, match="no live local worker"):
        placement("local", "container", QUEUE_PUBLIC, [BOX])


# What the main process refuses -------------------------------------------------------------------

GOOD = [[["a  b"]], {"profile": "compact"}, {}]
HEADERS = {"task": "hermes.normalize", "id": "t1"}
PUBLIC = {"routing_key": "celery"}
LIMITS = (120.0, 96.0)


def normalize_signature(**options: Any) -> dict[str, Any]:
    return {"task": "hermes.normalize", "args": [], "kwargs": {}, "options": options, "subtask_type": None}


MESSAGES: list[tuple[str, dict[str, Any], Any, dict[str, Any] | None, str]] = [
    ("an ETA", {"eta": "2999-01-01T00:00:00+00:00"}, GOOD, PUBLIC, "ETA or countdown"),
    ("longer time limits", {"timelimit": [10**6, None]}, GOOD, PUBLIC, "time limits of its own"),
    ("no task id", {"id": None}, GOOD, PUBLIC, "without a task id"),
    ("a task id of a megabyte", {"id": "x" * 2**20}, GOOD, PUBLIC, "without a task id"),
    ("another queue", {}, GOOD, {"routing_key": "app.jobs"}, "dropped"),
    ("errbacks", {}, [GOOD[0], {}, {"errbacks": [normalize_signature()]}], PUBLIC, "errbacks"),
    ("a callback to another task", {}, [GOOD[0], {}, {"callbacks": [{"task": "app.exfiltrate"}]}], PUBLIC,
     "another task"),
    ("a chord body of another task", {}, [GOOD[0], {}, {"chord": {"task": "celery.group"}}], PUBLIC, "another task"),
    ("a chain step routed by the sender", {}, [GOOD[0], {}, {"chain": [normalize_signature(routing_key="x")]}],
     PUBLIC, "says where to send it"),
    ("a body that is not a list", {}, {"args": []}, PUBLIC, "not [args, kwargs, options]"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "headers", "body", "delivery", "said"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_the_main_process_refuses_what_it_would_act_on_for_the_sender(
    what: str, headers: dict[str, Any], body: Any, delivery: dict[str, Any] | None, said: str
) -> None:
    problem = public_message_problem(HEADERS | headers, lambda: body, delivery, "local", 100, LIMITS)
    assert problem is not None and said in problem.reason and not problem.requeue
    # A dropped message with a task id gets its error result: its client is not left waiting.
    assert problem.task_id == (None if "task id" in what else "t1")


def test_what_a_plain_client_and_a_worker_send_passes() -> None:
    chord = {"chord": normalize_signature(task_id="b1", group_id="g1")}
    for headers, body, queue in [
        (HEADERS, GOOD, "celery"),
        (HEADERS | {"timelimit": [120.0, 96.0]}, [GOOD[0], {}, chord], "celery"),  # a worker's own limits
        (HEADERS | {"timelimit": [None, 5]}, [GOOD[0], {}, {"chain": [normalize_signature()]}], "hermes.local"),
    ]:
        assert public_message_problem(headers, lambda b=body: b, {"routing_key": queue}, "local", 100, LIMITS) is None


def test_a_message_too_large_is_refused_before_its_body_is_read() -> None:
    def never() -> Any:
        raise AssertionError("the body was decoded")

    problem = public_message_problem(HEADERS, never, PUBLIC, "local", MAX_PUBLIC_MESSAGE_BYTES + 1, LIMITS)
    assert problem is not None and "over the 67,108,864 a message may hold" in problem.reason
    assert problem.task_id == "t1"


def test_a_public_task_for_the_other_kind_of_worker_goes_back_there() -> None:
    problem = public_message_problem(HEADERS, lambda: GOOD, {"routing_key": "hermes.container"}, "local", 100, LIMITS)
    assert problem is not None and problem.requeue and problem.stop_queue == "hermes.container"
    assert problem.task_id is None  # it will run there: no error result
