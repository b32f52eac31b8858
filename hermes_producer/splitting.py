"""Split a chunk request into parts, and merge the parts' results back into the chunk's result.

A chunk that keeps failing as a whole (its worker process dies on it, its result is too large
to publish) is split, and the parts are run as chunks of their own, until the item to blame
is alone; every other item then gets its normal record. The sandbox session does the same
inside a container worker (:mod:`hermes_worker.sandbox.session`); this is the producer's
version, for whatever happens outside one. Pure functions on encoded requests and result values.

>>> parts = split_request({"chunk": 3, "first": 10, "text": "a\\nb\\nc", "bad": [[2, "x", "y"]]})
>>> [(p["first"], p["text"], p["bad"]) for p in parts]
[(10, 'a', []), (11, 'b\\nc', [[1, 'x', 'y']])]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

from hermes_worker.wire import ChunkResult, request_span

__all__ = ["merge_results", "split_request"]


def split_request(payload: Mapping[str, Any], ways: int = 2) -> list[dict[str, Any]]:
    """Up to ``ways`` requests holding consecutive slices of ``payload``'s lines or items, in order.

    Returns ``[]`` for a request of one line: it cannot be split. The slices keep every other
    field (the caller numbers them) and differ in size by one line at most; their line numbers
    are the lines' own.
    """
    _first, count = request_span(payload)
    if count < 2:
        return []
    ways = max(2, min(ways, count))
    bounds = [count * k // ways for k in range(ways + 1)]
    text = payload.get("text")
    if isinstance(text, str):
        lines = text.split("\n")
        first = int(payload["first"])
        bad = payload.get("bad") or []
        # A shared input's chunk is split into chunks of lines: a part is not the whole range.
        whole = {key: value for key, value in payload.items() if key != "range"}
        return [
            dict(
                whole,
                text="\n".join(lines[start:end]),
                first=first + start,
                bad=[[b[0] - start, *b[1:]] for b in bad if start <= b[0] < end],
            )
            for start, end in pairwise(bounds)
        ]
    items = list(payload.get("items") or [])
    return [dict(payload, items=items[start:end]) for start, end in pairwise(bounds)]


def merge_results(payload: Mapping[str, Any], parts: Sequence[ChunkResult]) -> ChunkResult:
    """The result of ``payload`` from the results of its parts, in order.

    Counts and errors add up; ``ids`` (the duplicate guard's) are joined when every part has
    them; the provenance and version are the first part's.
    """
    merged = parts[0].followed_by(*parts[1:])
    first: int | None = None
    ids: list[Any] | None = None
    if "first" in payload and "text" in payload:
        first = payload["first"]
        if all(part.ids is not None for part in parts):
            ids = [i for part in parts for i in part.ids or []]
    return replace(merged, chunk=payload["chunk"], first=first, ids=ids)
