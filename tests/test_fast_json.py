"""orjson where its answer is the standard library's, the standard library everywhere else
(hermes_worker/fast_json.py): every function gives exactly what the call it stands for gives,
with orjson and without it, on every string, every number at the 64-bit edges, text that is
almost JSON, and the hostile lines of the item parser."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hermes_worker import fast_json
from hermes_worker.engine.errors import ItemError
from hermes_worker.lines import parse_json_item

from .support.properties import examples

PROPERTY = settings(max_examples=examples(2000), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
_stdlib_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    """What a call gives: ("ok", its value's repr, which tells int from float and -0.0 from 0.0)
    or ("raises", the exception's type and message)."""
    try:
        return "ok", repr(call(*args))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        return "raises", (type(exc).__name__, str(exc))


def test_the_suite_runs_with_orjson() -> None:
    """Else every test below compares the standard library with itself."""
    assert fast_json.ACCELERATED


# --- encode_string ---------------------------------------------------------------------------


def test_every_code_point_is_encoded_as_json_encodes_it() -> None:
    # Each one alone, and all of them in one string: every escape and every raw character.
    everything = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    assert fast_json.encode_string("".join(everything)) == _stdlib_encode("".join(everything))
    mismatched = [c for c in everything if fast_json.encode_string(c) != _stdlib_encode(c)]
    assert mismatched == []


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\udc00\ud800", "ok \U0001f600 \ud83d"])
def test_a_lone_surrogate_is_encoded_by_the_standard_library(text: str) -> None:
    assert fast_json.encode_string(text) == _stdlib_encode(text)


@PROPERTY
@given(st.text())
def test_any_text_is_encoded_as_json_encodes_it(text: str) -> None:
    assert fast_json.encode_string(text) == _stdlib_encode(text)


# --- loads -----------------------------------------------------------------------------------

EDGES = [
    "[18446744073709551615]", "[18446744073709551616]", "[-9223372036854775808]", "[-9223372036854775809]",
    "[99999999999999999999]", "[1234567890123456789012345]", '{"id": 10000000000000000000}',
    "[1E400]", "[-1e400]", "[1e-400]", "[NaN]", "[Infinity]", "[-Infinity]", "[-0]", "[-0.0]", "[0.1]",
    '["\\ud800"]', '["\\udc00\\ud800"]', '["\\ud83d\\ude00"]', '"\ud800"', "\ufeff[1]", "[1,]", "[01]",
    '"\x1f"', '"\x7f"', "[" * 1100 + "]" * 1100, "[" * 100_000, " [1] \n", "", " ", "nul", "[1] x",
]  # fmt: skip


@pytest.mark.parametrize("text", EDGES, ids=lambda text: repr(text[:30]))
def test_loads_reads_the_edges_as_json_reads_them(text: str) -> None:
    assert outcome(fast_json.loads, text) == outcome(json.loads, text)
    assert outcome(fast_json.loads, text.encode("utf-8", "surrogatepass")) == outcome(
        json.loads, text.encode("utf-8", "surrogatepass")
    )


def test_an_integer_beyond_64_bits_stays_an_integer() -> None:
    """orjson reads 2**64 as a float: a value holding a float is read again by json."""
    assert fast_json.loads("[18446744073709551616, -9223372036854775809]") == [2**64, -(2**63) - 1]
    assert type(fast_json.loads(b'{"id": 99999999999999999999}')["id"]) is int


def test_utf16_bytes_are_read_as_json_reads_them() -> None:
    data = '{"prompt": "é"}'.encode("utf-16")
    assert fast_json.loads(data) == json.loads(data) == {"prompt": "é"}


_NUMBER = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?", fullmatch=True)
_LEAF = st.one_of(st.none(), st.booleans(), st.text(max_size=12), _NUMBER.map(lambda n: ("number", n)))
_VALUE = st.recursive(
    _LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "id", "prompt", "é"]), inner, max_size=4)
    ),
    max_leaves=12,
)


