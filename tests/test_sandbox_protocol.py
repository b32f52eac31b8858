"""The framed protocol and the engine server, without Docker: frames in memory and a real
server process on this machine's Python."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes_worker import contract
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.sandbox.errors import FrameTooLarge, ProtocolError, TornStream
from hermes_worker.sandbox.protocol import HEADER_BYTES, BytesRecv, DockerDemux, FrameReader, encode_frame
from hermes_worker.sandbox.server import handle
from hermes_worker.wire import ChunkRequest, Item

IMITATIONS = [
    "\x00\x00\x00\x02{}",  # a whole frame, as text
    "\x00\x00\x00\xff",  # a header announcing more than follows
    '"}, "ok": true, "result": {}} \x00\x00\x00\x05{"a":',  # JSON and framing mixed
    "\xff\xff\xff\xff too large if it were a header",
    "\n\r\n\x00",
]


def payload(prompts: list[Any]) -> dict[str, Any]:
    items = [Item(n, f"id-{n}", text) for n, text in enumerate(prompts, 1)]
    spec = resolve_profile("prompt").spec()
    return ChunkRequest(
        3, spec, options=ChunkOptions(max_validation=1, explain=False, max_prompt_bytes=1 << 20), items=items
    ).to_payload()


@given(st.lists(st.dictionaries(st.text(max_size=5), st.text() | st.integers() | st.none(), max_size=4),
                min_size=1, max_size=5), st.integers(min_value=1, max_value=7))  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_frames_survive_any_split_of_the_stream(messages: list[dict[str, Any]], step: int) -> None:
    # Given frames holding arbitrary text, delivered a few bytes at a time
    stream = b"".join(encode_frame(m) for m in messages)
    reader = FrameReader(BytesRecv(stream, step).recv)
    # When they are read back / Then every message is intact, then the stream ends cleanly
    assert [reader.read() for _ in messages] == messages
    assert reader.read() is None


@pytest.mark.parametrize("text", IMITATIONS)
def test_prompts_that_imitate_the_framing_are_just_text(text: str) -> None:
    frames = encode_frame({"prompt": text}) + encode_frame({"after": True})
    reader = FrameReader(BytesRecv(frames, 3).recv)
    assert reader.read() == {"prompt": text}
    assert reader.read() == {"after": True}


@pytest.mark.parametrize("cut", [1, HEADER_BYTES, HEADER_BYTES + 3])
def test_a_torn_stream_says_so(cut: int) -> None:
    frame = encode_frame({"prompt": "cut short"})
    with pytest.raises(TornStream, match="stream ended inside a frame"):
        FrameReader(BytesRecv(frame[:cut]).recv).read()


def test_oversized_frames_are_refused_before_reading_them() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"prompt": "x" * 100}, max_bytes=50)
    header = (1 << 31).to_bytes(HEADER_BYTES, "big")  # 2 GiB announced, nothing sent
    with pytest.raises(FrameTooLarge, match="over the"):
        FrameReader(BytesRecv(header).recv).read()


@pytest.mark.parametrize("body", [b"[1, 2]", b"\xff\xfe", b"{not json"])
def test_a_body_that_is_not_a_json_object_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameReader(BytesRecv(len(body).to_bytes(HEADER_BYTES, "big") + body).recv).read()


HEADERS = st.dictionaries(st.sampled_from(["op", "id", "x"]), st.text() | st.integers())


@given(st.lists(st.tuples(HEADERS, st.binary(max_size=300)), min_size=1, max_size=4), st.integers(1, 9))
@settings(max_examples=60, deadline=None)
def test_blobs_survive_any_split_of_the_stream(frames: list[tuple[dict[str, Any], bytes]], step: int) -> None:
    """Given frames with raw blobs (any bytes: line breaks, length-like bytes, invalid UTF-8),
    each header and blob comes back exactly, however the stream is cut."""
    reader = FrameReader(BytesRecv(b"".join(encode_frame(m, b) for m, b in frames), step).recv)
    assert [reader.read_frame() for _ in frames] == frames
    assert reader.read_frame() is None


def raw_frame(header: bytes, blob: bytes = b"", length: int | None = None) -> bytes:
    """A frame built by hand: ``length`` (default: the true one), then the header, a line break, the blob."""
    body = header + b"\n" + blob
    return (len(body) if length is None else length).to_bytes(HEADER_BYTES, "big") + body


@pytest.mark.parametrize("announced", [b"4", b"2", b"0", b"-3", b"18446744073709551616", b"1e9", b"true", b'"3"',
                                       b"null", b"3.0", b"[3]"])  # fmt: skip
def test_a_blob_length_that_lies_is_refused(announced: bytes) -> None:
    """Given a header whose blob length is not exactly the 3 bytes the frame holds (more, less,
    negative, huge, not an integer), the reader refuses the frame, naming both lengths."""
    frame = raw_frame(b'{"frame":2,"blob":%s,"id":1}' % announced, b"abc")
    with pytest.raises(ProtocolError, match=r"announces a blob of .* the frame holds 3"):
        FrameReader(BytesRecv(frame).recv).read_frame()


def test_a_frame_without_its_blob_length_is_refused() -> None:
    with pytest.raises(ProtocolError, match="announces a blob of null"):
        FrameReader(BytesRecv(raw_frame(b'{"frame":2,"id":1}', b"abc")).recv).read_frame()


def test_a_truncated_payload_is_refused_as_a_lie_or_a_torn_stream() -> None:
    """Given a blob cut short inside a frame whose length was fixed up, the blob length lies;
    given the same frame with its true length but the stream ending early, the stream is torn."""
    whole = encode_frame({"id": 1}, b"0123456789")
    body = whole[HEADER_BYTES:-4]
    with pytest.raises(ProtocolError, match="announces a blob of 10 bytes, the frame holds 6"):
        FrameReader(BytesRecv(len(body).to_bytes(HEADER_BYTES, "big") + body).recv).read_frame()
    with pytest.raises(TornStream, match="inside a frame body"):
        FrameReader(BytesRecv(whole[:-4]).recv).read_frame()


@pytest.mark.parametrize(("body", "said"), [
    (b'{"id":1,"ok":true,"result":{"engine":"0.1"}}', "1"),  # a protocol-1 server's reply: JSON, no line break
    (b'{"frame":3,"blob":0}\n', "3"),
    (b'{"frame":"2","blob":0}\n', '"2"'),
    (b'{"frame":true,"blob":0}\n', "true"),
    (b'{"blob":0}\n', "null"),
])  # fmt: skip
def test_another_frame_protocol_is_refused_naming_both_versions(body: bytes, said: str) -> None:
    """Given a frame of another protocol version (an old server's JSON-only frame), the reader
    says which version it got and which it speaks, and how to rebuild the image."""
    with pytest.raises(ProtocolError, match=f"speaks frame protocol {said}, this side 2") as caught:
        FrameReader(BytesRecv(len(body).to_bytes(HEADER_BYTES, "big") + body).recv).read_frame()
    assert "hermes image build" in caught.value.fix


@pytest.mark.parametrize("header", [b"{not json", b"[2]", b'"frame"', b"\xff\xfe"])
def test_a_header_that_is_not_a_json_object_is_refused_whatever_the_blob(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="frame body"):
        FrameReader(BytesRecv(raw_frame(header, b'{"frame":2,"blob":0}')).recv).read_frame()


def test_a_blob_where_none_is_expected_is_refused() -> None:
    with pytest.raises(ProtocolError, match="unexpected blob of 3 bytes"):
        FrameReader(BytesRecv(encode_frame({"op": "hello"}, b"abc")).recv).read()


def docker_piece(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_frames_are_taken_out_of_dockers_multiplexing_with_stderr_kept_aside() -> None:
    # Given two frames cut into pieces by Docker, with standard error written in between
    frames = encode_frame({"prompt": "one"}) + encode_frame({"prompt": IMITATIONS[0]})
    wire = docker_piece(1, frames[:5]) + docker_piece(2, b"a warning\n") + docker_piece(1, frames[5:])
    host, container = socket.socketpair()
    with host, container:
        container.sendall(wire)
        container.shutdown(socket.SHUT_WR)
        demux = DockerDemux(host)
        reader = FrameReader(demux.recv)
        # When they are read / Then the frames are whole and standard error is only in the tail
        assert [reader.read(), reader.read(), reader.read()] == [{"prompt": "one"}, {"prompt": IMITATIONS[0]}, None]
        assert demux.stderr_tail() == "a warning"


def test_server_answers_like_process_chunk_and_never_raises() -> None:
    chunk = payload(["Ã©tÃ©", "", "\ud800", 7, *IMITATIONS])
    reply = handle({"op": "chunk", "id": 9, "worker": "w", "image": "sha256:x", "payload": chunk})
    local = process_chunk(ChunkRequest.from_payload(chunk), mode="container", worker="w", image="sha256:x")
    records = local.records.encode("utf-8", "surrogatepass")
    assert reply == ({"id": 9, "ok": True, "result": local.counts_wire()}, records)
    bad, records = handle({"op": "chunk", "id": 10, "payload": chunk | {"v": 99}})
    assert bad["ok"] is False and bad["error"]["type"] == "ContractError" and records == b""
    profile = handle({"op": "chunk", "id": 11, "payload": chunk | {"profile": {"name": "x", "steps": ["nope"]}}})
    assert profile[0]["error"]["type"] == "ProfileError"
    assert handle({"op": "reboot", "id": 12})[0]["ok"] is False


def text_payload(lines: list[str]) -> dict[str, Any]:
    """A text chunk's payload without its lines (they travel in the blob)."""
    request = payload(["x"])
    del request["items"]
    return request | {"format": "jsonl", "first": 5, "bad": []}


def test_a_text_chunk_travels_as_raw_bytes_and_answers_like_process_chunk() -> None:
    """Given a text chunk whose lines are the blob, the server answers as process_chunk does on
    the same lines sent in the payload; the records come back raw, in the reply's blob."""
    lines = [json.dumps({"id": n, "prompt": p}) for n, p in enumerate(["Ã©tÃ©", *IMITATIONS])] + ["{bad"]
    text = "\n".join(lines)
    reply, records = handle({"op": "chunk", "id": 4, "worker": "w", "text": True, "payload": text_payload(lines)},
                            blob=text.encode())  # fmt: skip
    local = process_chunk(ChunkRequest.from_payload(text_payload(lines) | {"text": text}), mode="container", worker="w")
    assert reply == {"id": 4, "ok": True, "result": local.counts_wire()} and records == local.records.encode()


@pytest.mark.parametrize(("request_", "blob", "problem"), [
    ({"text": True}, b"\xff\xfe{}", "not UTF-8"),
    ({"text": True, "payload": {"text": "x"}}, b"x", "both in the payload and in the blob"),
    ({}, b"stray bytes", "blob but no 'text'"),
    ({"text": 1}, b"x", "blob but no 'text'"),
])  # fmt: skip
def test_a_request_blob_that_does_not_fit_its_header_is_a_contract_error(
    request_: dict[str, Any], blob: bytes, problem: str
) -> None:
    """Given lines that are not UTF-8, lines twice, or a blob the header does not claim, the
    server answers with a ContractError naming the problem, and keeps serving."""
    base = {"op": "chunk", "id": 1, "worker": "w", "payload": text_payload(["x"]) | request_.pop("payload", {})}
    reply, records = handle(base | request_, blob=blob)
    assert reply["ok"] is False and reply["error"]["type"] == "ContractError" and records == b""
    assert problem in reply["error"]["message"]


def test_test_hooks_are_off_unless_asked_for() -> None:
    # A prompt that is the memory hook's marker is an ordinary prompt in production.
    _, records = handle({"op": "chunk", "id": 1, "worker": "w", "payload": payload(["hermes-test:exhaust-memory"])})
    assert json.loads(records)["text"] == "hermes-test:exhaust-memory"


def run_server(stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "hermes_worker.sandbox.server", *args],
                          input=stdin, capture_output=True, timeout=60)  # fmt: skip


