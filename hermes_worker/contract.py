"""The contract between producers and workers: task and queue names, payloads, error codes.

Both sides import this module and nothing else of each other. It uses only the standard
library, so it also ships inside the sandbox image. Payloads are plain JSON: no pickle, ever.

A chunk request carries either raw input lines (what ``hermes batch`` sends)::

    {"v": 3, "chunk": 7, "profile": {"name": "prompt", "steps": [...]},
     "max_validation": 1, "explain": false, "max_prompt_bytes": 1048576,
     "format": "jsonl", "first": 7169, "text": "{\"id\": ...}\n{...}\n...",
     "bad": [[index, "invalid_utf8", "..."], ...]}

``text`` is the chunk's input lines as they were read, joined by ``"\n"``, the first being line
``first``; the worker parses them (:mod:`hermes_worker.lines`), so the producer never decodes a
prompt. ``bad`` lists lines the producer could not ship as text (invalid UTF-8, far too long):
an empty line stands in for each, and its error record says why. Or the request carries
items already parsed (``hermes run``, ``hermes queue``, tests)::

     ... "items": [[line, id, prompt, null], [line, id, null, ["malformed_json", "..."]], ...]}

An item whose fourth field is set failed before it reached the engine; the worker turns it
into its error record so that records stay in input order.

A chunk result::

    {"v": 3, "chunk": 7, "lines": ["{...record...}", ...], "ok": 255, "failed": 1,
     "errors": [[line, code, message], ...], "provenance": {...},
     "first": 7169, "ids": [17, "a", true, null, ...]}

``lines`` holds one JSON-encoded output record per item, in item order: producers write them
as they are, without decoding them again. ``ids`` (JSONL text requests only) gives, per record,
the id the producer's duplicate guard checks: the explicit id, ``true`` for a line whose id is
its line number, ``null`` for a line that failed before its id counted. The producer, which
sees every chunk in order, turns a record whose id was used before into a ``duplicate_id``
error record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# 2: results cross Redis as raw JSONL ("t") next to their counts ("r"), not as a list in "r".
# 3: requests may carry raw input lines ("text"), parsed by the worker; results carry "ids".
PAYLOAD_VERSION = 3

TASK_NORMALIZE_CHUNK = "hermes.normalize_chunk"
QUEUE_CONTAINER = "hermes.container"
QUEUE_LOCAL = "hermes.local"
QUEUE_FOR_TAG = {"container": QUEUE_CONTAINER, "local": QUEUE_LOCAL}

# Redis keys, all of them. Results come back on a per-batch stream, never over pub/sub: a
# producer that reads slowly must not make Redis drop its connection.
KEY_PREFIX = "hermes:"
KEY_WORKER = KEY_PREFIX + "worker:{name}"  # a worker's registry entry, JSON, expires with its heartbeat
KEY_RESULTS = KEY_PREFIX + "results:{batch}"  # stream of chunk results and start notices of one batch
# The raw lines of one chunk sent through Celery, as UTF-8 bytes; see TEXT_KEY.
KEY_CHUNK_TEXT = KEY_PREFIX + "chunk:{batch}:{chunk}"
KEY_EVENTS = KEY_PREFIX + "events"  # capped stream: the cluster log
EVENTS_MAXLEN = 20_000

# Error codes of item records. Stable: scripts match on them.
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_PROMPT = "missing_prompt"
PROMPT_NOT_STRING = "prompt_not_string"
BAD_ID = "bad_id"
DUPLICATE_ID = "duplicate_id"
EMPTY_PROMPT = "empty_prompt"
TOO_LARGE = "too_large"
NUL_BYTE = "nul_byte"
LONE_SURROGATE = "lone_surrogate"
VALIDATION_FAILED = "validation_failed"
ENGINE_FAILURE = "engine_failure"
# The item kept killing the sandbox container (memory, crash) or cannot fit in one frame.
SANDBOX_FAILURE = "sandbox_failure"
# Normalizing the item used more CPU time than its budget (hermes_worker.engine.budget).
TOO_SLOW = "too_slow"


# Through Celery, a text request's ``text`` does not ride in the task message: the producer
# stores it, as the UTF-8 bytes it read, under KEY_CHUNK_TEXT and the message names that key
# here. The worker puts it back before anything else sees the payload. The task message stays a
# few hundred bytes, so the prompts are not JSON-escaped, base64-encoded and copied again by
# the broker transport (and again for its unacknowledged-message store) on their way.
TEXT_KEY = "text_key"

# The largest ``item_time_budget`` scale a request may carry (hermes_worker.engine.budget).
MAX_ITEM_TIME_BUDGET = 100.0


def result_text(result: Mapping[str, Any]) -> str:
    """A chunk result's records as JSONL text, one line each, ending with a newline.

    Results made in this process carry ``lines`` (a list); results that crossed Redis carry
    ``text`` (the same records, already joined).
    """
    if "text" in result:
        return str(result["text"])
    lines = result["lines"]
    return "\n".join(lines) + "\n" if lines else ""


def result_lines(result: Mapping[str, Any]) -> list[str]:
    """A chunk result's records as a list of JSON strings."""
    if "lines" in result:
        return list(result["lines"])
    return str(result["text"]).split("\n")[:-1]


