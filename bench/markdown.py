"""The Markdown report: targets first, then every section as a table, then the evidence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .findings import findings

__all__ = ["render", "table"]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _moved(machine: dict[str, Any]) -> str:
    """A warning when the code under test changed while the benchmark ran (a shared work tree)."""
    start, end = machine.get("code"), machine.get("code_end")
    if not end or start == end:
        return ""
    moved = f"at the end commit {end.get('commit')}, {len(end['modified'])} modified"
    return f" (**the code changed during the run**: {moved})"


def _targets(report: dict[str, Any]) -> str:
    verdict = {True: "**pass**", False: "**FAIL**", None: "not measured"}
    rows = [[name, t["value"], t["target"], verdict[t["pass"]]] for name, t in report["targets"].items()]
    return table(["figure", "value", "target", "result"], rows)


def _corpus(info: dict[str, Any]) -> str:
    mix = ", ".join(f"{k} {v:,}" for k, v in info.get("languages", {}).items())
    sources = ", ".join(f"{k} {v:,}" for k, v in info.get("sources", {}).items())
    scripts = ", ".join(f"{k} {v:,}" for k, v in info.get("scripts", {}).items())
    return (
        f"{info['count']:,} distinct prompts ({info['mb']} MB UTF-8, mean {info.get('mean_chars')} chars, "
        f"{info.get('ascii_share', 0):.1%} pure ASCII, {info.get('multiline_share', 0):.1%} multi-line; "
        f"{info.get('duplicates_dropped', 0):,} duplicates dropped); this run used {info.get('used_prompts', 0):,}.\n\n"
        f"- sources: {sources}\n- languages: {mix}\n- scripts: {scripts}\n"
        f"- packages: {', '.join(info.get('packages', [])) or 'given files'}\n"
    )


def _engine(engine: dict[str, Any]) -> str:
    rows = [
        [name, r["prompts_per_s"], r["mb_per_s"], r["cpu_us_per_prompt"], r["what"]]
        for name, r in engine["rows"].items()
    ]
    eq = engine["ftfy_equality"]
    validation = [
        [
            name,
            v["one_pass_us"],
            v["no_validation_us"],
            v.get("checked_us"),
            f"{v['overhead']:+.0%}",
            v["us"],
            f"{v.get('overhead_unchecked', 0):+.0%}",
            f"{v['vs_one_pass']:+.0%}",
        ]
        for name, v in (engine.get("validation_overhead") or {}).items()
    ]
    diff = engine.get("differential") or {}
    return (
        table(["candidate", "prompts/s", "MB/s", "CPU µs/prompt", "what"], rows)
        + f"\nftfy step vs `ftfy.fix_text` on all {eq['checked']:,} prompts: **{eq['mismatches']} mismatches** "
        f"(ftfy changed {eq['ftfy_changed']:,} of them). prompt/ftfy {engine['prompt_vs_ftfy']} (CPU time; "
        f"wall time: {engine.get('prompt_vs_ftfy_wall')}), one pass/ftfy {engine['prompt_one_pass_vs_ftfy']}, "
        f"ftfy step/ftfy {engine['ftfy_step_vs_ftfy']}. Speed-up over the reference engine (CPU time, "
        f"`normalize` as batches run it): {engine.get('speedup_vs_reference') or 'not measured'}.\n\n"
        "What validation adds (CPU µs per prompt: a bare `apply_profile` pass, `normalize` with "
        "`max_validation=0`, `normalize` as batches run it (told the prompt passed `check_prompt`), and for a "
        "caller that ran no `check_prompt`):\n\n"
        + table(
            ["profile", "one pass", "no validation", "as batches run it", "validation", "unchecked", "validation",
             "vs one pass"],
            validation,
        )
        + f"\nDifferential against the frozen reference engine (`tests/reference_engine`): "
        f"**{diff.get('mismatches')} mismatches** in {diff.get('cases') or 0:,} cases (every prompt × built-in "
        f"profile × max_validation 0-3 × explain or not, every field of the result; {diff.get('seconds')} s)"
        + (f": {diff['error']}" if diff.get("error") else "")
        + ".\n"
    )


def _e2e(e2e: dict[str, Any]) -> str:
    rows = [[name, rate] for name, rate in e2e["rates"].items()]
    wall = e2e.get("ratios_wall_clock", {})
    ratios = [[name, value, wall.get(name)] for name, value in e2e["ratios"].items()]
    cpu = e2e["cpu_us_per_prompt"]
    groups = sorted({g for k in ("in_process_1/compact", "celery_2/compact") for g in cpu.get(k, {})})
    cpu_rows = [[k, *[cpu.get(k, {}).get(g) for g in groups]] for k in ("in_process_1/compact", "celery_2/compact")]
    skipped = "".join(f"- skipped {k}: {v}\n" for k, v in e2e.get("skipped", {}).items())
    honest = [[name, value] for name, value in (e2e.get("ratios_honest") or {}).items()]
    return (
        f"Limit: {e2e['limit_1_process']:,.0f} prompts/s on 1 process (×2 = {e2e['limit_2_processes']:,.0f}); "
        f"the honest limit, two independent in-process batches at once with no coordination (`alone_2`): "
        f"{_fmt(e2e.get('limit_alone_2'))} prompts/s.\n\n"
        + table(["configuration / profile", "prompts/s"], rows)
        + "\n"
        + table(["ratio to the honest limit (alone_2)", "batch time (headline)"], honest)
        + "\n"
        + table(["ratio to 1 process × N (old)", "batch time", "whole command, wall clock"], ratios)
        + "\nMarginal CPU µs per prompt (`compact`, start-up subtracted):\n\n"
        + table(["run", *groups], cpu_rows)
        + f"\nOverhead beyond in-process (Celery total − in-process total): "
        f"**{e2e['overhead_us_per_prompt']} µs/prompt**; CPU efficiency (in-process ÷ cluster, all processes "
        f"and Redis): **{e2e.get('cpu_efficiency')}**.\n" + skipped
    )


def _sweep(sweep: dict[str, Any]) -> str:
    if "rows" not in sweep:
        return f"skipped: {sweep}\n"
    rows = [
        [size, r["prompts"], r["prompts_per_s"], r["cpu_us_per_prompt"], r["producer_peak_mb"]]
        for size, r in sweep["rows"].items()
    ]
    return table(["chunk size", "prompts", "prompts/s", "CPU µs/prompt (all processes)", "producer peak MB"], rows) + (
        f"\nFastest: {sweep['fastest_chunk_size']} prompts a chunk "
        f"(the default is {sweep.get('default_chunk_size')}).\n"
    )


def _memory(memory: dict[str, Any]) -> str:
    sizes = [str(n) for n in memory["sizes"]]
    rows = [
        [mode, *[r[n]["peak_mb"] for n in sizes], r["growth_mb"], r["growth_last_step_mb"], r["flat"]]
        for mode, r in memory["rows"].items()
    ]
    header = ["producer", *[f"peak MB at {int(n):,}" for n in sizes], "growth MB", "growth, last step", "flat (≤25%)"]
    return table(header, rows) + f"\nOne run per size; `{memory['profile']}` profile.\n"


def _sessions(sessions: dict[str, Any]) -> str:
    rows = [[name, r["median_ms"], r["min_ms"], r["n"]] for name, r in sessions["rows"].items()]
    return table([f"one {sessions['chunk_prompts']}-prompt chunk", "median ms", "min ms", "n"], rows) + (
        f"\n`docker run` per chunk costs {sessions['docker_run_over_session']}× a session round trip; the "
        f"session adds {sessions['session_minus_in_process_ms']} ms a chunk over in-process.\n"
    )


def _peers(peers: dict[str, Any], e2e: dict[str, Any], sweep: dict[str, Any]) -> str:
    rows = [[k, r["prompts"], r["prompts_per_s"], r["cpu_us_per_prompt"]] for k, r in peers["rows"].items()]
    hermes_rows = [
        [
            "hermes/per_prompt (chunk 1)",
            *[(sweep.get("rows", {}).get("1") or {}).get(k) for k in ("prompts", "prompts_per_s", "cpu_us_per_prompt")],
        ],
        [
            f"hermes/chunked (default, {e2e.get('default_chunk_size')})",
            None,
            (e2e.get("rates") or {}).get("celery_2/compact"),
            None,
        ],
        [
            "hermes/chunked, --max-validation 0",
            None,
            (e2e.get("rates") or {}).get("celery_2/compact/no_validation"),
            None,
        ],
    ]
    tuning = "".join(f"- {k}: {v}\n" for k, v in peers["tuning"].items())
    errors = "".join(f"- {k} failed: {v}\n" for k, v in peers.get("errors", {}).items())
    return (
        table(["peer / mode", "prompts", "prompts/s", "CPU µs/prompt"], rows + hermes_rows)
        + f"\nFunction: {peers['function']}. Best peer: {peers['best']}.\n\nTuning:\n{tuning}{errors}"
    )


def _scale(scale: dict[str, Any]) -> str:
    rows = [
        [size, r["prompts"], r["prompts_per_s"], *[r["cpu_us_per_prompt"][g] for g in ("producer", "redis", "workers")],
         *[r["cpu_us_per_chunk"][g] for g in ("producer", "redis", "workers")]]
        for size, r in scale["rows"].items()
    ]  # fmt: skip
    if scale.get("shared"):  # the shared-storage mode at the headline size: lines and records in files
        r = scale["shared"]
        rows.append([f"{scale['chunk_size']} `--shared`", r["prompts"], r["prompts_per_s"],
                     *[r["cpu_us_per_prompt"][g] for g in ("producer", "redis", "workers")],
                     *[r["cpu_us_per_chunk"][g] for g in ("producer", "redis", "workers")]])  # fmt: skip
    out = table(
        ["chunk size", "prompts", "prompts/s here", "producer µs/prompt", "Redis µs/prompt", "sim. workers µs/prompt",
         "producer µs/chunk", "Redis µs/chunk", "sim. workers µs/chunk"],
        rows,
    )  # fmt: skip
    if scale.get("fit"):
        fit = [[g, f["per_prompt_us"], f["per_chunk_us"]] for g, f in scale["fit"].items()]
        out += "\nFit through both chunk sizes (CPU/prompt = per prompt + per chunk ÷ size):\n\n"
        out += table(["part", "µs per prompt", "µs per chunk"], fit)
    c = scale["ceiling"]
    out += (
        f"\nAt {scale['chunk_size']} prompts a chunk the producer can carry {c['producer_prompts_per_s']:,} prompts/s "
        f"and Redis {c['redis_prompts_per_s']:,} (each one process, 1 ÷ its CPU per prompt): **one-batch ceiling "
        f"{c['one_batch_ceiling']:,} prompts/s, limited by the {c['limited_by']}**. Measured on this machine, where "
        f"the simulated workers ({scale['simulated_worker_processes']} processes), the producer and Redis share the "
        f"cores: {_fmt(c['measured_prompts_per_s'])} prompts/s. Output checked byte for byte; chunks the simulated "
        f"workers had to compute: {scale['misses']}.\n\n"
    )
    if scale.get("shared_ceiling"):
        sc = scale["shared_ceiling"]
        out += (
            f"With `--shared` (lines read from the input file, records written to part files: Redis carries "
            f"O(chunks)): the producer can carry {sc['producer_prompts_per_s']:,} prompts/s and Redis "
            f"{sc['redis_prompts_per_s']:,}: **one-batch ceiling {sc['one_batch_ceiling']:,} prompts/s, limited by "
            f"the {sc['limited_by']}**.\n\n"
        )
    stages = scale["producer_stages"]
    total = sum(stages["us_per_prompt"].values()) + max(0.0, stages["rest_us_per_prompt"])
    stage_rows = [[name, us, f"{us / total:.0%}" if total else "—"] for name, us in stages["us_per_prompt"].items()]
    stage_rows.append(["rest: executor loop, tracker, board, fresh pages", stages["rest_us_per_prompt"], "—"])
    if "faults_us_per_prompt" in stages:
        row = scale["rows"][str(scale["chunk_size"])]
        stage_rows.append([
            f"of the rest: fresh pages ({row['producer_faults_per_prompt']} a prompt × {stages['fresh_page_us']} µs)",
            stages["faults_us_per_prompt"], "—",
        ])  # fmt: skip
    out += f"Producer CPU by stage, µs per prompt ({stages['prompts']:,} prompts, {stages['chunks']:,} chunks):\n\n"
    out += table(["stage", "µs/prompt", "share"], stage_rows)
    out += f"\n(`transport.send` whole: {stages['send_whole_us_per_prompt']} µs/prompt"
    if stages["rest_us_per_prompt"] < 0:
        out += (
            "; the rest is negative: the stages, each timed alone in this process, add up to more than the "
            "producer's marginal CPU in the runs above, by that much (noise between the two measurements)"
        )
    out += ".)\n\n"
    engine, worker = scale["engine_us_per_prompt"], scale["worker_us_per_prompt"]
    registry = ", ".join(f"{n} workers {r['producer_ms']} ms" for n, r in scale["registry_read"].items())
    out += (
        f"Projection: each worker process on a core of its own; a worker's CPU per prompt is the engine's "
        f"(`process_chunk`: {', '.join(f'{p} {v} µs' for p, v in engine.items())}) plus the simulated workers' "
        f"(everything but the engine) = {', '.join(f'{p} {v} µs' for p, v in worker.items())}. The producer reads "
        f"the registry once a second ({registry} of CPU); idle workers cost Redis "
        f"{scale['idle_redis_us_per_s_per_node']:,} µs a second a node of {scale['simulated_worker_processes']} "
        "processes.\n"
    )
    for profile, projected in scale["projection"].items():
        proj = [
            [r["worker_processes"], r["workers_prompts_per_s"], r["producer_prompts_per_s"], r["redis_prompts_per_s"],
             r["prompts_per_s"], r["saturates_first"], f"{r['workers_used']:.0%}"]
            for r in projected
        ]  # fmt: skip
        out += f"\n`{profile}`:\n\n" + table(
            ["worker processes", "workers can take", "producer can take", "Redis can take", "one batch, prompts/s",
             "saturates first", "workers kept busy"],
            proj,
        )  # fmt: skip
    return out


def _profile(profile: dict[str, Any]) -> str:
    out = "cProfile, `normalize(t, prompt)` (own time share, cumulative share):\n\n"
    out += table(["function", "calls", "own", "cumulative"], profile.get("engine_prompt_cprofile", []))
    for who, data in (profile.get("pyspy_celery_2_compact") or {}).items():
        if "samples" not in data:
            continue
        out += f"\npy-spy (`--gil`), {who} of a `compact` batch over Celery ({data['samples']:,} samples):\n\n"
        out += table(["inclusive area", "share"], [[k, v] for k, v in data["inclusive"].items()])
        out += "\n" + table(["innermost package", "share"], data["by_package"][:8])
        out += "\n" + table(["innermost function", "share"], data["by_function"][:10])
    return out


def render(report: dict[str, Any]) -> str:
    """The whole Markdown report."""
    s = report["sections"]
    m = report["machine"]
    parts = [
        f"# Hermes benchmark — {report['plan']['description']}\n",
        f"{report['when']} on `{m['host']}`: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']} (Unicode {m['unicode']}), {m['redis_server']}, Docker {m['docker']}. "
        f"Code: commit {m.get('code', {}).get('commit')} with {len(m.get('code', {}).get('modified', []))} modified "
        f"Hermes file(s){_moved(m)}. Load average {m['load_average_start']} at start, "
        f"{m.get('load_average_end')} at the end "
        f"(other people's work shares this machine). Took {report['duration_s']} s {report['section_seconds']}.\n",
        "## Targets\n\n" + _targets(report),
        "## Corpus\n\n" + _corpus(report["corpus"]),
    ]
    sections: tuple[tuple[str, str, Callable[[], str]], ...] = (
        ("Engine, one process", "engine", lambda: _engine(s["engine"])),
        ("End to end, same run", "e2e", lambda: _e2e(s["e2e"])),
        ("Chunk-size sweep (Celery, 2 processes, compact)", "sweep", lambda: _sweep(s["sweep"])),
        ("Producer memory", "memory", lambda: _memory(s["memory"])),
        ("Session round trip vs docker run", "sessions", lambda: _sessions(s["sessions"])),
        (
            "Peers (2 worker processes each, compact function)",
            "peers",
            lambda: _peers(s["peers"], s.get("e2e", {}), s.get("sweep", {})),
        ),
        ("One batch, many workers (simulated workers, `compact`)", "scale", lambda: _scale(s["scale"])),
        ("Profiles", "profile", lambda: _profile(s["profile"])),
    )
    for title, key, body in sections:
        if key not in s:
            continue
        parts.append(f"## {title}\n\n" + (f"failed: `{s[key]['error']}`\n" if "error" in s[key] else body()))
    parts.append("## Findings\n\n" + findings(report))
    if report.get("skipped"):
        parts.append("## Skipped\n\n" + "".join(f"- {k}: {v}\n" for k, v in report["skipped"].items()))
    return "\n".join(parts)
