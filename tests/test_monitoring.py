"""The shipped monitoring: ops/prometheus/alerts.yml and ops/grafana/hermes.json.

Prometheus' own promtool checks the rules, runs their unit tests (ops/prometheus/alerts.test.yml:
each alert fires when it should, with its labels and text, and stays quiet otherwise) and
parses every dashboard query. The dashboard keeps the shape Grafana imports (schema below), and
every query, panel or alert, names only series Hermes exports (hermes_worker.metrics.FAMILIES);
tests/test_batches.py proves the exporter emits them from a real cluster.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hermes_worker.contract import ERROR_CODES
from hermes_worker.metrics import FALLBACK_KINDS, FAMILIES, series_names, zero_filled

from .support.environment import REPO, missing

PROMETHEUS = REPO / "ops" / "prometheus"
DASHBOARD = REPO / "ops" / "grafana" / "hermes.json"
# Grafana's panel types the dashboard may use (all built in, no plugin to install).
PANEL_TYPES = {"timeseries", "heatmap", "bargauge", "stat", "table", "gauge", "text", "row"}
# What the issue asks the dashboard to show, each by the series its panel must query.
REQUIRED = {
    "Throughput": "hermes_items_processed_total",
    "Chunk latency": "hermes_chunk_duration_seconds_bucket",
    "Errors by code": "hermes_items_failed_total",
    "Live workers by tag": "hermes_workers_live",
    "Queue depth": "hermes_queue_depth",
    "Session restarts": "hermes_session_restarts_total",
    "Fallbacks": "hermes_fallbacks_total",
    "Running batches: done": "hermes_batch_input_read_bytes",
}
# The alerts the issue asks for, by name.
ALERTS = {"HermesQueueWithoutWorker", "HermesErrorRate", "HermesSessionRestartStorm", "HermesFallbackToLocal"}
# Grafana's range variable stands for a duration; promtool needs one.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        missing("promtool is not installed (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def hermes_series(expr: str) -> set[str]:
    """The Hermes series an expression names (label values in quotes left out)."""
    return set(re.findall(r"\bhermes_[a-z0-9_]+\b", re.sub(r'"[^"]*"', '""', expr)))


def test_the_alert_rules_pass_promtool() -> None:
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_the_alerts_fire_as_their_unit_tests_say() -> None:
    done = promtool("test", "rules", "alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_in_which_it_fires() -> None:
    cases = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    fired = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= ALERTS
    assert names <= fired, f"alerts never seen firing in alerts.test.yml: {sorted(names - fired)}"


def test_the_example_prometheus_configuration_loads_the_alerts() -> None:
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alerts.yml" in done.stdout


def test_the_dashboard_has_the_shape_grafana_imports() -> None:
    board = dashboard()
    assert board["title"] and re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"])
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        title, grid = panel["title"], panel["gridPos"]
        assert title and panel["type"] in PANEL_TYPES, title
        assert all(isinstance(grid[k], int) for k in "xywh") and grid["w"] > 0 and grid["h"] > 0, title
        assert grid["x"] + grid["w"] <= 24, f"{title} is wider than Grafana's 24 columns"
        for cell in itertools.product(range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])):
            assert cell not in cells, f"{title} overlaps {cells[cell]}"
            cells[cell] = title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip(), title


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    shown: dict[str, set[str]] = {}
    for title, expr in panel_queries():
        shown.setdefault(title, set()).update(hermes_series(expr))
    for title, series in REQUIRED.items():
        assert series in shown.get(title, set()), f"no panel {title!r} querying {series}"


@pytest.mark.parametrize("where", ["dashboard", "alerts"])
def test_every_query_names_only_series_hermes_exports(where: str) -> None:
    alerts = [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    queries = panel_queries() if where == "dashboard" else alerts
    exported = series_names()
    for name, expr in queries:
        unknown = hermes_series(expr) - exported
        assert not unknown, f"{name}: {sorted(unknown)} are not series of {sorted(FAMILIES)}"
        assert hermes_series(expr) or expr.startswith("absent("), name


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    rules = []
    for number, (_title, expr) in enumerate(panel_queries()):
        for variable, duration in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, duration)
        rules.append({"record": f"hermes:dashboard_query_{number}", "expr": expr})
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_a_query_naming_a_series_hermes_does_not_export_is_caught() -> None:
    # The check above must be able to fail: a typo'd counter, a counter without _total, a gauge
    # given a suffix it does not have.
    for expr in ("rate(hermes_item_processed_total[5m])", "rate(hermes_chunks[5m])", "hermes_workers_live_total"):
        assert hermes_series(expr) - series_names(), expr


def test_counters_with_known_labels_are_exported_at_zero_before_they_first_count() -> None:
    # A series born at 1 is invisible to rate() and increase(): the first fallback would never alert.
    fields = [
        ("local@w1", "items_ok", {"mode": "local", "profile": "prompt"}, 10.0),
        ("local@w1", "items_failed", {"code": "empty_prompt", "mode": "local", "profile": "prompt"}, 2.0),
        ("producers", "fallbacks", {"kind": "resent"}, 3.0),
    ]
    filled = zero_filled(fields, cluster=True)
    assert filled[: len(fields)] == fields  # what was counted stays as it was, once
    added = {(source, name, tuple(sorted(labels.items()))): value for source, name, labels, value in filled[3:]}
    assert set(added.values()) == {0.0}
    assert ("local@w1", "session_restarts", ()) in added
    codes = {dict(labels)["code"] for (_, name, labels) in added if name == "items_failed"}
    assert codes == set(ERROR_CODES) - {"empty_prompt"}
    kinds = {dict(labels)["kind"] for (_, name, labels) in added if name == "fallbacks"}
    assert kinds == set(FALLBACK_KINDS) - {"resent"}
    assert not any(name == "fallbacks" for _, name, _, _ in zero_filled(fields[:2], cluster=False))


def test_every_fallback_kind_the_code_counts_is_declared() -> None:
    counted = set()
    for path in [*(REPO / "hermes_worker").rglob("*.py"), *(REPO / "hermes_producer").rglob("*.py")]:
        counted |= set(re.findall(r'"fallbacks", kind="([a-z_]+)"', path.read_text(encoding="utf-8")))
    assert counted == set(FALLBACK_KINDS)


def test_chunk_latency_buckets_add_up_one_field_a_chunk_and_the_cumulative_fields_of_older_workers() -> None:
    # Given: a worker's counters from before issue 13 (every bucket at or above a chunk's time,
    # already cumulative: 2 chunks, one of 0.3 s and one of 4 s) and from now (one field a chunk:
    # 0.004 s and 0.3 s), as chunk_increments writes them
    from hermes_worker.metrics import BUCKETS, _histogram, chunk_increments, parse_field
    from hermes_worker.processing import failed_chunk_result

    result = failed_chunk_result({"chunk": 0, "first": 1, "text": "a"}, "too_slow", "slow", mode="local", worker="w")
    fields: dict[str, float] = {"chunks|mode=local": 4, "chunk_seconds_sum|mode=local": 8.604}
    fields |= {f"chunk_seconds_bucket|le={b}|mode=local": (b >= 0.5) + (b >= 5.0) for b in BUCKETS if b >= 0.5}
    for seconds in (0.004, 0.3):
        increments = chunk_increments(result, seconds, "local")
        buckets = [name for name in increments if name.startswith("chunk_seconds_in")]
        assert len(buckets) == 1  # one command a chunk, not one per bucket
        for name in buckets:
            fields[name] = fields.get(name, 0) + increments[name]

    # When: the exporter builds the histogram
    parsed = [("local@w", *parse_field(name), value) for name, value in fields.items()]
    histogram = _histogram(parsed)

    # Then: Prometheus' buckets are cumulative over both kinds of field, and +Inf counts every chunk
    assert histogram is not None
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 1 and buckets["0.25"] == 1
    assert buckets["0.5"] == 3 and buckets["2.5"] == 3 and buckets["5.0"] == 4 and buckets["+Inf"] == 4
    values = [buckets[str(b)] for b in BUCKETS]
    assert values == sorted(values)
