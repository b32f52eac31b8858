"""The local task store: what `hermes task`, `hermes queue` and `hermes history` rely on."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hermes_producer.store import SCHEMA_VERSION, ClaimLost, StoreError, Task, TaskNotFound, TaskStore

PROFILE = {"name": "prompt", "steps": ["nfkc", "strip"]}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "home" / "hermes.db"


@pytest.fixture
def store(db: Path) -> Iterator[TaskStore]:
    with TaskStore(db) as opened:
        yield opened


def _schedule(store: TaskStore, *prompts: str) -> list[int]:
    return [store.add(prompt, PROFILE, max_validation=1).id for prompt in prompts]


# -- scheduling ----------------------------------------------------------------------------


def test_a_new_store_creates_its_directory_and_a_versioned_schema(db: Path) -> None:
    with TaskStore(db):
        pass
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_an_added_task_is_pending_and_keeps_what_was_given(store: TaskStore) -> None:
    task = store.add("Hello\u00a0world", PROFILE, max_validation=2)

    assert task == store.get(task.id)
    assert (task.prompt, task.profile, task.max_validation) == ("Hello\u00a0world", PROFILE, 2)
    assert (task.status, task.finished_at, task.result) == ("pending", None, None)
    assert task.created_at.endswith("Z") and "T" in task.created_at


def test_tasks_survive_reopening_the_store(db: Path) -> None:
    with TaskStore(db) as first:
        task_id = first.add("kept", PROFILE, 1).id
    with TaskStore(db) as second:
        assert second.get(task_id).prompt == "kept"


def test_list_is_oldest_first_and_filters_by_status_and_limit(store: TaskStore) -> None:
    a, b, c = _schedule(store, "a", "b", "c")
    store.claim(limit=1)

    assert [t.id for t in store.list()] == [a, b, c]
    assert [t.id for t in store.list(status="pending")] == [b, c]
    assert [t.id for t in store.list(status="running")] == [a]
    assert [t.id for t in store.list(limit=2)] == [a, b]
    with pytest.raises(ValueError, match="status"):
        store.list(status="lost")


def test_delete_removes_a_task_and_ids_are_not_reused(store: TaskStore) -> None:
    a, b = _schedule(store, "a", "b")
    store.delete(b)

    assert [t.id for t in store.list()] == [a]
    assert _schedule(store, "c") == [b + 1]


def test_a_running_task_cannot_be_deleted(store: TaskStore) -> None:
    (task_id,) = _schedule(store, "a")
    store.claim(limit=None)

    with pytest.raises(StoreError, match=f"task {task_id} is running"):
        store.delete(task_id)
    assert store.get(task_id).status == "running"


@pytest.mark.parametrize("operation", ["get", "delete", "finish"])
def test_an_unknown_id_is_task_not_found_naming_it(store: TaskStore, operation: str) -> None:
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: store.get(42),
        "delete": lambda: store.delete(42),
        "finish": lambda: store.finish(42, {"id": 42}, ok=True),
    }
    with pytest.raises(TaskNotFound, match="no task 42"):
        calls[operation]()


# -- running -------------------------------------------------------------------------------


def test_claim_takes_the_oldest_pending_tasks_and_marks_them_running(store: TaskStore) -> None:
    a, b, c = _schedule(store, "a", "b", "c")

    first = store.claim(limit=2)
    rest = store.claim(limit=None)

    assert [(t.id, t.status) for t in first] == [(a, "running"), (b, "running")]
    assert [t.id for t in rest] == [c]
    assert store.claim(limit=None) == []
    assert store.claim(limit=0) == []


def test_finish_records_the_result_and_it_is_ready_to_export(store: TaskStore) -> None:
    ok_id, bad_id = _schedule(store, "ok", "bad")
    store.claim(limit=None)
    record = {"id": "p1", "prompt": "Caf\u00e9 \U0001f600", "changed": True, "steps": ["nfkc"]}

    store.finish(ok_id, record, ok=True)
    store.finish(bad_id, {"id": "p2", "error": {"code": "empty_prompt"}}, ok=False)

    done = store.get(ok_id)
    assert (done.status, done.result) == ("done", record)
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert store.get(bad_id).status == "failed"


def test_finish_needs_this_stores_claim(db: Path) -> None:
    with TaskStore(db) as store, TaskStore(db) as other:
        (task_id,) = _schedule(store, "a")
        with pytest.raises(ClaimLost, match=f"task {task_id} is pending"):
            store.finish(task_id, {}, ok=True)

        store.claim(limit=None)
        with pytest.raises(ClaimLost, match=f"task {task_id} is running"):
            other.finish(task_id, {}, ok=True)


def test_release_gives_claimed_tasks_back_in_their_old_order(store: TaskStore) -> None:
    a, b, c = _schedule(store, "a", "b", "c")
    store.claim(limit=2)

    store.release([a, b])

    assert [t.id for t in store.claim(limit=None)] == [a, b, c]


def test_release_leaves_finished_tasks_alone(store: TaskStore) -> None:
    a, b = _schedule(store, "a", "b")
    store.claim(limit=None)
    store.finish(a, {"id": "a"}, ok=True)

    store.release([a, b])

    assert [store.get(a).status, store.get(b).status] == ["done", "pending"]


def test_recover_stale_hands_back_the_tasks_of_a_killed_run(db: Path) -> None:
    with TaskStore(db) as killed_run, TaskStore(db) as next_run:
        a, b = _schedule(killed_run, "a", "b")
        killed_run.claim(limit=None)

        assert next_run.recover_stale(older_than_s=3600) == 0  # a live run keeps its tasks
        assert next_run.recover_stale(older_than_s=0) == 2
        assert [t.id for t in next_run.claim(limit=None)] == [a, b]

        # The run that lost its claim cannot overwrite the new run's result.
        with pytest.raises(ClaimLost):
            killed_run.finish(a, {"id": "stale"}, ok=True)
        next_run.finish(a, {"id": "fresh"}, ok=True)
        assert next_run.get(a).result == {"id": "fresh"}


def test_history_is_finished_tasks_newest_first(store: TaskStore) -> None:
    a, b, c, _pending = _schedule(store, "a", "b", "c", "d")
    store.claim(limit=3)
    for task_id in (b, c, a):
        store.finish(task_id, {"id": task_id}, ok=task_id != c)

    history = store.history()

    assert [t.id for t in history] == [a, c, b]
    assert [t.status for t in history] == ["done", "failed", "done"]
    assert [t.id for t in store.history(limit=1)] == [a]


# -- several processes ---------------------------------------------------------------------


def _drain(db: Path, start: Any, results: Any) -> None:
    """One `hermes queue` run: claim a few at a time, finish each, report what it ran."""
    ran: list[int] = []
    try:
        with TaskStore(db) as store:
            start.wait()
            while batch := store.claim(limit=3):
                for task in batch:
                    store.finish(task.id, {"id": task.id}, ok=True)
                    ran.append(task.id)
    finally:  # report even on failure, so the test fails fast instead of waiting
        results.put(ran)


def test_concurrent_runs_in_separate_processes_never_run_a_task_twice(db: Path) -> None:
    with TaskStore(db) as store:
        scheduled = _schedule(store, *(f"prompt {i}" for i in range(120)))
    context = multiprocessing.get_context("spawn")  # fork would copy pytest's threads and state
    start, results = context.Barrier(4), context.Queue()
    runs = [context.Process(target=_drain, args=(db, start, results)) for _ in range(4)]

    for run in runs:
        run.start()
    ran = [results.get(timeout=60) for _ in runs]
    for run in runs:
        run.join(timeout=60)

    assert [run.exitcode for run in runs] == [0, 0, 0, 0]
    every = [task_id for one in ran for task_id in one]
    assert sorted(every) == scheduled  # each task exactly once
    with TaskStore(db) as store:
        assert {t.status for t in store.list()} == {"done"}
    results.close()
    results.join_thread()


def test_concurrent_claims_from_two_threads_never_share_a_task(db: Path) -> None:
    with TaskStore(db) as store:
        scheduled = _schedule(store, *(f"prompt {i}" for i in range(200)))
    start = threading.Barrier(2)
    claimed: list[list[Task]] = [[], []]

    def run(slot: int) -> None:
        with TaskStore(db) as own:
            start.wait()
            while batch := own.claim(limit=1):
                claimed[slot].extend(batch)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    ids = [task.id for one in claimed for task in one]
    assert sorted(ids) == scheduled


def test_stores_opened_at_once_on_a_new_file_all_work(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_and_add() -> None:
        start.wait()
        try:
            with TaskStore(db) as store:
                store.add("x", PROFILE, 1)
        except BaseException as exc:  # reported below, with the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_and_add) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    with TaskStore(db) as store:
        assert len(store.list()) == 6


# -- files that are not a store ------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_a_store_error_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "hermes.db"
    db.write_bytes(b"this is not SQLite, just some text\n" * 200)

    with pytest.raises(StoreError, match=r"hermes\.db"):
        TaskStore(db)


def test_a_store_from_a_newer_hermes_is_refused(db: Path) -> None:
    with TaskStore(db):
        pass
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()

    with pytest.raises(StoreError, match="newer Hermes"):
        TaskStore(db)


def test_a_path_that_cannot_be_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where a directory should be")

    with pytest.raises(StoreError, match="taken"):
        TaskStore(tmp_path / "taken" / "hermes.db")
