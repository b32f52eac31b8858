"""Findings for issue 13's chunk-path and scale targets, each from the report's own numbers.

``producer_us_per_prompt`` and ``one_batch_ceiling`` (the producer stage by stage, from the scale
section), ``chunk_fixed_ms`` (the sweep's per-chunk fit by process group, beside the simulated
workers' and Redis's per-chunk cost from the scale section), ``per_prompt_vs_dramatiq`` (what one
prompt a chunk is bounded by) and ``e2e_cpu_efficiency`` (where the cluster's extra CPU goes).
"""

from __future__ import annotations

from typing import Any

__all__ = ["REMEDY", "celery_task_us", "get", "scale_findings"]


def get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


# What would remove each producer stage's cost (the stage names of bench/producer_stages.py).
REMEDY = {
    "result read: XREAD + decode": "redis-py parses the reply in C (hiredis); what is left is checking the records "
    "before writing the bytes that came: that they are UTF-8 (a decode, 0.18 µs a prompt; measured by hand on "
    "2026-11-30, 490 KB a chunk: checking in 16 KiB pieces without making one str costs the same 175 µs a chunk, "
    "the codec is the cost) and one record per item (a newline count, 0.13 µs). A vectorized UTF-8 validator and "
    "newline counter (simdutf; no Python wheel of it here) would remove most of both",
    "read + split input": "the lines are split in C and each chunk decoded once (the check that it is UTF-8) and "
    "sent as the bytes read; what is left is joining the lines of a chunk again, which slicing the read block "
    "would spare",
    "send: Celery send_task": "Celery builds and publishes one message a chunk (no task-sent event unless "
    "HERMES_TASK_EVENTS=1, the queue declared with the batch's first message only); several chunks' messages in "
    "one pipeline would remove most of what is left",
    "send: SET lines": "one SET per chunk, in the same pipeline as the message would save a round trip",
    "send: argsrepr summary": "the SHA-256 of the chunk's lines that Flower shows, hashed in C (127 µs for 250 KB "
    "here; a CRC-32 would take 37 µs, but an operator can match a chunk to its lines by SHA-256, not by a CRC); "
    "none while no monitor listens would remove it",
    "record write": "raw bytes to the output file (done); what is left is the kernel copying them into the page "
    "cache, whose fresh pages cost what `fresh_page_us` says on this machine: only writing fewer bytes removes it "
    "(shorter records: provenance is most of each record's bytes, written per record by contract)",
    "duplicate-id guard": "fingerprints checked a chunk at a time (done)",
    "tidy: XDEL + DEL": "one pipeline per written chunk: per chunk, small",
    "encode chunk requests": "per chunk, small",
}


def _producer(report: dict[str, Any]) -> list[str]:
    scale = get(report, "sections", "scale") or {}
    stages = scale.get("producer_stages")
    if not stages:
        return []
    row = scale["rows"][str(scale["chunk_size"])]
    producer = row["cpu_us_per_prompt"]["producer"]
    ranked = sorted(stages["us_per_prompt"].items(), key=lambda kv: -kv[1])
    listed = "; ".join(f"{name} {us} µs" for name, us in ranked)
    top = [name for name, us in ranked[:3] if us > 0.1]
    fixes = " ".join(f"*{name}*: {REMEDY.get(name, '')}." for name in top)
    fit = (scale.get("fit") or {}).get("producer")
    split = (
        f" Through two chunk sizes the producer costs {fit['per_prompt_us']} µs a prompt plus {fit['per_chunk_us']:,} "
        f"µs a chunk." if fit else ""
    )
    client = stages.get("kombu_new_client_us")
    kombu = f" A `send_task` costs {stages.get('send_task_us_per_chunk')} µs a chunk." if client else ""
    return [
        f"**producer_us_per_prompt = {report.get('producer_us_per_prompt')}** (the Celery run of the e2e section; "
        f"the scale section's, with workers that cost nothing: {producer} µs at {scale['chunk_size']} prompts a "
        f"chunk).{split} Stage by stage in one warm process (µs per prompt): {listed}; their sum "
        f"{stages['sum_us_per_prompt']} µs, the rest of the measured producer (executor loop, tracker, board, "
        f"start-up not subtracted away) {stages['rest_us_per_prompt']} µs.{_pages(scale)}{kombu} To reach 1.5 µs: "
        f"{fixes}"
    ]


def _pages(scale: dict[str, Any]) -> str:
    """How much of the producer's rest is fresh pages from the kernel, from the run's fault count and probe."""
    stages = scale["producer_stages"]
    if "faults_us_per_prompt" not in stages:
        return ""
    faults = scale["rows"][str(scale["chunk_size"])]["producer_faults_per_prompt"]
    return (
        f" The stages run warm, on memory they reuse; the real producer took {faults} fresh pages a prompt from "
        f"the kernel (minor faults, marginal: its chunks' lines, their text and the records read back, each a new "
        f"buffer of a quarter to two megabytes), and a fresh page costs {stages['fresh_page_us']} µs of CPU on "
        f"this machine (`bench.machine.fresh_page_us`): {stages['faults_us_per_prompt']} µs a prompt of the rest. "
        f"Buffers reused from chunk to chunk would remove it; glibc keeping freed memory instead "
        f"(`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`) halved the producer's faults "
        f"when tried by hand (2026-11-30) but moved no rate beyond the noise, five interleaved runs each."
    )


