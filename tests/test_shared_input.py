"""Shared-storage chunks (`hermes batch --shared`) without services: the byte range on the wire,
what a worker refuses to read, and that the producer's chunks are the reader's, byte for byte."""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hermes_producer.shared_chunks as shared_chunks_module
import hermes_worker.raw_lines as raw_lines
from hermes_producer.reader import read_chunks
from hermes_producer.shared_chunks import SharedInputError, shared_chunks, shared_path
from hermes_producer.splitting import split_request
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.contract import MAX_VALUE_BYTES, ContractError
from hermes_worker.engine import resolve_profile
from hermes_worker.shared_input import ByteRange, range_lines, read_range
from hermes_worker.wire import ChunkRequest, Reply

from .support.fixture_types import HermesRunner
from .support.properties import examples

SHA = "0" * 64


def wire_range(**changed: Any) -> dict[str, Any]:
    return {"path": "/srv/in.jsonl", "start": 0, "end": 10, "sha256": SHA} | changed


@pytest.mark.parametrize(
    ("changed", "problem"),
    [
        ({"path": "relative/in.jsonl"}, "is not absolute"),
        ({"path": "/srv/../etc/passwd"}, "is not normalized"),
        ({"path": "/srv/./in.jsonl"}, "is not normalized"),
        ({"path": "//srv/in.jsonl"}, "is not normalized"),
        ({"path": "/srv/in\x00.jsonl"}, "control characters"),
        ({"path": "/srv/in\n.jsonl"}, "control characters"),
        ({"path": ""}, "non-empty string"),
        ({"path": 7}, "non-empty string"),
        ({"path": "/" + "a" * 5000}, "longer than 4096"),
        ({"start": -1}, "start -1 must be an integer from 0"),
        ({"start": 1 << 60}, "start 1152921504606846976 must be an integer"),
        ({"start": 1.0}, "start 1.0 must be an integer"),
        ({"start": True}, "start True must be an integer"),
        ({"end": 0}, "end 0 must be an integer from 1"),
        ({"end": 1 << 60}, "end 1152921504606846976 must be an integer"),
        ({"start": 10, "end": 10}, "must hold 1 to"),
        ({"start": 20, "end": 10}, "must hold 1 to"),
        ({"end": MAX_VALUE_BYTES + 1}, "must hold 1 to"),
        ({"sha256": "xyz"}, "64 lowercase hex"),
        ({"sha256": "A" * 64}, "64 lowercase hex"),
    ],
)
def test_a_hostile_range_is_refused_naming_the_field(changed: dict[str, Any], problem: str) -> None:
    with pytest.raises(ContractError, match="chunk payload: 'range'") as refused:
        ByteRange.from_wire(wire_range(**changed))
    assert problem in str(refused.value)


@pytest.mark.parametrize("value", [None, [], "x", {"path": "/a", "start": 0, "end": 1}, wire_range(extra=1)])
def test_a_range_that_is_not_its_object_is_refused(value: Any) -> None:
    with pytest.raises(ContractError, match="exactly path, start, end and sha256"):
        ByteRange.from_wire(value)


def request_payload(**changed: Any) -> dict[str, Any]:
    reply = Reply("0" * 16, 60)
    payload = ChunkRequest(3, resolve_profile("nfc").spec(), ChunkOptions(), text_key=reply.text_key(3), count=2,
                           first=5, source=ByteRange("/srv/in.jsonl", 0, 10, SHA)).to_payload()  # fmt: skip
    return payload | changed


def test_a_request_carries_its_range_and_checks_it_on_decode() -> None:
    reply = Reply("0" * 16, 60)
    decoded = ChunkRequest.from_payload(request_payload(), reply)
    assert decoded.source == ByteRange("/srv/in.jsonl", 0, 10, SHA) and decoded.count == 2 and decoded.first == 5
    with pytest.raises(ContractError, match="3 lines cannot fit in the 2 bytes of 'range'"):
        ChunkRequest.from_payload(request_payload(count=3, range=wire_range(end=2)), reply)
    with pytest.raises(ContractError, match="is not normalized"):
        ChunkRequest.from_payload(request_payload(range=wire_range(path="/srv/../../etc/shadow")), reply)


def test_a_request_says_whether_its_records_may_go_to_a_part_file_and_whose_it_is() -> None:
    # Only when the producer says so (it took the batch's part directory, its user id), for a range
    reply = Reply("0" * 16, 60)
    assert ChunkRequest.from_payload(request_payload(), reply).parts is None
    told = ChunkRequest.from_payload(request_payload(parts=1000), reply)
    assert told.parts == 1000 and ChunkRequest.from_payload(told.to_payload(), reply) == told
    assert ChunkRequest.from_payload(request_payload(parts=0), reply).parts == 0
    without_range = {k: v for k, v in request_payload(parts=1000).items() if k != "range"}
    assert ChunkRequest.from_payload(without_range, reply).parts is None
    for hostile in ("1000", True, -1, 1 << 32, 1.0, [1]):
        with pytest.raises(ContractError, match="'parts' must be a user id"):
            ChunkRequest.from_payload(request_payload(parts=hostile), reply)


