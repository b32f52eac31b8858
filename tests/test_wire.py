"""The values that cross a wire: ChunkRequest, ChunkResult, Item and ItemFailure.

Each has one encode and one decode. Specified here: a value survives its own wire unchanged;
every malformed shape is refused with a ContractError that names the field; and what a producer
or worker of the previous code sent (the dict shapes, byte for byte) still decodes, and encodes
back to the same bytes, so old and new sides understand each other.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.contract import MAX_MESSAGE_CHARS, PAYLOAD_VERSION, ContractError
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.wire import ChunkRequest, ChunkResult, Item, ItemFailure, Reply

NFC = {"name": "nfc", "steps": ["nfc"]}
PROVENANCE = {"profile": "nfc", "mode": "local", "worker": "local@w1"}
BATCH = "0123456789abcdef0123456789abcdef"


def result(**changes: Any) -> ChunkResult:
    base = ChunkResult(
        chunk=7,
        records='{"id":"a","line":7}\n{"id":8,"line":8,"error":{}}\n',
        ok=1,
        failed=1,
        errors=(ItemFailure(8, "malformed_json", "invalid JSON"),),
        provenance=PROVENANCE,
        first=7,
        ids=["a", None],
    )
    return replace(base, **changes)


# Round trips: encode -> decode is the identity ------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [ItemFailure(1, "too_large", "big"), ItemFailure(0, "", "")],
    ids=["failure", "empty"],
)
def test_an_item_failure_survives_its_wire(value: ItemFailure) -> None:
    assert ItemFailure.from_wire(json.loads(json.dumps(value.to_wire()))) == value


@pytest.mark.parametrize(
    "value",
    [Item(1, "a", "prompt"), Item(2, 2, None, ("bad_id", "m")), Item(3, None, 42), Item(0, [1], {"x": 1})],
    ids=["plain", "pre-failed", "not-a-string", "odd-id"],
)
def test_an_item_survives_its_wire(value: Item) -> None:
    assert Item.from_wire(json.loads(json.dumps(value.to_wire()))) == value


@pytest.mark.parametrize(
    "value",
    [
        ChunkRequest(
            3,
            NFC,
            options=ChunkOptions(max_validation=1, max_prompt_bytes=1000),
            items=[Item(1, "a", "x"), Item(2, 2, None, ("too_large", "m"))],
        ),
        ChunkRequest(
            4,
            NFC,
            options=ChunkOptions(max_validation=0, explain=True, max_prompt_bytes=1000),
            text='{"prompt": "a"}\nb',
            first=11,
            bad=[[1, "invalid_utf8", "m"]],
        ),
        ChunkRequest(
            5,
            NFC,
            options=ChunkOptions(max_validation=2, max_prompt_bytes=5, item_time_budget=0.5),
            text="a\nb\nc",
            format="text",
            bad=[],
            isolation="container",
        ),
    ],
    ids=["items", "jsonl-text", "plain-text"],
)
def test_a_chunk_request_survives_its_wire(value: ChunkRequest) -> None:
    assert ChunkRequest.from_payload(json.loads(json.dumps(value.to_payload()))) == value


def test_a_request_whose_lines_wait_in_redis_survives_its_wire() -> None:
    reply = Reply(BATCH, 60)
    options = ChunkOptions(max_validation=1, max_prompt_bytes=1000)
    value = ChunkRequest(9, NFC, options=options, text_key=reply.text_key(9), count=3, first=4, bad=[])
    assert ChunkRequest.from_payload(json.loads(json.dumps(value.to_payload())), reply) == value


@pytest.mark.parametrize(
    "value",
    [
        result(),
        result(first=None, ids=None),
        result(ids=None),
        result(records="", ok=0, failed=0, errors=(), ids=[]),
    ],
    ids=["text-request", "items-request", "plain-text-request", "empty"],
)
def test_a_chunk_result_survives_both_its_wires(value: ChunkResult) -> None:
    # The object form (sandbox frames, records as a list)
    assert ChunkResult.from_wire(json.loads(json.dumps(value.to_wire()))) == value
    # The stream form (counts as ASCII JSON, records as raw UTF-8 bytes)
    fields = value.to_stream()
    assert isinstance(fields["r"], str) and fields["r"].isascii() and isinstance(fields["t"], bytes)
    assert ChunkResult.from_stream(json.loads(fields["r"]), fields["t"]) == value


def test_what_process_chunk_makes_survives_both_wires() -> None:
    text = '{"id": "a", "prompt": "caf\\u00e9 \\u2028"}\nnope\n{"prompt": "\\ud83d\\ude00"}'
    options = ChunkOptions(max_validation=1, explain=True, max_prompt_bytes=1000)
    request = ChunkRequest(1, resolve_profile("prompt").spec(), options=options, text=text, first=5)
    made = process_chunk(request, mode="local", worker="local@w1")
    assert ChunkResult.from_wire(json.loads(json.dumps(made.to_wire()))) == made
    fields = made.to_stream()
    assert ChunkResult.from_stream(json.loads(fields["r"]), fields["t"]) == made
    assert made.count == len(made.record_lines()) == 3 and made.first == 5 and made.ids == ["a", None, True]


# Malformed shapes: refused, naming the field ----------------------------------------------------

BAD_RESULTS = [
    ("not an object", [1, 2], "not an object"),
    ("chunk missing", {"chunk": None}, "chunk number or counts"),
    ("chunk a string", {"chunk": "7"}, "chunk number or counts"),
    ("chunk a boolean", {"chunk": True}, "chunk number or counts"),
    ("ok negative", {"ok": -1}, "chunk number or counts"),
    ("failed a float", {"failed": 1.0}, "chunk number or counts"),
    ("provenance missing", {"provenance": None}, "provenance"),
    ("provenance a list", {"provenance": ["local@w1"]}, "provenance"),
    ("worker not printable", {"provenance": PROVENANCE | {"worker": "w\x1b[2J"}}, "provenance"),
    ("worker not a string", {"provenance": PROVENANCE | {"worker": 7}}, "provenance"),
    ("mode missing", {"provenance": {"worker": "local@w1"}}, "provenance"),
    ("errors missing", {"errors": None}, "errors do not match"),
    ("errors fewer than failed", {"errors": []}, "errors do not match"),
    ("an error of two fields", {"errors": [[8, "x"]]}, "errors do not match"),
    ("an error line a string", {"errors": [["8", "x", "y"]]}, "errors do not match"),
    ("an error code a number", {"errors": [[8, 1, "y"]]}, "errors do not match"),
    ("ids too few", {"ids": ["a"]}, "ids do not match"),
    ("ids not a list", {"ids": "ab"}, "ids do not match"),
    ("ids without first", {"first": None}, "ids do not match"),
    ("first a string", {"first": "7", "ids": None}, "first line"),
    ("records missing", {"lines": None}, "records"),
    ("a record not a string", {"lines": ['{"id":1}', 2]}, "records"),
]


@pytest.mark.parametrize(("change", "problem"), [c[1:] for c in BAD_RESULTS], ids=[c[0] for c in BAD_RESULTS])
def test_a_malformed_result_is_refused_naming_the_field(change: Any, problem: str) -> None:
    wire = change if isinstance(change, list) else result().to_wire() | change
    with pytest.raises(ContractError, match=problem):
        ChunkResult.from_wire(wire)


def test_a_result_whose_records_are_not_utf8_is_refused() -> None:
    fields = result().to_stream()
    with pytest.raises(ContractError, match="records are not UTF-8"):
        ChunkResult.from_stream(json.loads(fields["r"]), b"\xff\xfe\n")
    with pytest.raises(ContractError, match="not an object"):
        ChunkResult.from_stream([1, 2], b"")  # type: ignore[arg-type]


BAD_ITEMS = [
    ("not a list", {"line": 1}, "'items' must be a list"),
    ("three fields", [1, "a", "x"], "'items' must be a list"),
    ("line negative", [-1, "a", "x", None], "item line -1 is not a line number"),
    ("line a boolean", [True, "a", "x", None], "item line True is not a line number"),
    ("line a string", ["1", "a", "x", None], "item line '1' is not a line number"),
    ("error not a pair", [1, "a", None, ["bad_id"]], "item on line 1 must be a \\[code, message\\] pair"),
    ("unknown code", [1, "a", None, ["pwned", "m"]], "item on line 1: unknown error code 'pwned'"),
    ("message too long", [1, "a", None, ["bad_id", "m" * (MAX_MESSAGE_CHARS + 1)]], "the message must be a string"),
    ("message a number", [1, "a", None, ["bad_id", 7]], "the message must be a string"),
]


@pytest.mark.parametrize(("wire", "problem"), [c[1:] for c in BAD_ITEMS], ids=[c[0] for c in BAD_ITEMS])
def test_a_malformed_item_is_refused_naming_the_field(wire: Any, problem: str) -> None:
    with pytest.raises(ContractError, match=problem):
        Item.from_wire(wire)
    # And inside a request, the same refusal
    options = ChunkOptions(max_validation=0, max_prompt_bytes=100)
    request = ChunkRequest(0, NFC, options=options, items=[Item(1, "ok", "x")]).to_payload()
    with pytest.raises(ContractError, match=problem):
        ChunkRequest.from_payload(request | {"items": [[0, "ok", "x", None], wire]})


@pytest.mark.parametrize("wire", [[1, "x"], [1, "x", "y", "z"], ["1", "x", "y"], [1, None, "y"], (1, "x", "y"), "x"])
def test_a_malformed_item_failure_is_refused_naming_the_field(wire: Any) -> None:
    with pytest.raises(ContractError, match="'errors'"):
        ItemFailure.from_wire(wire)


def test_too_many_items_are_refused_before_any_is_read() -> None:
    from hermes_worker import contract

    request = ChunkRequest(0, NFC, options=ChunkOptions(max_validation=0, max_prompt_bytes=100), items=[]).to_payload()
    with pytest.raises(ContractError, match=r"more than \d+ items in one chunk"):
        ChunkRequest.from_payload(request | {"items": [None] * (contract.MAX_CHUNK_LINES + 1)})


# Regression: what the previous producer and worker sent still decodes, and encodes back the same ----

# A result stream entry exactly as the previous worker code wrote it (hermes_worker/worker.py at
# 3419a69: json.dumps of the result without "lines", ensure_ascii; records joined, UTF-8).
OLD_STREAM_R = (
    '{"v": 3, "chunk": 7, "ok": 1, "failed": 1, "errors": [[8, "malformed_json", "invalid JSON: Expecting value '
    '(column 1)"]], "provenance": {"profile": "nfc", "profile_digest": "sha256:ab", "engine": "0.1.0", '
    '"mode": "local", "worker": "local@w\\u00e9"}, "first": 7, "ids": ["caf\\u00e9", null]}'
)
OLD_STREAM_T = (
    '{"id":"café","line":7,"text":"x","changed":false,"validation":{"rounds":1,"converged":true},"provenance":{}}\n'
    '{"id":8,"line":8,"error":{"code":"malformed_json","message":"m","line":8},"provenance":{}}\n'
).encode()


def test_a_result_an_older_worker_published_decodes_and_encodes_back_byte_for_byte() -> None:
    decoded = ChunkResult.from_stream(json.loads(OLD_STREAM_R), OLD_STREAM_T)
    assert (decoded.chunk, decoded.ok, decoded.failed, decoded.first, decoded.ids) == (7, 1, 1, 7, ["café", None])
    assert decoded.errors == (ItemFailure(8, "malformed_json", "invalid JSON: Expecting value (column 1)"),)
    assert decoded.provenance["worker"] == "local@wé" and decoded.version == PAYLOAD_VERSION
    assert decoded.to_stream() == {"r": OLD_STREAM_R, "t": OLD_STREAM_T}


def test_a_result_an_older_sandbox_server_framed_decodes_and_encodes_back_unchanged() -> None:
    # The frame's result as the previous process_chunk built it (an items request: no first, ids)
    old = {"v": 3, "chunk": 2, "lines": ['{"id":1,"line":1}', '{"id":2,"line":2}'], "ok": 2, "failed": 0,
           "errors": [], "provenance": {"mode": "container", "worker": "container@w"}}  # fmt: skip
    decoded = ChunkResult.from_wire(old)
    assert decoded.records == '{"id":1,"line":1}\n{"id":2,"line":2}\n' and decoded.first is None
    assert json.dumps(decoded.to_wire()) == json.dumps(old)  # the same keys, in the same order


def test_a_result_of_another_version_decodes_and_keeps_its_version() -> None:
    """The producer, not the decode, tells a version mismatch (it fails the chunk's records, naming it)."""
    old = json.loads(OLD_STREAM_R) | {"v": 2}
    assert ChunkResult.from_stream(old, OLD_STREAM_T).version == 2
    assert ChunkResult.from_stream(old | {"v": "3"}, OLD_STREAM_T).version is None


def test_requests_an_older_producer_sent_decode_and_encode_back_unchanged() -> None:
    spec = resolve_profile("nfc").spec()
    # A raw-lines task message (its lines in Redis) and an items request (hermes run), as sent at 3419a69
    reply = Reply(BATCH, 60)
    text_message = {"v": 3, "chunk": 4, "profile": spec, "max_validation": 1, "explain": False,
                    "max_prompt_bytes": 1048576, "item_time_budget": 1.0, "format": "jsonl", "first": 4097,
                    "text_key": reply.text_key(4), "count": 2, "bad": [[1, "invalid_utf8", "not valid UTF-8"]]}
    items_request = {"v": 3, "chunk": 0, "profile": spec, "max_validation": 1, "explain": False,
                     "max_prompt_bytes": 1048576, "item_time_budget": 1.0,
                     "items": [[1, 1, "hello", None], [2, "b", None, ["too_large", "m"]]]}  # fmt: skip
    for old, answer in ((text_message, reply), (items_request, None)):
        decoded = ChunkRequest.from_payload(old, answer)
        assert json.dumps(decoded.to_payload()) == json.dumps(old)
    expected = [Item(1, 1, "hello"), Item(2, "b", None, ("too_large", "m"))]
    assert ChunkRequest.from_payload(items_request).items == expected
    # A request from a producer before item_time_budget still decodes, with the default
    without = {k: v for k, v in items_request.items() if k != "item_time_budget"}
    assert ChunkRequest.from_payload(without).options.item_time_budget == 1.0
