"""The checker: what a batch's output says about its input, as Jepsen's queue checkers count.

Every fault scenario ends here. From the input and the output (and Redis, if given) it counts:

- **lost**: input lines with no record;
- **duplicated**: records beyond the first for one line;
- **unexpected**: records for no input line, or whose content is not what normalizing that line
  here, in this process, gives (provenance aside: where it ran may differ);
- **out of order**: records not at their input line's place;
- **leftovers**: what the batch left in Redis once it ended (queued messages, unacknowledged
  ones, chunk lines, result streams).

A scenario passes only with all of them zero (:meth:`Verdict.assert_clean`). A scenario that feeds a
line on purpose that must fail where it runs (a prompt that exhausts the sandbox's memory) names it
in ``allow``: its record must be an error with that code, still the one record of its line.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from hermes_worker.contract import KEY_CHUNK_TEXT, KEY_RESULTS, QUEUE_CONTAINER, QUEUE_LOCAL
from hermes_worker.engine.validate import DEFAULT_MAX_PROMPT_BYTES
from hermes_worker.wire import ChunkResult

from .inputs import batch_records, read_records

# Where a batch's traces would stay in Redis: its chunks' lines and its result stream (by key
# pattern), the task queues and kombu's store of delivered but unacknowledged messages.
_TRACE_PATTERNS = (KEY_CHUNK_TEXT.format(batch="*", chunk="*"), KEY_RESULTS.format(batch="*"))
_QUEUES = (QUEUE_LOCAL, QUEUE_CONTAINER)
_UNACKED = ("unacked", "unacked_index")
# Chunk results already computed in this test session, by request (bounded): the chaos tests feed
# files that are prefixes of one another, and normalizing 50,000 long prompts takes a while.
_MEMO: dict[str, ChunkResult] = {}
_MEMO_RECORD_BYTES = 256 << 20


@dataclass
class Verdict:
    """The counts of one batch; ``records`` are the output's, in order."""

    items_in: int
    records: list[dict[str, Any]]
    lost: list[int] = field(default_factory=list)  # input line numbers
    duplicated: int = 0
    unexpected: list[str] = field(default_factory=list)  # what is wrong, one entry a record
    out_of_order: int = 0
    leftovers: dict[str, int] = field(default_factory=dict)

    @property
    def records_out(self) -> int:
        return len(self.records)

    @property
    def errors(self) -> int:
        """Error records (each still the one record of its line)."""
        return sum(1 for record in self.records if "error" in record)

    def error_codes(self) -> Counter[str]:
        return Counter(record["error"]["code"] for record in self.records if "error" in record)

    def by(self, key: str) -> Counter[str]:
        """Records per provenance field (``worker``, ``mode``)."""
        return Counter(str(record["provenance"].get(key)) for record in self.records)

    def problems(self) -> list[str]:
        """Each non-zero count, said in a few words (empty: the batch is clean)."""
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} lost (lines {self.lost[:5]}...)")
        if self.duplicated:
            found.append(f"{self.duplicated} duplicated")
        if self.unexpected:
            found.append(f"{len(self.unexpected)} unexpected ({'; '.join(self.unexpected[:3])})")
        if self.out_of_order:
            found.append(f"{self.out_of_order} out of order")
        if any(self.leftovers.values()):
            found.append(f"left in Redis: {self.leftovers}")
        return found

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, f"{self.records_out} records for {self.items_in} lines: " + ", ".join(problems)


def redis_leftovers(client: redis.Redis) -> dict[str, int]:
    """What is left in Redis of any batch: keys by pattern, messages by queue, unacknowledged ones."""
    left = {pattern: sum(1 for _ in client.scan_iter(match=pattern, count=1000)) for pattern in _TRACE_PATTERNS}
    left |= {f"queue {queue}": int(client.llen(queue)) for queue in _QUEUES}
    # One message each: kombu keeps it in the hash and its delivery time in the index.
    left["unacked"] = max(int(client.hlen(_UNACKED[0])), int(client.zcard(_UNACKED[1])))
    return left


def check(
    output: Path,
    source: Path,
    *,
    profile: str = "prompt",
    input_format: str = "jsonl",
    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES,
    allow: Mapping[int, str] | None = None,
    client: redis.Redis | None = None,
    settle: float = 2.0,
) -> Verdict:
    """Count what ``output`` holds against what ``source`` should give (see the module docstring).

    The expected records are made here, in-process, through the same reader, parser and
    engine a batch uses (with the batch's ``profile``, format and ``max_prompt_bytes``); a record
    must equal its line's expected record but for provenance. ``allow``: line number -> the error
    code its record must have instead. ``client``: Redis, read for leftovers until none are left
    or ``settle`` seconds have passed (a worker acknowledging a message as the batch ends).
    """
    allowed = dict(allow or {})
    expected = batch_records(_standing_in(source.read_bytes(), allowed), chunk_size=1024, fmt=input_format,
                             max_bytes=max_prompt_bytes, profile=profile, memo=_MEMO)  # fmt: skip
    _trim_memo()
    records = read_records(output)
    verdict = Verdict(items_in=len(expected), records=records)
    by_line: Counter[int] = Counter()
    for place, record in enumerate(records, 1):
        line = record.get("line")
        if not isinstance(line, int) or not 1 <= line <= len(expected):
            verdict.unexpected.append(f"a record for no input line ({str(record)[:80]})")
            continue
        by_line[line] += 1
        if by_line[line] > 1:
            verdict.duplicated += 1
            continue
        if place != line:
            verdict.out_of_order += 1
        if line in allowed:
            code = record.get("error", {}).get("code") if isinstance(record.get("error"), dict) else None
            if code != allowed[line]:
                verdict.unexpected.append(f"line {line}: error {code!r}, not the {allowed[line]!r} allowed")
        elif _content(record) != _content(expected[line - 1]):
            verdict.unexpected.append(f"line {line}: {str(_content(record))[:80]} is not what it normalizes to")
    verdict.lost = [line for line in range(1, len(expected) + 1) if not by_line[line]]
    if client is not None:
        deadline = time.monotonic() + settle
        while any((left := redis_leftovers(client)).values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        verdict.leftovers = left
    return verdict


def _standing_in(data: bytes, allowed: Mapping[int, str]) -> bytes:
    """``data`` with each allowed line replaced by a short one with the same id: its record is not
    compared, and the line may be one that takes long to normalize here (it exhausts a sandbox)."""
    if not allowed:
        return data
    lines = data.split(b"\n")
    for number in allowed:
        try:
            stand_in = {"id": json.loads(lines[number - 1])["id"], "prompt": "stand-in"}
        except (ValueError, LookupError, TypeError):
            stand_in = {"prompt": "stand-in"}
        lines[number - 1] = json.dumps(stand_in).encode()
    return b"\n".join(lines)


def _trim_memo() -> None:
    """Forget the oldest results once the memo holds more than _MEMO_RECORD_BYTES of records."""
    total = sum(len(result.records) for result in _MEMO.values())
    for key in list(_MEMO):
        if total <= _MEMO_RECORD_BYTES:
            return
        total -= len(_MEMO.pop(key).records)


def _content(record: dict[str, Any]) -> str:
    return json.dumps({key: value for key, value in record.items() if key != "provenance"}, sort_keys=True)