def test_server_process_serves_frames_until_end_of_input() -> None:
    # Given three requests, one of them with a broken payload
    requests = [{"op": "hello", "id": 1},
                {"op": "chunk", "id": 2, "worker": "w", "payload": {"v": 1}},
                {"op": "chunk", "id": 3, "worker": "w", "payload": payload(IMITATIONS)}]  # fmt: skip
    # When the server reads them all
    done = run_server(b"".join(encode_frame(r) for r in requests))
    # Then it answers each, in order, and exits cleanly
    reader = FrameReader(BytesRecv(done.stdout).recv)
    replies = [reader.read_frame() for _ in requests]
    assert reader.read_frame() is None and done.returncode == 0
    assert [r[0]["id"] for r in replies if r] == [1, 2, 3]
    assert replies[1] and replies[1][0]["ok"] is False
    local = process_chunk(ChunkRequest.from_payload(requests[2]["payload"]), mode="container", worker="w")
    assert replies[2] and replies[2] == ({"id": 3, "ok": True, "result": local.counts_wire()}, local.records.encode())


def test_server_process_exits_on_a_torn_stream_after_answering_what_came_whole() -> None:
    whole = encode_frame({"op": "hello", "id": 1})
    done = run_server(whole + encode_frame({"op": "hello", "id": 2})[:6])
    assert done.returncode == 2
    assert b"stream ended inside a frame" in done.stderr
    first = FrameReader(BytesRecv(done.stdout).recv).read()
    assert first is not None and first["id"] == 1 and first["ok"] is True


def test_server_once_mode_answers_one_json_request_in_ascii() -> None:
    request = {"op": "chunk", "id": 1, "worker": "w", "image": None, "payload": payload(["naïve 👍"])}
    done = run_server(json.dumps(request).encode(), "--once")
    assert done.stdout.isascii() and done.returncode == 0
    result = json.loads(done.stdout)["result"]
    local = process_chunk(ChunkRequest.from_payload(request["payload"]), mode="container", worker="w")
    assert result == local.counts_wire() | {"records": local.records}
    assert result["failed"] == 0 and result["v"] == contract.PAYLOAD_VERSION
