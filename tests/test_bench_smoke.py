"""The benchmark machinery on a tiny corpus from examples/: no network, a few seconds each.

Not timed tests: they check that the suite runs and writes both reports with every headline
key, and that the figures are sane (never how fast anything was). The scale section needs a
private Redis and starts a (simulated) worker: it is marked ``cluster``.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.plan import SMOKE
from bench.producer_stages import STAGES
from bench.scale import PROJECTED_WORKERS
from tests.support.environment import missing

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HEADLINE_KEYS = (
    "e2e_local_ratio",
    "container_ratio",
    "prompt_vs_ftfy",
    "validation_overhead_max",
    "differential_mismatches",
    "vs_celery_per_prompt",
    "vs_best_peer",
    "overhead_us_per_prompt",
    "producer_us_per_prompt",
    "chunk_fixed_ms",
    "one_batch_ceiling",
    "per_prompt_vs_dramatiq",
    "e2e_cpu_efficiency",
    "scale_projection",
    "corpus",
    "machine",
)


def test_smoke_run_writes_both_reports_with_every_headline_key(tmp_path: Path) -> None:
    # Given: a few hundred prompts made from the example files
    out = tmp_path / "out"
    corpus = ["--corpus-jsonl", str(EXAMPLES / "prompts.jsonl"), "--corpus-jsonl", str(EXAMPLES / "prompts.txt")]
    args = ["--smoke", "--out", str(out), "--cache", str(tmp_path / "cache"), "--min-prompts", "300", *corpus]

    # When: the suite runs its smoke plan (engine, and in-process `hermes batch`). The engine
    # section collects garbage before each of its timings: frozen, the test session's own objects
    # are not gone over each time (0.03 s a collection alone, ~0.7 s in a whole-suite session).
    gc.freeze()
    try:
        code = main(args)
    finally:
        gc.unfreeze()

    # Then: both reports exist, the JSON has every headline key and the sections ran
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in HEADLINE_KEYS:
        assert key in report, key
    assert report["corpus"]["count"] >= 300
    assert report["machine"]["cores"] >= 1
    assert set(report["targets"]) == set(HEADLINE_KEYS) - {"corpus", "machine", "scale_projection"}
    engine, e2e = report["sections"]["engine"], report["sections"]["e2e"]
    assert "error" not in engine and "error" not in e2e
    assert engine["ftfy_equality"]["mismatches"] == 0
    assert report["differential_mismatches"] == 0  # the engine gives what the frozen reference gives
    assert set(report["validation_overhead"]) == {"prompt", "nfc", "nfkc", "compact"}
    assert e2e["rates"]["in_process_1/prompt"] > 0
    # The honest limit: two independent batches at once did all their prompts, at a sane multiple of one
    alone = e2e["runs"]["alone_2/prompt"][0]
    assert e2e["rates"]["alone_2/prompt"] > 0 and alone["prompts"] == 2 * report["corpus"]["used_prompts"]
    assert 0.2 < e2e["ratios_honest"]["alone_2_vs_1x2"] < 5
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Hermes benchmark")
    assert "## Targets" in markdown and "## Corpus" in markdown


@pytest.mark.cluster
def test_scale_section_reports_the_one_batch_ceiling_and_its_projection(tmp_path: Path) -> None:
    # Given: a private redis-server can run (the section starts its own, never the one on 6379)
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    out = tmp_path / "out"
    corpus = ["--corpus-jsonl", str(EXAMPLES / "prompts.jsonl"), "--corpus-jsonl", str(EXAMPLES / "prompts.txt")]
    args = ["--smoke", "--sections", "scale", "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--min-prompts", "300", *corpus]  # fmt: skip

    # When: the scale section runs at the smoke plan's sizes (the real producer, Redis and Celery
    # messages; a real worker whose runner answers with records the engine made beforehand)
    code = main(args)

    # Then: the headline carries the ceiling and the projection, each from the section's own numbers
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    scale = report["sections"]["scale"]
    assert "error" not in scale, scale.get("traceback")
    assert scale["misses"] == 0  # every chunk was answered from the records, none by the engine
    assert report["targets"]["one_batch_ceiling"]["value"] == report["one_batch_ceiling"] == scale["one_batch_ceiling"]
    assert 1_000 < report["one_batch_ceiling"] < 100_000_000
    for size, row in scale["rows"].items():
        assert row["prompts"] == SMOKE.scale_chunks[int(size)]
        assert 0 < row["cpu_us_per_prompt"]["total"] < 100_000, (size, row["cpu_us_per_prompt"])
    # The row the ceiling comes from (the biggest run: marginal CPU is robust there), part by part
    headline = scale["rows"][str(scale["chunk_size"])]["cpu_us_per_prompt"]
    for group in ("producer", "redis", "workers"):
        assert 0 < headline[group] < 100_000, (group, headline)
    stages = scale["producer_stages"]
    assert set(stages["us_per_prompt"]) == set(STAGES)
    assert all(us >= 0 for us in stages["us_per_prompt"].values()) and stages["sum_us_per_prompt"] > 0
    for profile in ("compact", "prompt"):
        projected = report["scale_projection"][profile]
        assert [row["worker_processes"] for row in projected] == list(PROJECTED_WORKERS)
        for row in projected:
            parts = {part: row[f"{part}_prompts_per_s"] for part in ("workers", "producer", "redis")}
            assert row["prompts_per_s"] == min(parts.values()) > 0
            assert parts[row["saturates_first"]] == row["prompts_per_s"]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "## One batch, many workers" in markdown and "saturates first" in markdown
