"""Why a target was missed, in numbers taken from the same report, and what would fix it.

The reasoning is written here once; every figure in it comes from the run being reported. The
thread through all of it is a CPU budget: on a machine with C cores kept busy, a configuration
that spends X µs of CPU per prompt (producer + workers + Redis + containers) cannot exceed
C / X prompts per second, so its ratio to the limit cannot exceed (in-process µs) / X.
"""

from __future__ import annotations

from typing import Any

from .findings_scale import get, scale_findings
from .limits import limits

__all__ = ["chunk_cost_model", "findings", "gross_per_prompt"]


# The py-spy area of the duplicate-id guard moving fingerprints to disk (bench/profiling.py).
SPILL_AREA = "producer: duplicate-id guard moving fingerprints to disk"


def chunk_cost_model(sweep: dict[str, Any]) -> dict[str, Any] | None:
    """Fit CPU/prompt = per_prompt + per_chunk / chunk_size through the sweep's 16 and 4096 rows
    (every process together, and each group: producer, workers, Redis, when the sweep has them)."""
    rows = sweep.get("rows") or {}
    small, big = rows.get("16"), rows.get("4096")
    if not small or not big:
        return None

    def fit(a: float, b: float) -> tuple[float, float]:
        per_chunk = (a - b) / (1 / 16 - 1 / 4096)
        return round(per_chunk, 1), round(b - per_chunk / 4096, 2)

    per_chunk, per_prompt = fit(small["cpu_us_per_prompt"], big["cpu_us_per_prompt"])
    groups = {}
    for group, value in (small.get("cpu_us_per_prompt_by_group") or {}).items():
        other = (big.get("cpu_us_per_prompt_by_group") or {}).get(group)
        if other is not None:
            chunk_us, prompt_us = fit(value, other)
            groups[group] = {"per_chunk_us": chunk_us, "per_prompt_us": prompt_us}
    return {"per_chunk_us": per_chunk, "per_prompt_us": per_prompt, "by_group": groups}


