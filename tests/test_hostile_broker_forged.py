"""Forged state (issue 11, class 6): what anyone who can write to the broker's Redis can put where
producers and workers read, besides task messages (tests/test_hostile_broker.py has those).

A forged container worker cannot make a container batch accept records it ran locally; forged
registry entries are ignored, not obeyed or printed; a producer skips result-stream entries no
worker wrote; metrics survive hostile label values, and corrupt fields already in Redis.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.metrics import field
from hermes_worker.processing import process_chunk
from hermes_worker.wire import ChunkRequest, Item

from .support.fixture_types import HermesRunner
from .support.redis_server import RedisServer

# A forged registry entry ---------------------------------------------------------------------------


class ForgedContainerWorker(threading.Thread):
    """Registers as container@evil and answers container chunks with records it ran locally."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.redis = client
        self.stop = threading.Event()
        self.answered = 0

    def run(self) -> None:
        entry = {"name": "container@evil", "tag": "container", "concurrency": 1, "queues": ["hermes.container"],
                 "host": "h", "pid": 1, "versions": {}, "provenance": {"mode": "container"}}  # fmt: skip
        while not self.stop.is_set():
            self.redis.set("hermes:worker:container@evil", json.dumps(entry | {"heartbeat_at": time.time()}), px=3000)
            popped = self.redis.brpop(["hermes.container"], timeout=0.3)
            if popped is None:
                continue
            message = json.loads(popped[1])
            (payload, answer), _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            payload["text"] = self.redis.get(payload.pop("text_key")).decode()
            payload.pop("count")
            result = process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="container@evil")
            self.redis.xadd(answer["stream"], result.to_stream())  # type: ignore[arg-type]
            self.answered += 1


@pytest.mark.cluster
def test_a_forged_container_worker_cannot_make_a_container_batch_accept_local_records(
    redis_server: RedisServer, chermes: HermesRunner, tmp_path: Path
) -> None:
    """Given only a forged container worker; when a batch needs isolation; then it exits 3, writing nothing."""
    forger = ForgedContainerWorker(redis_server.client())
    forger.start()
    try:
        src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        src.write_text("".join(json.dumps({"id": n, "prompt": f"p{n}"}) + "\n" for n in range(30)))
        done = chermes("batch", str(src), "-o", str(out), "--isolation", "container", "--no-fallback",
                       "--chunk-size", "10")  # fmt: skip
    finally:
        forger.stop.set()
        forger.join(timeout=5)
    assert done.returncode == 3, done.stderr
    assert "not in a container" in done.stderr and "container@evil" in done.stderr
    assert not out.exists() and forger.answered >= 3


# What a Redis writer can put where producers read --------------------------------------------------


