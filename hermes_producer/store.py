"""The local task store: prompts scheduled with ``hermes task``, run by ``hermes queue``.

One SQLite file (``settings.store_path``) that several ``hermes`` processes may open at once.
WAL lets readers go on while one process writes; a busy timeout makes writers wait for each
other instead of failing; and :meth:`TaskStore.claim` takes the oldest pending tasks inside one
``BEGIN IMMEDIATE`` transaction, so two ``hermes queue`` runs never run the same task.

A claim belongs to the :class:`TaskStore` that made it: only that store can
:meth:`~TaskStore.finish` or :meth:`~TaskStore.release` the task. A ``hermes queue`` that was
killed leaves its tasks ``running``; :meth:`~TaskStore.recover_stale` hands them back.

A task's life::

    pending --claim--> running --finish--> done | failed
                          \\--release / recover_stale--> pending
"""

from __future__ import annotations

import builtins  # TaskStore.list shadows the builtin inside the class body
import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hermes_worker.errors import EXIT_USAGE, HermesError
from hermes_worker.timestamps import utc_iso

from . import privacy

__all__ = ["STATUSES", "ClaimLost", "StoreError", "Task", "TaskNotFound", "TaskStore"]

STATUSES = ("pending", "running", "done", "failed")

# Long enough to ride out another process's claim or finish, short enough that a wedged
# process does not hang every other `hermes` command forever.
BUSY_TIMEOUT_S = 30.0

# Migration N (1-based) moves the schema from user_version N-1 to N: its statements run in one
# transaction. Append, never edit. (Not executescript(): it would commit halfway.)
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
    CREATE TABLE tasks (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids are never reused after delete
        created_at     TEXT    NOT NULL,
        prompt         TEXT    NOT NULL,
        profile        TEXT    NOT NULL,                   -- JSON {"name", "steps"}
        max_validation INTEGER NOT NULL,
        status         TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
        claim_token    TEXT,
        claimed_at     REAL,                               -- unix time, for recover_stale
        finished_at    TEXT,
        finish_order   INTEGER,                            -- history order: clocks tie and step back
        result         TEXT                                -- JSON output record
    )""",
        "CREATE INDEX tasks_by_status ON tasks (status, id)",
        "CREATE INDEX tasks_by_finish ON tasks (finish_order)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = "id, created_at, prompt, profile, max_validation, status, finished_at, result"


class StoreError(HermesError):
    """The task store cannot do what was asked; the message names the task or the file (exit 3)."""


class TaskNotFound(StoreError):
    """No task has that id (exit 2)."""

    exit_code = EXIT_USAGE


class ClaimLost(StoreError):
    """The task is not (or no longer) claimed by this store, e.g. it was recovered as stale."""


@dataclass(frozen=True, slots=True)
class Task:
    """One scheduled prompt and, once run, its output record.

    Attributes:
        id: the task id shown by ``hermes task --list``.
        created_at: when it was scheduled, ISO-8601 UTC.
        prompt: the prompt text.
        profile: the profile spec, ``{"name": ..., "steps": [...]}``.
        max_validation: validation rounds after normalizing.
        status: ``pending``, ``running``, ``done`` or ``failed``.
        finished_at: when it finished, ISO-8601 UTC, or None.
        result: the output record, or None until it finished.
    """

    id: int
    created_at: str
    prompt: str
    profile: dict[str, Any]
    max_validation: int
    status: str
    finished_at: str | None
    result: dict[str, Any] | None


def _make_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would use 0644 minus the umask).

    SQLite gives its ``-wal``, ``-shm`` and ``-journal`` files the database file's mode, so
    they are private too; ones an older Hermes left readable are tightened here.
    """
    with contextlib.suppress(OSError):  # sqlite3.connect reports a path it cannot open
        os.close(privacy.open_file(path, os.O_RDWR, follow_links=True))  # a store moved elsewhere by a link
    for suffix in ("-wal", "-shm", "-journal"):
        privacy.tighten(path.with_name(path.name + suffix))