def test_a_split_shared_chunk_travels_as_lines() -> None:
    payload = {"chunk": 1, "first": 1, "text": "a\nb", "bad": [], "range": wire_range()}
    assert all("range" not in part for part in split_request(payload))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def the_range(path: Path, start: int, end: int) -> ByteRange:
    data = path.read_bytes()[start:end]
    return ByteRange(str(path), start, end, hashlib.sha256(data).hexdigest())


def test_a_worker_reads_a_range_under_its_root(tmp_path: Path) -> None:
    src = write(tmp_path / "in.txt", b"a\n\xff\nb\nc")
    assert read_range(tmp_path, the_range(src, 0, 4), 2, "text", 100) == (
        "a\n", [[1, "invalid_utf8", "not valid UTF-8: byte 0xff at offset 0"]]
    )
    assert read_range(tmp_path, the_range(src, 4, 7), 2, "text", 100) == ("b\nc", [])


def test_a_worker_refuses_what_it_must_not_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    secret = write(outside / "secret.txt", b"s\n")
    os.symlink(secret, root / "link.txt")
    src = write(root / "in.txt", b"one\ntwo\nthree\n")
    cases = [
        (None, the_range(src, 0, 4), 1, "HERMES_SHARED_ROOT is not set on it"),
        (root, the_range(secret, 0, 2), 1, "is outside HERMES_SHARED_ROOT"),
        (root, ByteRange(str(root / "link.txt"), 0, 2, the_range(secret, 0, 2).sha256), 1, "outside HERMES_SHARED"),
        (root, ByteRange(str(root / "missing.txt"), 0, 2, SHA), 1, "cannot be read: No such file"),
        (root, ByteRange(str(root), 0, 2, SHA), 1, "is not a regular file"),
        (root, the_range(src, 1, 4), 1, "is not on line boundaries"),
        (root, the_range(src, 0, 3), 1, "is not on line boundaries"),
        (root, the_range(src, 0, 8), 1, "holds 2 lines, the request says 1"),
        (root, ByteRange(str(src), 0, 4, SHA), 1, "the file changed under the batch"),
        (root, ByteRange(str(src), 0, 40, SHA), 1, "shorter than the range"),
    ]
    for where_root, where, count, problem in cases:
        with pytest.raises(ContractError) as refused:
            read_range(where_root, where, count, "text", 100)
        assert problem in str(refused.value), (where, str(refused.value))


def test_a_fifo_under_the_root_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ContractError, match="is not a regular file"):
        read_range(tmp_path, ByteRange(str(tmp_path / "pipe"), 0, 2, SHA), 1, "text", 100)  # never blocks


