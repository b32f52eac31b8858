"""How much to measure: the full plan, the quick one (under 3 minutes), and the smoke one (tests).

Every size is a number of prompts taken from the start of the corpus (repeating it when a
plan asks for more prompts than it has, as the 1M-prompt memory run does).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["SECTIONS", "Plan", "plan_for"]

SECTIONS = ("engine", "e2e", "sweep", "memory", "sessions", "peers", "scale", "profile")


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and repetitions of one benchmark run."""

    name: str
    repeat: int  # runs per figure; the figure is their median
    corpus_prompts: int | None  # None: the whole corpus
    per_prompt_prompts: int  # one-task-per-prompt runs (Hermes chunk size 1 and the peers)
    sweep: dict[int, int]  # chunk size -> prompts for that size (None-like 0: the whole sample)
    memory_sizes: tuple[int, ...]  # producer peak memory at these input sizes (ascending)
    session_rounds: int
    docker_run_rounds: int
    profile_prompts: int  # prompts under cProfile
    # Scale section: chunk size -> prompts of its big run (two sizes give CPU per prompt and per chunk).
    scale_chunks: dict[int, int] = field(default_factory=lambda: {1024: 250_000, 128: 40_000})
    scale_concurrency: int = 2  # processes of the simulated worker
    cluster: bool = True  # False: in-process runs only (no Redis, no workers)
    sections: tuple[str, ...] = field(default=SECTIONS)

    def describe(self) -> str:
        size = "the whole corpus" if self.corpus_prompts is None else f"the first {self.corpus_prompts:,} prompts"
        runs = "median of 3 runs" if self.repeat >= 3 else f"{self.repeat} run(s) per figure: NOT a median of 3"
        return f"{self.name}: {size}, {runs}"


FULL = Plan(
    name="full",
    repeat=3,
    corpus_prompts=None,
    per_prompt_prompts=3_000,
    sweep={1: 3_000, 16: 20_000, 64: 50_000, 256: 0, 1024: 0, 4096: 0},
    memory_sizes=(10_000, 200_000, 1_000_000),
    session_rounds=30,
    docker_run_rounds=5,
    profile_prompts=30_000,
)
QUICK = Plan(
    name="quick",
    repeat=1,
    corpus_prompts=20_000,
    per_prompt_prompts=500,
    sweep={1: 500, 16: 4_000, 64: 10_000, 256: 0, 1024: 0, 4096: 0},
    memory_sizes=(10_000, 50_000, 200_000),
    session_rounds=10,
    docker_run_rounds=2,
    profile_prompts=5_000,
    scale_chunks={1024: 80_000, 128: 15_000},
)
SMOKE = Plan(
    name="smoke",
    repeat=1,
    corpus_prompts=None,
    per_prompt_prompts=50,
    sweep={1: 50, 256: 0},
    memory_sizes=(100, 400),
    session_rounds=2,
    docker_run_rounds=1,
    profile_prompts=200,
    scale_chunks={64: 8_000, 16: 2_000},
    cluster=False,
    sections=("engine", "e2e"),
)


def plan_for(name: str, repeat: int | None = None, sections: tuple[str, ...] | None = None) -> Plan:
    """The named plan, with ``repeat`` and ``sections`` overridden when given."""
    plan = {"full": FULL, "quick": QUICK, "smoke": SMOKE}[name]
    if repeat is not None:
        plan = replace(plan, repeat=repeat)
    if sections is not None:
        plan = replace(plan, sections=sections)
    return plan
