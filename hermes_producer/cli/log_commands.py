"""`hermes log` and `hermes debug`: Hermes' own log, and the cluster's when a broker answers.

The local file log holds what ran in this machine's `hermes` commands; the cluster log (a
capped Redis stream) holds what every worker did: probes, fallbacks, chunks. Both are shown
merged by time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from hermes_worker.events import ClusterLog
from hermes_worker.redact import redact

from .. import logs
from ..cluster import Cluster, ClusterRefused, ClusterUnavailable
from ..terminal import printable, printable_json
from .common import SQLITE_MAX_INT, Context, pass_context

F = TypeVar("F", bound=Callable[..., Any])


def _cluster_log(ctx: Context) -> ClusterLog | None:
    try:
        return ClusterLog(Cluster.connect(ctx.settings).redis, "producer")
    except ClusterRefused as exc:  # a wrong password is worth saying; an absent cluster is not
        click.echo(printable(redact(f"hermes: cluster log not shown: {exc}")), err=True)
        return None
    except ClusterUnavailable:
        return None


def _follow_both(ctx: Context, cluster: ClusterLog | None, min_level: str) -> Iterator[dict[str, Any]]:
    """Yield new records from the file log and the cluster log as they come, until Ctrl-C."""
    found: queue.Queue[dict[str, Any]] = queue.Queue()
    stop = threading.Event()
    sources: list[Callable[[], Iterator[dict[str, Any]]]] = [
        lambda: logs.follow(ctx.settings.log_dir, min_level, stop=stop.is_set)
    ]
    if cluster is not None:
        sources.append(lambda: cluster.follow(min_level, stop=stop.is_set))
    # Start reading each source now, so nothing written meanwhile is missed.
    iterators = [make() for make in sources]

    def pump(records: Iterator[dict[str, Any]]) -> None:
        for record in records:
            found.put(record)

    threads = [threading.Thread(target=pump, args=(it,), daemon=True) for it in iterators]
    for thread in threads:
        thread.start()
    try:
        while True:
            try:
                yield found.get(timeout=0.5)
            except queue.Empty:
                continue
    finally:
        stop.set()


def safe_record(record: dict[str, Any]) -> dict[str, Any]:
    """A log record fit for a terminal: ids, messages and file names in it came from input.

    Every string is escaped (:func:`printable`); only a traceback keeps its newlines, so a
    message holding one cannot pose as a second record.
    """
    return {
        printable(str(key)): _safe_value(value, multiline=key in ("traceback", "stack"))
        for key, value in record.items()
    }


def _safe_value(value: Any, multiline: bool = False) -> Any:
    if isinstance(value, str):
        return printable(value, keep_newlines=multiline)
    if isinstance(value, list):
        return [_safe_value(item) for item in value]
    if isinstance(value, dict):
        return {printable(str(key)): _safe_value(item) for key, item in value.items()}
    return value


def _show(ctx: Context, count: int, min_level: str, errors_only: bool, follow: bool, as_json: bool) -> None:
    def emit(record: dict[str, Any]) -> None:
        click.echo(printable_json(record) if as_json else logs.format_record(safe_record(record)))

    cluster = _cluster_log(ctx)
    level = "ERROR" if errors_only else min_level
    tail = _follow_both(ctx, cluster, level) if follow else None
    records = logs.read(ctx.settings.log_dir, count, min_level, errors_only)
    if cluster is not None:
        try:
            records += cluster.read(count, min_level, errors_only)
        except Exception as exc:
            click.echo(printable(redact(f"hermes: cluster log unavailable: {exc}")), err=True)
        records.sort(key=lambda r: str(r.get("ts", "")))
        records = records[-count:] if count else []
    for record in records:
        emit(record)
    if tail is not None:
        try:
            for record in tail:
                emit(record)
        except KeyboardInterrupt:
            pass


def log_options(default_n: int) -> Callable[[F], F]:
    def wrap(command: F) -> F:
        command = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON records.")(command)
        command = click.option("--follow", "-f", is_flag=True, help="Keep printing new records (Ctrl-C stops).")(
            command
        )
        return click.option(
            "-n",
            "count",
            type=click.IntRange(0, SQLITE_MAX_INT),
            default=default_n,
            show_default=True,
            help="How many of the latest records to show.",
        )(command)

    return wrap


@click.command("log")
@log_options(50)
@pass_context
def log_command(ctx: Context, count: int, follow: bool, as_json: bool) -> None:
    """Show what ran, where, and what happened (INFO and above), here and on every worker.

    \b
    Examples:
      hermes log -n 50
      hermes log -n 50 | grep -i "using local"
      hermes log --follow
    """
    _show(ctx, count, "INFO", False, follow, as_json)


@click.command()
@log_options(100)
@click.option("--error", "errors_only", is_flag=True, help="Only errors, with their tracebacks.")
@pass_context
def debug(ctx: Context, count: int, follow: bool, as_json: bool, errors_only: bool) -> None:
    """Show everything, debug records included, here and on every worker.

    \b
    Examples:
      hermes debug -n 100
      hermes debug --error -n 100 | grep -i docker
    """
    _show(ctx, count, "DEBUG", errors_only, follow, as_json)
