"""What every item of a chunk is processed with, declared once: :class:`ChunkOptions`.

Each option is one field with its declaration (:func:`option`): its default, its wire check,
and the ``HERMES_*`` setting or command-line flag that sets it. Everything else is derived from
these fields: the options' part of a chunk request on the wire (:meth:`ChunkOptions.to_wire`,
:meth:`ChunkOptions.from_wire`), the producer's batch options and resume header
(``hermes_producer.batch.BatchOptions``), and the flags of every command that runs prompts
(``hermes_producer.cli.options``). So an option that reaches the worker is a field here and
the code that reads it (``request.options.NAME``), and nothing else.

Standard library only: it ships inside the sandbox image, as the contract does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .contract import MAX_ITEM_TIME_BUDGET, MAX_PROMPT_BYTES, MAX_VALIDATION, ContractError, shown

__all__ = ["ChunkOptions", "OptionDeclaration", "declarations"]

_MISSING = object()


@dataclass(frozen=True, slots=True)
class OptionDeclaration:
    """How one chunk option is checked on the wire and set by people.

    Attributes:
        check: the wire value to the checked value; raises ContractError naming ``name``.
        setting: the ``HERMES_*`` variable whose value is the default and whose parser, bounds
            and help text the flag reuses (hermes_worker.settings), or None.
        flag: the command-line flag, or None for an option no command sets.
        help: the flag's help text when no setting gives one (a flag with no setting is a switch).
        required: older workers and producers always sent it: a request without it is refused.
            A new option is never required, so that an older producer's requests still run.
    """

    check: Callable[[str, Any], Any]
    setting: str | None = None
    flag: str | None = None
    help: str = ""
    required: bool = False


def option(default: Any, check: Callable[[str, Any], Any], **declaration: Any) -> Any:
    """Declare a field of :class:`ChunkOptions` (see :class:`OptionDeclaration` for the rest)."""
    return field(default=default, metadata={"hermes": OptionDeclaration(check, **declaration)})


def _whole(low: int, high: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise ContractError(f"chunk payload: {name!r} must be an integer from {low} to {high}, got {shown(value)}")
        return value

    return check


def _switch(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ContractError(f"chunk payload: {name!r} must be true or false")
    return value


def _budget(name: str, value: Any) -> float:
    """Bounded: a hostile value can at most hand an item back to the chunk's own time limit."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_ITEM_TIME_BUDGET
    ):
        raise ContractError(f"chunk payload: {name!r} must be a number from 0 to {MAX_ITEM_TIME_BUDGET:g}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkOptions:
    """The options a chunk's items are normalized with; they travel in every chunk request.

    >>> ChunkOptions(explain=True).to_wire()
    {'max_validation': 1, 'explain': True, 'max_prompt_bytes': 1048576, 'item_time_budget': 1.0}
    >>> ChunkOptions.from_wire({"max_validation": 2, "max_prompt_bytes": 10}).max_validation
    2
    """

    max_validation: int = option(
        1, _whole(0, MAX_VALIDATION), setting="HERMES_MAX_VALIDATION", flag="--max-validation", required=True
    )
    explain: bool = option(
        False, _switch, flag="--explain", help="Add to each record the steps that changed it, in order."
    )
    max_prompt_bytes: int = option(
        1024 * 1024,
        _whole(1, MAX_PROMPT_BYTES),
        setting="HERMES_MAX_PROMPT_BYTES",
        flag="--max-prompt-bytes",
        required=True,
    )
    # Scale of each item's CPU-time budget (hermes_worker.engine.budget): 1 the default, 0 off.
    item_time_budget: float = option(
        1.0, _budget, setting="HERMES_ITEM_TIME_BUDGET", flag="--item-time-budget"
    )

    def to_wire(self) -> dict[str, Any]:
        """The options' fields of a chunk request, in declaration order."""
        return {name: getattr(self, name) for name, _ in declarations()}

    @classmethod
    def from_wire(cls, payload: Mapping[str, Any]) -> ChunkOptions:
        """The options of a decoded chunk request, each checked; an optional one missing is its default.

        Raises:
            ContractError: naming the first option that is wrong.
        """
        values = {}
        for name, declared in declarations():
            value = payload.get(name, _MISSING)
            if value is _MISSING and not declared.required:
                continue
            values[name] = declared.check(name, None if value is _MISSING else value)
        return cls(**values)


def declarations() -> Iterator[tuple[str, OptionDeclaration]]:
    """Every chunk option's name and declaration, in declaration order."""
    for each in dataclasses.fields(ChunkOptions):
        yield each.name, each.metadata["hermes"]
