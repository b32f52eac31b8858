"""The duplicate-id guard is exact: fingerprints, Bloom filters and runs only make it fast.

Every test compares the guard with the plain definition (:func:`reference`: a dict of every id
ever seen) on inputs built to reach each of its paths: runs of consecutive integers, fingerprints
in memory, fingerprints spilled behind a Bloom filter, and fingerprints so narrow (a few bits)
that most different ids share one, where only the real ids may decide.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from hermes_producer.fingerprints import Fingerprints, identity
from hermes_producer.seen_ids import MIN_RUN, SeenIds

COLLIDING = 2**61 - 1  # CPython's integer hash is n mod (2**61 - 1): k * COLLIDING all hash alike

Chunk = tuple[int, list[Any]]


def reference(chunks: list[Chunk]) -> list[dict[int, int]]:
    """What the guard must answer: the first line of every id, by its JSON identity."""
    first_use: dict[str, int] = {}
    answers = []
    for first, ids in chunks:
        found = {}
        for index, item_id in enumerate(ids):
            if item_id is None:
                continue
            key = identity(item_id, first + index)
            if key in first_use:
                found[index] = first_use[key]
            else:
                first_use[key] = first + index
        answers.append(found)
    return answers


def guard(chunks: list[Chunk], **options: Any) -> list[dict[int, int]]:
    seen = SeenIds(**options)
    try:
        return [seen.check_chunk(first, ids) for first, ids in chunks]
    finally:
        seen.close()


def numbered(rows: list[list[Any]]) -> list[Chunk]:
    """Chunks of ids on consecutive lines from line 1."""
    chunks, line = [], 1
    for ids in rows:
        chunks.append((line, ids))
        line += len(ids)
    return chunks


def hostile_ids(rng: random.Random, chunk_count: int) -> list[Chunk]:
    """Chunks mixing every kind of id, most of them repeating an earlier one somewhere."""
    rows: list[list[Any]] = []
    line = 1
    for _ in range(chunk_count):
        size = rng.choice([1, 2, 7, MIN_RUN, 300])
        shape = rng.random()
        if shape < 0.15:  # a numbered file: consecutive integers, maybe overlapping earlier ones
            start = rng.choice([0, 1, line, rng.randrange(5_000)])
            ids: list[Any] = list(range(start, start + size))
        elif shape < 0.25:  # lines without an id: their line numbers
            ids = [True] * size
        else:
            pool: list[Any] = [rng.randrange(3_000), str(rng.randrange(3_000)), rng.randrange(40) * COLLIDING,
                               -rng.randrange(50), f"k{rng.randrange(2_000)}", True, None, line + rng.randrange(400),
                               rng.randrange(10**19, 10**20)]  # fmt: skip
            ids = [rng.choice(pool) for _ in range(size)]
        rows.append(ids)
        line += size
    return numbered(rows)


PATHS = {
    "in memory": {"spill_at": 10**9},
    "spilled": {"spill_at": 64, "bloom_bits": 1 << 14, "parts": 16},
    "a Bloom filter that always says maybe": {"spill_at": 64, "bloom_bits": 64, "parts": 2},
    "4-bit fingerprints": {"spill_at": 64, "fingerprint_bits": 4, "bloom_bits": 1 << 10, "parts": 4},
    "1-bit fingerprints, in memory": {"fingerprint_bits": 1},
    "salted string hashes": {"spill_at": 200, "salt_strings": True, "bloom_bits": 1 << 14},
}


@pytest.mark.parametrize("options", PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize("seed", range(4))
def test_the_guard_finds_exactly_the_repeated_ids(options: dict[str, Any], seed: int) -> None:
    # Given chunks whose ids repeat across and within chunks, in every shape
    chunks = hostile_ids(random.Random(seed), 120)
    # When the guard sees them in order, Then it names exactly the repeats and their first lines
    assert guard(chunks, **options) == reference(chunks)


@pytest.mark.parametrize("options", PATHS.values(), ids=PATHS.keys())
def test_ids_sharing_a_fingerprint_are_never_duplicates_of_each_other(options: dict[str, Any]) -> None:
    """With 4-bit fingerprints, 3,000 distinct ids share 16 fingerprints: the ids decide."""
    # Given 3,000 distinct ids, then every one of them again
    distinct: list[Any] = [f"s{n}" for n in range(1_000)] + list(range(1_000, 2_000)) + [str(n) for n in range(1_000)]
    rows = [distinct[i : i + 100] for i in range(0, len(distinct), 100)]
    chunks = numbered(rows + rows)
    # When the guard sees them with narrow fingerprints
    found = guard(chunks, **{**options, "fingerprint_bits": 4})
    # Then nothing in the first pass is a duplicate, and every id of the second names its first line
    assert found[: len(rows)] == [{}] * len(rows)
    assert found == reference(chunks)


def test_json_identity_numbers_strings_and_line_numbers() -> None:
    """5 is not "5"; -0 is 0 (JSON "-0" parses as 0); a line without an id uses its number."""
    chunks = numbered([[5, "5", 0, True, None], ["5", 5, -0, 4, "4", True]])
    assert guard(chunks) == [{}, {0: 2, 1: 1, 2: 3, 3: 4}]


def test_values_only_a_forged_result_holds_compare_as_their_text() -> None:
    """A float id prints as "1.0" and so is the string "1.0", as it always was; False is not 0."""
    chunks = numbered([["1.0", False, 0, [1]], [1.0, False, 0, "[1]", 1]])
    assert guard(chunks) == reference(chunks) == [{}, {0: 1, 1: 2, 2: 3, 3: 4}]


def test_a_numbered_file_is_kept_as_runs_and_meets_line_numbers_both_ways() -> None:
    # Given a file numbered from 10 on lines 1-1000, then lines without ids, then explicit numbers
    chunks = numbered([list(range(10, 510)), list(range(510, 1010)), [True] * 500, [1003, 1200, 1500, 2]])
    # When the guard sees them
    found = guard(chunks)
    # Then lines 1001-1009 (no id) repeat the numbered ids of lines 992-1000; explicit 1003 repeats
    # line 994, 1200 and 1500 the ids of lines 1200 and 1500 (none given there); 2 is new
    assert found == [{}, {}, {i: 992 + i for i in range(9)}, {0: 994, 1: 1200, 2: 1500}]
    assert found == reference(chunks)


def test_a_run_that_overlaps_earlier_ids_is_checked_id_by_id() -> None:
    chunks = numbered([["a", 700, "b"], list(range(600, 600 + MIN_RUN)), list(range(0, 600))])
    assert guard(chunks) == reference(chunks) == [{}, {100: 2}, {}]


def test_the_guard_keeps_the_first_use_after_many_spills() -> None:
    # Given unique string ids in chunks of 500, spilling every 1,000, then three of them again
    chunks = numbered([[f"id-{n}" for n in range(start, start + 500)] for start in range(0, 20_000, 500)])
    chunks.append((20_001, ["id-17", "fresh", "id-19999", "id-10000"]))
    # When the guard sees them, Then the repeats name their lines however long ago they left memory
    found = guard(chunks, spill_at=1_000, bloom_bits=1 << 16, parts=8)
    assert found[-1] == {0: 18, 2: 20_000, 3: 10_001}
    assert found[:-1] == [{}] * (len(chunks) - 1)


def test_a_spilled_part_with_many_rows_is_merged_and_still_found() -> None:
    chunks = numbered([[f"x{n}" for n in range(start, start + 10)] for start in range(0, 400, 10)])
    chunks.append((401, [f"x{n}" for n in range(0, 400, 7)]))
    found = guard(chunks, spill_at=10, bloom_bits=64, parts=1)
    assert found[-1] == {i: 1 + 7 * i for i in range(len(range(0, 400, 7)))}


def test_fingerprints_follow_identity() -> None:
    prints = Fingerprints()
    assert prints.of(7, 1) == prints.of(True, 7) == prints.of_ints([7])[0]
    assert prints.of("7", 1) == prints.of_strs(["7"])[0] != prints.of(7, 1)
    assert prints.of(1.0, 1) == prints.of("1.0", 2)  # the same identity: "s1.0"
    assert prints.of(False, 1) != prints.of(0, 1)
    assert len({prints.of(k * COLLIDING, 1) for k in range(1, 1_000)}) == 999  # no longer colliding


def test_fingerprint_keys_differ_between_guards() -> None:
    ids = list(range(1_000))
    assert Fingerprints().of_ints(ids) != Fingerprints().of_ints(ids)
    salted = [Fingerprints(salt_strings=True).of_strs(["a", "b"]) for _ in range(2)]
    assert salted[0] != salted[1]
