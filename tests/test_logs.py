"""Hermes' own log: what `hermes log` and `hermes debug` show, and how the file is written."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hermes_producer import logs

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def fresh_logger() -> Iterator[None]:
    """Each test configures the process-wide `hermes` logger from scratch and leaves it bare."""
    logger = logging.getLogger(logs.LOGGER_NAME)

    def strip() -> None:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()

    strip()
    yield
    strip()


def _deadline(seconds: float = 10.0) -> Any:
    """A `stop` callback: follow() gives up after `seconds`, so a missed line fails, not hangs."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def _take(records: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return [next(records) for _ in range(count)]


def _write_lines(path: Path, *lines: str | bytes, mode: str = "ab") -> None:
    with path.open(mode) as handle:
        for line in lines:
            handle.write((line if isinstance(line, bytes) else line.encode()) + b"\n")


def _record(seq: int, level: str = "INFO", pad: str = "") -> str:
    return json.dumps({"ts": "2026-11-27T08:00:00.000Z", "level": level, "event": "t", "message": pad, "seq": seq})


# -- writing -------------------------------------------------------------------------------


def test_an_event_is_one_json_line_that_reads_back(tmp_path: Path) -> None:
    log = logs.configure(tmp_path)

    logs.event(log, logging.INFO, "batch.finished", "3 prompts", ok=3, files=["a.jsonl"], extra={"k": None})

    (line,) = (tmp_path / "hermes.log").read_text(encoding="utf-8").splitlines()
    assert json.loads(line) == logs.read(tmp_path, 10)[0]
    record = json.loads(line)
    assert TS.match(record.pop("ts"))
    assert record == {
        "level": "INFO",
        "event": "batch.finished",
        "message": "3 prompts",
        "pid": os.getpid(),
        "ok": 3,
        "files": ["a.jsonl"],
        "extra": {"k": None},
    }


def test_values_json_cannot_hold_are_written_as_their_repr(tmp_path: Path) -> None:
    log = logs.configure(tmp_path)

    logs.event(log, logging.INFO, "e", "m", path=Path("/x"), nan=float("nan"), tags={1}, nested=[{"p": Path("y")}])

    (record,) = logs.read(tmp_path, 1)
    assert record["path"] == repr(Path("/x"))
    assert record["nan"] == "nan"
    assert record["tags"] == "{1}"
    assert record["nested"] == [{"p": repr(Path("y"))}]


def test_a_field_cannot_overwrite_the_fixed_keys(tmp_path: Path) -> None:
    log = logs.configure(tmp_path)

    logs.event(log, logging.INFO, "real.event", "real message", ts="fake", pid=-1)

    (record,) = logs.read(tmp_path, 1)
    assert (record["event"], record["pid"], record["ts_"], record["pid_"]) == ("real.event", os.getpid(), "fake", -1)
    assert TS.match(record["ts"])


def test_an_exception_goes_into_a_traceback_field(tmp_path: Path) -> None:
    log = logs.configure(tmp_path)

    try:
        1 / 0  # noqa: B018 - the point is the exception
    except ZeroDivisionError:
        logs.event(log, logging.ERROR, "batch.failed", "boom", exc_info=True)
        log.exception("also via logger.exception")

    with_event, with_exception = logs.read(tmp_path, 2)
    for record in (with_event, with_exception):
        assert record["traceback"].startswith("Traceback (most recent call last)")
        assert "ZeroDivisionError: division by zero" in record["traceback"]
    assert with_exception["event"] == "hermes"  # plain logging calls are named after the logger


def test_child_loggers_write_to_the_same_file_named_by_their_logger(tmp_path: Path) -> None:
    logs.configure(tmp_path)

    logging.getLogger("hermes.batch").warning("chunk %d slow", 7)

    (record,) = logs.read(tmp_path, 1)
    assert (record["event"], record["message"], record["level"]) == ("hermes.batch", "chunk 7 slow", "WARNING")


def hermes_handlers(log: logging.Logger) -> list[logging.Handler]:
    # Only Hermes' own: test runners may add capture handlers of their own to any logger.
    return [h for h in log.handlers if getattr(h, "hermes_config", None) is not None]


