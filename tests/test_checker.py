"""The checker (tests/support/checker.py) counts every kind of fault it is shown, and nothing else.

Each test plants one fault in a real batch's output (or in Redis) and expects exactly that
count; a clean output must count zero everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .support.checker import Verdict, check
from .support.fixture_types import HermesRunner
from .support.redis_server import RedisServer

PROMPTS = ["cafÃ©  au lait", "ﬁrst\u200b line", "plain", "", "日本語"]


@pytest.fixture
def batch(hermes: HermesRunner, tmp_path: Path) -> tuple[Path, list[str]]:
    """A real batch's input and its output lines (one line deliberately an error record)."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{n}", "prompt": p}) + "\n" for n, p in enumerate(PROMPTS)))
    done = hermes("-q", "batch", str(source), "-o", "out.jsonl")
    assert done.returncode == 1, done.stderr  # the empty prompt
    return source, (tmp_path / "out.jsonl").read_text().splitlines(keepends=True)


def _checked(source: Path, lines: list[str]) -> Verdict:
    out = source.with_name("planted.jsonl")
    out.write_text("".join(lines))
    return check(out, source)


def test_a_clean_output_counts_nothing(batch: tuple[Path, list[str]]) -> None:
    source, _lines = batch
    verdict = check(source.with_name("out.jsonl"), source)
    assert verdict.problems() == [] and (verdict.items_in, verdict.records_out) == (5, 5)
    verdict.assert_clean()


def test_a_missing_record_is_lost(batch: tuple[Path, list[str]]) -> None:
    source, lines = batch
    verdict = _checked(source, lines[:2] + lines[3:])
    assert (verdict.lost, verdict.duplicated, verdict.unexpected) == ([3], 0, [])
    assert verdict.out_of_order == 2


def test_a_repeated_record_is_duplicated(batch: tuple[Path, list[str]]) -> None:
    source, lines = batch
    verdict = _checked(source, [*lines, lines[1]])
    assert (verdict.lost, verdict.duplicated, verdict.out_of_order) == ([], 1, 0)


def test_a_record_with_other_text_or_for_no_line_is_unexpected(batch: tuple[Path, list[str]]) -> None:
    source, lines = batch
    altered = json.loads(lines[0]) | {"text": "café au lait!"}
    stray = json.loads(lines[1]) | {"line": 99}
    verdict = _checked(source, [json.dumps(altered) + "\n", *lines[1:], json.dumps(stray) + "\n"])
    assert len(verdict.unexpected) == 2 and verdict.lost == []
    assert "line 1:" in verdict.unexpected[0] and "no input line" in verdict.unexpected[1]


def test_provenance_may_differ_but_nothing_else(batch: tuple[Path, list[str]]) -> None:
    source, lines = batch
    moved = json.loads(lines[0])
    moved["provenance"] |= {"worker": "container@elsewhere", "mode": "container"}
    assert _checked(source, [json.dumps(moved) + "\n", *lines[1:]]).problems() == []
    moved["validation"]["rounds"] = 2
    assert _checked(source, [json.dumps(moved) + "\n", *lines[1:]]).problems()


def test_swapped_records_are_out_of_order(batch: tuple[Path, list[str]]) -> None:
    source, lines = batch
    verdict = _checked(source, [lines[1], lines[0], *lines[2:]])
    assert (verdict.out_of_order, verdict.lost, verdict.duplicated) == (2, [], 0)


@pytest.mark.cluster
def test_what_a_batch_leaves_in_redis_is_counted(batch: tuple[Path, list[str]], redis_server: RedisServer) -> None:
    source, _lines = batch
    client = redis_server.client()
    assert all(n == 0 for n in check(source.with_name("out.jsonl"), source, client=client).leftovers.values())
    client.set("hermes:chunk:" + "a" * 32 + ":3", b"lines")
    client.xadd("hermes:results:" + "b" * 32, {"r": "{}"})
    client.rpush("hermes.local", b"{}")
    client.hset("unacked", "tag", b"{}")
    verdict = check(source.with_name("out.jsonl"), source, client=client, settle=0)
    assert sum(verdict.leftovers.values()) == 4 and len(verdict.problems()) == 1


def test_an_allowed_error_is_one_record_for_its_line_and_only_with_its_code(batch: tuple[Path, list[str]]) -> None:
    source, lines = batch
    poisoned = json.loads(lines[1]) | {"error": {"code": "sandbox_failure", "line": 2, "message": "out-of-memory"}}
    del poisoned["text"]
    planted = [lines[0], json.dumps(poisoned) + "\n", *lines[2:]]
    out = source.with_name("planted.jsonl")
    out.write_text("".join(planted))
    assert check(out, source, allow={2: "sandbox_failure"}).problems() == []
    wrong_code = check(out, source, allow={2: "too_slow"}).unexpected
    assert "error 'sandbox_failure', not the 'too_slow' allowed" in wrong_code[0]
    assert len(check(out, source).unexpected) == 1  # not allowed: not what line 2 normalizes to
    assert "error None" in check(source.with_name("out.jsonl"), source, allow={2: "sandbox_failure"}).unexpected[0]


def test_the_batch_s_prompt_size_limit_decides_what_is_expected(batch: tuple[Path, list[str]]) -> None:
    source, _lines = batch
    verdict = check(source.with_name("out.jsonl"), source, max_prompt_bytes=8)  # "cafÃ©  au lait" is too large
    assert verdict.unexpected and "line 1:" in verdict.unexpected[0]
