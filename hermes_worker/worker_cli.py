"""`hermes worker`: probe Docker, then run a Celery worker tagged and routed by the outcome.

A worker that must not start raises :class:`WorkerRefused` with its exit code; the `hermes`
group's entry point (hermes_producer/cli/guard.py) prints it and exits.
"""

from __future__ import annotations

import re
import socket

import click

from .contract import shown, worker_queues
from .errors import EXIT_INFRA, EXIT_USAGE, HermesError
from .redact import redact, redact_url
from .settings import LIMITS, Settings, listen_address, option_help


class WorkerRefused(HermesError):
    """The worker will not start: the broker or the result Redis refuses its credentials (exit
    2), or ``--mode container`` and the Docker probe failed (exit 3)."""


@click.command()
@click.option(
    "--mode",
    type=click.Choice(["auto", "container", "local"]),
    default=None,
    help=option_help("HERMES_WORKER_MODE"),
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, int(LIMITS["HERMES_CONCURRENCY"][1])),
    default=None,
    help=option_help("HERMES_CONCURRENCY"),
)
@click.option(
    "--name",
    "-n",
    default=None,
    callback=lambda _ctx, _param, value: _name(value),
    help="Node name after the tag: TAG@NAME (default: the host name). Letters, digits, '.', '_', '-'; "
    "each worker needs a name of its own.",
)
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
    help=option_help("HERMES_METRICS_PORT"),
)
@click.option(
    "--metrics-address",
    default=None,
    metavar="ADDRESS",
    callback=lambda _ctx, _param, value: _address(value),
    help=option_help("HERMES_METRICS_ADDRESS"),
)
def worker(
    mode: str | None,
    concurrency: int | None,
    name: str | None,
    loglevel: str,
    metrics_port: int | None,
    metrics_address: str | None,
) -> None:
    """Start a Celery worker that consumes the queue its Docker probe earns it.

    At start-up the worker probes Docker: engine answering, sandbox image present, a session
    that passes a self-test. Pass: tag `container`, queue hermes.container, prompts run inside
    a hardened container session. Fail: tag `local`, queue hermes.local, and the log says
    "Docker is unavailable, using local processing" with the reason and the fix. Either also
    takes the public task hermes.normalize from Celery's default queue `celery` (a plain Celery
    client's), unless HERMES_PUBLIC_TASK=0.

    \b
    Examples:
      hermes worker
      hermes worker --mode local --concurrency 2 --name cpu1
      celery -A hermes_worker.app worker -E -n local@%h     # the same, for Celery users
    """
    # The options go into the settings the app is built from: nothing is handed over through
    # the environment. Celery's worker runs in this process (worker_main), so the app built here,
    # with the identity decided here, is the one its pool processes inherit when they fork.
    settings = _settings().with_overrides(
        worker_mode=mode, concurrency=concurrency, metrics_port=metrics_port, metrics_address=metrics_address
    )
    from .app import create_app  # the worker side is imported only to run a worker
    from .events import ClusterLog
    from .identity import announce, decide
    from .redis_conn import results_client
    from .runtime import name_taken

    refused = credentials_refused(settings)
    if refused is not None:
        raise WorkerRefused(refused, exit_code=EXIT_USAGE)
    identity = decide(settings)
    found = identity.probe
    if settings.worker_mode == "container" and identity.tag != "container":
        message = f"--mode container, but the Docker probe failed: {found['reason']}. Fix: {found['fix']}"
        raise WorkerRefused(message, exit_code=EXIT_INFRA)
    node = f"{identity.tag}@{name or socket.gethostname()}"
    taken = name_taken(settings, identity, node)
    if taken is not None:
        raise WorkerRefused(taken, exit_code=EXIT_USAGE)
    try:
        events: ClusterLog | None = ClusterLog(results_client(settings), node)
    except Exception:
        events = None
    # On the terminal too: Hermes' own log handler writes to a file, Celery's is not set up yet.
    click.echo(f"hermes worker {node}: {announce(identity, events)}", err=True)
    queues = worker_queues(identity.tag, settings.public_task)
    create_app(settings, identity).worker_main(_celery_argv(node, queues, settings.concurrency, loglevel))


def _celery_argv(node: str, queues: list[str], concurrency: int, loglevel: str) -> list[str]:
    """The arguments of Celery's worker command: the node, the tag's queue (and the public one),
    the prefork pool."""
    return [
        "worker",
        "--hostname",
        node,
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel.upper(),
        "--pool",
        "prefork",
        "--without-gossip",
        "--without-mingle",
    ]


def _settings() -> Settings:
    """The settings the `hermes` group read (``HERMES_*``), or read them now if run on its own."""
    context = click.get_current_context(silent=True)
    settings = getattr(context.find_root().obj, "settings", None) if context is not None else None
    return settings if isinstance(settings, Settings) else Settings.from_env()


def credentials_refused(settings: Settings) -> str | None:
    """Why the result Redis or the broker refuses this worker's credentials, or None.

    Checked once at start-up: a wrong password or a certificate that does not verify will not
    get better, so the worker stops at once with exit 2 and says so, rather than retrying for
    ever (Celery's way with a broker, right for one that is merely not up yet: that is still
    retried). A password changed while the worker runs is Celery's to retry; its log says what
    the server answered.
    """
    from .celeryconfig import broker_connection
    from .redis_conn import brief, refusal, results_client

    def redis_answers() -> None:
        results_client(settings).ping()

    def broker_answers() -> None:
        timeout = settings.broker_timeout_s
        with broker_connection(settings) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)

    same = settings.broker_url == settings.result_backend
    checks = [("result backend", settings.result_backend, "HERMES_BROKER_URL" if same else "HERMES_RESULT_BACKEND",
               redis_answers)]  # fmt: skip
    if not same:
        checks.append(("broker", settings.broker_url, "HERMES_BROKER_URL", broker_answers))
    for what, url, variable, check in checks:
        try:
            check()
        except Exception as exc:
            reason = refusal(exc)
            if reason is not None:
                return (
                    f"the {what} at {redact_url(url)} refused this worker: {reason} ({redact(brief(exc))}); "
                    f"check {variable}"
                )
    return None


def _name(value: str | None) -> str | None:
    """``--name``: what a host name may hold (it becomes TAG@NAME in the registry, in Celery's
    node name, in every record's provenance and in metrics labels), at most 200 characters."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", value):
        raise click.BadParameter(
            f"{shown(value)} is not a worker name: letters, digits, '.', '_' and '-', starting with a letter or "
            "digit, at most 200 characters"
        )
    return value


def _address(value: str | None) -> str | None:
    try:
        return None if value is None else listen_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
