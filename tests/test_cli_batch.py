"""`hermes batch` through a real subprocess: one record per input line, in order, whatever comes in."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from .support.environment import EXAMPLES
from .support.fixture_types import HermesRunner
from .support.inputs import read_records


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_example_file_is_cleaned_in_input_order(hermes: HermesRunner, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = hermes("batch", str(EXAMPLES / "prompts.jsonl"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    inputs = read_records(EXAMPLES / "prompts.jsonl")
    records = read_records(out)
    assert [r["id"] for r in records] == [i["id"] for i in inputs]
    assert [r["line"] for r in records] == list(range(1, len(inputs) + 1))
    by_id = {r["id"]: r for r in records}
    assert by_id["mojibake-fr"]["text"] == "Quelle est la différence entre un crédit et un débit ?"
    assert by_id["emoji-zwj"]["text"] == inputs[17]["prompt"]  # ZWJ sequences survive untouched
    assert by_id["greeting"]["changed"] is False
    provenance = by_id["greeting"]["provenance"]
    assert provenance["mode"] == "local" and provenance["profile"] == "prompt"
    assert {"engine", "python", "unicode", "ftfy", "profile_digest", "worker"} <= provenance.keys()
    assert "in-process" in done.stderr and f"{len(inputs)} prompts" in done.stderr
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_plain_text_input_uses_line_numbers_as_ids(hermes: HermesRunner, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"caf\xc3\x83\xc2\xa9\r\n  two  \n")
    done = hermes("batch", str(src), "-o", "-")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["id"], r["text"]) for r in records] == [(1, "café"), (2, "  two")]


def test_stdin_to_stdout_sniffs_jsonl(hermes: HermesRunner) -> None:
    done = hermes("batch", "-", "-o", "-", "--profile", "compact", input='{"prompt": " a\\n\\n b "}\n')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == "a b"


@pytest.mark.parametrize(
    ("line", "code", "message_part"),
    [
        (b'{"prompt": "caf\xff"}', "invalid_utf8", "byte 0xff at offset 15"),
        (b'{"prompt": "lone \\ud800 surrogate"}', "lone_surrogate", "U+D800 at offset 5"),
        (b'{"prompt": "nul \\u0000 inside"}', "nul_byte", "NUL character at offset 4"),
        (b'{"prompt": ""}', "empty_prompt", "prompt is empty"),
        (b'{"prompt": "unterminated}', "malformed_json", "invalid JSON"),
        (b"", "malformed_json", "line is blank"),
        (b'["prompt", "in an array"]', "not_an_object", "got a JSON array"),
        (b'{"text": "no prompt key"}', "missing_prompt", "no 'prompt' field"),
        (b'{"prompt": 42}', "prompt_not_string", "got a JSON number"),
        (b'{"prompt": null}', "prompt_not_string", "got a JSON null"),
        (b'{"id": [1], "prompt": "x"}', "bad_id", "got a JSON array"),
        (b'{"prompt": "' + b"x" * 2000 + b'"}', "too_large", "2,000 bytes; the limit is 1,000"),
        (b'{"prompt": "' + b"y" * 100_000 + b'"}', "too_large", "line is"),
        (b"[" * 100_000 + b"]" * 100_000, "too_large", "line is"),
        (b"[" * 5000 + b"]" * 5000, "malformed_json", "nested too deeply"),
    ],
    ids=[
        "invalid-utf8",
        "lone-surrogate",
        "nul",
        "empty",
        "broken-json",
        "blank-line",
        "array",
        "no-prompt",
        "number-prompt",
        "null-prompt",
        "bad-id",
        "too-large",
        "huge-line",
        "huge-nesting",
        "deep-nesting",
    ],
)
def test_a_bad_line_gets_one_error_record_and_its_neighbours_are_fine(
    hermes: HermesRunner, tmp_path: Path, line: bytes, code: str, message_part: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"prompt": "before"}\n' + line + b'\n{"prompt": "after"}\n')
    out = tmp_path / "out.jsonl"
    done = hermes("batch", str(src), "-o", str(out), "--max-prompt-bytes", "1000")
    assert done.returncode == 1, done.stderr
    records = read_records(out)
    assert [r["line"] for r in records] == [1, 2, 3]
    assert records[0]["text"] == "before" and records[2]["text"] == "after"
    error = records[1]["error"]
    assert error["code"] == code and error["line"] == 2
    assert message_part in error["message"]
    assert f"line 2: {code}" in done.stderr


def test_nul_byte_in_plain_text_is_an_item_error(hermes: HermesRunner, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"ok\nbin\x00ary\n")
    out = tmp_path / "out.jsonl"
    assert hermes("batch", str(src), "-o", str(out)).returncode == 1
    assert [r.get("error", {}).get("code") for r in read_records(out)] == [None, "nul_byte"]


def test_duplicate_ids_name_the_first_line(hermes: HermesRunner, tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "prompt": "x"},
            {"id": "b", "prompt": "y"},
            {"id": "a", "prompt": "z"},
            {"prompt": "line four"},
            {"id": 4, "prompt": "collides with line four's default id"},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert hermes("batch", str(src), "-o", str(out)).returncode == 1
    records = read_records(out)
    assert records[2]["error"]["code"] == "duplicate_id"
    assert "already used on line 1" in records[2]["error"]["message"]
    assert records[4]["error"]["code"] == "duplicate_id"
    assert [("error" in r) for r in records] == [False, False, True, False, True]


def test_ten_thousand_lines_with_twenty_bad_ones(hermes: HermesRunner, tmp_path: Path) -> None:
    examples = [row["prompt"] for row in read_records(EXAMPLES / "prompts.jsonl")]
    rng = random.Random(7)
    bad_lines = set(rng.sample(range(1, 10_001), 20))
    bad_kinds = [b'{"prompt": 1}', b"{oops", b'{"prompt": "\xc3\x28"}', b'{"prompt": ""}', b'{"nope": 1}']
    rows = []
    for n in range(1, 10_001):
        if n in bad_lines:
            rows.append(bad_kinds[n % len(bad_kinds)])
        else:
            rows.append(json.dumps({"id": f"p{n}", "prompt": examples[n % len(examples)]}).encode())
    src = tmp_path / "big.jsonl"
    src.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "out.jsonl"
    done = hermes("batch", str(src), "-o", str(out), "--processes", "2", "--chunk-size", "128")
    assert done.returncode == 1, done.stderr
    records = read_records(out)
    assert len(records) == 10_000
    assert [r["line"] for r in records] == list(range(1, 10_001))
    assert {r["line"] for r in records if "error" in r} == bad_lines
    assert "10,000 prompts" in done.stderr and "9,980 ok, 20 failed" in done.stderr


def test_custom_profile_file(hermes: HermesRunner, tmp_path: Path) -> None:
    done = hermes(
        "batch",
        str(EXAMPLES / "prompts.jsonl"),
        "-o",
        "-",
        "--profile-file",
        str(EXAMPLES / "profiles.toml"),
        "--profile",
        "code",
    )
    assert done.returncode == 0, done.stderr
    blank = next(json.loads(line) for line in done.stdout.splitlines() if '"blank-lines"' in line)
    assert blank["text"] == "\n\n\nFirst paragraph.   \n\n\n\n\nSecond paragraph.\t\n\n"  # spaces kept
    assert blank["provenance"]["profile"] == "code"


def test_usage_errors_exit_2_with_a_clear_message(hermes: HermesRunner, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    unknown = hermes("batch", str(src), "-o", "-", "--profile", "nope")
    assert unknown.returncode == 2 and "unknown profile 'nope'" in unknown.stderr and "prompt" in unknown.stderr
    missing = hermes("batch", str(tmp_path / "missing.jsonl"), "-o", "-")
    assert missing.returncode == 2 and "cannot read input" in missing.stderr and "missing.jsonl" in missing.stderr
    same = hermes("batch", str(src), "-o", str(src))
    assert same.returncode == 2 and "is the input file" in same.stderr
    bad_toml = tmp_path / "p.toml"
    bad_toml.write_text('[profiles.x]\nsteps = ["ftfy", "nfcc"]\n')
    typo = hermes("batch", str(src), "-o", "-", "--profile-file", str(bad_toml), "--profile", "x")
    assert typo.returncode == 2 and "unknown step 'nfcc'" in typo.stderr and "did you mean 'nfc'" in typo.stderr


def test_unwritable_output_is_a_usage_error(hermes: HermesRunner, tmp_path: Path) -> None:
    # Paths no one can create, root included: under a regular file, and inside /proc.
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    for target in (str(src / "out.jsonl"), "/proc/hermes-out.jsonl"):
        done = hermes("batch", str(src), "-o", target)
        assert done.returncode == 2, target
        assert "cannot write output" in done.stderr and target in done.stderr


def test_output_in_a_missing_directory_is_a_usage_error(hermes: HermesRunner, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    done = hermes("batch", str(src), "-o", str(tmp_path / "no" / "such" / "dir" / "out.jsonl"))
    assert done.returncode == 2 and "cannot write output" in done.stderr


def test_unreadable_input_is_a_usage_error(hermes: HermesRunner, tmp_path: Path) -> None:
    done = hermes("batch", str(tmp_path), "-o", "-")  # a directory
    assert done.returncode == 2 and "cannot read input" in done.stderr


def test_junit_report_has_a_case_per_chunk_and_names_failed_items(hermes: HermesRunner, tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    rows = [{"id": f"p{n}", "prompt": f"prompt {n}"} for n in range(1, 11)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    src.write_text(src.read_text().replace('"prompt 7"', "7"), encoding="utf-8")
    report = tmp_path / "report.xml"
    done = hermes("batch", str(src), "-o", str(tmp_path / "out.jsonl"), "--chunk-size", "4", "--junit", str(report))
    assert done.returncode == 1
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "3" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["chunk 0 (lines 1-4)", "chunk 1 (lines 5-8)", "chunk 2 (lines 9-10)"]
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("type") == "prompt_not_string"
    assert "line 7 (id 'p7'): prompt_not_string" in (failure.text or "")


def test_stdin_to_a_file(hermes: HermesRunner, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = hermes("batch", "-", "-o", str(out), input='{"prompt": "a  "}\n{"prompt": 5}\n')
    assert done.returncode == 1, done.stderr
    assert [r.get("text") for r in read_records(out)] == ["a", None]
