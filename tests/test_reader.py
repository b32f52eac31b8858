"""The reader turns every input line into exactly one record, and finds duplicate ids at any scale."""

from __future__ import annotations

import io

from hermes_producer.reader import detect_format
from hermes_producer.seen_ids import SeenIds

from .support.inputs import batch_records


def test_duplicate_ids_are_found_after_the_guard_spills_to_disk() -> None:
    seen = SeenIds(spill_at=1000)
    for n in range(1, 5001):
        assert seen.check_and_add(f"id-{n}", n) is None
    assert seen.check_and_add("id-17", 6000) == 17  # spilled long ago
    assert seen.check_and_add("id-4999", 6001) == 4999
    assert seen.check_and_add(17, 6002) is None  # the integer 17 is not the string "17"


def test_default_ids_and_explicit_integer_ids_collide_both_ways() -> None:
    seen = SeenIds()
    assert seen.check_default(1) is None
    assert seen.check_and_add(1, 2) == 1  # explicit 1 after line 1 used it by default
    assert seen.check_and_add(9, 3) is None
    assert seen.check_default(9) == 3  # line 9's default id was taken by line 3


def test_every_line_becomes_one_record_in_order() -> None:
    data = b'\xef\xbb\xbf{"prompt": "bom"}\n{"prompt": "crlf"}\r\n\xff\n{"prompt": "last, no newline"}'
    records = batch_records(data, chunk_size=3)
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r.get("text") for r in records] == ["bom", "crlf", None, "last, no newline"]
    assert records[2]["error"]["code"] == "invalid_utf8"


def test_an_overlong_line_is_skipped_without_losing_the_next_one() -> None:
    data = b"short\n" + b"x" * 300_000 + b"\nafter\n"
    records = batch_records(data, chunk_size=2, fmt="text")
    assert [(r["line"], r.get("text")) for r in records] == [(1, "short"), (2, None), (3, "after")]
    assert records[1]["error"]["code"] == "too_large" and "300,001 bytes" in records[1]["error"]["message"]


def test_format_detection() -> None:
    assert detect_format("a.jsonl", io.BufferedReader(io.BytesIO(b"x"))) == "jsonl"
    assert detect_format("a.txt", io.BufferedReader(io.BytesIO(b"{"))) == "text"
    assert detect_format("-", io.BufferedReader(io.BytesIO(b'\n  {"prompt": 1}'))) == "jsonl"
    assert detect_format("-", io.BufferedReader(io.BytesIO(b"plain words"))) == "text"