@pytest.mark.cluster
def test_forged_registry_entries_are_ignored_not_obeyed_or_printed(
    redis_server: RedisServer, chermes: HermesRunner
) -> None:
    client = redis_server.client()
    good = {"name": "container@evil", "tag": "container", "concurrency": 1, "queues": ["hermes.container"],
            "host": "h", "pid": 1, "versions": {}, "provenance": {}, "heartbeat_at": time.time() + 3600}  # fmt: skip
    forged = {
        "escape": good | {"name": "container@\x1b]0;pwned\x07evil"},
        "huge": good | {"concurrency": 10**9},  # would put a whole input in flight at once
        "typed": good | {"concurrency": "8"},
        "probe": good | {"probe": ["not", "a", "dict"]},
        "tag": good | {"tag": "root"},
        "garbage": "{not json",
    }
    for name, entry in forged.items():
        client.set(f"hermes:worker:{name}", entry if isinstance(entry, str) else json.dumps(entry))
    client.hset("hermes:worker:hash", "a", "b")
    listed = chermes("workers", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    for command in (("status",), ("doctor",), ("workers",)):
        done = chermes(*command)
        assert "Traceback" not in done.stderr and "\x1b" not in done.stdout + done.stderr, command


@pytest.mark.cluster
def test_a_producer_skips_stream_entries_no_worker_wrote(cluster_env: dict[str, str]) -> None:
    """Given garbage and a malformed result on a batch's stream; then the real result is the one written."""
    from hermes_producer.celery_executor import CeleryExecutor
    from hermes_producer.chunk_events import render
    from hermes_producer.cluster import Cluster, Route
    from hermes_worker.registry import WorkerInfo
    from hermes_worker.settings import Settings

    cluster = Cluster.connect(Settings.from_env(cluster_env))
    route = Route("hermes.local", "local", [WorkerInfo("local@w", "local", 1, ["hermes.local"], "h", 1, {}, {})])
    messages: list[str] = []
    executor = CeleryExecutor(cluster, route, on_event=lambda event: messages.append(render(event)))
    sent: list[int] = []

    def answer(payload: dict[str, Any], queue: str) -> None:
        sent.append(payload["chunk"])
        stream = executor.stream
        result = process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="local@w")
        posted = result.to_stream()
        if len(sent) == 1:
            for fields in ({"r": "{not json"}, {"r": "[1, 2]"}, {"s": json.dumps({"chunk": 0, "worker": ["x"]})},
                           {"x": json.dumps({"chunk": [0], "worker": "w", "reason": "r"})},
                           {"m": json.dumps({"chunk": {"a": 1}})}, {"t": b"\xff\xfe"}):  # fmt: skip
                cluster.redis.xadd(stream, fields)  # type: ignore[arg-type]
            forged = json.dumps(json.loads(posted["r"]) | {"errors": [[1, "x"]]})
            cluster.redis.xadd(stream, {"r": forged, "t": posted["t"]})
            return
        cluster.redis.xadd(stream, posted)  # type: ignore[arg-type]

    executor.transport.send = answer  # type: ignore[method-assign]
    items = [Item(1, "a", "x"), Item(2, "b", "y")]
    nfc = {"name": "nfc", "steps": ["nfc"]}
    options = ChunkOptions(max_validation=0, max_prompt_bytes=100)
    payload = ChunkRequest(0, nfc, options=options, items=items).to_payload()
    [result] = list(executor.map_ordered([payload]))
    assert result.ok == 2 and sent == [0, 0]
    # Undecodable, not an object, unhashable chunk numbers; a start notice naming no worker and
    # a field no notice has are ignored as they come.
    assert sum("ignored a malformed entry on the result stream" in m for m in messages) == 4
    assert any("a result whose errors do not match its counts; sent again" in m for m in messages)


def test_metric_label_values_cannot_add_labels_or_lines() -> None:
    from hermes_worker.metrics import parse_field

    for hostile in ("a|b", "x=y", "line\nbreak", 'quo"te', "%7C", ""):
        raw = field("items_failed", code=hostile, mode="local")
        assert raw.count("|") == 2 and "\n" not in raw
        assert parse_field(raw) == ("items_failed", {"code": hostile, "mode": "local"})
    with pytest.raises(ValueError):
        parse_field("items_failed|code=a|b|mode=local")  # what an old worker wrote for code 'a|b'


@pytest.mark.cluster
def test_a_corrupt_metrics_field_already_in_redis_is_skipped_and_counted(
    redis_server: RedisServer, chermes: HermesRunner
) -> None:
    """What a worker before this fix wrote for a code with a '|' broke `hermes metrics` for good."""
    client = redis_server.client()
    client.hset("hermes:metrics:local@old", mapping={
        "items_failed|code=a|b|mode=local|profile=prompt": 1,  # the old worker's field
        "items_ok|mode=local|profile=prompt": 5,
        "chunks|mode=local": "not a number",
        "items_ok|mode=local|worker=forged": 1,
    })  # fmt: skip
    client.set("hermes:metrics:not-a-hash", "x")
    done = chermes("metrics")
    assert done.returncode == 0, done.stderr
    assert 'hermes_items_processed_total{mode="local",profile="prompt",worker="local@old"} 5.0' in done.stdout
    assert "hermes_metrics_unreadable_fields 4.0" in done.stdout
