"""Where the producer's CPU goes on the Celery path, stage by stage, in one warm process.

Each stage of what ``hermes batch`` does per chunk runs alone over the same chunks, against a
real Redis and a real Celery app, timed with ``time.process_time``: read and split the input,
encode the chunk requests, send them (the lines' SET, the ``argsrepr`` summary, Celery's
``send_task``: the message and its task-sent event), read the result stream back (two entries a
chunk, the start notice and the result, as workers write them), the duplicate-id guard, the record
write, and the tidy-up (XDEL of read entries, DEL of the lines). The sum, set against the real
producer's marginal CPU in the same run, leaves what the executor loop, the tracker and the
batch board cost (:func:`bench.scale.run_scale` reports it as ``rest``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hermes_producer.batch import BatchOptions, BatchSummary, guard_duplicates, text_chunk_requests
from hermes_producer.cluster import Cluster
from hermes_producer.notices import ResultPosted, StreamedResult, decode_entry
from hermes_producer.reader import read_chunks
from hermes_producer.seen_ids import SeenIds
from hermes_producer.transport import ChunkTransport, summarize
from hermes_worker.contract import QUEUE_LOCAL, TASK_NORMALIZE_CHUNK, TEXT_KEY, new_batch_id
from hermes_worker.wire import ChunkResult, ReadPayload, Reply, request_span

__all__ = ["STAGES", "stage_costs"]

STAGES = (
    "read + split input",
    "encode chunk requests",
    "send: SET lines",
    "send: argsrepr summary",
    "send: Celery send_task",
    "result read: XREAD + decode",
    "duplicate-id guard",
    "record write",
    "tidy: XDEL + DEL",
)


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.process_time()
    value = work()
    return time.process_time() - started, value


def stage_costs(
    source: Path, options: BatchOptions, results: dict[tuple[int, int], ChunkResult], cluster: Cluster, work: Path
) -> dict[str, Any]:
    """CPU µs per prompt of each producer stage over ``source`` (see the module docstring).

    ``results`` are the chunks' results keyed by ``(first line, line count)``, as the workers of
    the scale section answer them. The messages sent stay in ``hermes.local`` (nobody consumes
    it meanwhile): the caller flushes the Redis afterwards.
    """
    spent: dict[str, float] = {}
    max_bytes, size = options.chunk.max_prompt_bytes, options.chunk_size
    # Each stage is timed letting go of what it makes, as the producer does once a chunk is
    # written (see the result read below); what later stages need is made again, untimed.
    with source.open("rb") as stream:
        spent[STAGES[0]], _ = _timed(lambda: deque(read_chunks(stream, "jsonl", max_bytes, size), maxlen=0))
    with source.open("rb") as stream:
        chunks = list(read_chunks(stream, "jsonl", max_bytes, size))
    spent[STAGES[1]], made = _timed(lambda: list(text_chunk_requests(iter(chunks), options)))
    payloads = [p for p in made if isinstance(p, ReadPayload)]  # all of them: the reader's lines
    prompts = sum(request_span(p)[1] for p in payloads)
    reply = Reply(new_batch_id(), 3600)
    transport = ChunkTransport(cluster, reply, "local")
    bodies = [p.utf8 for p in payloads]  # the reader's bytes, as transport.send ships them
    # Warm up every path once (connections, kombu's producer pool, first-call imports): not timed.
    _set(cluster, reply, payloads[0])
    _send_task(cluster, reply, payloads[0], summarize(payloads[0]))
    transport.send(payloads[0], QUEUE_LOCAL)
    spent[STAGES[2]], _ = _timed(lambda: [_set(cluster, reply, p) for p in payloads])
    pairs = list(zip(payloads, bodies, strict=True))
    spent[STAGES[3]], shown = _timed(lambda: [summarize(p, b, request_span(p)) for p, b in pairs])
    sends = list(zip(payloads, shown, strict=True))
    spent[STAGES[4]], _ = _timed(lambda: [_send_task(cluster, reply, p, s) for p, s in sends])
    whole, _ = _timed(lambda: [transport.send(p, QUEUE_LOCAL) for p in payloads])
    answers = [results[(p["first"], request_span(p)[1])] for p in payloads]
    _post(cluster, reply, answers)
    # Kept while timed, the results' strings (half a megabyte a chunk) each took fresh pages from
    # the kernel: 1.3 µs a prompt instead of 0.5. A reader of its own is timed, keeping nothing.
    timing = ChunkTransport(cluster, reply, "local")
    spent[STAGES[5]], _ = _timed(lambda: _read_all(timing, 2 * len(answers), keep=False))
    streamed = _read_all(transport, 2 * len(answers))
    seen = SeenIds()
    spent[STAGES[6]], guarded = _timed(lambda: [guard_duplicates(r, seen) for r in streamed])
    spent[STAGES[7]], _ = _timed(lambda: _write(guarded, work / "stages-out.jsonl"))
    spent[STAGES[8]], _ = _timed(lambda: [transport.written(p["chunk"]) for p in payloads])
    transport.finish()
    us = {name: round(seconds / prompts * 1e6, 3) for name, seconds in spent.items()}
    return {
        "prompts": prompts,
        "chunks": len(payloads),
        "us_per_prompt": us,
        "sum_us_per_prompt": round(sum(us.values()), 3),
        # transport.send as batches call it, against its parts above (a check on the split).
        "send_whole_us_per_prompt": round(whole / prompts * 1e6, 3),
        "send_task_us_per_chunk": round(spent[STAGES[4]] / len(payloads) * 1e6, 1),
        "kombu_new_client_us": _kombu_client_us(cluster),
    }


def _kombu_client_us(cluster: Cluster, rounds: int = 200) -> float | None:
    """CPU µs of the redis-py client kombu's Redis transport makes for every publish (a task message,
    an event): ``Channel.conn_or_acquire`` builds a new one each time (kombu 5.x, a private method)."""
    try:
        with cluster.app.connection_for_write() as connection:
            channel = connection.default_channel
            channel._create_client()
            started = time.process_time()
            for _ in range(rounds):
                channel._create_client()
            return round((time.process_time() - started) / rounds * 1e6, 1)
    except Exception:  # another transport, or kombu changed: not measured
        return None


def _set(cluster: Cluster, reply: Reply, payload: ReadPayload) -> None:
    cluster.redis.set(reply.text_key(payload["chunk"]), payload.utf8 or b"", ex=reply.ttl)


def _send_task(cluster: Cluster, reply: Reply, payload: dict[str, Any], shown: str) -> None:
    message = {k: v for k, v in payload.items() if k != "text"}
    message |= {TEXT_KEY: reply.text_key(payload["chunk"]), "count": request_span(payload)[1]}
    # As transport.send after a batch's first message: the queue is declared already (the warm-up).
    cluster.app.send_task(
        TASK_NORMALIZE_CHUNK, args=[message, reply.to_wire()], queue=QUEUE_LOCAL, argsrepr=shown, kwargsrepr="{}",
        declare=[],
    )  # fmt: skip


def _post(cluster: Cluster, reply: Reply, answers: list[ChunkResult]) -> None:
    """What workers write on the stream for each chunk: a start notice, then the result (not timed)."""
    pipe = cluster.redis.pipeline(transaction=False)
    for number, result in enumerate(answers):
        pipe.xadd(reply.stream, {"s": f'{{"chunk": {number}, "worker": "local@bench-stages"}}'})
        fields = replace(result, chunk=number).to_stream()
        pipe.xadd(reply.stream, fields)  # type: ignore[arg-type]
        if number % 64 == 63:
            pipe.execute()
    pipe.execute()


def _read_all(transport: ChunkTransport, entries: int, keep: bool = True) -> list[StreamedResult]:
    """Read ``entries`` stream entries as the executor does, decoding each as the tracker does;
    the results, unless ``keep`` is false (each is dropped once decoded, as a written one is)."""
    found: list[StreamedResult] = []
    read = 0
    while read < entries:
        batch = transport.read()
        read += len(batch)
        for _entry_id, fields in batch:
            seen = decode_entry(fields)
            if isinstance(seen, ResultPosted):
                result = StreamedResult.read(seen)
                if keep:
                    found.append(result)
    return found


def _write(results: list[ChunkResult], path: Path) -> None:
    """The records written as ``run_batch`` writes them: raw bytes when they came unchanged, counted."""
    summary = BatchSummary()
    with path.open("w", encoding="utf-8") as sink:
        binary = sink.buffer
        for result in results:
            raw = result.raw if isinstance(result, StreamedResult) else None
            if raw is not None:
                binary.write(raw)
            else:
                sink.write(result.records)
            summary.add(result)
    path.unlink()
