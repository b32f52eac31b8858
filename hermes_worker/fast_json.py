"""JSON for input lines and records: orjson's speed where its answer is provably the standard
library's, the standard library everywhere else.

Records must be byte-identical whatever is installed (tests/test_fast_json.py and the
differential tests hold them to the standard library and to the reference engine), and a
sandbox image built on another Python cannot load orjson's compiled module. So orjson is an
accelerator, never the source of an output: each function here is defined as the
standard-library call it stands for, and takes orjson's answer only where it is the same.

- :func:`encode_string` is ``json.dumps(text, ensure_ascii=False)``. orjson writes the same
  characters for every string: it escapes ``"``, ``\\`` and the C0 controls exactly as ``json``
  does (``\\b \\t \\n \\f \\r``, the others as ``\\u00xx``) and nothing else. A string holding a lone
  surrogate, which orjson refuses, is written by ``json``.
- :func:`loads` is ``json.loads``. What orjson reads differently it refuses (NaN and Infinity,
  numbers that overflow a double, lone surrogate escapes, nesting deeper than 1,024, a byte order
  mark, UTF-16 bytes), and ``json`` reads it. The one silent difference is an integer beyond 64
  bits, which orjson turns into a float: a value holding a float goes to ``json`` (input lines and
  records hold none; a search of the text for 19 digits in a row cost more than orjson's whole
  parse).

Standard library first: this module ships inside the sandbox image, with or without orjson.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

try:  # an optional accelerator: see the module's docstring
    import orjson as _orjson
except ImportError:  # pragma: no cover - a sandbox base whose Python orjson was not built for
    _orjson = None  # type: ignore[assignment]

__all__ = ["ACCELERATED", "encode_compact", "encode_string", "loads"]

# Whether orjson is in use in this interpreter (the tests check it, on the host and in the
# sandbox image); the results are the same either way.
ACCELERATED = _orjson is not None

# The standard library's compact encoder (no spaces; characters as they are, not escaped): what
# records, their provenance and sandbox frame headers are written with, here once for all of them.
encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_string(text: str) -> str:
    """``json.dumps(text, ensure_ascii=False)``: ``text`` as a JSON string literal.

    >>> encode_string('a "quoted"\\tword')
    '"a \\\\"quoted\\\\"\\\\tword"'
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(text).decode("utf-8")
        except TypeError:  # a lone surrogate: not UTF-8, orjson refuses it
            pass
    return encode_compact(text)


def loads(text: str | bytes, fallback: Callable[[Any], Any] = json.loads) -> Any:
    """``fallback(text)`` (by default ``json.loads``), taking orjson's answer where it is the same.

    ``fallback`` is a standard-library decoder that reads what ``json.loads`` reads as
    ``json.loads`` does (hooks that only mark what they see, as :mod:`hermes_worker.lines` has);
    it alone decides every text orjson refuses or could read differently, and raises its own
    errors, so callers see exactly the standard library's messages.
    """
    if _orjson is not None:
        try:
            value = _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
        else:
            if not _holds_a_float(value):
                return value
    return fallback(text)


def _holds_a_float(value: Any) -> bool:
    """Whether a decoded value is or holds a float (where orjson may have read an integer beyond
    64 bits). Each object's and array's members are looked at once; a loop, not recursion:
    orjson decodes 1,024 levels, Python recurses 1,000 deep."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is not dict and kind is not list:
            if kind is float:
                return True
            continue
        for member in item.values() if kind is dict else item:
            kind = type(member)
            if kind is float:
                return True
            if kind is dict or kind is list:
                pending.append(member)
    return False
