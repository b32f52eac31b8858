"""A fake cluster for the chunk tracker: the Celery executor's loop played by hand, with a clock,
a registry, a queue depth and what workers would post on the batch's result stream (no Redis, no
Celery, no workers). tests/test_tracker.py and tests/test_tracker_outages.py specify the tracker
against it.
"""

from __future__ import annotations

import json
from typing import Any

from hermes_producer.chunk_events import (
    Event,
    render,
)  # fmt: skip
from hermes_producer.chunk_ledger import Forget, RunHere, Send
from hermes_producer.notices import (
    Observation,
    ResultPosted,
    StartNotice,
)  # fmt: skip
from hermes_producer.tracker import ChunkTracker, Limits
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.processing import process_chunk
from hermes_worker.registry import WorkerInfo
from hermes_worker.routes import route_for
from hermes_worker.wire import ChunkRequest, ChunkResult

LIMITS = Limits(chunk_time_limit_s=60, heartbeat_s=5, worker_ttl_s=15, outage_timeout_s=300, patience_s=30)
OVERDUE_AFTER = 60 + 5 + 2 * 5  # the chunk time limit, a grace, two heartbeats
PROFILE = {"name": "nfc", "steps": ["nfc"]}


def worker(name: str, tag: str = "local", *, serving: bool = True, reason: str | None = None) -> WorkerInfo:
    """A registry entry; ``serving=False``: alive but consuming no queue (e.g. its Docker engine is gone)."""
    queues = [f"hermes.{tag}"] if serving else []
    return WorkerInfo(f"{tag}@{name}", tag, 1, queues, "host", 1, {}, {}, probe={"reason": reason} if reason else {})


def chunk(number: int, lines: int = 4, *, poison: int | None = None) -> dict[str, Any]:
    """Chunk request ``number``: ``lines`` raw JSONL lines numbered from ``number * 100 + 1``."""
    first = number * 100 + 1
    prompts = ["POISON" if n == poison else f"prompt {first + n}" for n in range(lines)]
    text = "\n".join(json.dumps({"id": f"{number}-{n}", "prompt": p}) for n, p in enumerate(prompts))
    options = ChunkOptions(max_validation=0, explain=False, max_prompt_bytes=1 << 20)
    request = ChunkRequest(chunk=number, profile=PROFILE, options=options, text=text, first=first)
    return request.to_payload()


def posted(payload: dict[str, Any], by: str, **changes: Any) -> ResultPosted:
    """What a worker posts for ``payload``: its result (``r``) and its records (``t``), as on the stream."""
    result = process_chunk(ChunkRequest.from_payload(payload), mode=by.split("@")[0], worker=by)
    fields = result.to_stream()
    return ResultPosted(payload["chunk"], json.loads(fields["r"]) | changes, bytes(fields["t"]))  # type: ignore[arg-type]


def records(result: ChunkResult) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.record_lines()]


class FakeCluster:
    """The executor's loop, by hand: a clock, a registry, a queue, and what was sent, forgotten, written."""

    def __init__(self, *workers: WorkerInfo, isolation: str = "local", fallback: bool = True) -> None:
        self.now = 0.0
        self.registry = list(workers)
        self.queue_depth = 0  # messages waiting in the route's queue
        self.too_large: set[int] = set()  # chunks whose lines Redis refuses as one value
        self.events: list[Event] = []
        self.sends: list[Send] = []
        self.forgotten: list[int] = []
        self.written: list[tuple[int, ChunkResult]] = []
        route = route_for(self.registry, isolation)
        assert route is not None
        self.tracker = ChunkTracker(
            route, isolation=isolation, limits=LIMITS, fallback=fallback, producer="hermes-producer@test",
            on_event=self.events.append, now=self.now,
        )  # fmt: skip

    # The producer's side.

    def submit(self, *payloads: dict[str, Any]) -> None:
        for payload in payloads:
            assert self.tracker.has_room()
            self.tracker.admit(payload, self.now)
            self.carry_out()

    def carry_out(self) -> None:
        while decisions := self.tracker.take_decisions():
            for decision in decisions:
                if isinstance(decision, Send) and self.tracker.wants_sent(decision.chunk):
                    if decision.chunk in self.too_large:
                        self.tracker.too_large(decision.chunk, "its lines are too large", self.now)
                    else:
                        self.sends.append(decision)
                elif isinstance(decision, Forget):
                    self.forgotten.append(decision.chunk)
                elif isinstance(decision, RunHere):
                    request = ChunkRequest.from_payload(decision.payload)
                    self.tracker.ran_here(decision.chunk, process_chunk(request, mode="local", worker="embedded@test"))
        while (written := self.tracker.next_written()) is not None:
            self.written.append(written)

    def tick(self, seconds: float = 1.0, *, busy: bool = False) -> None:
        """Let ``seconds`` pass, with a health check each second; ``busy``: other chunks' entries keep coming."""
        for _ in range(round(seconds)):
            self.now += 1.0
            if busy:
                self.tracker.heard(self.now)
            if self.tracker.check_workers(self.now, self.registry):
                self.carry_out()
                depth = self.queue_depth if self.tracker.stranded_candidates(self.now) else None
                self.tracker.check_stranded(self.now, depth)
                self.carry_out()
                self.tracker.check_silence(self.now, self.registry)
            self.carry_out()

    # The workers' side: what they write on the stream.

    def see(self, seen: Observation) -> None:
        self.tracker.heard(self.now)
        self.tracker.observe(seen, self.now)
        self.carry_out()

    def answer(self, number: int, by: str = "local@w1", **changes: Any) -> None:
        self.see(posted(self.last_sent(number), by, **changes))

    def take(self, number: int, by: str = "local@w1") -> None:
        self.see(StartNotice(number, by))

    # What happened.

    def last_sent(self, number: int) -> dict[str, Any]:
        return next(s.payload for s in reversed(self.sends) if s.chunk == number)

    def sent(self, *, since: int = 0) -> list[int]:
        return [s.chunk for s in self.sends[since:]]

    def written_chunks(self) -> list[int]:
        return [number for number, _result in self.written]

    def said(self) -> list[str]:
        return [render(event) for event in self.events]


W1, W2 = worker("w1"), worker("w2")
