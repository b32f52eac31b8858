"""``python -m hermes_producer`` is the ``hermes`` command."""

from .cli import main

main(prog_name="hermes")
