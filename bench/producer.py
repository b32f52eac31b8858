"""What the producer alone costs: CPU per prompt on the Celery path, peak memory, the duplicate-id guard.

``python -m bench.producer [--parts celery,memory,guard,inline] [--out FILE]`` prints one JSON report.

- ``celery``: real ``hermes batch`` processes against a private Redis and a real local worker
  (2 processes, ``compact``): the producer's CPU from the kernel (``wait4``), *marginal* per
  prompt (a 200-prompt run of the same command subtracted, so start-up is not spread over the
  prompts), median of ``--repeat`` runs. This is the issue's ``producer_us_per_prompt``.
- ``memory``: the producer's peak resident memory (``VmHWM``) at 200,000 and 1,000,000 prompts
  over Celery, and the growth between them.
- ``guard``: the duplicate-id guard alone in a fresh process per id kind (sequential integers,
  random integers, random strings, line-number ids), 1,024 ids a chunk as batches send them:
  CPU µs per id and resident growth at each size (up to 10 million ids).
- ``inline``: the producer's own per-chunk work in one process, without Redis or workers:
  read and split the input, build the chunk requests, guard the ids of results computed
  beforehand, write the records. CPU µs per prompt; ``--profile`` prints its cProfile.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .corpus import Corpus, build, write_jsonl
from .hermes_runs import HermesWorkers, run_batch

__all__ = ["guard_cost", "inline_cost", "main", "producer_cpu", "producer_memory"]

TINY = 200
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


def producer_cpu(corpus: Corpus, prompts: int, repeat: int, work: Path) -> dict[str, Any]:
    """Marginal producer CPU µs per prompt over Celery (2 local worker processes, ``compact``)."""
    main = write_jsonl(corpus.sample(prompts), work / "producer-main.jsonl")
    tiny = write_jsonl(corpus.sample(TINY), work / "producer-tiny.jsonl")
    with HermesWorkers(work / "home", "local", 2, "bench-producer") as workers:
        run_batch(tiny, work, workers.env, ["--chunk-size", "16", *workers.args()])  # warm up every process
        args = ["--profile", "compact", *workers.args()]
        runs = []
        for _ in range(repeat):
            big = run_batch(main, work, workers.env, args, workers.meter())
            workers.flush_results()
            small = run_batch(tiny, work, workers.env, args, workers.meter())
            workers.flush_results()
            runs.append((big, small))
    marginal = [
        (b.cpu_s["producer"] - s.cpu_s["producer"]) / (b.prompts - s.prompts) * 1e6 for b, s in runs
    ]
    gross = [b.cpu_s["producer"] / b.prompts * 1e6 for b, _s in runs]
    return {
        "prompts": prompts,
        "producer_us_per_prompt": round(statistics.median(marginal), 2),
        "producer_us_per_prompt_gross": round(statistics.median(gross), 2),
        "runs": [{"full": b.to_dict(), "tiny": s.to_dict()} for b, s in runs],
    }


def producer_memory(corpus: Corpus, sizes: list[int], work: Path) -> dict[str, Any]:
    """The producer's peak RSS (MB) at each size over Celery, and the growth from the first to the last."""
    peaks: dict[str, float] = {}
    with HermesWorkers(work / "home", "local", 2, "bench-producer-memory") as workers:
        for n in sizes:
            source = write_jsonl(corpus.sample(n), work / f"producer-memory-{n}.jsonl")
            run = run_batch(source, work, workers.env, ["--profile", "compact", *workers.args()])
            workers.flush_results()
            source.unlink()
            peaks[str(n)] = round(run.peak_rss / 2**20, 1)
    last = peaks[str(sizes[-1])]
    growth = {}
    for n in sizes[:-1]:
        grew = last - peaks[str(n)]
        growth[f"from_{n}"] = {"mb": round(grew, 1), "pct": round(100 * grew / peaks[str(n)], 1)}
    return {"peak_mb": peaks, "growth_to_last": growth}


