"""What a chunk of raw lines puts in Redis and the broker: the reader's own bytes, as encoding its text gave.

The reader keeps each chunk's lines as the UTF-8 it read (and how many there are), so that the
producer ships them without decoding and encoding them again; what travels must stay exactly what
it was when the text was encoded back: the lines' value, the task message and its summary.
"""

from __future__ import annotations

import base64
import io
import json
import random
from typing import Any

import pytest
import redis

from hermes_producer.batch import BatchOptions, text_chunk_requests
from hermes_producer.cluster import Cluster
from hermes_producer.reader import read_chunks
from hermes_producer.splitting import split_request
from hermes_producer.transport import ChunkTransport
from hermes_worker import raw_lines
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.contract import QUEUE_LOCAL, new_batch_id
from hermes_worker.engine import resolve_profile
from hermes_worker.settings import Settings
from hermes_worker.wire import ReadPayload, Reply, request_span

# Lines of every kind the reader meets: ASCII, other scripts, not UTF-8, cut mid-character, too long.
KINDS = [b'{"prompt": "plain"}', "{\"prompt\": \"caf\u00e9 \u4e2d\u6587 \U0001f600\"}".encode(), b"\xff\xfe",
         b'{"prompt": "cut \xe2\x82"}', b"x" * 300, b"", b"\r", "\u2028\u00a0".encode()]  # fmt: skip


def mixed_input(seed: int) -> bytes:
    rng = random.Random(seed)
    return b"\n".join(rng.choice(KINDS) for _ in range(rng.randint(1, 40))) + rng.choice([b"", b"\n"])


def test_the_readers_bytes_are_its_text_encoded_and_its_line_count_the_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw_lines, "_LINE_SLACK", 0)  # a line over 100 bytes is too long
    seen = set()
    for seed in range(300):
        data = mixed_input(seed)
        for chunk in read_chunks(io.BytesIO(data), "text", 100, random.Random(seed).randint(1, 12)):
            assert chunk.utf8 == chunk.text.encode("utf-8"), data
            assert chunk.lines == chunk.text.count("\n") + 1, data
            assert all(chunk.text.split("\n")[index] == "" for index, _code, _message in chunk.bad)
            seen |= {code for _index, code, _message in chunk.bad}
    assert seen == {"invalid_utf8", "too_large"}


def test_a_line_that_is_not_utf8_still_gets_its_error_record_and_travels_empty() -> None:
    # Given an ASCII line, a line that is not UTF-8 and a line in another script
    data = b'{"prompt": "a"}\n\xc3\x28\n' + '{"prompt": "\u00e9"}'.encode()
    # When the reader makes its chunk
    [chunk] = read_chunks(io.BytesIO(data), "jsonl", 100, 10)
    # Then the bad line is empty in the text and in the bytes alike, and has its error
    assert chunk.bad == [[1, "invalid_utf8", "not valid UTF-8: byte 0xc3 at offset 0"]]
    assert chunk.utf8 == '{"prompt": "a"}\n\n{"prompt": "\u00e9"}'.encode() and chunk.lines == 3


def test_a_copy_of_a_payload_counts_its_own_lines() -> None:
    # Given the payload of a chunk as read, and its parts when it is split
    options = BatchOptions(resolve_profile("nfc"), "text", ChunkOptions(max_prompt_bytes=100), 10)
    [payload] = text_chunk_requests(read_chunks(io.BytesIO(b"a\nb\nc\n"), "text", 100, 10), options)
    parts = split_request(payload)
    # Then the reader's count is the payload's, and each part is a plain payload counting its own
    assert isinstance(payload, ReadPayload) and request_span(payload) == (1, 3)
    assert [type(part) for part in parts] == [dict, dict]
    assert [request_span(part) for part in parts] == [(1, 1), (2, 2)]


def sent(client: redis.Redis, transport: ChunkTransport, payload: dict[str, Any]) -> tuple[bytes, Any, Any]:
    """Send ``payload``; take back what it put in Redis: its lines' value, its message's args and summary."""
    transport.send(payload, QUEUE_LOCAL)
    lines = client.get(transport.reply.text_key(payload["chunk"]))
    envelope = json.loads(client.rpop(QUEUE_LOCAL))  # type: ignore[arg-type]
    assert client.llen(QUEUE_LOCAL) == 0
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return lines, args, envelope["headers"]["argsrepr"]  # type: ignore[return-value]


@pytest.mark.cluster
def test_a_chunk_as_read_sends_what_its_text_encoded_sent(
    cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raw_lines, "_LINE_SLACK", 0)  # a line over 100 bytes is too long
    # Given chunks of every kind of line: all ASCII, mixed scripts, bad lines, over-long lines
    cluster = Cluster.connect(Settings.from_env(cluster_env))
    client = cluster.redis
    transport = ChunkTransport(cluster, Reply(new_batch_id(), 600), "local")
    options = BatchOptions(resolve_profile("nfc"), "text", ChunkOptions(max_prompt_bytes=100), 7)
    data = b"ascii only\n" * 7 + b"".join(mixed_input(seed) + b"\n" for seed in range(20))
    payloads = list(text_chunk_requests(read_chunks(io.BytesIO(data), "text", 100, 7), options))
    assert payloads[0]["text"].isascii() and any(not p["text"].isascii() for p in payloads)
    assert {b[1] for p in payloads for b in p["bad"]} == {"invalid_utf8", "too_large"}
    try:
        for payload in payloads:
            # When each is sent as read, and as a plain payload (its text encoded back)
            as_read = sent(client, transport, payload)
            plain = sent(client, transport, dict(payload))
            # Then Redis and the broker get the same lines, message and summary either way
            assert isinstance(payload, ReadPayload) and as_read == plain
            assert as_read[0] == payload["text"].encode("utf-8")
            assert "text" not in as_read[1][0] and as_read[1][0]["count"] == payload["text"].count("\n") + 1
    finally:
        transport.close()
        cluster.close()
