"""The engine's errors: narrow subclasses of Hermes' one root (:mod:`hermes_worker.errors`).

An :class:`ItemError` describes one bad prompt: it becomes that item's error record and never
stops a batch. A :class:`ProfileError` describes a bad profile: it is a usage error.
"""

from __future__ import annotations

from ..errors import EXIT_ITEMS_FAILED, EXIT_USAGE, HermesError


class EngineError(HermesError):
    """Root of every error the engine raises on purpose."""


class ProfileError(EngineError):
    """A profile is unknown, or a profile definition is invalid."""

    exit_code = EXIT_USAGE


class ItemError(EngineError):
    """One item cannot be normalized; ``code`` is stable, ``message`` is for people.

    ``code`` is one of :data:`hermes_worker.contract.ITEM_CODES`, where every code is declared
    with its meaning. The engine names its codes as literals: of the worker package it imports
    only the error root, and tests/test_item_codes.py checks that each code raised is declared.

    ``item_id``, when set, is the item's own (valid) id, for its error record; otherwise the
    record's id is the item's line number.
    """

    exit_code = EXIT_ITEMS_FAILED  # `hermes run`: its one item failed

    def __init__(self, code: str, message: str, item_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.item_id = item_id
