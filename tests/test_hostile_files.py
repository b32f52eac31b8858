"""Output files against an adversary (issue 11, class 3): what Hermes writes, and where.

The promise: every file Hermes writes at a path the user names (``-o``, ``--summary-json``,
``--junit``, ``history --export``) is checked before any work starts; a directory, a device, a
FIFO or a symbolic link at that path is refused with exit 2 and left as it was; the partial
output and its journal are Hermes' own files, never opened through a link someone planted;
one batch writes an output at a time; and ``--resume`` trusts only regular files of the user's.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support.fixture_types import HermesRunner
from .support.inputs import read_records
from .support.processes import Producer, start_hermes
from .support.waiting import wait_until

ROWS = 30_000  # enough for a batch of 10-line chunks in one process to run for a few seconds


def write_input(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for n in range(count):
            handle.write(json.dumps({"id": f"p{n}", "prompt": f"prompt  number {n}  "}) + "\n")
    return path


def journal_lines(output: Path) -> int:
    try:
        return output.with_name(output.name + ".partial.journal").read_text().count("\n")
    except FileNotFoundError:
        return 0


def leftovers(output: Path) -> list[str]:
    """Files Hermes keeps next to an output while it works: none may survive a refusal."""
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(output.name + "."))


@pytest.fixture
def slow_batch(hermes_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Producer]]:
    """Start `hermes batch` in the background, slowed down by tiny chunks in one process."""
    started: list[Producer] = []

    def start(source: Path, output: Path, *extra: str) -> Producer:
        args = ["batch", str(source), "-o", str(output), "--chunk-size", "10", "--processes", "1", *extra]
        started.append(start_hermes(args, hermes_env, tmp_path, tmp_path / f"batch-{len(started)}.err", forked=True))
        return started[-1]

    yield start
    for batch in started:
        if batch.process.poll() is None:
            batch.kill()


def interrupted_batch(slow_batch: Callable[..., Producer], source: Path, output: Path) -> None:
    """Leave ``output`` as a killed batch leaves it: a partial, a journal with chunks in it."""
    batch = slow_batch(source, output)
    wait_until(lambda: journal_lines(output) > 3 or batch.process.poll() is not None, 60, 0.02,
               "the batch to write chunks")  # fmt: skip
    batch.kill()
    assert batch.process.returncode == -signal.SIGKILL, "the batch ended before it could be interrupted"


# -- the output path itself ----------------------------------------------------------------


def _directory(path: Path) -> str:
    path.mkdir()
    return "is a directory"


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "is a FIFO"


def _device(path: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root (CAP_MKNOD)")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a second /dev/null, private to the test
    return "is a device"


def _link_to_a_file(path: Path) -> str:
    (path.parent / "data").mkdir()
    (path.parent / "data" / "real.jsonl").write_text("precious\n")
    path.symlink_to("data/real.jsonl")
    return "is a symbolic link (to 'data/real.jsonl')"


def _dangling_link(path: Path) -> str:
    path.symlink_to(path.parent / "nowhere.jsonl")
    return "is a symbolic link"


def _describe(path: Path) -> tuple[int, str | None, bytes | None]:
    info = path.lstat()
    target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
    content = path.read_bytes() if stat.S_ISLNK(info.st_mode) and path.exists() else None
    return info.st_mode, target, content


@pytest.mark.parametrize(
    "plant", [_directory, _fifo, _device, _link_to_a_file, _dangling_link], ids=lambda f: f.__name__.strip("_")
)
def test_an_output_that_is_not_a_regular_file_is_refused_before_any_work(
    plant: Callable[[Path], str], hermes: HermesRunner, tmp_path: Path
) -> None:
    """-o at a directory, FIFO, device or symbolic link: exit 2 naming it; nothing run, nothing touched."""
    # Given an input, and something that is not a regular file where the output should go
    source = write_input(tmp_path / "in.jsonl", 5)
    output = tmp_path / "out.jsonl"
    problem = plant(output)
    before = _describe(output)

    # When a batch is asked to write there
    done = hermes("batch", str(source), "-o", str(output), timeout=30)

    # Then it is refused before any prompt is processed, and the thing is exactly as it was
    assert done.returncode == 2, done.stderr
    assert f"cannot write output '{output}': it {problem}" in done.stderr
    assert "Traceback" not in done.stderr and "prompts in" not in done.stderr and "processing" not in done.stderr
    assert _describe(output) == before
    assert leftovers(output) == []


def test_a_symlinked_output_is_refused_with_the_real_path_to_use(hermes: HermesRunner, tmp_path: Path) -> None:
    """-o link -> data/real.jsonl: refused, the message says to name the file itself; the link stays a link."""
    source = write_input(tmp_path / "in.jsonl", 5)
    output = tmp_path / "out.jsonl"
    _link_to_a_file(output)

    done = hermes("batch", str(source), "-o", str(output))

    assert done.returncode == 2 and "name the file itself" in done.stderr
    assert output.is_symlink() and (tmp_path / "data" / "real.jsonl").read_text() == "precious\n"
    # Naming the real file works.
    real = hermes("batch", str(source), "-o", str(tmp_path / "data" / "real.jsonl"))
    assert real.returncode == 0, real.stderr
    assert len(read_records(tmp_path / "data" / "real.jsonl")) == 5 and output.is_symlink()


@pytest.mark.parametrize("suffix", [".partial", ".partial.journal", ".lock"])
def test_a_planted_link_next_to_the_output_is_never_written_through(
    suffix: str, hermes: HermesRunner, tmp_path: Path
) -> None:
    """OUT.partial, OUT.partial.journal or OUT.lock planted as a link to a victim: the victim is untouched."""
    # Given a victim file and a link to it under a name Hermes uses next to the output
    source = write_input(tmp_path / "in.jsonl", 5)
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch\n")
    output = tmp_path / "out.jsonl"
    output.with_name(output.name + suffix).symlink_to(victim)

    # When a batch writes the output
    done = hermes("batch", str(source), "-o", str(output))

    # Then the victim is untouched; the partial and journal were replaced by Hermes' own files
    assert victim.read_text() == "do not touch\n"
    assert "Traceback" not in done.stderr
    if suffix == ".lock":  # the lock is opened, not recreated: a link there is refused
        assert done.returncode == 2 and "symbolic link" in done.stderr and not output.exists()
        return
    assert done.returncode == 0, done.stderr
    assert not output.is_symlink() and [r["id"] for r in read_records(output)] == [f"p{n}" for n in range(5)]
    assert leftovers(output) == []


def test_a_directory_where_the_partial_goes_is_refused_before_any_work(hermes: HermesRunner, tmp_path: Path) -> None:
    """OUT.partial is a directory: exit 2 naming it, before anything runs; the directory stays."""
    source = write_input(tmp_path / "in.jsonl", 5)
    output = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").mkdir()

    done = hermes("batch", str(source), "-o", str(output))

    assert done.returncode == 2 and "out.jsonl.partial' is a directory" in done.stderr
    assert "Traceback" not in done.stderr and "processing" not in done.stderr
    assert (tmp_path / "out.jsonl.partial").is_dir() and not output.exists()


def test_partial_and_journal_are_new_files_of_hermes_own(
    slow_batch: Callable[..., Producer], tmp_path: Path
) -> None:
    """The partial gets the usual 0o666 minus umask (it becomes the output); the journal and lock are 0o600."""
    source = write_input(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "out.jsonl"
    old = os.umask(0o022)
    try:
        batch = slow_batch(source, output)
    finally:
        os.umask(old)
    wait_until(lambda: journal_lines(output) > 1, 60, 0.02, "the batch to write chunks")
    modes = {suffix: stat.S_IMODE(output.with_name(output.name + suffix).stat().st_mode)
             for suffix in (".partial", ".partial.journal", ".lock")}  # fmt: skip
    batch.kill()
    assert modes == {".partial": 0o644, ".partial.journal": 0o600, ".lock": 0o600}


# -- one writer at a time ------------------------------------------------------------------


def test_a_second_batch_writing_the_same_output_is_refused_naming_the_first(
    slow_batch: Callable[..., Producer], hermes: HermesRunner, tmp_path: Path
) -> None:
    """Two batches, one -o: the second exits 2 naming the first's pid; the first finishes whole."""
    # Given a batch writing out.jsonl, held open by an input (a FIFO) that has not ended yet
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    other = write_input(tmp_path / "other.jsonl", 7)
    output = tmp_path / "out.jsonl"
    first = slow_batch(fifo, output)
    with fifo.open("w") as feed:
        feed.write("".join(json.dumps({"id": f"p{n}", "prompt": f"prompt {n}"}) + "\n" for n in range(100)))
        feed.flush()
        wait_until(lambda: journal_lines(output) > 1, 60, 0.02, "the first batch to write chunks")

        # When a second batch targets the same output (spelled differently)
        second = hermes("batch", str(other), "-o", "./out.jsonl")

        # Then it is refused at once, naming the first writer, and changes nothing
        assert second.returncode == 2, second.stderr
        assert f"another hermes batch (pid {first.process.pid} on" in second.stderr and "Traceback" not in second.stderr
        feed.write("".join(json.dumps({"id": f"p{n}", "prompt": f"prompt {n}"}) + "\n" for n in range(100, 150)))

    # And the first batch finishes with every one of its own records
    assert first.wait(timeout=120) == 0, first.stderr
    assert [r["id"] for r in read_records(output)] == [f"p{n}" for n in range(150)]
    assert leftovers(output) == []


