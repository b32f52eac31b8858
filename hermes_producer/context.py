"""What a producer run needs wherever it goes: settings, the log, and whether to speak.

The commands make one (hermes_producer.cli) and hand it to the library code that chooses and
drives executors (hermes_producer.dispatch), which says what it decides through
:meth:`Context.notice`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import click

from hermes_worker.redact import redact
from hermes_worker.settings import Settings

from .terminal import printable


@dataclass(slots=True)
class Context:
    """What every command needs: settings, the log, and whether to speak."""

    settings: Settings
    log: logging.Logger
    quiet: bool
    # While a progress line is live on the terminal: its console, which prints above the line
    # (writing to stderr directly would write into it).
    above: Any = None

    def notice(self, message: str) -> None:
        """One line on stderr for people (unless --quiet), and the same in the log."""
        if self.quiet:
            return
        line = f"hermes: {printable(redact(message), keep_newlines=True)}"
        if self.above is not None:
            self.above.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            click.echo(line, err=True)
