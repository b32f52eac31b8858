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
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, unquote

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .contract import ERROR_CODES, KEY_PREFIX
from .wire import ChunkResult

__all__ = ["BUCKETS", "KEY_METRICS", "RedisCollector", "chunk_increments", "serve"]

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
    "chunk_seconds_bucket": frozenset({"le", "mode"}),
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
    if name == "chunk_seconds_bucket" and labels["le"] not in _BOUNDS:
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
    for bound in BUCKETS:
        if seconds <= bound:
            counts[field("chunk_seconds_bucket", mode=mode, le=str(bound))] = 1
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


_HELP = {
    "items_ok": ("hermes_items_processed", "Prompts normalized successfully"),
    "items_failed": ("hermes_items_failed", "Prompts that got an error record, by error code"),
    "chunks": ("hermes_chunks", "Chunks processed"),
    "session_restarts": ("hermes_session_restarts", "Sandbox containers recreated after dying"),
    "probe": ("hermes_probe", "Docker probe outcomes at worker start-up"),
    "fallbacks": ("hermes_fallbacks", "Times work did not go where it was meant to (in-process, local, resent)"),
    "messages_refused": ("hermes_messages_refused", "Task messages and commands a worker refused without acting"),
}


class RedisCollector(Collector):
    """Collects Hermes' counters from Redis at scrape time.

    Args:
        client: the result Redis.
        source: one worker's name, or None for every worker and the producers.
    """

    def __init__(self, client: redis.Redis, source: str | None = None) -> None:
        self._redis = client
        self._source = source
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

    def _fields(self) -> Iterator[tuple[str, str, dict[str, str], float]]:
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
        counters: dict[str, CounterMetricFamily] = {}
        histograms: dict[tuple[str, str], dict[str, Any]] = {}
        self.unreadable = 0
        for source, name, labels, value in self._fields():
            labels["worker"] = source
            if name.startswith("chunk_seconds"):
                slot = histograms.setdefault(
                    (source, labels.get("mode", "")), {"buckets": {}, "sum": 0.0, "count": 0.0}
                )
                if name == "chunk_seconds_bucket":
                    slot["buckets"][float(labels["le"])] = value
                elif name == "chunk_seconds_sum":
                    slot["sum"] = value
                continue
            if name == "chunks":
                slot = histograms.setdefault(
                    (source, labels.get("mode", "")), {"buckets": {}, "sum": 0.0, "count": 0.0}
                )
                slot["count"] = value
            if name not in _HELP:
                continue
            metric, help_text = _HELP[name]
            label_names = sorted(labels)
            family = counters.setdefault(
                f"{name}:{','.join(label_names)}", CounterMetricFamily(metric, help_text, labels=label_names)
            )
            family.add_metric([labels[k] for k in label_names], value)
        yield from counters.values()
        if histograms:
            histogram = HistogramMetricFamily(
                "hermes_chunk_duration_seconds", "Time to normalize one chunk", labels=["worker", "mode"]
            )
            for (source, mode), slot in sorted(histograms.items()):
                cumulative = []
                running = 0.0
                for bound in BUCKETS:
                    # Stored per bucket as "at most this long": already cumulative.
                    running = max(running, slot["buckets"].get(bound, 0.0))
                    cumulative.append((str(bound), running))
                cumulative.append(("+Inf", slot["count"]))
                histogram.add_metric([source, mode], cumulative, slot["sum"])
            yield histogram
        yield GaugeMetricFamily(
            "hermes_metrics_unreadable_fields",
            "Counter fields in Redis that Hermes did not write and skipped",
            value=self.unreadable,
        )
        if self._source is None:
            live = GaugeMetricFamily("hermes_workers_live", "Workers with a fresh heartbeat", labels=["tag"])
            from .registry import Registry

            tags: dict[str, int] = {}
            for worker in Registry(self._redis, ttl_s=1e9).live():
                tags[worker.tag] = tags.get(worker.tag, 0) + 1
            for tag in ("container", "local"):
                live.add_metric([tag], tags.get(tag, 0))
            yield live


def serve(client: redis.Redis, port: int, address: str = "127.0.0.1", source: str | None = None) -> threading.Thread:
    """Serve ``/metrics`` in a daemon thread; returns the thread.

    Only on this machine unless ``address`` says otherwise (``HERMES_METRICS_ADDRESS``,
    ``--metrics-address``): the counters name workers, profiles and error rates, and nobody
    should reach them by accident.
    """
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(client, source))
    _server, thread = start_http_server(port, addr=address, registry=registry)
    return thread
