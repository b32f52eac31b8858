"""The engine's errors: narrow subclasses of Hermes' one root (:mod:`hermes_worker.errors`).

An :class:`ItemError` describes one bad prompt: it becomes that item's error record and never
stops a batch. A :class:`ProfileError` describes a bad profile: it is a usage error.
"""

from __future__ import annotations

from hermes_worker.errors import EXIT_ITEMS_FAILED, EXIT_USAGE, HermesError

# Error codes of the item records the engine's own checks make; contract.py lists them with the
# rest (it imports these: of the worker package, the engine imports only the error root). Stable:
# scripts match on them.
EMPTY_PROMPT = "empty_prompt"
TOO_LARGE = "too_large"
NUL_BYTE = "nul_byte"
LONE_SURROGATE = "lone_surrogate"
TOO_SLOW = "too_slow"


class EngineError(HermesError):
    """Root of every error the engine raises on purpose."""


class ProfileError(EngineError):
    """A profile is unknown, or a profile definition is invalid."""

    exit_code = EXIT_USAGE


class ItemError(EngineError):
    """One item cannot be normalized; ``code`` is stable, ``message`` is for people.

    ``item_id``, when set, is the item's own (valid) id, for its error record; otherwise the
    record's id is the item's line number.
    """

    exit_code = EXIT_ITEMS_FAILED  # `hermes run`: its one item failed

    def __init__(self, code: str, message: str, item_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.item_id = item_id
