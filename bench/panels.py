"""A Grafana dashboard's panels drawn with matplotlib, from a real Prometheus: what bench.dashboard renders.

Each panel's targets are asked of Prometheus' HTTP API as Grafana asks them (``query_range``
over the run; ``query`` at one instant for a bar gauge), ``$__rate_interval`` set to
:data:`RATE_INTERVAL`, legends filled from ``legendFormat``; panels sit where ``gridPos`` puts
them on Grafana's 24-column grid. Panel types drawn: timeseries (lines, or stacked bars),
heatmap (cumulative ``le`` buckets turned into per-bucket counts, as Grafana does) and bargauge.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import LinearSegmentedColormap, PowerNorm

__all__ = ["Prometheus", "render"]

RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval comes to for a 1 s scrape and a short range
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLOURS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a", "#37872d"]
Series = list[tuple[dict[str, str], list[tuple[float, float]]]]


class Prometheus:
    """Prometheus' HTTP API at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus: {body}")
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query_range(self, expr: str, start: float, end: float, step: float) -> Series:
        data = self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)
        return [(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]]

    def query(self, expr: str, at: float) -> Series:
        data = self._get("/api/v1/query", query=expr, time=at)
        return [(r["metric"], [(float(r["value"][0]), float(r["value"][1]))]) for r in data["result"]]

    def alerts(self) -> list[str]:
        """The alerts firing now, as ``Name{label=value}``."""
        firing = []
        for labels, _ in self.query('ALERTS{alertstate="firing"}', time.time()):
            extra = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("__name__", "alertname",
                                                                                        "alertstate", "severity"))
            firing.append(labels["alertname"] + (f"{{{extra}}}" if extra else ""))
        return sorted(firing)


def legend(template: str, labels: dict[str, str]) -> str:
    """``legendFormat`` filled as Grafana fills it: ``{{code}}`` is the series' label ``code``."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or "value"


def _num(t: float) -> float:
    """Unix time as matplotlib's date number, for a clock of this machine's time zone."""
    return float(mdates.date2num(datetime.fromtimestamp(t)))


def _time_axis(ax: Axes, begin: float, end: float) -> None:
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.set_xlim(_num(begin), _num(end))


def _expr(target: dict[str, Any]) -> str:
    return str(target["expr"]).replace("$__rate_interval", RATE_INTERVAL)


def _style(ax: Axes, panel: dict[str, Any]) -> None:
    ax.set_facecolor(PANEL)
    ax.set_title(panel["title"], loc="left", color=TEXT, fontsize=10, fontweight="bold", pad=6)
    ax.tick_params(colors=TEXT, labelsize=7)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.grid(True, color=GRID, linewidth=0.6)


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color=TEXT, fontsize=11)


def _unit(ax: Axes, unit: str) -> None:
    def seconds(value: float, _pos: int) -> str:
        return f"{value * 1000:.0f} ms" if 0 < abs(value) < 1 else f"{value:.0f} s"

    if unit == "s":
        ax.yaxis.set_major_formatter(seconds)


def timeseries(ax: Axes, panel: dict[str, Any], source: Prometheus, begin: float, end: float) -> int:
    """Lines, or bars stacked per step; returns how many series came back."""
    step = max(1.0, (end - begin) / 240)
    custom = panel["fieldConfig"]["defaults"].get("custom", {})
    bars = custom.get("drawStyle") == "bars"
    drawn = 0
    bottom: dict[float, float] = {}
    for target in panel["targets"]:
        for labels, points in source.query_range(_expr(target), begin, end, step):
            values = [(t, v) for t, v in points if math.isfinite(v)]
            if not values:
                continue
            colour = COLOURS[drawn % len(COLOURS)]
            times = [_num(t) for t, _ in values]
            name = legend(target.get("legendFormat", ""), labels)
            if bars:
                base = [bottom.get(t, 0.0) for t, _ in values]
                ax.bar(times, [v for _, v in values], width=step / 86400 * 0.9, bottom=base, color=colour, label=name)
                for t, v in values:
                    bottom[t] = bottom.get(t, 0.0) + v
            else:
                ax.plot(times, [v for _, v in values], color=colour, linewidth=1.6, label=name,
                        drawstyle="steps-post" if custom.get("lineInterpolation") == "stepAfter" else "default")
            drawn += 1
    if not drawn:
        _no_data(ax)
        return 0
    _time_axis(ax, begin, end)
    ax.set_ylim(bottom=panel["fieldConfig"]["defaults"].get("min", None))
    _unit(ax, panel["fieldConfig"]["defaults"].get("unit", "short"))
    # Below the plot, as Grafana puts it.
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.13), fontsize=7, ncol=max(1, panel["gridPos"]["w"] // 4),
              frameon=False, labelcolor=TEXT, borderaxespad=0)  # fmt: skip
    return drawn


def heatmap(ax: Axes, panel: dict[str, Any], source: Prometheus, begin: float, end: float) -> int:
    """Cumulative ``le`` buckets over time, drawn per bucket (chunks a second in each)."""
    step = max(1.0, (end - begin) / 120)
    found = source.query_range(_expr(panel["targets"][0]), begin, end, step)
    if not found:
        _no_data(ax)
        return 0
    bound = lambda labels: math.inf if labels["le"] == "+Inf" else float(labels["le"])  # noqa: E731
    found.sort(key=lambda series: bound(series[0]))
    times = sorted({t for _, points in found for t, _ in points})
    grid = [[dict(points).get(t, 0.0) for t in times] for _, points in found]
    per_bucket = [grid[0]] + [[max(b - a, 0.0) for a, b in zip(lower, upper, strict=True)]
                              for lower, upper in itertools.pairwise(grid)]  # fmt: skip
    edges = [_num(t) for t in times] + [_num(times[-1] + step)]
    # Empty buckets show the panel, as in Grafana's dark theme; the rest go from dark orange to yellow.
    cells = numpy.ma.masked_less_equal(numpy.array(per_bucket), 0.0)
    colours = LinearSegmentedColormap.from_list("grafana", ["#5c2a06", "#ff780a", "#fade2a"])
    mesh = ax.pcolormesh(edges, range(len(found) + 1), cells, cmap=colours, norm=PowerNorm(0.5), shading="flat")
    ax.set_yticks([i + 0.5 for i in range(len(found))])
    labels = [s[0]["le"] for s in found]
    ax.set_yticklabels([("≤ " + (f"{float(le) * 1000:.0f} ms" if float(le) < 1 else f"{float(le):g} s"))
                        if le != "+Inf" else "> 120 s" for le in labels], fontsize=6)  # fmt: skip
    _time_axis(ax, begin, end)
    bar = plt.colorbar(mesh, ax=ax, pad=0.01)
    bar.ax.tick_params(colors=TEXT, labelsize=6)
    bar.set_label("chunks/s", color=TEXT, fontsize=7)
    return len(found)


def bargauge(ax: Axes, panel: dict[str, Any], source: Prometheus, at: float) -> int:
    """One horizontal bar a series, at one instant, in the panel's fixed colour."""
    rows = [(legend(t.get("legendFormat", ""), labels), points[-1][1])
            for t in panel["targets"] for labels, points in source.query(_expr(t), at)]  # fmt: skip
    ax.grid(False)
    if not rows:
        _no_data(ax)
        return 0
    top = panel["fieldConfig"]["defaults"].get("max", 100)
    colour = {"green": COLOURS[0]}.get(panel["fieldConfig"]["defaults"].get("color", {}).get("fixedColor"), COLOURS[2])
    for index, (name, value) in enumerate(sorted(rows)):
        ax.barh(index, top, color=GRID, height=0.6)
        ax.barh(index, value, color=colour, height=0.6)
        ax.text(top, index, f" {value:.0f}%", va="center", ha="left", color=TEXT, fontsize=9)
        ax.text(0, index + 0.42, name, va="bottom", ha="left", color=TEXT, fontsize=7)
    ax.set_xlim(0, top * 1.12)
    ax.set_ylim(len(rows) - 0.4, -0.8)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.text(0.99, 0.01, time.strftime("at %H:%M:%S", time.localtime(at)), transform=ax.transAxes, ha="right",
            va="bottom", color=GRID, fontsize=6)  # fmt: skip
    return len(rows)