_GUARD_PROBE = """
import json, random, resource, string, sys, time
from pathlib import Path
from hermes_producer.seen_ids import SeenIds

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

kind, marks = sys.argv[1], sorted(json.loads(sys.argv[2]))
rng = random.Random(13)
def ids(start, count):
    if kind == "sequential_int":
        return list(range(start, start + count))
    if kind == "random_int":
        return [rng.getrandbits(63) for _ in range(count)]
    if kind == "random_str":
        return [f"{rng.getrandbits(96):024x}" for _ in range(count)]
    return [True] * count  # line-number ids

seen, base, out = SeenIds(), rss_mb(), {}
spent, done = 0.0, 0
for mark in marks:
    while done < mark:
        count = min(1024, mark - done)
        chunk = ids(done, count)
        started = time.process_time()
        found = seen.check_chunk(done + 1, chunk)
        spent += time.process_time() - started
        assert not found, found
        done += count
    out[str(mark)] = {"us_per_id": round(spent / done * 1e6, 3), "rss_growth_mb": round(rss_mb() - base, 1)}
print(json.dumps(out))
"""

GUARD_KINDS = ("sequential_int", "random_int", "random_str", "line_number")


def guard_cost(sizes: list[int], kinds: tuple[str, ...] = GUARD_KINDS) -> dict[str, Any]:
    """The guard alone, a fresh process per kind of id: CPU µs per id (chunking only, ids made
    outside the timed part) and resident growth at each size."""
    out: dict[str, Any] = {}
    for kind in kinds:
        done = subprocess.run(
            [sys.executable, "-c", _GUARD_PROBE, kind, json.dumps(sizes)], capture_output=True, text=True, check=False
        )
        out[kind] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-2000:]}
    return out


def inline_cost(corpus: Corpus, prompts: int, profile: bool = False) -> dict[str, Any]:
    """The producer's per-chunk work in this process, on results made beforehand (see the module docstring)."""
    from hermes_producer.batch import BatchOptions, guard_duplicates, text_chunk_requests
    from hermes_producer.reader import read_chunks
    from hermes_producer.seen_ids import SeenIds
    from hermes_worker.chunk_options import ChunkOptions
    from hermes_worker.engine import resolve_profile
    from hermes_worker.processing import process_chunk
    from hermes_worker.wire import ChunkRequest, ChunkResult

    data = "".join(json.dumps({"id": n, "prompt": t}, ensure_ascii=False) + "\n" for n, t in
                   enumerate(corpus.sample(prompts))).encode("utf-8")  # fmt: skip
    options = BatchOptions(resolve_profile("compact"), "jsonl", ChunkOptions())
    # The workers' answers, through the stream's encoding as the producer reads them.
    answers = []
    for payload in text_chunk_requests(read_chunks(io.BytesIO(data), "jsonl", 1 << 20, options.chunk_size), options):
        fields = process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="w").to_stream()
        answers.append((fields["r"].encode(), fields["t"]))

    def produce() -> int:
        sink, seen = io.StringIO(), SeenIds()
        requests = text_chunk_requests(read_chunks(io.BytesIO(data), "jsonl", 1 << 20, options.chunk_size), options)
        for _payload, (counts, text) in zip(requests, answers, strict=True):
            result = guard_duplicates(ChunkResult.from_stream(json.loads(counts), text), seen)
            sink.write(result.records)
        return sink.tell()

    produce()  # warm up
    started = time.process_time()
    produce()
    spent = time.process_time() - started
    report: dict[str, Any] = {"prompts": prompts, "us_per_prompt": round(spent / prompts * 1e6, 3)}
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(produce)
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
        report["cprofile"] = stream.getvalue()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.producer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="celery,memory,guard,inline")
    parser.add_argument("--prompts", type=int, default=0, help="prompts for celery/inline (default: the corpus)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-sizes", default="200000,1000000")
    parser.add_argument("--guard-sizes", default="1000000")
    parser.add_argument("--profile", action="store_true", help="print the inline part's cProfile")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    corpus = build(args.cache)
    prompts = args.prompts or len(corpus.texts)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hermes-bench-producer-") as tmp:
        work = Path(tmp)
        if "inline" in parts:
            report["inline"] = inline_cost(corpus, prompts, args.profile)
            if args.profile:
                print(report["inline"].pop("cprofile"), file=sys.stderr)
        if "guard" in parts:
            report["guard"] = guard_cost([int(n) for n in args.guard_sizes.split(",")])
        if "celery" in parts:
            report["celery"] = producer_cpu(corpus, prompts, args.repeat, work)
        if "memory" in parts:
            report["memory"] = producer_memory(corpus, [int(n) for n in args.memory_sizes.split(",")], work)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
