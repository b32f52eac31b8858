"""Issue 11, class 1: no line can stall a worker. Every step, every built-in profile, the input
reader and the duplicate-id guard run in time linear in their input, on inputs built to make
them slow (``bench/hostile.py``: runs of every whitespace and invisible character the profiles
touch, newlines and blank-ish lines, combining marks, mojibake, terminal escapes, HTML entities,
alternations of those).

Each case times the same kind of hostile input at a small and a large size, 16 times larger, in
the same test, in CPU time (the best of three small runs, one large run), and asserts that the
large one took at most 4 × the size ratio: a linear step stays well inside (about 16 ×), a
quadratic one takes the ratio squared (256 ×). A CPU timer stops a run that is already past
twice the bound, so a quadratic case fails in seconds, not hours.

The sizes: 16 KiB against 256 KiB; where ftfy runs (the step, and the prompt profile), 8 KiB
against 128 KiB, and 2 KiB against 32 KiB on the texts ftfy works hardest on (HARD_FOR_FTFY: up
to 16 s of CPU per MiB, linear; the passes that made them quadratic took 11 s on 4 KiB before the
fix, and a cheaper quadratic term could not outweigh that much linear work below tens of MiB).
A quadratic term shows once it outweighs the linear work at the
large size, so the large size matters most where the linear work per byte is large and the
quadratic term small: ftfy's utf-8-variants codec copied the rest of its input for every Java
NUL it decoded, 0.15 s at 256 KiB against ftfy's 0.15 s of linear work, 2.3 s at 1 MiB. The texts
that codec decodes (FTFY_CODECS) go through the ftfy step at 16 KiB against 1 MiB, the largest
prompt a batch accepts (256 ×: the old codec took more than the bound, 720 ms, there). On the
engine before the fix (3176ded^), these sizes fail the steps and texts the earlier tiers (10 KiB
against 256 KiB, and against 1 MiB) failed, for a tenth of their CPU time; the prompt profile on
the Java NUL text, which only the 1 MiB tier failed, is the ftfy step's case at 1 MiB here.

Before the fix: ``rstrip_lines`` took 0.57 s for ``" " * 10_000 + "x"`` and would take 1.5 hours at
1 MiB; CPython's canonical ordering of combining marks (every Unicode form), ftfy's repeated
passes over nested escapes and peeled mojibake, ftfy's utf-8-variants decoder, the reader's
chunking of a block of empty lines and the guard's integer ids whose hashes collide were all
super-linear (``collapse_blank_lines`` was only slow: a frame per repeated group, 170 ms for a
million blank lines). The defence behind this (a CPU-time
budget per item) is tested in ``test_hostile_time_budget.py``; ``test_hostile_time_identity.py``
proves the rewrites changed no output byte.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from bench.hostile import FAMILIES
from hermes_producer.reader import read_chunks
from hermes_producer.seen_ids import SeenIds
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import BUILTIN_PROFILES, STEPS
from hermes_worker.processing import process_chunk
from hermes_worker.wire import ChunkRequest, Item

from .support.timing import cpu_seconds

KIB = 1024
LARGEST = 1024 * KIB  # the largest prompt a batch accepts
# A linear step scales with the size ratio; 4 × that is room for caches and a busy machine.
# Quadratic work takes the size ratio squared.
ALLOWANCE = 4
# Times below this are timer noise and interpreter overhead: the bound starts here.
FLOOR_S = 0.001
# No step may take this long on the small input (ftfy took minutes on 10 KiB of some before the fix).
SMALL_LIMIT_S = 10.0
# Text ftfy works hard on: seconds of CPU a MiB, linear (the per-line budget of ftfy_bounded);
# `python -m bench.hostile` prints what each costs (7 to 15 s per MiB for the worst).
HARD_FOR_FTFY = {
    "A-circumflex run + copyright (ftfy peels one a pass)",
    "CJK + an embedded A-circumflex chain",
    "distinct lines of an A-circumflex chain",
    "distinct lines of mojibake",
    "distinct lines of a C1 control",
    "&amp; nested (& + amp; amp; ...)",
    "&#38; nested",
}
# Text ftfy's utf-8-variants codec decodes, and little else of ftfy's touches.
FTFY_CODECS = {"Java NUL in mojibake (utf-8-variants)", "CESU-8 surrogates in mojibake"}


def sizes(family: str, runs_ftfy: bool, ftfy_step: bool = False) -> tuple[int, int]:
    """The small and the large size of ``family`` for a step or profile (see the module's docstring)."""
    if not runs_ftfy:
        return 16 * KIB, 256 * KIB
    if family in HARD_FOR_FTFY:
        return 2 * KIB, 32 * KIB
    if ftfy_step and family in FTFY_CODECS:
        return 16 * KIB, LARGEST
    return 8 * KIB, 128 * KIB


# --- hostile inputs: bench/hostile.py (``python -m bench.hostile`` prints what each costs) -----


def _forget_ftfy_memo() -> None:
    # ftfy results of short lines are remembered; a second run of the same text would only
    # measure the memo.
    try:
        from hermes_worker.engine import ftfy_bounded, ftfy_step
    except ImportError:  # before the fix there was no memo
        return
    ftfy_bounded._fixed_short_segment.cache_clear()
    ftfy_step._fixed_short_segment.cache_clear()  # the ftfy step's own (issue 13)


def _times(run: Callable[[str], Any], family: str, small_size: int, large_size: int) -> tuple[float, float, float]:
    """(small time, large time, allowed large time) of ``run`` on ``family``.

    Other work on the machine can slow one measurement more than the other (two cores shared
    with other test runs): a large run over the bound, but not past twice the bound, is measured
    again with its small run, up to three rounds, and the best round counts.
    """
    build = FAMILIES[family]
    small, large = build(small_size), build(large_size)
    assert small_size // 2 < len(small.encode()) <= small_size and large_size // 2 < len(large.encode()) <= large_size
    run(small[:100])  # first calls compile patterns and fill tables
    rounds = []
    for _ in range(3):
        small_s = cpu_seconds(lambda: run(small), 3, limit_s=SMALL_LIMIT_S, before=_forget_ftfy_memo)
        if small_s == float("inf"):
            return small_s, small_s, 0.0
        allowed = ALLOWANCE * large_size / small_size * max(small_s, FLOOR_S)
        large_s = cpu_seconds(lambda: run(large), 1, limit_s=allowed * 2, before=_forget_ftfy_memo)
        rounds.append((small_s, large_s, allowed))
        if large_s <= allowed or large_s == float("inf"):
            break
    return min(rounds, key=lambda r: r[1] / r[2])


def _check_all(run: Callable[[str], Any], runs_ftfy: bool, ftfy_step: bool = False) -> None:
    failures = []
    for family in FAMILIES:
        small_size, large_size = sizes(family, runs_ftfy, ftfy_step)
        small_s, large_s, allowed = _times(run, family, small_size, large_size)
        if small_s == float("inf"):
            failures.append(f"{family}: more than {SMALL_LIMIT_S:g} s at {small_size // KIB} KiB")
        elif large_s > allowed:
            failures.append(
                f"{family}: {small_s * 1e3:.2f} ms at {small_size // KIB} KiB, "
                f"{large_s:.2f} s at {large_size // KIB} KiB (allowed {allowed:.2f} s)"
            )
        if len(failures) == 3:  # enough to see the pattern; a quadratic case costs seconds each
            failures.append("(stopped after 3)")
            break
    assert not failures, "super-linear:\n" + "\n".join(failures)


# --- steps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STEPS))
def test_every_step_is_linear_on_hostile_input(name: str) -> None:
    """Every step, on every hostile input: the large input takes at most 4 × its size ratio."""
    _check_all(STEPS[name].apply, runs_ftfy=name == "ftfy", ftfy_step=name == "ftfy")


# --- profiles, through the whole item path ----------------------------------------------------


def _item_path(profile: str) -> Callable[[str], Any]:
    """One item through process_chunk: checks, normalization, validation, the encoded record."""
    spec = BUILTIN_PROFILES[profile].spec()

    def run(text: str) -> None:
        # item_time_budget 0: the engine's own time is measured here, not the budget's
        request = ChunkRequest(
            1,
            spec,
            options=ChunkOptions(max_validation=1, explain=False, max_prompt_bytes=LARGEST, item_time_budget=0),
            items=[Item(1, 1, text)],
        )
        result = process_chunk(request, mode="local", worker="test")
        assert result.ok == 1, result.errors

    return run


@pytest.mark.parametrize("profile", list(BUILTIN_PROFILES))
def test_every_builtin_profile_is_linear_on_hostile_input(profile: str) -> None:
    """Every built-in profile with validation on, one item through process_chunk."""
    _check_all(_item_path(profile), runs_ftfy="ftfy" in BUILTIN_PROFILES[profile].steps)


# --- the producer's reader and duplicate-id guard ---------------------------------------------


def _chunks_of(data: bytes) -> int:
    return sum(1 for _ in read_chunks(io.BytesIO(data), "text", LARGEST, 1024))


def test_the_reader_is_linear_on_a_file_of_empty_lines() -> None:
    """A MiB block of newlines is a million lines: cutting chunks off its front copied the rest
    each time (2.3 s for 1 MiB, 0.01 s for 100 KiB, before the fix)."""
    small, large = b"\n" * (10 * KIB), b"\n" * LARGEST
    assert _chunks_of(large) == LARGEST // 1024
    small_s = cpu_seconds(lambda: _chunks_of(small), 3)
    allowed = ALLOWANCE * len(large) / len(small) * max(small_s, FLOOR_S)
    large_s = cpu_seconds(lambda: _chunks_of(large), 1, limit_s=allowed * 2)
    assert large_s <= allowed, f"{small_s * 1e3:.2f} ms for 10 KiB, {large_s:.2f} s for 1 MiB"


# CPython hashes an integer n as n mod (2**61 - 1): these ids all have the same hash.
COLLIDING = 2**61 - 1


def _guard(ids: list[Any], spill_at: int = 100_000) -> dict[int, int]:
    """Every chunk of ``ids`` through one guard, 1,024 a chunk as batches send them."""
    seen, duplicates = SeenIds(spill_at=spill_at), {}
    for start in range(0, len(ids), 1024):
        found = seen.check_chunk(start + 1, ids[start : start + 1024])
        duplicates |= {start + index: line for index, line in found.items()}
    return duplicates


def test_the_duplicate_guard_is_linear_on_ids_whose_hashes_collide() -> None:
    """100,000 ids k·(2**61 - 1): every one hashes alike (0.9 s for 10,000 and 19 s for 40,000
    before the fix; 100,000 would take minutes)."""
    small = [k * COLLIDING for k in range(1, 1_001)]
    large = [k * COLLIDING for k in range(1, 100_001)]
    _guard(small)
    small_s = cpu_seconds(lambda: _guard(small), 3)
    allowed = ALLOWANCE * len(large) / len(small) * max(small_s, FLOOR_S)
    large_s = cpu_seconds(lambda: _guard(large), 1, limit_s=allowed * 2)
    assert large_s <= allowed, f"{small_s * 1e3:.1f} ms for 1,000 ids, {large_s:.2f} s for 100,000"


@pytest.mark.parametrize("spill_at", [100_000, 500], ids=["in memory", "spilled to SQLite"])
def test_the_duplicate_guard_still_finds_every_duplicate(spill_at: int) -> None:
    """Colliding integers, their string twins and line-number ids: only real repeats are duplicates."""
    # Given ids that collide in CPython's integer hash, the same values as strings (a JSON string
    # "5" is not the number 5), and lines without an id (their line number is the id)
    ids: list[Any] = [k * COLLIDING for k in range(1, 2_001)]
    ids += [str(k * COLLIDING) for k in range(1, 2_001)]
    ids += [True] * 1_000  # lines 4,001 to 5,000 use their own numbers
    ids += [4_500, 2 * COLLIDING, str(3 * COLLIDING), 5, "5", None, 5, "5"]
    # When the guard sees them in order
    duplicates = _guard(ids, spill_at)
    # Then exactly the repeats are reported, each with the line that used the id first
    assert duplicates == {
        5_000: 4_500,  # 4,500 is line 4,500's own id
        5_001: 2,  # the number 2·(2**61 - 1), line 2
        5_002: 2_003,  # the string of 3·(2**61 - 1), line 2,003
        5_006: 5_004,  # the number 5 again
        5_007: 5_005,  # the string "5" again
    }
