"""The dashboard over real data: `python -m bench.dashboard` (how docs/dashboard.png is made) runs in CI.

A private Redis, real workers (one killed mid-batch), the cluster exporter and a real
Prometheus (Debian's) scraping it every second with ops/prometheus/alerts.yml; then every panel
of ops/grafana/hermes.json asked of Prometheus and drawn. Every panel must get data, and the
fallback alert must fire: the batch with ``--isolation auto`` had no container worker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support.environment import REPO, missing, needs_module

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_every_panel_gets_real_data_and_the_fallback_alert_fires(tmp_path: Path) -> None:
    needs_module("matplotlib", reason="matplotlib is in the test extra")
    for tool in ("redis-server", "prometheus"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (apt-get install redis-server prometheus)")
    out = tmp_path / "dashboard.png"
    done = subprocess.run([sys.executable, "-m", "bench.dashboard", "--seconds", "30", "--out", str(out),
                           "--keep", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    panels = json.loads((REPO / "ops" / "grafana" / "hermes.json").read_text())["panels"]
    assert set(summary["panels"]) == {panel["title"] for panel in panels}
    empty = [title for title, series in summary["panels"].items() if not series]
    assert not empty, f"panels with no data from a real cluster: {empty}"
    assert summary["panels"]["Running batches: done"] == 2  # both batches of the second half, at once
    assert "HermesFallbackToLocal{kind=local_instead_of_container}" in summary["alerts"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    # Nothing of the run is left behind: its processes were stopped.
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "run")], capture_output=True, text=True)
    assert left.stdout == ""