def _ceiling(report: dict[str, Any]) -> list[str]:
    scale = get(report, "sections", "scale") or {}
    ceiling = scale.get("ceiling")
    if not ceiling:
        return []
    row = scale["rows"][str(scale["chunk_size"])]["cpu_us_per_prompt"]
    projected = (scale.get("projection") or {}).get("compact") or []
    knee = [r for r in projected if r["saturates_first"] != "workers"]
    where = (
        f"with `compact`, from {knee[0]['worker_processes']} worker processes on the {knee[0]['saturates_first']} "
        f"saturates first (the workers are then kept {knee[0]['workers_used']:.0%} busy)"
        if knee
        else "the workers saturate first up to 512 worker processes"
    )
    shared, shared_row = scale.get("shared_ceiling"), (scale.get("shared") or {}).get("cpu_us_per_prompt")
    beyond = (
        f" The shared-storage mode (`--shared`: lines and records through files, Redis moves O(chunks)) cuts "
        f"Redis to {shared_row['redis']} µs a prompt and the producer to {shared_row['producer']} µs: ceiling "
        f"{shared['one_batch_ceiling']:,} prompts/s, limited by the {shared['limited_by']}."
        if shared and shared_row
        else ""
    )
    return [
        f"**one_batch_ceiling = {ceiling['one_batch_ceiling']:,} prompts/s** (target 500,000), limited by the "
        f"{ceiling['limited_by']}: the producer spends {row['producer']} µs of CPU a prompt and can carry "
        f"{ceiling['producer_prompts_per_s']:,} prompts/s; Redis spends {row['redis']} µs and could carry "
        f"{ceiling['redis_prompts_per_s']:,}. In the projection {where}. 500,000 prompts/s needs the producer at "
        f"≤ 2 µs a prompt (see producer_us_per_prompt for where its CPU goes) and Redis at ≤ 2 µs; past about "
        f"{int(1e6 / max(row['redis'], 1e-3)):,} prompts/s Redis is next, and only several producers (one batch "
        f"split across producers) go further.{beyond}"
    ]


def _chunk_fixed(report: dict[str, Any]) -> list[str]:
    from .findings import chunk_cost_model

    model = chunk_cost_model(get(report, "sections", "sweep") or {})
    if model is None:
        return []
    groups = model.get("by_group") or {}
    by_group = ", ".join(f"{g} {v['per_chunk_us']:,.0f} µs" for g, v in groups.items())
    scale_fit = get(report, "sections", "scale", "fit") or {}
    sim = scale_fit.get("workers", {}).get("per_chunk_us")
    redis = scale_fit.get("redis", {}).get("per_chunk_us")
    producer = scale_fit.get("producer", {}).get("per_chunk_us")
    real = groups.get("workers", {}).get("per_chunk_us")
    engine_side = f"{real - sim:,.0f}" if real is not None and sim is not None else "?"
    client = get(report, "sections", "scale", "producer_stages", "kombu_new_client_us")
    events = (
        f" kombu's Redis transport made a new redis-py client for every publish, ack and unacked-store entry "
        f"({client} µs of CPU each, measured here): about four a chunk in a worker's main process and two in the "
        f"producer, no longer paid (hermes_worker/kombu_clients.py)."
        if client
        else ""
    )
    return [
        f"**chunk_fixed_ms = {report.get('chunk_fixed_ms')}** (target 0.6): the sweep's fit puts "
        f"{model['per_chunk_us']:,.0f} µs of CPU on every chunk, whatever its size ({by_group}). The scale section "
        f"measures the same per-chunk costs without the engine: the simulated workers (Celery's consumer and prefork "
        f"pipe, the guard, the start notice and the lines in one round trip, the result's pipeline, "
        f"the ack) {sim if sim is None else f'{sim:,.0f}'} µs, Redis {redis if redis is None else f'{redis:,.0f}'} µs, "
        f"the producer {producer if producer is None else f'{producer:,.0f}'} µs; so about {engine_side} µs of the "
        f"workers' share is per-chunk work around the engine (request decode and check, the profile's plan, "
        f"provenance, the result's counts).{events} Done here: the chunk latency histogram is one Redis command "
        f"a chunk instead of thirteen, the main process writes no cluster event when it receives a task, "
        f"kombu's channels reuse one client each, and Celery task events go only once a monitor asks for them. "
        f"To reach 0.6 ms every part must shrink further: one Redis round "
        f"trip a chunk instead of two (the start notice riding with the result for chunks that finish within a "
        f"heartbeat: the tracker's stranded-chunk rule would have to wait that long), and the prefork pipe gone "
        f"(one solo-pool worker per core), which is worth little: measured by hand (2026-11-30) with these simulated "
        f"workers, two solo-pool nodes against one prefork node of two processes, fitted through chunk sizes 16 and "
        f"1,024, the workers' CPU a chunk went from 1,104 to 1,041 µs and from 1,133 to 999 µs in two runs (3 and 5 "
        f"repetitions): the pipe is 60 to 130 µs of it.{_celery_floor(report)}"
    ]


