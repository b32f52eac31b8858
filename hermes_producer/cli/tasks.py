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
from ..output import check_output, write_file
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
from .options import chunk_options, with_chunk_options, with_lazy_profile, with_placement, with_profile

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


def _task_record(item: Task) -> dict[str, Any]:
    """A scheduled task as ``--json`` prints it."""
    return {"task": item.id, "status": item.status, "created_at": item.created_at, "prompt": item.prompt,
            "profile": item.profile, "max_validation": item.max_validation}  # fmt: skip


@click.group(invoke_without_command=True)
@click.option("--prompt", help="Schedule this prompt ('-' reads standard input); as `hermes task add`.")
@click.option("--list", "list_tasks", is_flag=True, help="List scheduled and running tasks; as `hermes task list`.")
@click.option(
    "--delete",
    "delete_id",
    type=click.IntRange(1, SQLITE_MAX_INT),
    metavar="ID",
    help="Delete a scheduled task by id; as `hermes task delete ID`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --list or --prompt).")
@with_lazy_profile
@with_chunk_options(only=["max_validation"])
@pass_context
def task(
    ctx: Context,
    prompt: str | None,
    list_tasks: bool,
    delete_id: int | None,
    as_json: bool,
    profile: Callable[[], Profile],
    chunk: ChunkOptions,
) -> None:
    """Schedule prompts for `hermes queue`, list scheduled tasks, or delete one.

    \b
    Examples:
      hermes task add 'Summarize this: …' --profile compact
      hermes task list
      hermes task list --json | jq '.[].task'
      hermes task delete 1
    """
    given = [name for name, value in (("--prompt", prompt), ("--list", list_tasks or None), ("--delete", delete_id))
             if value is not None]  # fmt: skip
    subcommand = click.get_current_context().invoked_subcommand
    if subcommand is not None:
        if given:
            fail(f"give either `hermes task {subcommand}` or {given[0]}, not both")
        return
    if len(given) != 1:
        fail("give exactly one of: hermes task add TEXT, hermes task list, hermes task delete ID")
    if prompt is not None:
        _add(ctx, prompt, profile(), chunk, as_json, "--prompt")
    elif list_tasks:
        _list(ctx, as_json)
    else:
        assert delete_id is not None
        _delete(ctx, delete_id)


@task.command("add")
@click.argument("text", metavar="TEXT", default="-")
@with_profile
@with_chunk_options(only=["max_validation"])
@click.option("--json", "as_json", is_flag=True, help="Print the scheduled task as JSON.")
@pass_context
def task_add(ctx: Context, text: str, profile: Profile, chunk: ChunkOptions, as_json: bool) -> None:
    """Schedule TEXT ('-' or nothing: standard input) for `hermes queue`."""
    if text == "-" and sys.stdin is not None and sys.stdin.isatty():
        fail("give the prompt: hermes task add 'TEXT' (or pipe it in)")
    _add(ctx, text, profile, chunk, as_json)


@task.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as a JSON list.")
@pass_context
def task_list(ctx: Context, as_json: bool) -> None:
    """List scheduled and running tasks, oldest first."""
    _list(ctx, as_json)


@task.command("delete")
@click.argument("task_id", metavar="ID", type=click.IntRange(1, SQLITE_MAX_INT))
@pass_context
def task_delete(ctx: Context, task_id: int) -> None:
    """Delete the scheduled task ID."""
    _delete(ctx, task_id)


def _add(ctx: Context, text: str, profile: Profile, chunk: ChunkOptions, as_json: bool, name: str = "TEXT") -> None:
    prompt = read_prompt(text, chunk.max_prompt_bytes, name)
    with open_store(ctx) as store:
        added = store.add(prompt, profile.spec(), chunk.max_validation)
    logs.event(ctx.log, logging.INFO, "task.scheduled", f"task {added.id} scheduled", task=added.id,
               profile=profile.name)  # fmt: skip
    if as_json:
        click.echo(printable_json(_task_record(added)))
    else:
        click.echo(f"task {added.id} scheduled (profile {profile.name}); run it with: hermes queue --all")


