"""`hermes image`: build the sandbox image, with no registry needed.

Errors are raised, not printed: a SettingsError (exit 2) or a SandboxError (exit 3, with its
fix) ends the command through the `hermes` group's entry point (hermes_producer/cli/guard.py).
"""

from __future__ import annotations

import logging
import sys

import click

from .settings import Settings

__all__ = ["image"]


@click.group()
def image() -> None:
    """The sandbox image that container mode runs prompts in."""


@image.command()
@click.option(
    "--base",
    default=None,
    metavar="IMAGE",
    help="Base image, already in the local store; nothing is pulled (default: python:3.11-slim).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="T",
    help="Extra tag, repeatable (default: HERMES_SANDBOX_IMAGE, hermes-sandbox:latest).",
)
@click.option("--rebuild", is_flag=True, help="Build even when an image with the same content exists.")
@click.option("--verbose", "-v", is_flag=True, help="Show the Docker build's output on stderr.")
def build(base: str | None, tags: tuple[str, ...], rebuild: bool, verbose: bool) -> None:
    """Build the sandbox image from ops/sandbox/Dockerfile and print its tag and digest.

    The image holds this installation's engine and text libraries at the exact versions
    installed here; it is tagged hermes-sandbox:<engine version>-<content hash>, and an image
    with that tag is reused unless --rebuild.

    \b
    Examples:
      hermes image build
      ops/build-base-image.sh && hermes image build --base hermes-base:bookworm   # air gap
    """
    from .sandbox.image import DEFAULT_BASE, build_image  # Docker code only when an image is wanted

    obj = click.get_current_context().find_root().obj
    settings = obj.settings if hasattr(obj, "settings") else Settings.from_env()
    if verbose:
        logging.getLogger("hermes.sandbox").addHandler(logging.StreamHandler(sys.stderr))
        logging.getLogger("hermes.sandbox").setLevel(logging.DEBUG)
    built = build_image(base=base or DEFAULT_BASE, tags=tags or (settings.sandbox_image,), rebuild=rebuild)
    click.echo(f"{built.tag} {built.digest}")
    for extra in built.tags[1:]:
        click.echo(f"tagged {extra}", err=True)
    if not built.built:
        click.echo("(already built: same content on the same base)", err=True)