def _render(value: Any, ascii_only: bool) -> str:
    """JSON text for a generated value; numbers as their generated literal."""
    if isinstance(value, tuple):
        return str(value[1])
    if isinstance(value, list):
        return "[" + ",".join(_render(v, ascii_only) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_render(v, ascii_only)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=ascii_only)


@PROPERTY
@given(_VALUE, st.booleans())
def test_any_json_text_is_read_as_json_reads_it(value: Any, ascii_only: bool) -> None:
    text = _render(value, ascii_only)
    assert outcome(fast_json.loads, text) == outcome(json.loads, text)


_TOKENS = ['{', '}', '[', ']', ',', ':', '"', '\\', 'u', 'd800', '0', '1', '9', '-', '+', '.', 'e', ' ', '\t',
           '\n', '\r', '\x00', '\x0b', '\xa0', '\ufeff', '\u2028', 'true', 'null', 'NaN', 'Infinity', '"prompt"',
           '"id"', '\ud800', '/', 'x', '01', '\x1f', '\x7f', 'é', '\U0001f600', '1234567890']  # fmt: skip


@PROPERTY
@given(st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join))
def test_text_that_is_almost_json_is_read_or_refused_as_json_does(text: str) -> None:
    assert outcome(fast_json.loads, text) == outcome(json.loads, text)


# --- the item parser, with orjson and without -------------------------------------------------

HOSTILE_LINES = [
    '{"id": 1, "prompt": "a", "prompt": "b"}', '{"prompt": "a", "\\u0070rompt": "b"}',
    '{"id": 1, "\\u0069d": 2, "prompt": "x"}', '{"prompt": "a", "pr\\u006Fmpt": "b"}',
    '{"i\\u0064": 1, "id": 2, "prompt": "x"}',
    '{"prompt": "esc \\u001b[2J", "pr\\u006fmpt": "b"}', '{"prompt": "\\ud83d\\ude00 \\u001b", "id": "\\u00e9"}',
    '{"id": 1, "id": 2, "prompt": "x"}', '{"prompt": "say \\"prompt\\" twice: \\"prompt\\"", "id": "a"}',
    '{"id": 18446744073709551616, "prompt": "x"}', '{"id": 99999999999999999999, "prompt": "x"}',
    '{"id": 100000000000000000000, "prompt": "x"}', '{"id": ' + "9" * 5000 + ', "prompt": "x"}',
    '{"id": 1.5, "prompt": "x"}', '{"id": NaN, "prompt": "x"}', '{"id": 1e400, "prompt": "x"}',
    '{"id": -0, "prompt": "x"}', '{"id": "\\ud800", "prompt": "x"}', '{"prompt": "\\ud800"}',
    '{"prompt": "a", "other": 1, "other": 2}', '[' * 5000, '{"prompt": ' + "[" * 2000 + "]" * 2000 + "}",
    '{"prompt": 12345678901234567890123}', "", "   ", "null", '"prompt"', '{"prompt": "x"} trailing',
    '{"id": true, "prompt": "x"}', '{"id": "' + "a" * 2000 + '", "prompt": "x"}', '{"prompt": "\u2028\x85"}',
]  # fmt: skip


def _parsed(line: str) -> tuple[str, Any]:
    try:
        return "ok", repr(parse_json_item(line))
    except ItemError as exc:
        return "error", (exc.code, exc.message, repr(exc.item_id))


@pytest.mark.parametrize("line", HOSTILE_LINES, ids=lambda line: repr(line[:40]))
def test_a_hostile_line_gets_the_same_item_or_error_with_orjson_and_without(
    line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_orjson = _parsed(line)
    monkeypatch.setattr(fast_json, "_orjson", None)
    assert with_orjson == _parsed(line)


@PROPERTY
@given(_VALUE, st.booleans())
def test_any_line_gets_the_same_item_or_error_with_orjson_and_without(value: Any, ascii_only: bool) -> None:
    line = _render(value, ascii_only)
    with_orjson = _parsed(line)
    saved, fast_json._orjson = fast_json._orjson, None  # type: ignore[assignment]
    try:
        assert with_orjson == _parsed(line)
    finally:
        fast_json._orjson = saved
