"""The benchmark machinery on a tiny corpus from examples/: no network, no workers, a few seconds.

Not a timed test: it checks that the suite runs and writes both reports with every headline
key, never how fast anything was.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

from bench.__main__ import main

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
    assert set(report["targets"]) == set(HEADLINE_KEYS) - {"corpus", "machine"}
    engine, e2e = report["sections"]["engine"], report["sections"]["e2e"]
    assert "error" not in engine and "error" not in e2e
    assert engine["ftfy_equality"]["mismatches"] == 0
    assert report["differential_mismatches"] == 0  # the engine gives what the frozen reference gives
    assert set(report["validation_overhead"]) == {"prompt", "nfc", "nfkc", "compact"}
    assert e2e["rates"]["in_process_1/prompt"] > 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Hermes benchmark")
    assert "## Targets" in markdown and "## Corpus" in markdown
