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
    assert reply == {"id": 9, "ok": True, "result": local.to_wire()}
    bad = handle({"op": "chunk", "id": 10, "payload": chunk | {"v": 99}})
    assert bad["ok"] is False and bad["error"]["type"] == "ContractError"
    profile = handle({"op": "chunk", "id": 11, "payload": chunk | {"profile": {"name": "x", "steps": ["nope"]}}})
    assert profile["error"]["type"] == "ProfileError"
    assert handle({"op": "reboot", "id": 12})["ok"] is False


def test_test_hooks_are_off_unless_asked_for() -> None:
    # A prompt that is the memory hook's marker is an ordinary prompt in production.
    reply = handle({"op": "chunk", "id": 1, "worker": "w", "payload": payload(["hermes-test:exhaust-memory"])})
    assert json.loads(reply["result"]["lines"][0])["text"] == "hermes-test:exhaust-memory"


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
    replies = [reader.read() for _ in requests]
    assert reader.read() is None and done.returncode == 0
    assert [r["id"] for r in replies if r] == [1, 2, 3]
    assert replies[1] and replies[1]["ok"] is False
    local = process_chunk(ChunkRequest.from_payload(requests[2]["payload"]), mode="container", worker="w")
    assert replies[2] and replies[2]["result"] == local.to_wire()


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
    assert result == local.to_wire()
    assert result["failed"] == 0 and result["v"] == contract.PAYLOAD_VERSION