def gross_per_prompt(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean gross CPU µs per prompt by group over ``runs`` (each a BatchRun dict)."""
    if not runs:
        return {}
    groups = runs[0]["cpu_s"]
    out = {g: round(sum(r["cpu_s"].get(g, 0.0) / r["prompts"] for r in runs) / len(runs) * 1e6, 1) for g in groups}
    out["total"] = round(sum(out.values()), 1)
    return out


def _pyspy(report: dict[str, Any], who: str) -> dict[str, Any]:
    return get(report, "sections", "profile", "pyspy_celery_2_compact", who) or {}


def _engine(report: dict[str, Any]) -> list[str]:
    engine = get(report, "sections", "engine")
    if not engine or "rows" not in engine:
        return []
    rows = engine["rows"]
    cpu = {name: row["cpu_us_per_prompt"] for name, row in rows.items()}
    cprofile = get(report, "sections", "profile", "engine_prompt_cprofile") or []
    regex = sum(float(row[2]) for row in cprofile if "re.Pattern' objects>" in str(row[0]) and "search" in str(row[0]))
    out = [
        f"**prompt_vs_ftfy = {engine['prompt_vs_ftfy']}** (CPU time; {engine.get('prompt_vs_ftfy_wall')} from wall "
        f"time; the ftfy step equals `ftfy.fix_text` on every prompt: "
        f"{engine['ftfy_equality']['mismatches']} mismatches). "
        f"`ftfy.fix_text` costs {cpu['ftfy_fix_text']} µs/prompt, so 5× leaves {cpu['ftfy_fix_text'] / 5:.1f} µs for "
        f"`normalize(t, prompt)`; it takes {cpu['profile_prompt']} µs ({cpu['profile_prompt_no_validation']} without "
        f"validation, {cpu['profile_prompt_one_pass']} for a bare pass), of which the ftfy step "
        f"{cpu['engine_ftfy_step']} µs: the lines that need a repair (full-width punctuation, curly quotes, escapes, "
        f"mojibake) are ftfy's own fixers at work."
        + (f" cProfile: regex `search` is {regex:.0%} of own time." if cprofile else "")
    ]
    overhead = engine.get("validation_overhead") or {}
    if overhead:
        worst = max(overhead, key=lambda name: overhead[name]["overhead"])
        listed = ", ".join(
            f"`{name}` {figures['no_validation_us']} → {figures.get('checked_us')} µs (+{figures['overhead']:.0%}; "
            f"+{figures.get('overhead_unchecked', 0):.0%} without `checked=True`; "
            f"+{figures['vs_one_pass']:.0%} over a bare pass of {figures['one_pass_us']} µs)"
            for name, figures in overhead.items()
        )
        out.append(
            f"**Validation** adds at most {overhead[worst]['overhead']:.0%} (`{worst}`): {listed}. A validation pass "
            "starts with the profile's one look at the output; an idle output is a proven fixed point with no "
            "forbidden character, and only outputs the look cannot clear run their steps again. What is left on "
            "an idle non-ASCII output is the lone-surrogate test (a UTF-8 encoding, about as long as the NFC check "
            "itself): a caller that ran `check_prompt` says `checked=True` and skips it (no step makes a lone "
            "surrogate), as `processing.py` does for every item. Against a bare "
            "pass the figure also counts the result object, which no pass makes."
        )
    diff = engine.get("differential") or {}
    if diff.get("mismatches"):
        out.append(
            f"**differential_mismatches = {diff['mismatches']}** of {diff.get('cases'):,} cases differ from the "
            f"reference engine, first: {'; '.join(diff.get('examples') or [])}"
        )
    return out


def _e2e(report: dict[str, Any]) -> list[str]:
    e2e = get(report, "sections", "e2e")
    if not e2e or "runs" not in e2e:
        return []
    runs = e2e["runs"]
    inproc = gross_per_prompt(runs.get("in_process_1/prompt", []))
    celery = gross_per_prompt(runs.get("celery_2/prompt", []))
    out = []
    if inproc and celery:
        seconds = sum(r["seconds"] for r in runs["celery_2/prompt"]) / len(runs["celery_2/prompt"])
        prompts = runs["celery_2/prompt"][0]["prompts"]
        busy = {g: round(v * prompts / 1e6 / seconds, 2) for g, v in celery.items() if g != "total"}
        producer = _pyspy(report, "producer").get("inclusive", {})
        out.append(
            f"**e2e_local_ratio = {report.get('e2e_local_ratio')}.** CPU per prompt (`prompt` profile, gross): "
            f"in-process {inproc['total']} µs for everything (read, normalize, write); over Celery "
            f"{celery['total']} µs ({celery}). "
            + (
                "The workers alone spend more than the whole in-process run. "
                if celery.get("workers", 0) > inproc["total"]
                else ""
            )
            + "With both cores busy the "
            f"ratio cannot exceed {inproc['total']} / {celery['total']} = {inproc['total'] / celery['total']:.2f}; "
            f"cores used during those runs: {busy} of {report['machine']['cores']}. The honest limit, two independent "
            f"in-process batches at once ({get(e2e, 'limit_alone_2')} prompts/s), is "
            f"{get(e2e, 'ratios_honest', 'alone_2_vs_1x2')} of 1 process × 2 on this machine (the old limit); "
            f"against it the in-process pool with 2 processes reaches "
            f"{get(e2e, 'ratios_honest', 'in_process_2_vs_alone_2')} and Celery "
            f"{get(e2e, 'ratios_honest', 'celery_2_vs_alone_2')} (old: {report.get('e2e_local_ratio_vs_1x2')}). "
            f"py-spy of the producer (`compact`): send_task "
            f"{producer.get('producer: send_task', 0):.0%} of its samples (SET of the chunk's lines + a small task "
            f"message), reading and splitting input {producer.get('producer: read + split input', 0):.0%}, the "
            f"duplicate-id guard {producer.get('producer: duplicate-id guard', 0):.0%} (moving "
            f"fingerprints to disk {producer.get(SPILL_AREA, 0):.0%}); the producer no longer "
            f"parses JSON: the workers do, as the in-process run does."
        )
    model = chunk_cost_model(get(report, "sections", "sweep") or {})
    if model is not None:
        base = get(e2e, "cpu_us_per_prompt", "in_process_1/compact", "total")
        worker = _pyspy(report, "workers").get("inclusive", {})
        out.append(
            f"**overhead_us_per_prompt = {e2e.get('overhead_us_per_prompt')}** (marginal, `compact`; Celery run by "
            f"group {get(e2e, 'cpu_us_per_prompt', 'celery_2/compact')}, in-process {base}). The sweep fits "
            f"CPU/prompt ≈ {model['per_prompt_us']} µs + {model['per_chunk_us']:,.0f} µs per chunk ÷ chunk size: "
            f"a fixed "
            f"~{model['per_chunk_us'] / 1000:.1f} ms of CPU per chunk, and even with infinite chunks "
            f"{model['per_prompt_us'] - (base or 0):.1f} µs/prompt more than in-process. Per chunk: the producer "
            f"SETs the chunk's raw lines in Redis and sends a task message of a few hundred bytes naming them; the "
            f"prefork parent pipes that message to the child (`billiard`); no Celery task events unless a "
            f"monitor asks for them (none does in this run); two Redis pipelines (start notice + GET of the "
            f"lines, then the result) each with a cluster-log event; the producer's XREAD, then XDEL and DEL. "
            f"Per prompt: the raw line crosses Redis once as bytes (SET, GET, UTF-8 decode) and its record once "
            f"(XADD, XREAD), plus its id in the result's JSON for the duplicate guard; parsing and encoding "
            f"happen in the worker exactly as in-process. py-spy of the workers: process_chunk "
            f"{worker.get('process_chunk: engine + record encoding', 0):.0%} of samples (the engine "
            f"{worker.get('engine normalize()', 0):.0%}, parsing lines "
            f"{worker.get('worker: parse input lines', 0):.0%}); everything else is transport."
        )
        out.append(
            "What is left (overhead and e2e ratio): (a) one Redis pipeline per chunk instead of two (start notice "
            "only for chunks still running after a heartbeat); (b) `--pool solo` or threads with one process per "
            "core to drop the prefork pipe (60 to 130 µs a chunk, measured by hand: see chunk_fixed_ms); "
            "(c) shorter records (provenance is most of each record's bytes, "
            "written per record by contract); (d) a duplicate-id guard that never spills per id in Python (see "
            "memory below). Done: raw lines instead of per-item JSON lists, kept out of the broker message (no "
            "JSON escaping, base64 or unacked-store copy of the prompts); parsing moved to the workers; Celery "
            "task events only once a monitor asks for them (they were a fifth of a worker's CPU at small chunks); "
            "redis-py parsing replies in C (hiredis); input lines and records' texts through orjson where its "
            "answer is the standard library's (hermes_worker/fast_json.py: about 1 µs a prompt less in "
            "`process_chunk`, in-process and in the workers alike, so it moves no ratio of this section)."
        )
    return out


def _containers(report: dict[str, Any]) -> list[str]:
    runs = get(report, "sections", "e2e", "runs", "container_2/prompt") or []
    local = gross_per_prompt(get(report, "sections", "e2e", "runs", "celery_2/prompt") or [])
    if not runs:
        return []
    cpu = gross_per_prompt(runs)
    sessions = get(report, "sections", "sessions") or {}
    return [
        f"**container_ratio = {report.get('container_ratio')}.** CPU µs/prompt by group: {cpu} (local workers: "
        f"{local}). The worker processes still spend {cpu.get('workers')} µs/prompt without running the engine: "
        f"fetching the chunk's lines, framing them for the sandbox (raw bytes, not JSON, since frame protocol 2), "
        f"checking every record the sandbox sends back against what the host knows itself (hermes_worker/sandbox/"
        f"reply.py: the sandbox is untrusted) and publishing them. The "
        f"containers ({cpu.get('containers')} µs) run the engine and the frame's decoding and encoding, each "
        f"limited to one CPU (`HERMES_CONTAINER_CPUS`). Session transport itself is cheap "
        f"({sessions.get('session_minus_in_process_ms')} ms per 256-prompt chunk over in-process; "
        f"`docker run` per chunk would be {sessions.get('docker_run_over_session')}× "
        f"a session round trip). What is left: everything listed for the local path; the host's checks of each "
        f"record (a parse of every record it gets back), which only a cheaper proof than re-parsing could "
        f"replace; and the containers' one-CPU limit, which makes their engine run slower than a local worker's."
    ]


def _peers(report: dict[str, Any]) -> list[str]:
    peers = get(report, "sections", "peers") or {}
    if not peers.get("rows"):
        return []
    best = peers.get("best")
    best_row = peers["rows"].get(best, {})
    hermes = get(report, "sections", "e2e", "cpu_us_per_prompt", "celery_2/compact", "total")
    base = get(report, "sections", "e2e", "cpu_us_per_prompt", "in_process_1/compact", "total")
    cores = report["machine"]["cores"]
    goal = 2 * best_row.get("prompts_per_s", 0)
    return [
        f"**vs_best_peer = {report.get('vs_best_peer')}** (best peer {best}: {best_row.get('prompts_per_s', 0):,.0f} "
        f"prompts/s at {best_row.get('cpu_us_per_prompt')} µs CPU/prompt; Hermes {hermes} µs marginal). The peers "
        f"run `apply_profile` once and return bare strings; Hermes runs `normalize` (input checks, a validation "
        f"round, `find_violations`) and writes full records with provenance; with `--max-validation 0` it reaches "
        f"{report.get('vs_best_peer_same_work')}× the best peer. CPU budget: 2× the best peer is {goal:,.0f} "
        f"prompts/s, i.e. at most {cores * 1e6 / goal if goal else 0:.1f} µs of CPU per prompt on {cores} cores for "
        f"everything — less than the in-process run alone spends ({base} µs: JSON parse, checks, normalize with "
        f"validation, record encoding, write). Reaching it needs the engine fixes (validation skip saves most of "
        f"the `compact` validation round) and cheaper record encoding, on top of every transport fix above."
    ]


def _memory(report: dict[str, Any]) -> list[str]:
    memory = get(report, "sections", "memory") or {}
    rows = memory.get("rows") or {}
    if not rows or all(r.get("flat") for r in rows.values()):
        return []
    sizes = [str(n) for n in memory["sizes"]]
    seen = memory.get("seen_ids_mb") or {}
    guard = round(seen.get(sizes[-1], 0.0) - seen.get(sizes[0], 0.0), 1) if seen else None
    growth = {m: r["growth_mb"] for m, r in rows.items()}
    spill = _pyspy(report, "producer").get("inclusive", {}).get(SPILL_AREA, 0)
    last = {m: r["growth_last_step_mb"] for m, r in rows.items()}
    return [
        f"**Producer memory is not flat from {int(sizes[0]):,} to {int(sizes[-1]):,} prompts**: it grows by "
        f"{growth} MB, of which {last} MB in the last step (one run per size). The duplicate-id guard "
        f"(`hermes_producer/seen_ids.py`: runs of consecutive integers, fingerprints of 100,000 other ids in "
        f"memory, older ones behind a fixed 32 MiB Bloom filter and on disk), measured alone in a fresh process "
        f"at the same sizes, grows by {seen} MB: about {guard} MB of it. py-spy puts its move of fingerprints to "
        f"disk at {spill:.0%} of the producer's samples. What remains above the guard's share is the C allocator's, "
        f"not Python's (measured by hand, 2026-11-30, `hermes batch --processes 2 --profile compact`): "
        f"tracemalloc snapshots of a 1M-prompt in-process producer 4 s apart differ by the guard's Bloom filter "
        f"(32 MiB, made once at its first spill) and under 7 MB of transient buffers, while its RSS swings by 20 MB "
        f"between samples 0.2 s apart: chunk texts and pickled results of 250 to 500 KB, the results unpickled in "
        f"the pool's result thread, live in glibc's arenas, and glibc raises its mmap threshold as such buffers are "
        f"freed, so later ones stay there. Integer ids: peak 102.9 MB at 200,000, 115.9 MB at 1,000,000 (+12.6%); "
        f"with `malloc_trim(0)` every 0.3 s, +7.7%. String ids: +10%, and with the threshold fixed "
        f"(`MALLOC_MMAP_THRESHOLD_=131072`) +3.6% from a peak 25 MB lower, for 1.5 µs of system CPU a prompt more "
        f"(an mmap and a munmap a buffer). Neither is worth its cost here. One malloc arena "
        f"(`MALLOC_ARENA_MAX=1`: the pool's result thread then allocates from the main arena), three runs each "
        f"(2026-11-30, integer ids): +8.9, +13.1 and +10.0% against +12.3, +13.8 and +16.6% by default, from peaks "
        f"8 to 10 MB lower, at the same CPU: a knob for hosts short of memory, not a fix. A reader and a pool that "
        f"reuse their buffers would be."
    ]


def _chunk_default(report: dict[str, Any]) -> list[str]:
    """Why the default chunk size stays when the sweep found a larger one faster."""
    sweep = get(report, "sections", "sweep") or {}
    rows, fastest, default = sweep.get("rows") or {}, sweep.get("fastest_chunk_size"), sweep.get("default_chunk_size")
    if fastest is None or default is None or fastest == default or str(default) not in rows or str(fastest) not in rows:
        return []
    best, ours = rows[str(fastest)], rows[str(default)]
    if int(fastest) < int(default):
        return []
    gain = best["prompts_per_s"] / ours["prompts_per_s"] - 1
    return [
        f"**Chunk size.** {fastest} prompts a chunk ran {gain:.0%} faster than the default {default} on "
        f"{ours['prompts']:,} prompts ({ours['cpu_us_per_prompt']} → {best['cpu_us_per_prompt']} µs CPU/prompt): "
        f"the per-chunk cost is spread thinner. The default stays {default} because a chunk is also the unit "
        f"of load balancing, progress, resume and redo: at {fastest}, a batch of fewer than "
        f"{4 * int(fastest):,} prompts has fewer chunks than 4 worker processes, and a worker lost mid-chunk "
        f"redoes up to {fastest} prompts. For batches of millions on few workers, `--chunk-size {fastest}` "
        "(or `HERMES_CHUNK_SIZE`) takes the gain."
    ]


def findings(report: dict[str, Any]) -> str:
    """Paragraphs for the report: one per missed target, with the evidence behind it."""
    failed = {name for name, t in report["targets"].items() if t["pass"] is False}
    parts: list[str] = []
    if failed & {"prompt_vs_ftfy", "validation_overhead_max", "differential_mismatches"} or (
        report.get("ftfy_equal") is False
    ):
        parts += _engine(report)
    if failed & {"e2e_local_ratio", "overhead_us_per_prompt"}:
        parts += _e2e(report)
    if "container_ratio" in failed:
        parts += _containers(report)
    if "vs_best_peer" in failed:
        parts += _peers(report)
    parts += scale_findings(report, failed)
    parts += _chunk_default(report)
    parts += _memory(report)
    if not parts:
        return "Every measured target is met.\n"
    table = limits(report)
    return "\n\n".join(([table.rstrip("\n")] if table else []) + parts) + "\n"
