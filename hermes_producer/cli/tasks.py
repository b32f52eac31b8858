"""`hermes task`, `hermes queue` and `hermes history`: scheduled prompts in the local store."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import click

from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import Profile
from hermes_worker.wire import Item

from .. import logs
from ..batch import BatchOptions, chunk_requests
from ..dispatch import Placement, choose_executor
from ..executors import ChunkExecutor, ExecutorError
from ..output import OutputPath, check_output, write_file
from ..store import ClaimLost, StoreError, Task, TaskStore
from ..terminal import printable, printable_json
from .common import (
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    EXIT_USAGE,
    SQLITE_MAX_INT,
    Context,
    fail,
    pass_context,
    read_prompt,
    std_stream,
)
from .options import chunk_options, with_chunk_options, with_lazy_profile, with_placement

# A `hermes queue` killed mid-run leaves its tasks 'running'; after this long they are fair game.
STALE_CLAIM_S = 15 * 60


def store_has_pending(ctx: Context) -> bool:
    with open_store(ctx) as store:
        store.recover_stale(STALE_CLAIM_S)
        return bool(store.list("pending", limit=1))


@contextlib.contextmanager
def open_store(ctx: Context) -> Iterator[TaskStore]:
    """The task store, closed afterwards; a store error anywhere in the block is exit 3 naming it."""
    home = ctx.settings.home
    # A HERMES_HOME that cannot hold the store is a setting to fix (exit 2), not an outage.
    if home.exists() and not home.is_dir():
        fail(f"HERMES_HOME={str(home)!r} is not a directory")
    if home.is_dir() and not os.access(home, os.W_OK | os.X_OK):
        fail(f"HERMES_HOME={str(home)!r} is not writable")
    try:
        store = TaskStore(ctx.settings.store_path)
    except StoreError as exc:
        fail(str(exc), EXIT_INFRA if home.is_dir() else EXIT_USAGE)
    with store:
        try:
            yield store
        except StoreError as exc:  # e.g. a row damaged by hand, or a lock held past the busy timeout
            fail(str(exc), EXIT_INFRA)


def one_line(text: str, width: int = 60) -> str:
    """``text`` on one line of at most ``width`` characters, safe for a terminal."""
    flat = printable(text.replace("\n", "⏎").replace("\t", " "))
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def parse_export(spec: str) -> tuple[int, str]:
    """``ID:PATH`` of ``history --export``: a task id (ASCII digits, in SQLite's range) and a path.

    ``str.isdigit`` accepts '²' and '٣', which ``int()`` then refuses or reads as another
    number; an id past 2**63 - 1 overflows SQLite. Both are usage errors naming the spec.
    """
    task_id, sep, path = spec.partition(":")
    if not sep or not re.fullmatch("[0-9]+", task_id) or not path:
        fail(f"--export takes ID:PATH, e.g. 3:result.json; got {spec!r}")
    if len(task_id) > 19 or not 1 <= int(task_id) <= SQLITE_MAX_INT:
        fail(f"--export {spec!r}: no task can have the id {task_id} (ids are 1 to {SQLITE_MAX_INT})")
    return int(task_id), path


@click.command()
@click.option("--prompt", help="Schedule this prompt ('-' reads standard input).")
@click.option("--list", "list_tasks", is_flag=True, help="List scheduled and running tasks.")
@click.option(
    "--delete", "delete_id", type=click.IntRange(1, SQLITE_MAX_INT), metavar="ID", help="Delete a scheduled task by id."
)
@with_lazy_profile
@with_chunk_options(only=["max_validation"])
@pass_context
def task(
    ctx: Context,
    prompt: str | None,
    list_tasks: bool,
    delete_id: int | None,
    profile: Callable[[], Profile],
    chunk: ChunkOptions,
) -> None:
    """Schedule a prompt for `hermes queue`, list scheduled tasks, or delete one.

    \b
    Examples:
      hermes task --prompt 'Summarize this: …' --profile compact
      hermes task --list
      hermes task --delete 3
    """
    if sum(x is not None and x is not False for x in (prompt, list_tasks or None, delete_id)) != 1:
        fail("give exactly one of --prompt TEXT, --list or --delete ID")
    with open_store(ctx) as store:
        if prompt is not None:
            chosen = profile()
            prompt = read_prompt(prompt, chunk.max_prompt_bytes)
            added = store.add(prompt, chosen.spec(), chunk.max_validation)
            logs.event(
                ctx.log,
                logging.INFO,
                "task.scheduled",
                f"task {added.id} scheduled",
                task=added.id,
                profile=chosen.name,
            )
            click.echo(f"task {added.id} scheduled (profile {chosen.name}); run it with: hermes queue --all")
        elif list_tasks:
            tasks = store.list("pending") + store.list("running")
            if not tasks:
                click.echo("no scheduled tasks")
            for item in tasks:
                profile_name = printable(str(item.profile.get("name")))
                shown = one_line(item.prompt)
                click.echo(f"{item.id:>6}  {item.status:8} {item.created_at}  {profile_name:10} {shown}")
        else:
            assert delete_id is not None
            try:
                store.delete(delete_id)
            except StoreError as exc:
                fail(str(exc), EXIT_USAGE)
            click.echo(f"task {delete_id} deleted")


def _run_claimed(
    ctx: Context, store: TaskStore, executor: ChunkExecutor, tasks: list[Task], numbers: Iterator[int]
) -> tuple[int, int]:
    """Run claimed tasks, grouped by profile and validation; record each result as it arrives."""
    groups: dict[tuple[str, int], list[Task]] = defaultdict(list)
    for item in tasks:
        groups[(json.dumps(item.profile, sort_keys=True), item.max_validation)].append(item)
    ok = failed = 0
    for (profile_json, max_validation), members in groups.items():
        options = BatchOptions(
            profile=Profile.from_spec(json.loads(profile_json)),
            input_format="text",
            chunk=chunk_options(ctx.settings, max_validation=max_validation),
            chunk_size=ctx.settings.chunk_size,
        )
        items = iter([Item(n, task.id, task.prompt) for n, task in enumerate(members, 1)])
        for result in executor.map_ordered(chunk_requests(items, options, first_number=next(numbers) * 1_000_000)):
            for line in result.record_lines():
                record: dict[str, Any] = json.loads(line)
                success = "error" not in record
                try:
                    store.finish(int(record["id"]), record, success)
                except ClaimLost:
                    # Another `hermes queue` rescheduled it as stale and owns it now.
                    logs.event(ctx.log, logging.WARNING, "task.claim_lost", f"task {record['id']} was taken over")
                    continue
                ok += success
                failed += not success
    return ok, failed


@click.command()
@click.option("--all", "run_all", is_flag=True, help="Run every scheduled task.")
@click.option("-n", "count", type=click.IntRange(1, SQLITE_MAX_INT), help="Run the N oldest scheduled tasks.")
@with_placement
@pass_context
def queue(ctx: Context, run_all: bool, count: int | None, placement: Placement) -> None:
    """Run scheduled tasks, oldest first, and record their results in the history.

    With a broker and live workers the tasks fan out over all of them (containers reused
    across tasks); otherwise they run in-process.

    \b
    Examples:
      hermes queue --all
      hermes queue -n 10 --isolation container
    """
    if run_all == (count is not None):
        fail("give exactly one of --all or -n N")
    if not store_has_pending(ctx):
        ctx.notice("no scheduled tasks")
        return
    with open_store(ctx) as store:
        recovered = store.recover_stale(STALE_CLAIM_S)
        if recovered:
            ctx.notice(f"{recovered} task(s) left running by an interrupted queue were rescheduled")
        # Claim a round at a time, not everything at once: a long queue must not look stale
        # to a second `hermes queue` while it is still working through its backlog.
        round_size = ctx.settings.chunk_size * 16
        remaining = None if run_all else count
        ran = ok = failed = 0
        numbers = itertools.count()
        executor = choose_executor(ctx, placement, ctx.settings.processes)
        with executor:
            while remaining is None or remaining > 0:
                tasks = store.claim(round_size if remaining is None else min(round_size, remaining))
                if not tasks:
                    break
                try:
                    round_ok, round_failed = _run_claimed(ctx, store, executor, tasks, numbers)
                except KeyboardInterrupt:
                    store.release(t.id for t in tasks)
                    fail("interrupted: unfinished tasks were rescheduled", EXIT_INTERRUPTED)
                except ExecutorError:  # exit 3 naming what failed, once the tasks are released
                    store.release(t.id for t in tasks)
                    raise
                ran, ok, failed = ran + len(tasks), ok + round_ok, failed + round_failed
                if remaining is not None:
                    remaining -= len(tasks)
        executor.finish()
        if not ran:
            ctx.notice("no scheduled tasks")
            return
    logs.event(
        ctx.log, logging.INFO, "queue.finished", f"ran {ran} task(s): {ok} ok, {failed} failed", ok=ok, failed=failed
    )
    ctx.notice(f"ran {ran} task(s): {ok} ok, {failed} failed; see: hermes history")
    sys.exit(EXIT_ITEMS_FAILED if failed else 0)


@click.command()
@click.option(
    "-n", "count", type=click.IntRange(1, SQLITE_MAX_INT), default=20, show_default=True, help="How many to show."
)
@click.option(
    "--export", "export", metavar="ID:PATH", help="Write task ID's full record as JSON to PATH ('-' = stdout)."
)
@pass_context
def history(ctx: Context, count: int, export: str | None) -> None:
    """Show finished tasks, newest first, or export one task's result.

    \b
    Examples:
      hermes history -n 5
      hermes history --export 3:result.json
    """
    target: OutputPath | None = None
    if export is not None:
        task_id, path = parse_export(export)
        if path != "-":
            target = check_output(path, "--export")
    with open_store(ctx) as store, contextlib.ExitStack() as stack:
        if target is not None:
            stack.callback(target.close)
        if export is not None:
            try:
                item = store.get(task_id)
            except StoreError as exc:
                fail(str(exc))
            if item.result is None:
                fail(f"task {task_id} has not run yet (status {item.status}); run: hermes queue --all")
            exported = {
                "task": item.id,
                "status": item.status,
                "created_at": item.created_at,
                "finished_at": item.finished_at,
                "prompt": item.prompt,
                "profile": item.profile,
                "max_validation": item.max_validation,
                "result": item.result,
            }
            if target is None:
                click.echo(printable_json(exported, indent=2), file=std_stream("stdout"))
                return
            write_file(target, (json.dumps(exported, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
            ctx.notice(f"task {task_id} exported to {path}")
            return
        finished = store.history(count)
        if not finished:
            click.echo("no finished tasks yet")
        for item in finished:
            result = item.result or {}
            shown = result.get("text") if "text" in result else f"error {result.get('error', {}).get('code')}"
            name = printable(str(item.profile.get("name")))
            click.echo(f"{item.id:>6}  {item.status:6} {item.finished_at}  {name:10} {one_line(str(shown))}")
