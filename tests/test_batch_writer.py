"""run_batch writes what a stream delivered byte for byte, and its guard remembers skipped chunks."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hermes_producer.batch import BatchOptions, run_batch
from hermes_producer.notices import StreamedResult, decode_entry
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.wire import ChunkRequest, ChunkResult


class InlineExecutor:
    """Runs each chunk here; ``streamed``: hands results back as the Celery path reads them."""

    mode = "local"

    def __init__(self, streamed: bool) -> None:
        self.streamed = streamed
        self.chunks: list[int] = []

    def map_ordered(self, payloads: Iterable[dict[str, Any]]) -> Iterator[ChunkResult]:
        for payload in payloads:
            self.chunks.append(payload["chunk"])
            result = process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="w")
            if self.streamed:
                fields = result.to_stream()
                seen = decode_entry({b"r": str(fields["r"]).encode(), b"t": bytes(fields["t"])})
                assert seen is not None
                result = StreamedResult.read(seen)  # type: ignore[arg-type]
            yield result


LINES = [
    {"id": "a", "prompt": "Café\u0301 — ok"},
    {"id": 7, "prompt": "emoji 😀 and CJK 日本"},
    {"id": "a", "prompt": "a repeat: a duplicate_id record"},
    {"prompt": "no id: line number 4"},
    {"id": 4, "prompt": "repeats line 4's number"},
    {"id": "b", "prompt": 5},
]


def run(path: Path, streamed: bool, skip: int = 0, data: bytes | None = None) -> tuple[bytes, InlineExecutor]:
    data = data if data is not None else "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in LINES).encode()
    executor = InlineExecutor(streamed)
    options = BatchOptions(resolve_profile("prompt"), "jsonl", ChunkOptions(), chunk_size=2)
    with path.open("w", encoding="utf-8", newline="\n") as sink:
        run_batch(io.BytesIO(data), sink, options, executor, skip_chunks=skip)  # type: ignore[arg-type]
    return path.read_bytes(), executor


def test_records_read_from_a_stream_are_written_byte_for_byte_as_the_text_would_be(tmp_path: Path) -> None:
    # Given the same input run with results as text and as stream bytes (some turned into errors)
    as_text, _ = run(tmp_path / "text.jsonl", streamed=False)
    as_bytes, _ = run(tmp_path / "bytes.jsonl", streamed=True)
    # Then the files are identical, and the repeats are errors naming their first lines
    assert as_bytes == as_text
    records = [json.loads(line) for line in as_bytes.decode("utf-8").splitlines()]
    assert [r.get("error", {}).get("code") for r in records] == [
        None, None, "duplicate_id", None, "duplicate_id", "prompt_not_string"]  # fmt: skip
    assert "line 1" in records[2]["error"]["message"] and "line 4" in records[4]["error"]["message"]


def test_a_resumed_batch_still_finds_repeats_of_ids_in_the_chunks_it_skips(tmp_path: Path) -> None:
    # Given a batch resumed after its first two chunks (lines 1-4), whose later lines repeat their ids
    out, executor = run(tmp_path / "out.jsonl", streamed=True, skip=2)
    # Then only the last chunk ran, and its repeat of line 4's number is still a duplicate
    assert executor.chunks == [2]
    records = [json.loads(line) for line in out.decode("utf-8").splitlines()]
    assert [r["line"] for r in records] == [5, 6]
    assert records[0]["error"]["code"] == "duplicate_id" and "line 4" in records[0]["error"]["message"]