def test_configure_is_idempotent_and_a_new_directory_replaces_the_old(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    log = logs.configure(first)
    assert logs.configure(first) is log
    assert len(hermes_handlers(log)) == 1

    logs.event(log, logging.INFO, "e", "to one")
    logs.configure(second)
    logs.event(log, logging.INFO, "e", "to two")

    assert len(hermes_handlers(log)) == 1
    assert [r["message"] for r in logs.read(first, 10)] == ["to one"]
    assert [r["message"] for r in logs.read(second, 10)] == ["to two"]


def test_the_log_does_not_reach_the_root_logger(tmp_path: Path) -> None:
    seen: list[logging.LogRecord] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    spy = Spy()
    logging.getLogger().addHandler(spy)
    try:
        logs.event(logs.configure(tmp_path), logging.ERROR, "e", "only in hermes.log")
    finally:
        logging.getLogger().removeHandler(spy)

    assert seen == []
    assert len(logs.read(tmp_path, 10)) == 1


def test_the_configured_level_drops_lower_events(tmp_path: Path) -> None:
    log = logs.configure(tmp_path, level="info")

    logs.event(log, logging.DEBUG, "e", "dropped")
    logs.event(log, logging.INFO, "e", "kept")

    assert [r["message"] for r in logs.read(tmp_path, 10, min_level="DEBUG")] == ["kept"]


def test_an_unwritable_directory_gives_one_warning_and_no_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("a file where the log directory should be")
    log_dir = tmp_path / "file" / "log"

    log = logs.configure(log_dir)
    logs.event(log, logging.ERROR, "e", "goes nowhere")
    log.warning("nor does this")
    logs.configure(log_dir)

    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert str(log_dir) in err
    assert logs.read(log_dir, 10) == []


def test_a_log_directory_removed_later_gives_one_warning_and_no_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logs.configure(tmp_path / "log")
    shutil.rmtree(tmp_path / "log")

    for _ in range(3):
        logs.event(log, logging.INFO, "e", "lost")

    assert capsys.readouterr().err.count("warning") == 1


def test_a_file_rotated_by_another_process_is_reopened(tmp_path: Path) -> None:
    log = logs.configure(tmp_path)
    logs.event(log, logging.INFO, "e", "before")

    (tmp_path / "hermes.log").rename(tmp_path / "hermes.log.1")  # what another writer's rollover does
    logs.event(log, logging.INFO, "e", "after")

    assert [json.loads(line)["message"] for line in (tmp_path / "hermes.log").read_text().splitlines()] == ["after"]
    assert [r["message"] for r in logs.read(tmp_path, 10)] == ["before", "after"]


# -- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_level", "errors_only", "expected"),
    [
        ("DEBUG", False, ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),  # hermes debug
        ("INFO", False, ["INFO", "WARNING", "ERROR", "CRITICAL"]),  # hermes log
        ("DEBUG", True, ["ERROR", "CRITICAL"]),  # hermes debug --error
        ("warning", False, ["WARNING", "ERROR", "CRITICAL"]),
    ],
)
def test_read_filters_by_level(tmp_path: Path, min_level: str, errors_only: bool, expected: list[str]) -> None:
    log = logs.configure(tmp_path)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        logs.event(log, level, "e", "m")

    records = logs.read(tmp_path, 50, min_level=min_level, errors_only=errors_only)

    assert [r["level"] for r in records] == expected


def test_read_returns_the_last_n_oldest_first(tmp_path: Path) -> None:
    log = logs.configure(tmp_path)
    for seq in range(10):
        logs.event(log, logging.INFO, "e", "m", seq=seq)
        logs.event(log, logging.DEBUG, "e", "noise")

    assert [r["seq"] for r in logs.read(tmp_path, 3)] == [7, 8, 9]
    assert logs.read(tmp_path, 0) == []
    with pytest.raises(ValueError, match="unknown log level"):
        logs.read(tmp_path, 3, min_level="LOUD")


def test_read_spans_the_rotated_files_and_rotation_keeps_backup_count(tmp_path: Path) -> None:
    log = logs.configure(tmp_path, max_bytes=1000, backup_count=3)
    for seq in range(60):
        logs.event(log, logging.INFO, "e", "m", seq=seq)

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["hermes.log", "hermes.log.1", "hermes.log.2", "hermes.log.3"]
    everything = [r["seq"] for r in logs.read(tmp_path, 1000)]
    assert everything == list(range(everything[0], 60))  # contiguous, oldest dropped
    assert everything[0] > 0
    assert [r["seq"] for r in logs.read(tmp_path, len(everything) - 1)] == everything[1:]


def test_read_of_a_large_file_finds_the_last_lines_across_blocks(tmp_path: Path) -> None:
    # Lines of varied length, several 64 KiB blocks long, so lines straddle block edges.
    _write_lines(tmp_path / "hermes.log", *(_record(seq, pad="x" * (seq % 97)) for seq in range(5000)))

    assert [r["seq"] for r in logs.read(tmp_path, 1234)] == list(range(5000 - 1234, 5000))
    assert [r["seq"] for r in logs.read(tmp_path, 10_000)] == list(range(5000))


