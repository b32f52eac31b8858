"""Fuzz the real pipeline (issue 11, class 2): whatever the lines hold, one valid record per line.

Hypothesis writes input files of arbitrary byte lines (invalid UTF-8, NUL, CR, BOMs) and of
JSON objects whose every field (``id``, ``prompt``, extra keys, duplicate keys) holds arbitrary
JSON or hostile literals (integers of thousands of digits, 1e999, NaN, nesting thousands deep,
lone surrogates as ``\\ud800`` escapes), and runs them through the pipeline three ways: the batch
pipeline in this process (many examples), the ``hermes batch`` command in-process, and the
same command through one real Celery worker. Each run must end, exit 0 or 1 without a
traceback, and write exactly one record per input line, in order, each a JSON object on one
line of strict UTF-8, with its line number.

The cost is fixed: ``max_examples`` per test, about a minute for the file. To fuzz longer, set
``HERMES_FUZZ_SECONDS``: each test then runs its examples again and again until that many
seconds have passed (e.g. ``HERMES_FUZZ_SECONDS=600 pytest tests/test_fuzz_pipeline.py``).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hermes_producer.batch import BatchOptions, run_batch
from hermes_producer.executors import InProcessExecutor
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import resolve_profile

from .support.fixture_types import HermesRunner, WorkerFactory
from .support.properties import THOROUGH, examples

# No example database (the suite leaves no .hypothesis directory); no deadline (a CLI call or a
# worker round trip takes a second, and ftfy's first call on new text is slow).
BASE = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
FUZZ_SECONDS = float(os.environ.get("HERMES_FUZZ_SECONDS", "0"))
# The suite's per-test timeout (300 s), plus whatever longer fuzzing was asked for.
pytestmark = pytest.mark.timeout(300 + FUZZ_SECONDS)

# --- strategies -------------------------------------------------------------------------------

# Every code point, lone surrogates included (json.dumps writes them as \udXXX escapes).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)

# Literals json.dumps cannot write, or that stress a parser.
HOSTILE_LITERALS = [
    "9" * 20, "9" * 21, "-" + "9" * 20, "9" * 4300, "9" * 4301, "9" * 5000, "-" + "9" * 20_000,
    "1e999", "-1e999", "1" + "0" * 400 + ".5", "NaN", "Infinity", "-0",
    "[" * 500 + "]" * 500, "[" * 5000 + "]" * 5000, "[" * 50_000, '{"a":' * 3000 + "1" + "}" * 3000,
    '"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\udc00\\ud800"', '"\\u0000"', '"\\u2028\\u0085"',
    '"' + "x" * 5000 + '"', '"' + "\\u00e9" * 3000 + '"', '""', "[]", "{}", "tru", '"unterminated',
]  # fmt: skip


@st.composite
def rendered_values(draw: st.DrawFn) -> bytes:
    """One JSON value as it may appear in a line: any JSON, written plainly or escaped, or a hostile literal."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(HOSTILE_LITERALS)).encode()
    text = json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    # Unescaped lone surrogates become bytes that are not UTF-8, as a broken writer would make.
    return text.encode("utf-8", "surrogatepass")


KEYS = [b'"id"', b'"prompt"', b'"pr\\u006fmpt"', b'"extra"', b'""', b'"Prompt"', b'"\\ud800"']


@st.composite
def object_lines(draw: st.DrawFn) -> bytes:
    """A JSON object, usually with a string prompt, with arbitrary (and repeated) fields."""
    pairs: list[tuple[bytes, bytes]] = []
    if draw(st.booleans()):
        pairs.append((b'"prompt"', json.dumps(draw(any_text)).encode()))
    for _ in range(draw(st.integers(0, 4))):
        pairs.append((draw(st.sampled_from(KEYS)), draw(rendered_values())))
    pairs = draw(st.permutations(pairs))
    return b"{" + b",".join(key + b":" + value for key, value in pairs) + b"}"


