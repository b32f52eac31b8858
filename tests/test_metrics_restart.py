"""What Hermes' counters keep when Redis restarts: measured, as docs/operations.md states it.

The counters live in Redis hashes (hermes_worker.metrics), so they last exactly as long as
Redis keeps its data: all of them across a restart with the append-only file (compose and the
Kubernetes manifests run Redis with ``--appendonly yes --appendfsync everysec``), even when
redis-server is killed the moment a batch ends (it has written every increment to the file
before answering; only a crash of the machine can lose the last second, which was not fsynced);
none of them without persistence.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support.environment import EXAMPLES
from .support.fixture_types import HermesRunner
from .support.processes import start_worker_process, wait_registered, worker_options
from .support.redis_server import RedisServer

pytestmark = pytest.mark.cluster

Counters = dict[tuple[str, frozenset[tuple[str, str]]], float]


def counters(text: str) -> Counters:
    """Every sample of Hermes' counters and of its histogram (gauges, which are not kept, left out)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        if family.type in ("counter", "histogram")
        for sample in family.samples
    }


def items_counted(found: Counters) -> dict[str, float]:
    """Items counted by outcome (``ok`` or an error code), and chunks."""
    totals: dict[str, float] = {}
    for (name, labels), value in found.items():
        key = {"hermes_items_processed_total": "ok", "hermes_chunks_total": "chunks"}.get(name)
        if name == "hermes_items_failed_total":
            key = dict(labels)["code"]
        if key is not None:
            totals[key] = totals.get(key, 0) + value
    return totals


@pytest.mark.parametrize(
    ("appendonly", "stop"),
    [
        pytest.param(True, signal.SIGTERM, id="append-only file, clean restart"),
        pytest.param(True, signal.SIGKILL, id="append-only file, redis-server killed right after the batch"),
        pytest.param(False, signal.SIGTERM, id="no persistence"),
    ],
)
def test_counters_across_a_redis_restart(
    appendonly: bool, stop: int, hermes: HermesRunner, hermes_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a worker that normalized a batch of 42 lines, two of them error records, in 6 chunks,
    source = tmp_path / "in.jsonl"
    source.write_text((EXAMPLES / "prompts.jsonl").read_text() + '{"prompt": ""}\nnot json\n')
    assert source.read_bytes().count(b"\n") == 42
    with RedisServer(tmp_path / "redis", appendonly=appendonly) as server:
        env = dict(hermes_env, HERMES_BROKER_URL=server.url(), HERMES_HEARTBEAT="1")
        worker = start_worker_process(env, tmp_path / "worker.log", "w1", *worker_options())
        try:
            wait_registered(worker, "local@w1", server.client)
            done = hermes("batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--chunk-size", "8", env=env)
            assert done.returncode == 1, done.stderr
            # When Redis stops (SIGTERM) or is killed (SIGKILL) the moment the batch has ended, and starts again,
            server.stop(stop)
            server.start()
        finally:
            worker.halt()
        # Counters with known labels are exported at 0 before they count: only what counted matters.
        after = {key: value for key, value in counters(hermes("metrics", env=env).stdout).items() if value}
    # Then with the append-only file every item and chunk is still counted; without persistence, nothing is.
    if appendonly:
        assert items_counted(after) == {"ok": 40, "empty_prompt": 1, "malformed_json": 1, "chunks": 6}
        assert any(name == "hermes_chunk_duration_seconds_count" for name, _ in after)
    else:
        assert after == {}