def test_a_changed_byte_of_the_same_size_is_caught(tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", b'{"prompt": "a"}\n{"prompt": "b"}\n')
    where = the_range(src, 0, 32)
    write(src, b'{"prompt": "A"}\n{"prompt": "b"}\n')
    with pytest.raises(ContractError, match=r"range \[0, 32\): its bytes are not the ones the producer read"):
        read_range(tmp_path, where, 2, "jsonl", 100)


def test_the_producers_chunks_are_the_readers_and_their_ranges_hold_them(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(13)
    for _trial in range(300):
        lines = [rng.choice([b"", b'{"prompt": "a"}', b"\xff\xfe", b"x" * rng.randint(0, 300), b"\r", b"y" * 200])
                 for _ in range(rng.randint(0, 60))]  # fmt: skip
        data = b"\n".join(lines) + rng.choice([b"", b"\n"])
        size, most = rng.randint(1, 10), rng.choice([10, 100])
        block = rng.choice([7, 64, 1 << 20])
        monkeypatch.setattr(raw_lines, "READ_BLOCK", block)
        monkeypatch.setattr(shared_chunks_module, "READ_BLOCK", block)
        plain = list(read_chunks(io.BytesIO(data), "text", most, size))
        shared = list(shared_chunks(io.BytesIO(data), "/x", "text", most, size))
        assert [chunk[:3] for chunk in plain] == [chunk[:3] for chunk in shared]
        assert [chunk.lines for chunk in plain] == [chunk.lines for chunk in shared]
        assert b"".join(data[c.source.start : c.source.end] for c in shared) == data
        for first, text, _bad, _utf8, _count, where in shared:
            assert hashlib.sha256(data[where.start : where.end]).hexdigest() == where.sha256
            assert first >= 1 and text.count("\n") + 1 <= size


def numbered(chunks: list[tuple[Any, ...]]) -> list[tuple[int, Any]]:
    """Every line of ``chunks`` with its number: its text, or its error."""
    lines = []
    for first, text, bad, *_where in chunks:
        errors = {index: (code, message) for index, code, message in bad}
        lines += [(first + i, errors.get(i, line)) for i, line in enumerate(text.split("\n"))]
    return lines


def test_memory_is_bounded_by_one_range_and_the_records_stay_the_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    # A range holds at most 40 bytes here, and a line over 20 bytes is too long (no slack).
    monkeypatch.setattr(shared_chunks_module, "MAX_VALUE_BYTES", 40)
    monkeypatch.setattr(raw_lines, "_LINE_SLACK", 0)
    rng = random.Random(7)
    for _trial in range(300):
        lines = [b"z" * rng.choice([0, 3, 15, 25, 39, 45, 90, 200]) for _ in range(rng.randint(1, 30))]
        data = b"\n".join(lines) + rng.choice([b"", b"\n"])
        block = rng.choice([5, 16, 1 << 20])
        monkeypatch.setattr(raw_lines, "READ_BLOCK", block)
        monkeypatch.setattr(shared_chunks_module, "READ_BLOCK", block)
        plain = list(read_chunks(io.BytesIO(data), "text", 20, 4))
        shared = list(shared_chunks(io.BytesIO(data), "/x", "text", 20, 4))
        assert numbered(plain) == numbered(shared), data
        for *_chunk, where in shared:
            assert where is None or where.end - where.start <= 40
            assert where is None or hashlib.sha256(data[where.start : where.end]).hexdigest() == where.sha256


def test_shared_path_needs_a_root_a_file_and_the_file_under_it(tmp_path: Path) -> None:
    src = write(tmp_path / "in.txt", b"a\n")
    assert shared_path(str(src), tmp_path) == os.path.realpath(src)
    for path, root, problem in [
        (str(src), None, "--shared needs HERMES_SHARED_ROOT"),
        ("-", tmp_path, "not standard input"),
        (str(tmp_path), tmp_path, "needs a regular file"),
        (str(src), tmp_path / "elsewhere", "is outside HERMES_SHARED_ROOT"),
    ]:
        with pytest.raises(SharedInputError, match=problem) as refused:
            shared_path(path, root)
        assert refused.value.exit_code == 2


def test_batch_shared_refuses_an_input_outside_its_root_and_runs_in_process_identically(
    hermes: HermesRunner, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    src = write(root / "in.jsonl", b'{"id": "a", "prompt": " x "}\n\xff\n{"id": "a", "prompt": "y"}\nnot json\n')
    outside = hermes("batch", str(src), "--shared", env={"HERMES_SHARED_ROOT": str(tmp_path / "other")})
    assert outside.returncode == 2 and "is outside HERMES_SHARED_ROOT" in outside.stderr
    assert "Traceback" not in outside.stderr
    unset = hermes("batch", str(src), "--shared")
    assert unset.returncode == 2 and "--shared needs HERMES_SHARED_ROOT" in unset.stderr
    # No cluster: it runs in-process, with the same records as without --shared.
    env = {"HERMES_SHARED_ROOT": str(root)}
    plain = hermes("batch", str(src), "-o", str(tmp_path / "plain.jsonl"), env=env)
    shared = hermes("batch", str(src), "-o", str(tmp_path / "shared.jsonl"), "--shared", env=env)
    assert plain.returncode == shared.returncode == 1, shared.stderr
    assert (tmp_path / "plain.jsonl").read_bytes() == (tmp_path / "shared.jsonl").read_bytes()
    assert (tmp_path / "plain.jsonl").read_bytes().count(b"\n") == 4


def _reader_way(data: bytes, fmt: Any, max_prompt_bytes: int) -> tuple[int, str, list[list[Any]]]:
    """What the producer's reader makes of ``data`` as one chunk: lines split, checked, joined."""
    chunks = list(read_chunks(io.BytesIO(data), fmt, max_prompt_bytes, len(data) + 1))
    if len(chunks) != 1:
        return 0, "", []
    return chunks[0].text.count("\n") + 1, chunks[0].text, chunks[0].bad


@given(
    st.lists(st.sampled_from([b"a", b"\n", b"\xc3\xa9", b"\xff", b"\xc3", b"\r", b"\x00", b"\xe2\x80\xa8", b"{}"]),
             max_size=40).map(b"".join),
    st.sampled_from(["jsonl", "text"]),
)  # fmt: skip
@settings(max_examples=examples(300), deadline=None)
def test_a_range_gives_the_readers_lines_whatever_its_bytes(data: bytes, fmt: Any) -> None:
    # range_lines decodes a range at once when no line can be too long; the reader's way (split,
    # check each line, join) must give the same count, text and bad lines, not UTF-8 included.
    assert range_lines(data, fmt, 1 << 20) == _reader_way(data, fmt, 1 << 20)


def test_a_range_with_a_line_too_long_gives_the_readers_error_record() -> None:
    long_line = b"x" * (70_000 + 3 * 6) + b"\n"
    data = b'{"id": 1}\n' + long_line + b"\xff\nlast"
    assert range_lines(data, "text", 3) == _reader_way(data, "text", 3)
    count, _text, bad = range_lines(data, "text", 3)
    assert count == 4 and [b[:2] for b in bad] == [[1, "too_large"], [2, "invalid_utf8"]]
