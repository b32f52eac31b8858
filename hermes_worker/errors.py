"""The root of every error Hermes raises on purpose, and the exit code each one ends a command with.

Library code (the engine, the sandbox, the worker, the producer's batch machinery) raises a
:class:`HermesError` subclass and never exits; the ``hermes`` command's entry point
(:mod:`hermes_producer.cli.guard`) is the one place that turns an error into a message and an exit
code::

    hermes: error: <reason>
    hermes: fix: <fix>            (when there is one)

Each subclass says which exit code it means (README, "Exit codes"); an instance may say
otherwise where the same error is a usage error in one place and an outage in another.
Standard library only: this module also ships inside the sandbox image.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXIT_INFRA", "EXIT_INTERRUPTED", "EXIT_ITEMS_FAILED", "EXIT_OK", "EXIT_USAGE", "HermesError"]

# README, "Exit codes": every item ok; some items failed (their records say why); a usage error
# (nothing has run yet: fix the command line, a setting, a file); an infrastructure error (or a
# bug: the same code, so scripts that retry or page someone on 3 do the same); interrupted.
EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class HermesError(Exception):
    """Root of every error Hermes raises on purpose.

    ``str(error)`` is the reason, followed by `` (fix: ...)`` when there is a fix, for logs and
    for messages that quote an error inside another.

    Attributes:
        reason: what went wrong, one line that names the value, file or service at fault.
        fix: what to do about it, or an empty string when there is nothing to say.
        exit_code: what a command that ends with this error exits with (the class's, unless the
            raiser said otherwise).

    >>> error = HermesError("the journal is damaged", "run without --resume", exit_code=EXIT_USAGE)
    >>> str(error), error.exit_code
    ('the journal is damaged (fix: run without --resume)', 2)
    """

    exit_code: int = EXIT_INFRA

    def __init__(self, reason: str, fix: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(f"{reason} (fix: {fix})" if fix else reason)
        self.reason = reason
        self.fix = fix
        if exit_code is not None:
            self.exit_code = exit_code

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors raised in a pool process come back pickled. Python rebuilds an exception by
        # calling its class with ``args``, which fails for subclasses that take other arguments
        # (``ItemError(code, message, item_id)``); rebuilding from the state works for all.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[HermesError], args: tuple[Any, ...], state: dict[str, Any]) -> HermesError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error
