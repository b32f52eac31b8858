"""`hermes flower`: Flower against the configured broker, with authentication required."""

from __future__ import annotations

import os
import sys

import click

from hermes_worker.redact import redact_url
from hermes_worker.settings import option_help

from .common import Context, check_listen_address, fail, pass_context

# Flower's own OAuth configuration: with it, basic auth is not required.
_OAUTH_VARIABLES = ("FLOWER_AUTH_PROVIDER", "FLOWER_AUTH")
# Flower options that carry a secret, and where to put it instead: `ps` shows every process's
# command line to every user of the machine.
_SECRET_OPTIONS = {
    "basic_auth": "HERMES_FLOWER_USER and HERMES_FLOWER_PASSWORD",
    "oauth2_secret": "FLOWER_OAUTH2_SECRET",
    "cookie_secret": "FLOWER_COOKIE_SECRET",
    "broker_api": "FLOWER_BROKER_API",
}


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help=option_help("HERMES_FLOWER_PORT"))
@click.option("--address", default=None, help=option_help("HERMES_FLOWER_ADDRESS"))
@click.option("--insecure-no-auth", is_flag=True, help="Start without any authentication (never on a network).")
@click.option(
    "--allow-control",
    is_flag=True,
    help=option_help("HERMES_FLOWER_ALLOW_CONTROL"),
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
def flower(
    ctx: Context,
    port: int | None,
    address: str | None,
    insecure_no_auth: bool,
    allow_control: bool,
    flower_args: tuple[str, ...],
) -> None:
    """Start Flower on the configured broker; HTTP basic auth is required.

    Credentials: HERMES_FLOWER_USER and HERMES_FLOWER_PASSWORD (or Flower's OAuth settings,
    FLOWER_AUTH_PROVIDER and FLOWER_AUTH). The REST API needs them too (401 otherwise);
    /metrics (Prometheus) and /healthcheck answer for monitoring. Extra arguments go to Flower.

    Read-only by default: a Flower login sees workers, tasks, queues and metrics, and changes
    nothing. Every endpoint that would (shut down or restart workers, resize pools, add or
    cancel queue consumers, revoke or abort tasks, change time or rate limits, apply or send
    tasks, which is writing to the broker) answers 403, whatever the method or spelling of
    the path. --allow-control (or HERMES_FLOWER_ALLOW_CONTROL=1) opens them: whoever has the
    login can then do all of that. Workers still refuse the commands that would change them
    unless they run with HERMES_WORKER_REMOTE_CONTROL=all (see SECURITY.md).

    \b
    Examples:
      HERMES_FLOWER_USER=ops HERMES_FLOWER_PASSWORD=s3cret hermes flower --port 5555
      curl -u ops:s3cret http://127.0.0.1:5555/api/workers
      hermes flower --allow-control      # the operators' own Flower, with the buttons
    """
    settings = ctx.settings
    _refuse_secret_options(flower_args)
    if ":" in settings.flower_user:
        fail("HERMES_FLOWER_USER contains ':', which HTTP basic auth cannot carry in a user name")
    env = _flower_environment(ctx, allow_control, insecure_no_auth)
    check_listen_address("--address", address or settings.flower_address, port or settings.flower_port)
    argv = [
        sys.executable,
        "-P",  # nothing imported from the current directory, whoever can write there
        "-m",
        "hermes_producer.flower_main",
        f"--port={port or settings.flower_port}",
        f"--address={address or settings.flower_address}",
        *flower_args,
    ]
    ctx.notice(
        f"Flower on http://{address or settings.flower_address}:{port or settings.flower_port} "
        f"(broker {redact_url(settings.broker_url)})"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def _refuse_secret_options(flower_args: tuple[str, ...]) -> None:
    """Exit 2 for a Flower option that would put a secret on the command line, naming its variable."""
    for arg in flower_args:
        name = arg.lstrip("-").partition("=")[0].replace("-", "_").lower()
        if name in _SECRET_OPTIONS:
            fail(
                f"Flower's option {name!r} takes a secret, and every user of this machine can read a "
                f"command line (ps): set {_SECRET_OPTIONS[name]} in the environment instead"
            )


def _flower_environment(ctx: Context, allow_control: bool, insecure_no_auth: bool) -> dict[str, str]:
    """Flower's environment: the login flower_main checks, and whether control is allowed.

    Exits 2 when there is no login and no OAuth, unless ``--insecure-no-auth`` says so.
    """
    settings, env = ctx.settings, dict(os.environ)
    if allow_control or settings.flower_allow_control:
        env["HERMES_FLOWER_ALLOW_CONTROL"] = "1"
        ctx.notice("Flower users may control workers and send tasks (--allow-control)")
    else:
        env.pop("HERMES_FLOWER_ALLOW_CONTROL", None)
    if settings.flower_user and settings.flower_password:
        # flower_main checks this login itself (Flower's FLOWER_BASIC_AUTH splits it at commas).
        env["HERMES_FLOWER_USER"], env["HERMES_FLOWER_PASSWORD"] = settings.flower_user, settings.flower_password
        env.pop("FLOWER_BASIC_AUTH", None)
    elif any(env.get(name) for name in _OAUTH_VARIABLES):
        pass  # Flower enforces its OAuth configuration itself
    elif not insecure_no_auth:
        fail(
            "Flower needs credentials: set HERMES_FLOWER_USER and HERMES_FLOWER_PASSWORD "
            "(or Flower's OAuth settings), or pass --insecure-no-auth on a machine nobody else reaches"
        )
    else:
        ctx.notice("starting Flower WITHOUT authentication (--insecure-no-auth)")
    return env