# -- resuming ------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["symbolic", "hard"])
@pytest.mark.parametrize("suffix", [".partial", ".partial.journal"])
def test_resume_never_follows_a_link_planted_in_place_of_its_files(
    suffix: str, link: str, slow_batch: Callable[..., Producer], hermes: HermesRunner, tmp_path: Path
) -> None:
    """After a crash, OUT.partial (or its journal) replaced by a link: --resume refuses, the victim is untouched."""
    # Given an interrupted batch whose partial (or journal) was swapped for a link to a victim
    source = write_input(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "out.jsonl"
    interrupted_batch(slow_batch, source, output)
    planted = output.with_name(output.name + suffix)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(planted.read_bytes() + b"the victim's own last line\n")
    before = victim.read_bytes()
    planted.unlink()
    if link == "symbolic":
        planted.symlink_to(victim)
    else:
        planted.hardlink_to(victim)

    # When it is resumed
    done = hermes("batch", str(source), "-o", str(output), "--chunk-size", "10", "--processes", "1", "--resume")

    # Then it is refused naming the link, and the victim was neither read into the output nor written
    assert done.returncode == 2, done.stderr
    assert f"{link} link" in done.stderr and str(planted.name) in done.stderr and "Traceback" not in done.stderr
    assert victim.read_bytes() == before and not output.exists()


def test_resume_refuses_files_that_belong_to_someone_else(
    slow_batch: Callable[..., Producer], hermes: HermesRunner, tmp_path: Path
) -> None:
    """A partial owned by another user (planted in a shared directory) is not resumed into."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    source = write_input(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "out.jsonl"
    interrupted_batch(slow_batch, source, output)
    os.chown(output.with_name("out.jsonl.partial"), 4242, 4242)

    done = hermes("batch", str(source), "-o", str(output), "--chunk-size", "10", "--processes", "1", "--resume")

    assert done.returncode == 2 and "belongs to user id 4242" in done.stderr, done.stderr


def test_resume_refuses_a_journal_that_claims_more_than_the_output_holds(
    slow_batch: Callable[..., Producer], hermes: HermesRunner, tmp_path: Path
) -> None:
    """A damaged journal is refused naming its line; the partial is neither grown nor cut."""
    # Given an interrupted batch whose journal was edited to claim a gigabyte of output
    source = write_input(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "out.jsonl"
    interrupted_batch(slow_batch, source, output)
    journal = output.with_name("out.jsonl.partial.journal")
    partial = output.with_name("out.jsonl.partial")
    lines = journal.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["o"] = 10**9
    journal.write_text("\n".join([lines[0], json.dumps(entry), *lines[2:]]) + "\n")
    size = partial.stat().st_size

    # When it is resumed
    done = hermes("batch", str(source), "-o", str(output), "--chunk-size", "10", "--processes", "1", "--resume")

    # Then it is refused naming the line, and the partial output is as it was
    assert done.returncode == 2, done.stderr
    assert "line 2: claims 1,000,000,000 bytes of output" in done.stderr and "Traceback" not in done.stderr
    assert partial.stat().st_size == size


def _repeat_last(lines: list[str]) -> list[str]:
    return [*lines, lines[-1]]


def _next_chunk_claimed(lines: list[str]) -> list[str]:
    entry = json.loads(lines[-1])
    return [*lines, json.dumps(entry | {"c": entry["c"] + 1})]


def _more_records_counted(lines: list[str]) -> list[str]:
    entry = json.loads(lines[-1])
    return [*lines[:-1], json.dumps(entry | {"ok": entry["ok"] + 5})]


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (_repeat_last, "names chunk"),  # same offset again: a chunk "written" in no bytes
        (_next_chunk_claimed, "the partial output holds 0 lines there"),
        (_more_records_counted, "the partial output holds 10 lines there"),
    ],
)
def test_resume_refuses_a_journal_that_claims_chunks_the_output_does_not_hold(
    tamper: Callable[[list[str]], list[str]],
    says: str,
    slow_batch: Callable[..., Producer],
    hermes: HermesRunner,
    tmp_path: Path,
) -> None:
    """A journal line repeated or edited (offsets still within the output) made --resume skip that
    many chunks of input: records lost for good, the summary counting them anyway, exit 0."""
    # Given an interrupted batch whose journal claims a chunk that is not in the output
    source = write_input(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "out.jsonl"
    interrupted_batch(slow_batch, source, output)
    journal = output.with_name("out.jsonl.partial.journal")
    honest = journal.read_text()
    journal.write_text("\n".join(tamper(honest.splitlines())) + "\n")
    args = ("batch", str(source), "-o", str(output), "--chunk-size", "10", "--processes", "1", "--resume")

    # When it is resumed
    done = hermes(*args)

    # Then it is refused naming the line and what is wrong, before any work
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not output.exists()

    # And the honest journal still resumes to every record, once
    journal.write_text(honest)
    finished = hermes(*args)
    assert finished.returncode == 0, finished.stderr
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    assert ids == [f"p{n}" for n in range(ROWS)]


def test_a_directory_put_at_the_output_meanwhile_keeps_the_records_for_resume(
    slow_batch: Callable[..., Producer], hermes: HermesRunner, tmp_path: Path
) -> None:
    """The output's name taken by a directory during the batch: exit 2, partial kept; --resume then finishes."""
    # Given a batch running, and a directory created under its output's name
    source = write_input(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "out.jsonl"
    batch = slow_batch(source, output)
    wait_until(lambda: journal_lines(output) > 1, 60, 0.02, "the batch to write chunks")
    output.mkdir()

    # When the batch finishes
    code, errors = batch.wait(timeout=300), batch.stderr

    # Then it says so, keeps the records, and a resume after the directory is gone completes
    assert code == 2, errors
    assert "is a directory now" in errors and "out.jsonl.partial" in errors and "Traceback" not in errors
    assert output.with_name("out.jsonl.partial").stat().st_size > 0
    output.rmdir()
    resumed = hermes("batch", str(source), "-o", str(output), "--chunk-size", "10", "--processes", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["id"] for r in read_records(output)] == [f"p{n}" for n in range(ROWS)]


def test_resume_needs_a_regular_file_as_input(hermes: HermesRunner, tmp_path: Path) -> None:
    """A FIFO's content is not the same twice: --resume from one is refused, not silently wrong."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"printf '{{\"prompt\": \"x\"}}\\n' > {fifo}"])
    try:
        done = hermes("batch", str(fifo), "-o", str(tmp_path / "out.jsonl"), "--resume", timeout=30)
    finally:
        writer.kill()
        writer.wait()
    assert done.returncode == 2 and "regular file" in done.stderr, done.stderr


# -- the other files a user names ----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "where", "problem"),
    [
        ("--summary-json", "missing-dir/s.json", "does not exist"),
        ("--junit", "missing-dir/j.xml", "does not exist"),
        ("--summary-json", "a-directory", "is a directory"),
        ("--junit", "a-link.xml", "is a symbolic link"),
        ("--summary-json", "in.jsonl", "is the input file"),
        ("--junit", "out.jsonl", "is the same file as -o"),
    ],
)
def test_report_files_are_checked_before_any_work(
    option: str, where: str, problem: str, hermes: HermesRunner, tmp_path: Path
) -> None:
    """--summary-json / --junit at an impossible or dangerous path: exit 2 before the batch, not a traceback after."""
    source = write_input(tmp_path / "in.jsonl", 5)
    (tmp_path / "a-directory").mkdir()
    victim = tmp_path / "victim.xml"
    victim.write_text("mine\n")
    (tmp_path / "a-link.xml").symlink_to(victim)

    done = hermes("batch", str(source), "-o", str(tmp_path / "out.jsonl"), option, str(tmp_path / where))

    assert done.returncode == 2, done.stderr
    assert problem in done.stderr and option in done.stderr and "Traceback" not in done.stderr
    assert "prompts in" not in done.stderr and not (tmp_path / "out.jsonl").exists()
    assert victim.read_text() == "mine\n" and len(read_records(source)) == 5


def test_reports_can_go_to_standard_output(hermes: HermesRunner, tmp_path: Path) -> None:
    """--summary-json - prints the summary; -o - together with it is refused (one standard output)."""
    source = write_input(tmp_path / "in.jsonl", 5)
    done = hermes("batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--summary-json", "-")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"] == 5 and not (tmp_path / "-").exists()
    both = hermes("batch", str(source), "-o", "-", "--junit", "-")
    assert both.returncode == 2 and "-o and --junit cannot both write to standard output" in both.stderr


def test_junit_stays_well_formed_with_hostile_ids_messages_and_file_names(
    hermes: HermesRunner, tmp_path: Path
) -> None:
    """Control characters, U+FFFE, undecodable bytes and ']]>' in ids and the input's name: the report still parses."""
    # Given an input file with a hostile name, whose ids and prompts carry what XML 1.0 cannot hold
    name = os.fsdecode(b"evil\x1b[2J\xff]]>.jsonl")
    source = tmp_path / name
    rows = [
        {"id": "\u001b]0;pwned\u0007", "prompt": "x"},
        {"id": "\u001b]0;pwned\u0007", "prompt": "duplicate"},
        {"id": "]]><x/>", "prompt": ""},
        {"id": "\u0000\u000b\ufffe", "prompt": 7},
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    report = tmp_path / "report.xml"

    # When a batch writes a JUnit report
    done = hermes("batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--junit", str(report))

    # Then the items failed as items, and a real XML parser reads the report
    assert done.returncode == 1, done.stderr
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and failure.text is not None
    assert "duplicate_id" in failure.text and "empty_prompt" in failure.text and "prompt_not_string" in failure.text
    assert "\\x1b[2J" in suite.get("name", "")


# -- history --export ----------------------------------------------------------------------


@pytest.fixture
def finished_task(hermes: HermesRunner) -> str:
    assert hermes("task", "--prompt", "hello  ").returncode == 0
    ran = hermes("queue", "--all")
    assert ran.returncode == 0, ran.stderr
    return "1"


@pytest.mark.parametrize(
    ("where", "problem"),
    [("missing-dir/t.json", "does not exist"), ("a-directory", "is a directory"), ("a-link.json", "symbolic link")],
)
def test_history_export_to_a_bad_path_is_refused(
    where: str, problem: str, finished_task: str, hermes: HermesRunner, tmp_path: Path
) -> None:
    """history --export ID:PATH at a missing directory, a directory or a link: exit 2 naming it; nothing written."""
    (tmp_path / "a-directory").mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("mine\n")
    (tmp_path / "a-link.json").symlink_to(victim)

    done = hermes("history", "--export", f"{finished_task}:{tmp_path / where}")

    assert done.returncode == 2 and problem in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert victim.read_text() == "mine\n"
    good = hermes("history", "--export", f"{finished_task}:{tmp_path / 'task.json'}")
    assert good.returncode == 0 and json.loads((tmp_path / "task.json").read_text())["task"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_stops_the_batch_cleanly_and_resume_finishes_it(
    hermes_env: dict[str, str], hermes: HermesRunner, tmp_path: Path
) -> None:
    """Writing fails mid-batch (a file size limit stands in for a full disk): exit 3 naming it, then --resume."""
    import resource

    # Given a batch whose output cannot grow past 256 KiB
    source = write_input(tmp_path / "in.jsonl", 5_000)
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "hermes_producer", "batch", str(source), "-o", str(output), "--chunk-size", "100"]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    # When it runs out of room
    done = subprocess.run(command, env=hermes_env, cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit,
                          timeout=120)  # fmt: skip

    # Then it stops with exit 3 naming the problem, keeps what it wrote, and --resume completes the rest
    assert done.returncode == 3, done.stderr
    assert "File too large" in done.stderr and "--resume" in done.stderr and "Traceback" not in done.stderr
    assert not output.exists() and output.with_name("out.jsonl.partial").exists()
    resumed = hermes("batch", str(source), "-o", str(output), "--chunk-size", "100", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["id"] for r in read_records(output)] == [f"p{n}" for n in range(5_000)]
