"""`hermes worker`: probe Docker, then run a Celery worker tagged and routed by the outcome."""

from __future__ import annotations

import json
import os
import socket
import sys

import click

from .contract import QUEUE_FOR_TAG
from .settings import LIMITS


@click.command()
@click.option(
    "--mode",
    type=click.Choice(["auto", "container", "local"]),
    default=None,
    help="auto (default): probe Docker; container: fail unless the probe passes; local: no Docker.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, int(LIMITS["HERMES_CONCURRENCY"][1])),
    default=None,
    help="Worker processes (default: every core).",
)
@click.option("--name", "-n", default=None, help="Node name after the tag: TAG@NAME (default: the host name).")
@click.option(
    "--loglevel",
    "-l",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve this worker's Prometheus metrics on this port (default: off).",
)
def worker(
    mode: str | None, concurrency: int | None, name: str | None, loglevel: str, metrics_port: int | None
) -> None:
    """Start a Celery worker that consumes the queue its Docker probe earns it.

    At start-up the worker probes Docker: engine answering, sandbox image present, a session
    that passes a self-test. Pass: tag `container`, queue hermes.container, prompts run inside
    a hardened container session. Fail: tag `local`, queue hermes.local, and the log says
    "Docker is unavailable, using local processing" with the reason and the fix.

    \b
    Examples:
      hermes worker
      hermes worker --mode local --concurrency 2 --name cpu1
      celery -A hermes_worker.app worker -E -n local@%h     # the same, for Celery users
    """
    # The app reads its settings from the environment: hand the options over that way.
    if mode:
        os.environ["HERMES_WORKER_MODE"] = mode
    if concurrency:
        os.environ["HERMES_CONCURRENCY"] = str(concurrency)
    if metrics_port is not None:
        os.environ["HERMES_METRICS_PORT"] = str(metrics_port)
    from .app import app, settings  # the worker side is imported only to run a worker
    from .events import ClusterLog
    from .redis_conn import connect
    from .worker import ENV_PROBE, ENV_TAG, announce, decide_tag

    tag, found = decide_tag(settings)
    if settings.worker_mode == "container" and tag != "container":
        click.echo(
            f"hermes: error: --mode container, but the Docker probe failed: {found['reason']}. Fix: {found['fix']}",
            err=True,
        )
        sys.exit(3)
    node = f"{tag}@{name or socket.gethostname()}"
    try:
        events: ClusterLog | None = ClusterLog(connect(settings.result_backend, settings.broker_timeout_s), node)
    except Exception:
        events = None
    # On the terminal too: Hermes' own log handler writes to a file, Celery's is not set up yet.
    click.echo(f"hermes worker {node}: {announce(tag, found, events)}", err=True)
    os.environ[ENV_TAG] = tag
    os.environ[ENV_PROBE] = json.dumps(found, default=str)
    app.worker_main(
        [
            "worker",
            "--hostname",
            node,
            "--queues",
            QUEUE_FOR_TAG[tag],
            "--concurrency",
            str(settings.concurrency),
            "--loglevel",
            loglevel.upper(),
            "--events",
            "--pool",
            "prefork",
            "--without-gossip",
            "--without-mingle",
        ]
    )
