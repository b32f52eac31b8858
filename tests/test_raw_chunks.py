"""Chunks of raw input lines: the producer only splits lines; whoever runs a chunk parses them.

Every input line still gets exactly one record, in order, and a bad line an error record
naming its line, whether the line is bad for the producer (not UTF-8, far too long) or for the
worker (malformed JSON), and whether a repeated id comes in the same chunk or a later one.
"""

from __future__ import annotations

import io
import json

from hermes_producer.reader import read_chunks
from hermes_producer.seen_ids import SeenIds

from .support.inputs import batch_records


def test_an_invalid_utf8_line_in_a_raw_chunk_fails_alone_with_its_line_number() -> None:
    # Given a chunk whose middle line is not UTF-8
    data = b'{"id": "a", "prompt": "one"}\n{"id": "b", "prompt": "\xff\xfe"}\n{"id": "c", "prompt": "three"}\n'
    # When it is run as one raw chunk
    records = batch_records(data, chunk_size=3)
    # Then only that line is an error, it says where, and its neighbours are normalized
    assert [r.get("text") for r in records] == ["one", None, "three"]
    assert records[1]["line"] == 2 and records[1]["error"]["code"] == "invalid_utf8"
    assert "byte 0xff" in records[1]["error"]["message"]


def test_malformed_json_becomes_an_error_record_in_the_worker_not_in_the_producer() -> None:
    # Given raw lines the producer does not parse
    first, text, bad, *_known = next(read_chunks(io.BytesIO(b'{"prompt": "ok"}\n{"prompt": \n'), "jsonl", 100, 10))
    assert (first, bad) == (1, []) and text == '{"prompt": "ok"}\n{"prompt": '
    # When the worker runs them, Then the broken line is an error record naming its line
    records = batch_records(b'{"prompt": "ok"}\n{"prompt": \n')
    assert records[1]["line"] == 2 and records[1]["error"]["code"] == "malformed_json"


def test_a_duplicate_id_in_a_later_chunk_becomes_an_error_naming_the_first_line() -> None:
    # Given an id used on line 1 and again on line 5, three chunks apart
    rows = [{"id": "x", "prompt": "first"}, {"id": "y", "prompt": "b"}, {"prompt": "c"}, {"id": 3, "prompt": "d"},
            {"id": "x", "prompt": "again"}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    # When the batch runs in chunks of two
    records = batch_records(data, chunk_size=2)
    # Then line 5 is a duplicate of line 1, and explicit 3 collides with line 3's default id
    assert [r.get("error", {}).get("code") for r in records] == [None, None, None, "duplicate_id", "duplicate_id"]
    assert "already used on line 1" in records[4]["error"]["message"] and records[4]["id"] == "x"
    assert "already used on line 3" in records[3]["error"]["message"]


def test_an_overlong_line_is_an_error_record_and_the_next_chunk_still_lines_up() -> None:
    data = b"short\n" + b"x" * 300_000 + b"\nafter\nlast\n"
    records = batch_records(data, chunk_size=2, fmt="text", max_bytes=1000)
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert records[1]["error"]["code"] == "too_large" and "300,001 bytes" in records[1]["error"]["message"]
    assert [r.get("text") for r in records] == ["short", None, "after", "last"]


def test_the_guard_keeps_the_first_use_even_after_spilling_to_disk() -> None:
    seen = SeenIds(spill_at=100)
    for start in range(1, 1001, 50):
        assert seen.check_chunk(start, [f"id-{n}" for n in range(start, start + 50)]) == {}
    assert seen.check_chunk(2000, ["new", "id-17", True, None]) == {1: 17}