def test_read_skips_lines_that_are_not_json_objects(tmp_path: Path) -> None:
    _write_lines(
        tmp_path / "hermes.log",
        _record(1),
        "Traceback (most recent call last):",
        b"\xff\xfe not utf-8",
        "[1, 2, 3]",
        "",
        '{"ts": "2026-11-27T08:00:00.000Z", "level": "INFO", "event": "torn"',
        _record(2),
        json.dumps({"message": "no level"}),
    )
    _write_lines(tmp_path / "hermes.log.1", _record(0))
    (tmp_path / "hermes.log.old").write_text("not a rotated file of ours\n")

    assert [r["seq"] for r in logs.read(tmp_path, 10, min_level="DEBUG")] == [0, 1, 2]


def test_read_of_a_missing_log_is_empty(tmp_path: Path) -> None:
    assert logs.read(tmp_path / "never-written", 50) == []


def test_format_record_is_one_human_line_and_indents_a_traceback() -> None:
    record = {
        "ts": "2026-11-27T08:00:00.123Z",
        "level": "ERROR",
        "event": "batch.failed",
        "message": "boom",
        "pid": 7,
        "chunk": 3,
        "traceback": "Traceback (most recent call last):\nZeroDivisionError: division by zero\n",
    }

    assert logs.format_record(record).splitlines() == [
        "2026-11-27T08:00:00.123Z ERROR batch.failed  boom  chunk=3",
        "    Traceback (most recent call last):",
        "    ZeroDivisionError: division by zero",
    ]
    assert logs.format_record({}) == "? ?     ?"


# -- following -----------------------------------------------------------------------------


def test_follow_yields_only_records_written_after_it_was_called(tmp_path: Path) -> None:
    log = logs.configure(tmp_path)
    logs.event(log, logging.INFO, "e", "old")
    records = logs.follow(tmp_path, poll_s=0.01, stop=_deadline())

    logs.event(log, logging.DEBUG, "e", "below the level")
    logs.event(log, logging.INFO, "e", "new", seq=1)
    logs.event(log, logging.ERROR, "e", "newer", seq=2)

    assert [r["seq"] for r in _take(records, 2)] == [1, 2]


def test_follow_survives_rotation(tmp_path: Path) -> None:
    log = logs.configure(tmp_path, max_bytes=600, backup_count=2)
    records = logs.follow(tmp_path, poll_s=0.01, stop=_deadline())
    seen: list[int] = []

    # Three lines at a time: at most one rollover between polls, like a writer slower than us.
    for start in range(0, 30, 3):
        for seq in range(start, start + 3):
            logs.event(log, logging.INFO, "e", "m", seq=seq)
        seen += [r["seq"] for r in _take(records, 3)]

    assert seen == list(range(30))
    assert (tmp_path / "hermes.log.2").exists()


def test_follow_survives_truncation_and_waits_for_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "hermes.log"
    records = logs.follow(tmp_path, min_level="DEBUG", poll_s=0.01, stop=_deadline())

    _write_lines(path, _record(1, pad="long" * 20), _record(2, pad="long" * 20))
    assert [r["seq"] for r in _take(records, 2)] == [1, 2]

    _write_lines(path, _record(3), mode="wb")  # truncated in place, then written again
    assert [r["seq"] for r in _take(records, 1)] == [3]


def test_follow_waits_for_a_line_to_be_complete(tmp_path: Path) -> None:
    path = tmp_path / "hermes.log"
    path.write_text("")
    line = _record(1).encode()
    out_of_time = _deadline()
    polls = 0

    with path.open("ab", buffering=0) as handle:

        def stop() -> bool:
            # follow() asks between polls: from its second question on, it has read the first part
            # and found nothing more. Only then does the rest of the line arrive.
            nonlocal polls
            polls += 1
            if polls == 2:
                handle.write(line[10:] + b"\n")
            return bool(out_of_time())

        records = logs.follow(tmp_path, poll_s=0.01, stop=stop)
        handle.write(line[:10])
        assert [r["seq"] for r in _take(records, 1)] == [1]
    assert polls >= 2  # the line was yielded only once it was complete


def test_follow_ends_when_stop_says_so(tmp_path: Path) -> None:
    calls = iter([False, False, True])

    records = list(logs.follow(tmp_path, poll_s=0.001, stop=lambda: next(calls)))

    assert records == []