raw_lines = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))
special_lines = st.sampled_from(
    [b"", b"\r", b"\x00", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r", b" \t ", b"\xff\xfe", b"null", b"\r\r"]
)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind < 6:
        line = draw(object_lines())
    elif kind < 7:
        line = draw(rendered_values())
    elif kind < 8:
        line = draw(raw_lines)
    else:
        line = draw(special_lines)
    if draw(st.integers(0, 9)) == 0:
        line = b"\xef\xbb\xbf" + line
    if draw(st.integers(0, 5)) == 0:
        line += b"\r"
    return line


@st.composite
def input_files(draw: st.DrawFn, max_lines: int) -> bytes:
    body = b"\n".join(draw(st.lists(lines(), max_size=max_lines)))
    return body + b"\n" if draw(st.booleans()) else body


@st.composite
def big_input_files(draw: st.DrawFn) -> bytes:
    """Hundreds of lines drawn from a pool of generated ones: one CLI call tries many lines,
    while hypothesis draws few (a large draw is slow, and overruns its buffer)."""
    pool = draw(st.lists(lines(), min_size=10, max_size=40))
    rnd = draw(st.randoms(use_true_random=False))
    body = b"\n".join(rnd.choice(pool) for _ in range(rnd.randint(100, 300)))
    return body + b"\n" if draw(st.booleans()) else body


# --- the property -----------------------------------------------------------------------------


def line_count(data: bytes) -> int:
    """Input lines as Hermes counts them: ended by LF, the last one possibly not."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# The codes a line's own problem may have: never engine_failure or sandbox_failure, which
# blame the machinery (on 2c90978 a 5,000-digit id gave its whole chunk engine_failure).
CODES = {
    "invalid_utf8", "malformed_json", "not_an_object", "missing_prompt", "prompt_not_string", "bad_id",
    "duplicate_id", "empty_prompt", "too_large", "nul_byte", "lone_surrogate", "validation_failed",
}  # fmt: skip


def assert_one_record_per_line(data: bytes, output: bytes) -> list[dict[str, Any]]:
    """The promise: one JSON object per input line, in order, on one line of strict UTF-8, and a
    line that fails, fails for a reason of its own (never ``engine_failure`` for its chunk)."""
    text = output.decode("utf-8")  # strict
    records = [json.loads(line) for line in text.split("\n")[:-1]] if text else []
    assert text == "" or text.endswith("\n")
    assert len(records) == line_count(data), (len(records), line_count(data))
    for number, record in enumerate(records, start=1):
        assert isinstance(record, dict) and record["line"] == number, record
        assert ("text" in record) != ("error" in record), record
        if "error" in record:
            assert record["error"]["line"] == number and record["error"]["code"] in CODES, record
    return records


def for_the_budget(run: Callable[[], None]) -> None:
    """Run ``run`` once, then again until ``HERMES_FUZZ_SECONDS`` have passed (default 0)."""
    deadline = time.monotonic() + FUZZ_SECONDS
    run()
    while time.monotonic() < deadline:
        run()


def test_the_batch_pipeline_writes_one_valid_record_per_line_whatever_the_lines() -> None:
    """``run_batch`` with the in-process executor: the whole pipeline, without a subprocess."""

    @settings(BASE, max_examples=examples(150))
    @given(
        data=input_files(max_lines=30),
        fmt=st.sampled_from(["jsonl", "jsonl", "text"]),
        chunk_size=st.integers(1, 8),
        max_bytes=st.sampled_from([64, 4096, 1 << 20]),
    )
    def run(data: bytes, fmt: str, chunk_size: int, max_bytes: int) -> None:
        options = BatchOptions(resolve_profile("prompt"), fmt, ChunkOptions(max_prompt_bytes=max_bytes), chunk_size)  # type: ignore[arg-type]
        sink = io.StringIO()
        with InProcessExecutor(1) as executor:
            summary = run_batch(io.BytesIO(data), sink, options, executor)
        records = assert_one_record_per_line(data, sink.getvalue().encode("utf-8"))
        assert summary.total == len(records) and summary.failed == sum("error" in r for r in records)

    for_the_budget(run)


def run_cli(hermes: HermesRunner, tmp_path: Path, data: bytes, *options: str, **kwargs: Any) -> None:
    """``hermes batch`` on ``data``: it ends, exits 0 or 1 without a traceback, one record a line."""
    name = f"fuzz-{next(_files)}"
    src, out = tmp_path / f"{name}.in", tmp_path / f"{name}.out"
    src.write_bytes(data)
    done = hermes("batch", str(src), "-o", str(out), *options, timeout=90, **kwargs)
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    records = assert_one_record_per_line(data, out.read_bytes())
    assert done.returncode == (1 if any("error" in r for r in records) else 0)


_files = itertools.count()


@pytest.mark.slow
def test_hermes_batch_in_process_writes_one_valid_record_per_line(hermes: HermesRunner, tmp_path: Path) -> None:
    """The real command, in-process on two processes, a few files of many generated lines each
    (each run starts a pool: a forkserver interpreter and its processes)."""

    @settings(BASE, max_examples=8 if THOROUGH else 3)
    @given(data=big_input_files(), fmt=st.sampled_from(["jsonl", "jsonl", "text", "auto"]))
    def run(data: bytes, fmt: str) -> None:
        run_cli(hermes, tmp_path, data, "--format", fmt, "--chunk-size", "7", "--processes", "2")

    for_the_budget(run)


@pytest.mark.cluster
@pytest.mark.slow
def test_hermes_batch_through_a_real_worker_writes_one_valid_record_per_line(
    start_worker: WorkerFactory, chermes: HermesRunner, tmp_path: Path
) -> None:
    """The real command through one real local Celery worker: the parser runs there, the records
    cross Redis, the producer reorders and guards them."""
    start_worker("fuzz")

    @settings(BASE, max_examples=8)
    @given(data=big_input_files(), fmt=st.sampled_from(["jsonl", "jsonl", "text"]))
    def run(data: bytes, fmt: str) -> None:
        run_cli(chermes, tmp_path, data, "--format", fmt, "--chunk-size", "7", "--isolation", "local", "--no-fallback")

    for_the_budget(run)