def render(source: Prometheus, dashboard: Path, out: Path, begin: float, end: float, at: float) -> dict[str, Any]:
    """Draw every panel of ``dashboard`` into ``out`` (PNG); what each panel got, and the alerts firing."""
    board = json.loads(dashboard.read_text())
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    unit_h = 0.34
    head = 1.0
    figure = plt.figure(figsize=(20, rows * unit_h + head), facecolor=BACKGROUND)
    height = rows * unit_h + head
    got: dict[str, int] = {}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        left, width = grid["x"] / 24 + 0.03, grid["w"] / 24 - 0.045
        bottom = 1 - (head + (grid["y"] + grid["h"]) * unit_h) / height + 0.45 / height
        legend_room = 0.55 if panel["type"] == "timeseries" else 0.0
        ax = figure.add_axes((left, bottom + legend_room / height, width,
                              (grid["h"] * unit_h - 0.75 - legend_room) / height))  # fmt: skip
        _style(ax, panel)
        if panel["type"] == "heatmap":
            got[panel["title"]] = heatmap(ax, panel, source, begin, end)
        elif panel["type"] == "bargauge":
            got[panel["title"]] = bargauge(ax, panel, source, at)
        else:
            got[panel["title"]] = timeseries(ax, panel, source, begin, end)
    alerts = source.alerts()
    figure.text(0.01, 1 - 0.35 / height, f"{board['title']} — ops/grafana/hermes.json drawn from a real cluster run "
                f"(Prometheus scraping `hermes metrics` every second; rendered with matplotlib, not Grafana)",
                color=TEXT, fontsize=13, fontweight="bold", va="top")  # fmt: skip
    firing = "Alerts firing at the end (ops/prometheus/alerts.yml): " + (", ".join(alerts) or "none")
    figure.text(0.01, 1 - 0.75 / height, firing, color="#f2495c" if alerts else TEXT, fontsize=10, va="top")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90, facecolor=BACKGROUND)
    plt.close(figure)
    return {"seconds": round(end - begin, 1), "panels": got, "alerts": alerts}