def request_span(payload: Mapping[str, Any]) -> tuple[int, int]:
    """``(first line, number of lines)`` of a chunk request, without parsing its lines."""
    text = payload.get("text")
    if isinstance(text, str):
        return int(payload.get("first") or 1), text.count("\n") + 1
    items = payload.get("items") or []
    return (items[0][0] if items else 0), len(items)


class ContractError(ValueError):
    """A payload does not follow the contract (a bug or a version mismatch, not bad input)."""


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """A validated chunk request; see the module docstring for the wire form."""

    chunk: int
    profile: Mapping[str, Any]
    max_validation: int
    explain: bool
    max_prompt_bytes: int
    items: list[list[Any]] | None = None
    text: str | None = None
    first: int = 1
    format: str = "jsonl"
    bad: list[list[Any]] | None = None
    # Scale of each item's CPU-time budget (hermes_worker.engine.budget): 1 the default, 0 off.
    item_time_budget: float = 1.0

    def to_payload(self) -> dict[str, Any]:
        payload = {
            "v": PAYLOAD_VERSION,
            "chunk": self.chunk,
            "profile": dict(self.profile),
            "max_validation": self.max_validation,
            "explain": self.explain,
            "max_prompt_bytes": self.max_prompt_bytes,
            "item_time_budget": self.item_time_budget,
        }
        if self.text is not None:
            payload |= {"format": self.format, "first": self.first, "text": self.text, "bad": self.bad or []}
        else:
            payload["items"] = self.items
        return payload

    def bad_lines(self) -> dict[int, list[Any]]:
        """Lines of a text request the producer could not ship: index in the chunk -> [code, message]."""
        return {index: [code, message] for index, code, message in self.bad or []}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ChunkRequest:
        """Validate a decoded payload.

        Raises:
            ContractError: naming the first field that is wrong.
        """
        if not isinstance(payload, Mapping):
            raise ContractError("chunk payload must be a JSON object")
        if payload.get("v") != PAYLOAD_VERSION:
            raise ContractError(
                f"chunk payload version {payload.get('v')!r} is not {PAYLOAD_VERSION}: upgrade the older side"
            )
        chunk, items = payload.get("chunk"), payload.get("items")
        max_validation, max_bytes = payload.get("max_validation"), payload.get("max_prompt_bytes")
        if not isinstance(chunk, int):
            raise ContractError("chunk payload: 'chunk' must be an integer")
        if not isinstance(max_validation, int) or max_validation < 0:
            raise ContractError("chunk payload: 'max_validation' must be an integer >= 0")
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ContractError("chunk payload: 'max_prompt_bytes' must be a positive integer")
        budget = payload.get("item_time_budget", 1.0)
        # Bounded: a hostile value can at most hand an item back to the chunk's own time limit.
        if (
            not isinstance(budget, int | float)
            or isinstance(budget, bool)
            or not math.isfinite(budget)
            or not 0 <= budget <= MAX_ITEM_TIME_BUDGET
        ):
            raise ContractError(
                f"chunk payload: 'item_time_budget' must be a number from 0 to {MAX_ITEM_TIME_BUDGET:g}"
            )
        common: dict[str, Any] = {
            "chunk": chunk,
            "profile": payload.get("profile") or {},
            "max_validation": max_validation,
            "explain": bool(payload.get("explain")),
            "max_prompt_bytes": max_bytes,
            "item_time_budget": float(budget),
        }
        text = payload.get("text")
        if text is not None:
            first, fmt, bad = payload.get("first"), payload.get("format"), payload.get("bad") or []
            if not isinstance(text, str):
                raise ContractError("chunk payload: 'text' must be a string of input lines")
            if not isinstance(first, int) or isinstance(first, bool) or first < 1:
                raise ContractError("chunk payload: 'first' must be a line number >= 1")
            if fmt not in ("jsonl", "text"):
                raise ContractError("chunk payload: 'format' must be 'jsonl' or 'text'")
            if not isinstance(bad, list) or not all(isinstance(b, list) and len(b) == 3 for b in bad):
                raise ContractError("chunk payload: 'bad' must be a list of [index, code, message] lists")
            return cls(**common, text=text, first=first, format=fmt, bad=bad)
        if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 4 for i in items):
            raise ContractError("chunk payload: 'items' must be a list of [line, id, prompt, error] lists")
        return cls(**common, items=items)
