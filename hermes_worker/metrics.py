"""Prometheus metrics for what operators ask about, beyond what Flower's /metrics already has.

Flower exports Celery's view (tasks by state, runtimes, worker online). Hermes adds items by
mode, profile and error code, chunk latency, sandbox session restarts, probe outcomes and
fallbacks. Counters live in Redis hashes (``hermes:metrics:WORKER``), incremented in the same
pipeline that publishes a chunk's result, so they cost no extra round trip, survive worker
process recycling, and add up across prefork children without a multiprocess directory.

A worker serves its own counters (``hermes worker --metrics-port``); ``hermes metrics`` serves
the whole cluster's from any machine.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .contract import ERROR_CODES, KEY_PREFIX, QUEUE_FOR_TAG
from .wire import ChunkResult

if TYPE_CHECKING:
    from .batch_status import Board

__all__ = ["BUCKETS", "FALLBACK_KINDS", "FAMILIES", "KEY_METRICS", "RedisCollector", "batch_families",
           "chunk_increments", "series_names", "serve", "zero_filled"]

KEY_METRICS = KEY_PREFIX + "metrics:{source}"  # one hash per worker; "producers" for producers
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
_SEP = "|"


_LABEL = re.compile(r"[a-z][a-z0-9_]*")  # a metric or label name Hermes writes

# Every counter Hermes writes, with its label names. A field of another shape (a known name with
# other labels) would make a second family of one name; the exposition format allows one.
_SCHEMA: dict[str, frozenset[str]] = {
    "items_ok": frozenset({"mode", "profile"}),
    "items_failed": frozenset({"code", "mode", "profile"}),
    "chunks": frozenset({"mode"}),
    "chunk_seconds_sum": frozenset({"mode"}),
    "chunk_seconds_bucket": frozenset({"le", "mode"}),  # cumulative: written before issue 13, still read
    "chunk_seconds_in": frozenset({"le", "mode"}),
    "session_restarts": frozenset(),
    "probe": frozenset({"outcome"}),
    "fallbacks": frozenset({"kind"}),
    "messages_refused": frozenset({"kind"}),
}


def field(name: str, **labels: str) -> str:
    """A hash field: the metric name and its labels, e.g. ``items_ok|mode=local|profile=prompt``.

    Label values are percent-encoded, so no value (a code or a profile name from a worker, a
    mode) can add a separator, a label or a line of its own; plain values stay as they are.

    >>> field("items_failed", code="a|b=c", mode="local")
    'items_failed|code=a%7Cb%3Dc|mode=local'
    >>> parse_field(field("items_failed", code="a|b=c", mode="local"))
    ('items_failed', {'code': 'a|b=c', 'mode': 'local'})
    """
    if not all(_LABEL.fullmatch(n) for n in (name, *labels)):
        raise ValueError(f"not a metric or label name: {name!r} {sorted(labels)!r}")
    return _SEP.join([name, *(f"{k}={quote(str(v), safe='')}" for k, v in sorted(labels.items()))])


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    """The metric name and labels of a hash field written by :func:`field`.

    Raises:
        ValueError: the field is not one :func:`field` writes (a corrupt or foreign field).
    """
    name, *pairs = raw.split(_SEP)
    labels: dict[str, str] = {}
    for pair in pairs:
        label, sep, value = pair.partition("=")
        if not sep or not _LABEL.fullmatch(label) or label in labels or label == "worker":
            raise ValueError(f"not a Hermes metrics field: {raw[:80]!r}")
        labels[label] = unquote(value, errors="strict")
    if not _LABEL.fullmatch(name):
        raise ValueError(f"not a Hermes metrics field: {raw[:80]!r}")
    return name, labels


_BOUNDS = frozenset(str(bound) for bound in BUCKETS)


def _readable(raw: bytes, number: bytes) -> tuple[str, dict[str, str], float]:
    """The metric, labels and value of one hash field, if Hermes could have written it.

    The field must be exactly what :func:`field` writes for its parse (``mode=%6cocal`` spells
    ``mode=local`` too, and would be a second series of the same labels), with the label names
    of its metric (:data:`_SCHEMA`), and its value a finite count, never negative.

    Raises:
        ValueError: or KeyError: the field is not one Hermes writes.
    """
    text = raw.decode("utf-8")
    name, labels = parse_field(text)
    if _SCHEMA.get(name) != frozenset(labels) or field(name, **labels) != text:
        raise ValueError(f"not a Hermes metrics field: {text[:80]!r}")
    if name in ("chunk_seconds_bucket", "chunk_seconds_in") and labels["le"] not in _BOUNDS:
        raise ValueError(f"not a bucket bound: {labels['le'][:20]!r}")
    value = float(number)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"not a count: {value}")
    return name, labels, value


def chunk_increments(result: ChunkResult, seconds: float, mode: str) -> dict[str, float]:
    """The counter increments one finished chunk contributes."""
    profile = str(result.provenance.get("profile", "?"))
    counts: dict[str, float] = {
        field("items_ok", mode=mode, profile=profile): result.ok,
        field("chunks", mode=mode): 1,
        field("chunk_seconds_sum", mode=mode): seconds,
    }
    for error in result.errors:
        # A code no Hermes version defines (a sandbox gone wrong) is counted, not made a label.
        code = error.code if error.code in ERROR_CODES else "unknown"
        key = field("items_failed", mode=mode, profile=profile, code=code)
        counts[key] = counts.get(key, 0) + 1
    # One field: the smallest bucket the chunk fits in (the exporter adds them up into Prometheus'
    # cumulative buckets). Writing every bucket at or above it, as workers did before issue 13,
    # cost a dozen more commands in every chunk's pipeline.
    for bound in BUCKETS:
        if seconds <= bound:
            counts[field("chunk_seconds_in", mode=mode, le=str(bound))] = 1
            break
    return counts


def add(pipe: Any, source: str, increments: Mapping[str, float]) -> None:
    """Queue the increments on a Redis pipeline (executed by the caller)."""
    key = KEY_METRICS.format(source=source)
    for name, amount in increments.items():
        if float(amount).is_integer():
            pipe.hincrby(key, name, int(amount))
        else:
            pipe.hincrbyfloat(key, name, amount)


def bump(client: redis.Redis, source: str, name: str, **labels: str) -> None:
    """Increment one counter now; never raises (metrics must not break the work)."""
    with contextlib.suppress(redis.RedisError):
        client.hincrby(KEY_METRICS.format(source=source), field(name, **labels), 1)


# Every family Hermes exports: name -> (type, help). Dashboards and alerts may name only these
# (tests/test_monitoring.py checks ops/grafana/hermes.json and ops/prometheus/alerts.yml against them).
FAMILIES: dict[str, tuple[str, str]] = {
    "hermes_items_processed": ("counter", "Prompts normalized successfully"),
    "hermes_items_failed": ("counter", "Prompts that got an error record, by error code"),
    "hermes_chunks": ("counter", "Chunks processed"),
    "hermes_chunk_duration_seconds": ("histogram", "Time to normalize one chunk"),
    "hermes_session_restarts": ("counter", "Sandbox containers recreated after dying"),
    "hermes_probe": ("counter", "Docker probe outcomes at worker start-up"),
    "hermes_fallbacks": ("counter", "Times work did not go where it was meant to (in-process, local, resent)"),
    "hermes_messages_refused": ("counter", "Task messages and commands a worker refused without acting"),
    "hermes_metrics_unreadable_fields": ("gauge", "Counter fields in Redis that Hermes did not write and skipped"),
    # The cluster exporter's (hermes metrics) only:
    "hermes_workers_live": ("gauge", "Workers with a fresh heartbeat"),
    "hermes_queue_depth": ("gauge", "Chunk messages waiting in a Hermes queue"),
    "hermes_queue_consumers": ("gauge", "Live workers consuming a Hermes queue"),
    "hermes_batches_running": ("gauge", "Batches a producer is running on the cluster now"),
    "hermes_batch_entries_unreadable": ("gauge", "Entries under hermes:batch: no Hermes producer wrote (skipped)"),
    "hermes_batch_info": ("gauge", "A running batch: its input, profile, queue and producer (always 1)"),
    "hermes_batch_started_timestamp_seconds": ("gauge", "When a running batch started (Unix time)"),
    "hermes_batch_records": ("gauge", "Records a running batch has written"),
    "hermes_batch_failed": ("gauge", "Error records among them"),
    "hermes_batch_errors": ("gauge", "A running batch's error records by code"),
    "hermes_batch_input_read_bytes": ("gauge", "Bytes of its input a running batch has done"),
    "hermes_batch_input_bytes": ("gauge", "Size of a running batch's input file"),
    "hermes_batch_records_per_second": ("gauge", "A running batch's records a second, lately"),
    "hermes_batch_eta_seconds": ("gauge", "Seconds a running batch has to go, estimated"),
    "hermes_batch_worker_records": ("gauge", "Records each worker made for a running batch (0: holds a chunk)"),
}

# Hash field name -> the counter family it adds to.
_COUNTERS = {
    "items_ok": "hermes_items_processed",
    "items_failed": "hermes_items_failed",
    "chunks": "hermes_chunks",
    "session_restarts": "hermes_session_restarts",
    "probe": "hermes_probe",
    "fallbacks": "hermes_fallbacks",
    "messages_refused": "hermes_messages_refused",
}


# What ``hermes_fallbacks_total{kind}`` counts (docs/operations.md says what each means).
FALLBACK_KINDS = ("in_process", "local_instead_of_container", "resent", "rerouted", "in_process_mid_batch")


def series_names() -> frozenset[str]:
    """Every series name a query may use: a counter's ends in ``_total``, a histogram's in
    ``_bucket``, ``_sum`` or ``_count``, a gauge's is its family's.

    >>> {"hermes_items_processed_total", "hermes_chunk_duration_seconds_bucket"} <= series_names()
    True
    """
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return frozenset(name + end for name, (kind, _) in FAMILIES.items() for end in suffixes[kind])


def _gauge(name: str, labels: list[str] | None = None, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, FAMILIES[name][1], labels=labels, value=value)


Field = tuple[str, str, dict[str, str], float]  # source (worker or "producers"), name, labels, value


class RedisCollector(Collector):
    """Collects Hermes' counters from Redis at scrape time.

    Args:
        client: the result Redis.
        source: one worker's name, or None for every worker and the producers, with the
            cluster's gauges: live workers, queues, running batches.
        depths: the cluster's queue depths (queue -> messages waiting), asked at each scrape;
            the broker may not be the result Redis, so whoever knows it hands this in.
    """

    def __init__(
        self, client: redis.Redis, source: str | None = None, depths: Callable[[], Mapping[str, int]] | None = None
    ) -> None:
        self._redis = client
        self._source = source
        self._depths = depths
        self.unreadable = 0  # fields skipped at the last scrape

    def _hashes(self) -> Iterator[tuple[str, dict[bytes, bytes]]]:
        if self._source is not None:
            keys = [KEY_METRICS.format(source=self._source)]
        else:
            found: Iterator[bytes] = self._redis.scan_iter(match=KEY_METRICS.format(source="*"))
            keys = sorted(k.decode("utf-8", "replace") for k in found)
        prefix = KEY_METRICS.format(source="")
        for key in keys:
            try:
                raw: dict[bytes, bytes] = self._redis.hgetall(key)  # type: ignore[assignment]
            except redis.ResponseError:  # not a hash: someone else's key under our prefix
                self.unreadable += 1
                continue
            yield key[len(prefix) :], raw

    def _fields(self) -> Iterator[Field]:
        """``(source, name, labels, value)`` of every field; unreadable ones are skipped and counted."""
        for source, values in self._hashes():
            for raw, number in values.items():
                try:
                    name, labels, value = _readable(raw, number)
                except (ValueError, KeyError):
                    # Written by something other than Hermes (or an old one, with a '|' in a code):
                    # one bad field must not take every metric down with it.
                    self.unreadable += 1
                    continue
                yield source, name, labels, value

    def collect(self) -> Iterator[Any]:
        self.unreadable = 0
        fields = list(self._fields())
        yield from _counters(zero_filled(fields, cluster=self._source is None))
        histogram = _histogram(fields)
        if histogram is not None:
            yield histogram
        yield _gauge("hermes_metrics_unreadable_fields", value=self.unreadable)
        if self._source is None:
            yield from self._cluster()

    def _cluster(self) -> Iterator[Any]:
        """The cluster's gauges: live workers by tag, each queue's consumers and depth, running batches."""
        from .batch_status import read_board
        from .registry import Registry

        workers = Registry(self._redis, ttl_s=1e9).live()
        live = _gauge("hermes_workers_live", ["tag"])
        for tag in QUEUE_FOR_TAG:
            live.add_metric([tag], sum(w.tag == tag for w in workers))
        yield live
        consumers = _gauge("hermes_queue_consumers", ["queue"])
        for queue in QUEUE_FOR_TAG.values():
            consumers.add_metric([queue], sum(queue in w.queues for w in workers))
        yield consumers
        if self._depths is not None:
            depth = _gauge("hermes_queue_depth", ["queue"])
            for queue, count in sorted(self._depths().items()):
                depth.add_metric([queue], count)
            yield depth
        yield from batch_families(read_board(self._redis))


def zero_filled(fields: list[Field], cluster: bool) -> list[Field]:
    """``fields``, plus 0 for the counters whose labels are known before they first count.

    A series that first appears at 1 is invisible to ``rate()`` and ``increase()`` (Prometheus
    sees no increase from nothing), so the first fallback, session restart or engine failure
    would never alert. So every worker has ``session_restarts``, every worker, mode and profile
    that counted items has ``items_failed`` for every error code, and the cluster exporter has
    every fallback kind, at 0 until they count.
    """
    seen = {(source, name, tuple(sorted(labels.items()))) for source, name, labels, _ in fields}
    extra: list[Field] = []

    def zero(source: str, name: str, **labels: str) -> None:
        if (source, name, tuple(sorted(labels.items()))) not in seen:
            seen.add((source, name, tuple(sorted(labels.items()))))
            extra.append((source, name, labels, 0.0))

    for source in sorted({source for source, *_ in fields} - {"producers"}):
        zero(source, "session_restarts")
    counted = {(s, lab["mode"], lab["profile"]) for s, name, lab, _ in fields if name in ("items_ok", "items_failed")}
    for source, mode, profile in sorted(counted):
        for code in sorted(ERROR_CODES):
            zero(source, "items_failed", code=code, mode=mode, profile=profile)
    if cluster:
        for kind in FALLBACK_KINDS:
            zero("producers", "fallbacks", kind=kind)
    return fields + extra


def _counters(fields: list[Field]) -> Iterator[CounterMetricFamily]:
    """One counter family per metric and label set (each sample labelled with its worker)."""
    families: dict[str, CounterMetricFamily] = {}
    for source, name, labels, value in fields:
        if name not in _COUNTERS:
            continue
        labels = labels | {"worker": source}
        names = sorted(labels)
        metric = _COUNTERS[name]
        family = families.setdefault(
            f"{name}:{','.join(names)}", CounterMetricFamily(metric, FAMILIES[metric][1], labels=names)
        )
        family.add_metric([labels[k] for k in names], value)
    yield from families.values()


def _histogram(fields: list[Field]) -> HistogramMetricFamily | None:
    """``hermes_chunk_duration_seconds`` by worker and mode, from the bucket, sum and chunk counters."""
    slots: dict[tuple[str, str], dict[str, Any]] = {}
    for source, name, labels, value in fields:
        if not (name.startswith("chunk_seconds") or name == "chunks"):
            continue
        slot = slots.setdefault((source, labels.get("mode", "")), {"buckets": {}, "in": {}, "sum": 0.0, "count": 0.0})
        if name == "chunk_seconds_bucket":
            slot["buckets"][float(labels["le"])] = value
        elif name == "chunk_seconds_in":
            slot["in"][float(labels["le"])] = value
        elif name == "chunk_seconds_sum":
            slot["sum"] = value
        else:
            slot["count"] = value
    if not slots:
        return None
    name = "hermes_chunk_duration_seconds"
    histogram = HistogramMetricFamily(name, FAMILIES[name][1], labels=["worker", "mode"])
    for (source, mode), slot in sorted(slots.items()):
        cumulative = []
        running, added = 0.0, 0.0
        for bound in BUCKETS:
            # chunk_seconds_bucket (older workers) is stored as "at most this long": already
            # cumulative; chunk_seconds_in counts each chunk in its own bucket only: added up.
            running = max(running, slot["buckets"].get(bound, 0.0))
            added += slot["in"].get(bound, 0.0)
            cumulative.append((str(bound), running + added))
        cumulative.append(("+Inf", slot["count"]))
        histogram.add_metric([source, mode], cumulative, slot["sum"])
    return histogram


def batch_families(board: Board) -> Iterator[GaugeMetricFamily]:
    """The running batches as gauges, labelled by batch id (a fixed hex format: checked when read)."""
    running = _gauge("hermes_batches_running", value=len(board.batches))
    unreadable = _gauge("hermes_batch_entries_unreadable", value=board.unreadable)
    info = _gauge("hermes_batch_info", ["batch", "input", "profile", "queue", "producer"])
    per_batch = {name: _gauge(name, ["batch"]) for name in (
        "hermes_batch_started_timestamp_seconds", "hermes_batch_records", "hermes_batch_failed",
        "hermes_batch_input_read_bytes", "hermes_batch_input_bytes", "hermes_batch_records_per_second",
        "hermes_batch_eta_seconds")}  # fmt: skip
    errors = _gauge("hermes_batch_errors", ["batch", "code"])
    workers = _gauge("hermes_batch_worker_records", ["batch", "worker"])
    for b in board.batches:
        info.add_metric([b.batch, b.input, b.profile, b.queue, b.producer], 1)
        values = {
            "hermes_batch_started_timestamp_seconds": b.started, "hermes_batch_records": b.records,
            "hermes_batch_failed": b.failed, "hermes_batch_input_read_bytes": b.read,
            "hermes_batch_input_bytes": b.size, "hermes_batch_records_per_second": b.rate,
            "hermes_batch_eta_seconds": b.eta_s,
        }  # fmt: skip
        for name, value in values.items():
            if value is not None:
                per_batch[name].add_metric([b.batch], value)
        for code, count in sorted(b.errors.items()):
            errors.add_metric([b.batch, code], count)
        for worker in sorted(set(b.workers) | set(b.holding)):
            workers.add_metric([b.batch, worker], b.workers.get(worker, 0))
    yield from (running, unreadable, info, *per_batch.values(), errors, workers)


def serve(
    client: redis.Redis, port: int, address: str = "127.0.0.1", source: str | None = None,
    depths: Callable[[], Mapping[str, int]] | None = None,
) -> threading.Thread:  # fmt: skip
    """Serve ``/metrics`` in a daemon thread; returns the thread.

    Only on this machine unless ``address`` says otherwise (``HERMES_METRICS_ADDRESS``,
    ``--metrics-address``): the counters name workers, profiles and error rates, and nobody
    should reach them by accident.
    """
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(client, source, depths))
    _server, thread = start_http_server(port, addr=address, registry=registry)
    return thread
