"""`hermes workers`, `status`, `batches`, `metrics` and `doctor`: what the cluster looks like, what to fix.

Everything they print passes through :func:`hermes_worker.redact.redact`: URLs are shown with
their passwords masked, and registry entries (a probe's reason may name ``DOCKER_HOST``) too.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from dataclasses import asdict
from typing import Any

import click
import redis

from hermes_worker.contract import QUEUE_CONTAINER, QUEUE_LOCAL, shown
from hermes_worker.engine import engine_versions
from hermes_worker.redact import redact, redact_data, redact_url
from hermes_worker.redis_conn import brief
from hermes_worker.sentinel_url import is_sentinel
from hermes_worker.settings import option_help

from ..cluster import Cluster, ClusterRefused, ClusterUnavailable, queue_depth
from ..terminal import printable
from .common import EXIT_INFRA, CommandError, Context, check_listen_address, fail, pass_context


def _connect(ctx: Context) -> Cluster:
    """The cluster; a refusal ends the command as it is (exit 2), an outage says what to do."""
    try:
        return Cluster.connect(ctx.settings)
    except ClusterRefused:
        raise
    except ClusterUnavailable as exc:
        fail(f"{exc}; set HERMES_BROKER_URL, or start Redis", EXIT_INFRA)


def _echo(text: str, keep_newlines: bool = False) -> None:
    # Registry entries and library errors come from whoever can write to Redis or answer as it:
    # secrets masked, control characters shown, never obeyed by the terminal.
    click.echo(printable(redact(text), keep_newlines=keep_newlines))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry entries as JSON.")
@pass_context
def workers(ctx: Context, as_json: bool) -> None:
    """List live workers: name, tag, concurrency, queues, versions, activity, last heartbeat.

    \b
    Examples:
      hermes workers
      hermes workers --json | jq '.[] | select(.tag == "container") | .name'
    """
    live = _connect(ctx).live_workers()
    if as_json:
        click.echo(json.dumps(redact_data([asdict(w) for w in live]), indent=2))
        return
    if not live:
        click.echo("no live workers (start one with: hermes worker)")
        return
    now = time.time()
    click.echo(f"{'WORKER':28} {'TAG':9} {'CONC':>4} {'ACTIVE':>6} {'DONE':>7} {'BEAT':>6}  QUEUES / VERSIONS")
    for w in live:
        versions = (
            f"engine {w.versions.get('engine')}, python {w.versions.get('python')}, unicode {w.versions.get('unicode')}"
        )
        image = w.provenance.get("image")
        _echo(
            f"{w.name:28} {w.tag:9} {w.concurrency:>4} {w.active:>6} {w.processed:>7} "
            f"{now - w.heartbeat_at:>5.1f}s  {','.join(w.queues)} / {versions}"
            + (f", image {str(image)[:19]}" if image else "")
        )


def _primaries(cluster: Cluster) -> dict[str, str]:
    """Where the primary is now for each Sentinel-managed Redis (:meth:`Cluster.primaries`), or why not known."""
    try:
        return cluster.primaries()
    except redis.RedisError as exc:
        return {"result backend": f"unknown ({redact(brief(exc))})"}


def queue_depths(cluster: Cluster) -> dict[str, int]:
    """Messages waiting in each Hermes queue (any broker kombu supports)."""
    depths = {}
    with cluster.app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in (QUEUE_CONTAINER, QUEUE_LOCAL):
            try:
                depths[name] = queue_depth(channel, name)
            except Exception:  # status shows what it can: a queue it cannot ask about shows 0
                depths[name] = 0
    return depths


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--batch", "batch_id", metavar="ID", help="Show one running batch (its id, or the start of it).")
@pass_context
def status(ctx: Context, as_json: bool, batch_id: str | None) -> None:
    """Queue depths and chunks in flight; with --batch, one running batch.

    \b
    Examples:
      hermes status
      hermes status --batch 3f2a9c01
    """
    if batch_id is not None:
        _show_batches(ctx, batch_id, as_json, watch=None)
        return
    cluster = _connect(ctx)
    depths = queue_depths(cluster)
    live = cluster.live_workers()
    report: dict[str, Any] = {
        "queues": depths,
        "in_flight": sum(w.active for w in live),
        "workers": {w.name: {"tag": w.tag, "active": w.active} for w in live},
    }
    primaries = _primaries(cluster)
    if primaries:
        report["primary"] = primaries
    if as_json:
        click.echo(json.dumps(redact_data(report), indent=2))
        return
    for what, where in primaries.items():
        _echo(f"primary of the {what}: {where} (Sentinel master {ctx.settings.sentinel_master})")
    for name, count in depths.items():
        click.echo(f"queue {name:18} {count:>8,} waiting")
    click.echo(f"in flight: {report['in_flight']} chunk(s) on {len(live)} live worker(s)")
    for name, entry in report["workers"].items():
        _echo(f"  {name:28} {entry['tag']:9} {entry['active']} active")


@click.command()
@click.argument("batch_id", metavar="[ID]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the batches as JSON.")
@click.option("--watch", type=click.FloatRange(0.5, 3600), default=None, metavar="SECONDS",
              help="Print them again every SECONDS, until Ctrl-C.")  # fmt: skip
@pass_context
def batches(ctx: Context, batch_id: str | None, as_json: bool, watch: float | None) -> None:
    """List the batches running on the cluster: records, done of the input, rate, ETA, errors, workers.

    Producers publish their batch's progress about once a second while it runs, and remove it
    when it ends, wherever its chunks run (queue in-process: no worker took them); a batch
    says its id when it starts. The board is kept in Redis: a batch run with no broker is on
    none. With ID (a batch id, or the start of one): that batch in detail.

    \b
    Examples:
      hermes batches
      hermes batches --watch 2
      hermes batches 3f2a9c01
      hermes batches --json | jq '.[] | {input, records, eta_s}'
    """
    _show_batches(ctx, batch_id, as_json, watch)


def _show_batches(ctx: Context, batch_id: str | None, as_json: bool, watch: float | None) -> None:
    from hermes_worker.batch_status import read_board

    from ..batch_view import as_json as entry_json
    from ..batch_view import batch_detail, batch_table

    if batch_id is not None and not re.fullmatch(r"[0-9a-f]{4,32}", batch_id):
        fail(f"{shown(batch_id)} is not a batch id (4 to 32 hex digits: see hermes batches)")
    try:
        cluster = Cluster.connect(ctx.settings)
    except ClusterRefused:
        raise
    except ClusterUnavailable as exc:
        # Not a fault of the command: without Redis there is no board, and nothing to show.
        raise CommandError(
            f"no board of running batches: {exc}. The board is kept in that Redis; a batch that runs "
            "with no broker is on no board (its progress line is on its own terminal)",
            "start Redis, or point HERMES_BROKER_URL (or --broker) at the cluster's",
            exit_code=EXIT_INFRA,
        ) from None
    while True:
        try:
            board = read_board(cluster.redis)
        except redis.RedisError as exc:
            fail(f"cannot read the running batches: {redact(str(exc))}", EXIT_INFRA)
        chosen = board.batches
        if batch_id is not None:
            chosen = tuple(b for b in board.batches if b.batch.startswith(batch_id))
            if len(chosen) > 1:
                fail(f"{batch_id} is the start of {len(chosen)} running batches' ids: give more of it")
            if not chosen and watch is None:
                fail(f"no running batch {batch_id} (it may have finished: its summary is in hermes log)", 1)
        if as_json:  # with --watch, one line each time (JSON Lines)
            entries = [entry_json(b) for b in chosen]
            printed = entries[0] if batch_id is not None and entries else entries
            click.echo(json.dumps(printed, indent=None if watch else 2))
        elif batch_id is not None:
            lines = batch_detail(chosen[0]) if chosen else [f"batch {batch_id} is not running (any more)"]
            click.echo("\n".join(lines))
        else:
            click.echo("\n".join(batch_table(board)))
        if watch is None:
            return
        time.sleep(watch)
        if sys.stdout.isatty() and not as_json:
            click.clear()


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Serve /metrics on this port.")
@click.option("--address", default=None, help=option_help("HERMES_METRICS_ADDRESS"))
@pass_context
def metrics(ctx: Context, port: int | None, address: str | None) -> None:
    """Print the cluster's Hermes metrics (Prometheus text), or serve them with --port.

    Items by mode, profile and error code, chunk latency, session restarts, probe outcomes,
    fallbacks, live workers, queue depths and consumers, running batches (hermes_batch_*).
    Celery's own view (tasks, runtimes) is on Flower's /metrics.

    \b
    Examples:
      hermes metrics | grep hermes_items
      hermes metrics --port 9808 --address 0.0.0.0
    """
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from hermes_worker.metrics import RedisCollector, serve

    if port is not None:
        address = address or ctx.settings.metrics_address
        check_listen_address("--address", address, port)
    cluster = _connect(ctx)
    depths = lambda: queue_depths(cluster)  # noqa: E731  (asked at every scrape)
    if port is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RedisCollector(cluster.redis, depths=depths))
        click.echo(generate_latest(registry).decode(), nl=False)
        return
    assert address is not None
    try:
        thread = serve(cluster.redis, port, address, depths=depths)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        fail(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}")
    ctx.notice(f"Hermes metrics on http://{address}:{port}/metrics")
    with contextlib.suppress(KeyboardInterrupt):
        thread.join()


@click.command()
@click.option("--json", "as_json", is_flag=True, help='Print the checks as JSON: [{"ok": true|false|null, ...}].')
@pass_context
def doctor(ctx: Context, as_json: bool) -> None:
    """Check the broker, the result backend, Docker, the sandbox image and the workers.

    Every line is a check; a failed check says what to do. Exit 0 when nothing failed.
    With --json, one list of checks: ok (true, false; null for a warning), what, fix.

    \b
    Examples:
      hermes doctor
      hermes doctor --json | jq '.[] | select(.ok == false)'
    """
    problems = 0
    checks: list[dict[str, Any]] = []

    def report(ok: bool | None, what: str, fix: str = "") -> None:
        nonlocal problems
        problems += ok is False
        if as_json:  # the same text as the lines: masked secrets, escaped controls
            checks.append({"ok": ok, "what": printable(redact(what)), "fix": printable(redact(fix)) or None})
            return
        mark = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
        # Every line: a probe's reason or a library's error text may quote a URL.
        _echo(f"[{mark}] {what}" + (f"\n       fix: {fix}" if fix and ok is not True else ""), keep_newlines=True)

    settings = ctx.settings
    local = engine_versions()
    report(
        True,
        f"here: engine {local['engine']}, Python {local['python']}, Unicode {local['unicode']}, ftfy {local['ftfy']}",
    )
    cluster = None
    try:
        cluster = Cluster.connect(settings)
        report(True, f"broker {redact_url(settings.broker_url)} and result backend answer")
        _doctor_primaries(cluster, report)
    except ClusterRefused as exc:
        variable = "HERMES_RESULT_BACKEND" if "HERMES_RESULT_BACKEND" in str(exc) else "HERMES_BROKER_URL"
        report(False, str(exc), f"put the right password (or certificate settings) in {variable}"
               + (" or HERMES_SENTINEL_PASSWORD" if is_sentinel(settings.result_backend) else ""))
    except ClusterUnavailable as exc:
        fix = ("start Redis (e.g. `redis-server --daemonize yes`) or set HERMES_BROKER_URL; "
               "without a broker Hermes runs in-process")  # fmt: skip
        if is_sentinel(settings.result_backend) or is_sentinel(settings.broker_url):
            fix = (f"check that the sentinels answer and monitor a primary named {settings.sentinel_master} "
                   "(HERMES_SENTINEL_MASTER), with HERMES_SENTINEL_PASSWORD if they have a password; " + fix)
        report(False, str(exc), fix)
    _doctor_docker(settings, local, report)
    if cluster is not None:
        _doctor_workers(cluster, local, report)
    if as_json:
        click.echo(json.dumps(checks, indent=2))
    sys.exit(1 if problems else 0)


def _doctor_primaries(cluster: Cluster, report: Any) -> None:
    """With Sentinel: where the primary is now (a failover moves it), or why nobody can say."""
    master = cluster.settings.sentinel_master
    try:
        for what, where in cluster.primaries().items():
            report(True, f"{what}: Sentinel master {master} is at {where} now")
    except redis.RedisError as exc:
        report(False, f"no sentinel could say where master {master} is: {brief(exc)}",
               "check HERMES_SENTINEL_MASTER (the name in `sentinel monitor NAME ...`) and HERMES_SENTINEL_PASSWORD")


def _doctor_workers(cluster: Cluster, local: dict[str, str], report: Any) -> None:
    """One line a live worker, and a warning for each that is local or runs other versions."""
    try:
        live = cluster.live_workers()
    except redis.RedisError as exc:
        report(False, f"cannot read the worker registry: {exc}")
        return
    if not live:
        report(None, "no live workers: batches run in-process", "start one with: hermes worker")
    for w in live:
        report(
            True,
            f"worker {w.name}: tag {w.tag}, {w.concurrency} process(es), heartbeat "
            f"{time.time() - w.heartbeat_at:.1f} s ago",
        )
        if w.tag == "local" and w.probe.get("reason"):
            report(None, f"worker {w.name} is local: {w.probe.get('reason')}", str(w.probe.get("fix", "")))
        compared = ("python", "unicode", "ftfy", "engine")
        differs = {k: (local[k], w.versions.get(k)) for k in compared if w.versions.get(k) != local[k]}
        if differs:
            report(
                None,
                f"worker {w.name} differs from here: "
                + ", ".join(f"{k} {mine} here vs {theirs}" for k, (mine, theirs) in differs.items()),
                "outputs are byte-identical only when Unicode and ftfy versions match; compare provenance",
            )


def _doctor_docker(settings: Any, local: dict[str, str], report: Any) -> None:
    try:
        from hermes_worker.probe import probe  # Docker code only for this check
    except ImportError as exc:
        report(None, f"Docker support is not installed ({exc})", "pip install docker")
        return
    outcome = probe(settings)
    if outcome.tag != "container":
        report(False, f"Docker: {outcome.reason}", outcome.fix)
        return
    details = outcome.details
    report(
        True,
        f"Docker {details.get('docker_version', '')}: sandbox image {settings.sandbox_image} "
        f"({str(details.get('image', ''))[:19]}) passes the self-test",
    )
    inside = details.get("sandbox_python")
    if inside and inside != local["python"]:
        # The self-test passed, so Unicode data and ftfy agree; only the patch level differs.
        report(
            None,
            f"sandbox Python {inside} differs from here ({local['python']}): provenance will show it",
            "outputs matched the local engine on the self-test; rebuild the image on a base with the same "
            "Python for identical provenance",
        )