def celery_task_us(report: dict[str, Any]) -> tuple[float, float] | None:
    """CPU µs a task of plain Celery and of Dramatiq, one task a prompt with its result (peers section)."""
    rows = get(report, "sections", "peers", "rows") or {}
    celery, dramatiq = rows.get("celery/per_prompt"), rows.get("dramatiq/per_prompt")
    if not celery or not dramatiq:
        return None
    return celery["cpu_us_per_prompt"], dramatiq["cpu_us_per_prompt"]


def _celery_floor(report: dict[str, Any]) -> str:
    """What one plain Celery task costs in the same run, set against the 0.6 ms a chunk allowed."""
    tasks = celery_task_us(report)
    if tasks is None:
        return ""
    celery, dramatiq = tasks
    return (
        f" Yet Celery itself stands in the way: the peers section's plain Celery, tuned, spends "
        f"{celery:,.0f} µs of CPU on one task with its result through Redis, all processes "
        f"together ({celery / 600:.1f}× the 600 µs a chunk may cost; Dramatiq "
        f"{dramatiq:,.0f} µs). No change inside Hermes reaches 0.6 ms while every chunk is one "
        f"Celery message; chunks carried several a message, or taken several at a time from a Redis stream with "
        f"Celery kept for control and monitoring, would."
    )


def _per_prompt(report: dict[str, Any]) -> list[str]:
    one = get(report, "sections", "sweep", "rows", "1") or {}
    dramatiq = get(report, "sections", "peers", "rows", "dramatiq/per_prompt") or {}
    if not one or not dramatiq:
        return []
    cores = report["machine"]["cores"]
    goal = 2 * dramatiq["prompts_per_s"]
    return [
        f"**per_prompt_vs_dramatiq = {report.get('per_prompt_vs_dramatiq')}**: one prompt a chunk runs at "
        f"{one['prompts_per_s']:,.0f} prompts/s and costs {one['cpu_us_per_prompt']:,.0f} µs of CPU a prompt, all "
        f"processes together; Dramatiq, one task a prompt, {dramatiq['prompts_per_s']:,.0f} prompts/s at "
        f"{dramatiq['cpu_us_per_prompt']:,.0f} µs. On {cores} cores, 2× Dramatiq ({goal:,.0f} prompts/s) allows at "
        f"most {cores * 1e6 / goal:,.0f} µs a prompt: with one prompt a chunk that is the whole per-chunk cost "
        f"(chunk_fixed_ms above), about {one['cpu_us_per_prompt'] / (cores * 1e6 / goal):.1f}× too much today."
    ]


def _efficiency(report: dict[str, Any]) -> list[str]:
    cpu = get(report, "sections", "e2e", "cpu_us_per_prompt") or {}
    inproc, cluster = cpu.get("in_process_1/compact") or {}, cpu.get("celery_2/compact") or {}
    if not inproc or not cluster:
        return []
    extra = {g: v for g, v in cluster.items() if g != "total"}
    workers_over = round(extra.get("workers", 0.0) - inproc["total"], 2)
    return [
        f"**e2e_cpu_efficiency = {report.get('e2e_cpu_efficiency')}** (target 0.9): in-process "
        f"{inproc['total']} µs a prompt for everything, the cluster {cluster['total']} µs ({extra}). The workers "
        f"alone spend {workers_over:+} µs a prompt over the whole in-process run (their per-chunk cost spread over "
        f"the chunk, see chunk_fixed_ms), and the producer and Redis come on top. 0.9 allows "
        f"{inproc['total'] / 0.9 - inproc['total']:.1f} µs a prompt for producer, Redis and the workers' transport "
        "together."
    ]


def scale_findings(report: dict[str, Any], failed: set[str]) -> list[str]:
    """Paragraphs for the missed targets among issue 13's chunk-path and scale targets."""
    parts: list[str] = []
    if "producer_us_per_prompt" in failed:
        parts += _producer(report)
    if "one_batch_ceiling" in failed:
        parts += _ceiling(report)
    if "chunk_fixed_ms" in failed:
        parts += _chunk_fixed(report)
    if "per_prompt_vs_dramatiq" in failed:
        parts += _per_prompt(report)
    if "e2e_cpu_efficiency" in failed:
        parts += _efficiency(report)
    return parts