def _list(ctx: Context, as_json: bool) -> None:
    with open_store(ctx) as store:
        tasks = store.list("pending") + store.list("running")
    if as_json:
        click.echo(printable_json([_task_record(item) for item in tasks]))
        return
    if not tasks:
        click.echo("no scheduled tasks")
    for item in tasks:
        profile_name = printable(str(item.profile.get("name")))
        click.echo(f"{item.id:>6}  {item.status:8} {item.created_at}  {profile_name:10} {one_line(item.prompt)}")


def _delete(ctx: Context, task_id: int) -> None:
    with open_store(ctx) as store:
        try:
            store.delete(task_id)
        except StoreError as exc:
            fail(str(exc), EXIT_USAGE)
    click.echo(f"task {task_id} deleted")


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


def _history_record(item: Task) -> dict[str, Any]:
    """A finished task as ``history --json`` and ``history export`` give it: everything it holds."""
    return {"task": item.id, "status": item.status, "created_at": item.created_at, "finished_at": item.finished_at,
            "prompt": item.prompt, "profile": item.profile, "max_validation": item.max_validation,
            "result": item.result}  # fmt: skip


_COUNT = click.option(
    "-n", "count", type=click.IntRange(1, SQLITE_MAX_INT), default=20, show_default=True, help="How many to show."
)


@click.group(invoke_without_command=True)
@_COUNT
@click.option(
    "--export", "export", metavar="ID:PATH", help="Write task ID's full record as JSON to PATH ('-' = stdout)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the finished tasks as a JSON list.")
@pass_context
def history(ctx: Context, count: int, export: str | None, as_json: bool) -> None:
    """Show finished tasks, newest first, or export one task's result.

    \b
    Examples:
      hermes history -n 5
      hermes history --json | jq '.[0].result.text'
      hermes history export 1 result.json
    """
    subcommand = click.get_current_context().invoked_subcommand
    if subcommand is not None:
        if export is not None:
            fail(f"give either `hermes history {subcommand}` or --export, not both")
        return
    if export is not None:
        _export(ctx, *parse_export(export))
        return
    _history(ctx, count, as_json)


@history.command("list")
@_COUNT
@click.option("--json", "as_json", is_flag=True, help="Print the finished tasks as a JSON list.")
@pass_context
def history_list(ctx: Context, count: int, as_json: bool) -> None:
    """Show finished tasks, newest first."""
    _history(ctx, count, as_json)


@history.command("export")
@click.argument("task_id", metavar="ID", type=click.IntRange(1, SQLITE_MAX_INT))
@click.argument("path", metavar="[PATH]", default="-")
@pass_context
def history_export(ctx: Context, task_id: int, path: str) -> None:
    """Write task ID's full record as JSON to PATH (default '-': standard output)."""
    _export(ctx, task_id, path)


def _history(ctx: Context, count: int, as_json: bool) -> None:
    with open_store(ctx) as store:
        finished = store.history(count)
    if as_json:
        click.echo(printable_json([_history_record(item) for item in finished]))
        return
    if not finished:
        click.echo("no finished tasks yet")
    for item in finished:
        result = item.result or {}
        shown = result.get("text") if "text" in result else f"error {result.get('error', {}).get('code')}"
        name = printable(str(item.profile.get("name")))
        click.echo(f"{item.id:>6}  {item.status:6} {item.finished_at}  {name:10} {one_line(str(shown))}")


def _export(ctx: Context, task_id: int, path: str) -> None:
    target = check_output(path, "--export") if path != "-" else None
    with open_store(ctx) as store, contextlib.ExitStack() as stack:
        if target is not None:
            stack.callback(target.close)
        try:
            item = store.get(task_id)
        except StoreError as exc:
            fail(str(exc))
        if item.result is None:
            fail(f"task {task_id} has not run yet (status {item.status}); run: hermes queue --all")
        exported = _history_record(item)
        if target is None:
            click.echo(printable_json(exported, indent=2), file=std_stream("stdout"))
            return
        write_file(target, (json.dumps(exported, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    ctx.notice(f"task {task_id} exported to {path}")