class TaskStore:
    """The task store in one SQLite file. A context manager: leaving it closes the connection.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as home:
        ...     with TaskStore(Path(home) / "hermes.db") as store:
        ...         task = store.add("Hello", {"name": "prompt", "steps": []}, max_validation=1)
        ...         [t.id for t in store.claim(limit=None)]
        [1]
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        """Open (and create or migrate) the store at ``path``; parent directories are created.

        Raises:
            StoreError: the file cannot be opened, is not a SQLite database, or was written by
                a newer Hermes.
        """
        self.path = Path(path)
        # Identifies this store's claims, so that finish() cannot clobber a task another
        # process took over after recover_stale().
        self._token = uuid.uuid4().hex
        try:
            privacy.make_dir(self.path.parent, ours=False)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of the task store {self.path}: {exc}") from exc
        privacy.check_dir(self.path.parent)
        _make_private(self.path)
        try:
            # isolation_level=None: we issue BEGIN ourselves, so every transaction is explicit.
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the task store {self.path}: {exc}") from exc
        try:
            with self._errors():
                self._use_wal(busy_timeout_s)
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        self._db.close()

    def __enter__(self) -> TaskStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- scheduling ------------------------------------------------------------------------

    def add(self, prompt: str, profile: Mapping[str, Any], max_validation: int) -> Task:
        """Schedule a prompt; it starts ``pending``."""
        if max_validation < 0:
            raise ValueError(f"max_validation must be >= 0, not {max_validation}")
        created_at = utc_iso()
        profile_json = json.dumps(dict(profile), ensure_ascii=False)
        with self._errors():
            cursor = self._db.execute(
                "INSERT INTO tasks (created_at, prompt, profile, max_validation, status)"
                " VALUES (?, ?, ?, ?, 'pending')",
                (created_at, prompt, profile_json, max_validation),
            )
        assert cursor.lastrowid is not None
        return self.get(cursor.lastrowid)

    def get(self, task_id: int) -> Task:
        """The task with that id.

        Raises:
            TaskNotFound: no task has that id.
        """
        with self._errors():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(f"no task {task_id} in {self.path}")
        return self._task(row)

    def list(self, status: str | None = None, limit: int | None = None) -> list[Task]:
        """Tasks, oldest first, optionally only those with ``status``; at most ``limit``."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        where = "" if status is None else "WHERE status = ?"
        params: tuple[Any, ...] = () if status is None else (status,)
        with self._errors():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks {where} ORDER BY id LIMIT ?", (*params, _sql_limit(limit))
            ).fetchall()
        return [self._task(row) for row in rows]

    def delete(self, task_id: int) -> None:
        """Delete a task that is not running.

        Raises:
            TaskNotFound: no task has that id.
            StoreError: the task is running (a ``hermes queue`` has claimed it).
        """
        with self._errors(), self._immediate():
            row = self._db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise TaskNotFound(f"no task {task_id} in {self.path}")
            if row[0] == "running":
                raise StoreError(f"task {task_id} is running; it can be deleted once it has finished")
            self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))

    # -- running ---------------------------------------------------------------------------

    def claim(self, limit: int | None) -> builtins.list[Task]:
        """Take the oldest pending tasks (all of them if ``limit`` is None) and mark them running.

        Atomic across processes: a task is handed to exactly one claimer.
        """
        with self._errors(), self._immediate():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE status = 'pending' ORDER BY id LIMIT ?",
                (_sql_limit(limit),),
            ).fetchall()
            if rows:
                # Nobody else can write inside BEGIN IMMEDIATE, so the pending tasks up to the
                # last selected id are exactly the selected ones; no id list, no variable limit.
                self._db.execute(
                    "UPDATE tasks SET status = 'running', claim_token = ?, claimed_at = ?"
                    " WHERE status = 'pending' AND id <= ?",
                    (self._token, time.time(), rows[-1][0]),
                )
        return [self._task(row, status="running") for row in rows]

    def finish(self, task_id: int, record: Mapping[str, Any], ok: bool) -> None:
        """Record a claimed task's output record; it becomes ``done`` (``ok``) or ``failed``.

        Raises:
            TaskNotFound: no task has that id.
            ClaimLost: this store does not hold the task's claim (never claimed it, or the task
                was recovered as stale and handed to another run).
        """
        result = json.dumps(dict(record), ensure_ascii=False)
        with self._errors():
            cursor = self._db.execute(
                "UPDATE tasks SET status = ?, result = ?, finished_at = ?, claim_token = NULL, claimed_at = NULL,"
                " finish_order = (SELECT coalesce(max(finish_order), 0) + 1 FROM tasks)"
                " WHERE id = ? AND status = 'running' AND claim_token = ?",
                ("done" if ok else "failed", result, utc_iso(), task_id, self._token),
            )
        if cursor.rowcount == 0:
            status = self.get(task_id).status  # raises TaskNotFound
            raise ClaimLost(f"task {task_id} is {status} and not claimed by this run; its result was not saved")

    def release(self, task_ids: Iterable[int]) -> None:
        """Give claimed tasks back (``running`` -> ``pending``), e.g. when a run is interrupted.

        Tasks this store does not hold (already finished, or taken over) are left as they are.
        """
        ids = list(task_ids)
        with self._errors(), self._immediate():
            for start in range(0, len(ids), 500):  # stay far below SQLite's variable limit
                batch = ids[start : start + 500]
                marks = ", ".join("?" * len(batch))
                self._db.execute(
                    "UPDATE tasks SET status = 'pending', claim_token = NULL, claimed_at = NULL"
                    f" WHERE status = 'running' AND claim_token = ? AND id IN ({marks})",
                    (self._token, *batch),
                )

    def recover_stale(self, older_than_s: float) -> int:
        """Put back to ``pending`` the running tasks claimed more than ``older_than_s`` ago.

        These were left by a ``hermes queue`` that was killed. Choose ``older_than_s`` well above
        the time a live run holds a claim, or a slow run will have its tasks taken over.

        Returns:
            How many tasks were recovered.
        """
        if older_than_s < 0:
            raise ValueError(f"older_than_s must be >= 0, not {older_than_s}")
        with self._errors():
            cursor = self._db.execute(
                "UPDATE tasks SET status = 'pending', claim_token = NULL, claimed_at = NULL"
                " WHERE status = 'running' AND claimed_at <= ?",
                (time.time() - older_than_s,),
            )
        return cursor.rowcount

    def history(self, limit: int | None = None) -> builtins.list[Task]:
        """Finished tasks (``done`` or ``failed``), most recently finished first."""
        with self._errors():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE status IN ('done', 'failed') ORDER BY finish_order DESC LIMIT ?",
                (_sql_limit(limit),),
            ).fetchall()
        return [self._task(row) for row in rows]

    # -- internals -------------------------------------------------------------------------

    def _use_wal(self, timeout_s: float) -> None:
        # Switching to WAL needs a lock SQLite does not wait for (no busy handler), so several
        # processes opening a new store at once would fail; wait here instead. The mode is
        # stored in the file: later opens find it already set.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self) -> None:
        # Re-read the version inside the write lock: another process may have just migrated.
        with self._immediate():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the task store {self.path} has schema version {version}; this Hermes knows"
                    f" up to {SCHEMA_VERSION} (it was written by a newer Hermes)"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[number - 1]:
                    self._db.execute(statement)
                # PRAGMA takes no parameters; number is our own int.
                self._db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """One write transaction, taken up front so readers-turned-writers cannot deadlock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate sqlite3 errors into StoreError naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StoreError(f"{self.path} is not a Hermes task store (or is damaged): {exc}") from exc
            raise StoreError(f"task store {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"task store {self.path}: {exc}") from exc

    def _task(self, row: tuple[Any, ...], status: str | None = None) -> Task:
        task_id, created_at, prompt, profile, max_validation, row_status, finished_at, result = row
        try:
            # Commands read these as objects: a row edited by hand must be an error naming it, not a crash.
            if not isinstance(json.loads(profile), dict) or not isinstance(json.loads(result or "{}"), dict):
                raise StoreError(f"task {task_id} in {self.path} is damaged: its profile or result is not an object")
            return Task(
                id=task_id,
                created_at=created_at,
                prompt=prompt,
                profile=json.loads(profile),
                max_validation=max_validation,
                status=status or row_status,
                finished_at=finished_at,
                result=None if result is None else json.loads(result),
            )
        except json.JSONDecodeError as exc:
            raise StoreError(f"task {task_id} in {self.path} is damaged: {exc}") from exc


def _sql_limit(limit: int | None) -> int:
    """SQLite's LIMIT for ``limit``: -1 means no limit."""
    if limit is None:
        return -1
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, not {limit}")
    return limit
