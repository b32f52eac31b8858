"""Part files (hermes_worker/shared_parts.py): a shared chunk's records written by a worker and read
back by the producer, against what someone who can write the shared directory might plant there.

The whole path over real workers and Redis is in tests/test_cluster_shared.py; here each promise
of the module alone, on a real filesystem."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import sys
import uuid
from pathlib import Path

import pytest

from hermes_worker.contract import MAX_CHUNK_NUMBER, MAX_VALUE_BYTES, ContractError
from hermes_worker.shared_parts import PARTS_DIR, PartDir, PartRef, parts_path, remove_part, write_part

BATCH = "0123456789abcdef0123456789abcdef"
ME = os.getuid()  # the producer here, owner of the part directory
RECORDS = '{"id": 1, "prompt": "caf\u00e9"}\n{"id": 2, "prompt": "b"}\n'.encode()


@pytest.fixture
def parts(tmp_path: Path) -> PartDir:
    made = PartDir.create(tmp_path, BATCH)
    assert made is not None
    return made


def test_a_part_written_by_a_worker_reads_back_as_the_same_bytes_and_goes_when_asked(
    tmp_path: Path, parts: PartDir
) -> None:
    ref = write_part(tmp_path, BATCH, 7, RECORDS, ME)
    assert ref is not None and ref.name.startswith("7-") and ref.size == len(RECORDS)
    assert parts.load(ref) == RECORDS
    assert PartRef.from_wire(json.loads(ref.to_wire())) == ref  # the wire form round-trips
    parts.remove(ref)
    assert os.listdir(parts.path) == []
    write_part(tmp_path, BATCH, 8, RECORDS, ME)
    parts.remove_all()
    assert not os.path.exists(parts.path) and os.path.isdir(tmp_path / PARTS_DIR)


def test_two_deliveries_of_one_chunk_write_two_parts_never_one_over_the_other(tmp_path: Path, parts: PartDir) -> None:
    first, second = write_part(tmp_path, BATCH, 3, RECORDS, ME), write_part(tmp_path, BATCH, 3, b"other\n", ME)
    assert first is not None and second is not None and first.name != second.name
    assert parts.load(first) == RECORDS and parts.load(second) == b"other\n"


def test_without_the_batchs_directory_a_worker_writes_nothing_and_the_records_go_through_redis(tmp_path: Path) -> None:
    assert write_part(None, BATCH, 1, RECORDS, ME) is None  # no shared root on this worker
    assert write_part(tmp_path, BATCH, 1, RECORDS, ME) is None  # a batch that takes no parts
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("planted", ["parts dir a link", "batch dir a link", "parts dir a file"])
def test_a_link_or_file_planted_in_the_directorys_place_is_not_followed(tmp_path: Path, planted: str) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    (elsewhere / BATCH).mkdir(parents=True)
    if planted == "parts dir a link":
        (root / PARTS_DIR).symlink_to(elsewhere)
    elif planted == "batch dir a link":
        (root / PARTS_DIR).mkdir()
        (root / PARTS_DIR / BATCH).symlink_to(elsewhere / BATCH)
    else:
        (root / PARTS_DIR).write_bytes(b"")
    # The producer takes no part directory, and a worker writes nowhere: the records go by Redis.
    assert PartDir.create(root, BATCH) is None
    assert write_part(root, BATCH, 1, RECORDS, ME) is None
    assert list((elsewhere / BATCH).iterdir()) == [] and list(elsewhere.iterdir()) == [elsewhere / BATCH]


def test_a_directory_someone_else_made_under_the_batchs_name_is_not_taken(tmp_path: Path) -> None:
    os.makedirs(parts_path(tmp_path, BATCH))
    os.chown(parts_path(tmp_path, BATCH), 12345, 12345)
    assert PartDir.create(tmp_path, BATCH) is None


def test_a_directory_put_in_the_place_of_the_producers_gets_no_records(tmp_path: Path, parts: PartDir) -> None:
    # Given another user, who can write the shared root, moved the producer's directory away and
    # made one of their own under the batch's name
    os.rename(parts.path, tmp_path / "moved")
    os.mkdir(parts.path)
    os.chown(parts.path, 12345, 12345)
    # Then a worker writes no records there (that user would read them), only to the producer's
    assert write_part(tmp_path, BATCH, 1, RECORDS, parts.owner) is None
    assert os.listdir(parts.path) == []
    os.chown(parts.path, parts.owner, -1)
    assert write_part(tmp_path, BATCH, 1, RECORDS, parts.owner) is not None


def test_a_resumed_batch_reopens_its_own_directory_with_the_parts_in_it(tmp_path: Path, parts: PartDir) -> None:
    ref = write_part(tmp_path, BATCH, 2, RECORDS, ME)
    assert ref is not None
    again = PartDir.create(tmp_path, BATCH)
    assert again is not None and again.load(ref) == RECORDS


def _changed(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"caf", b"CAF"))


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def _a_link(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/hostname")


def _a_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _gone(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_changed, "its bytes are not the ones the worker wrote"),
        (_truncated, f"is {len(RECORDS) - 1:,} bytes, not the {len(RECORDS):,} the worker wrote"),
        (_a_link, "cannot be read"),
        (_a_fifo, "is not a regular file"),
        (_a_directory, "is not a regular file"),
        (_gone, "cannot be read: No such file or directory"),
    ],
    ids=lambda value: getattr(value, "__name__", "")[1:],
)
def test_a_part_changed_after_the_worker_wrote_it_is_refused_naming_the_problem(
    tmp_path: Path, parts: PartDir, tamper: object, problem: str
) -> None:
    ref = write_part(tmp_path, BATCH, 4, RECORDS, ME)
    assert ref is not None
    tamper(Path(parts.path) / ref.name)  # type: ignore[operator]
    with pytest.raises(ContractError) as refused:
        parts.load(ref)
    assert str(refused.value).startswith(f"part {ref.name}") and problem in str(refused.value)


def test_removing_the_directory_removes_a_planted_link_never_what_it_points_at(tmp_path: Path, parts: PartDir) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    os.symlink(precious, os.path.join(parts.path, "0-" + "a" * 32 + ".jsonl"))
    parts.remove_all()
    assert (precious / "keep.txt").read_text() == "keep" and not os.path.exists(parts.path)


def test_a_worker_whose_post_failed_removes_its_part(tmp_path: Path, parts: PartDir) -> None:
    ref = write_part(tmp_path, BATCH, 5, RECORDS, ME)
    assert ref is not None
    remove_part(tmp_path, BATCH, ref)
    remove_part(None, BATCH, ref)  # no root: nothing to do, no error
    assert os.listdir(parts.path) == []


HOSTILE_REFS = [
    {"name": "../../etc/passwd", "size": 1, "sha256": "0" * 64},
    {"name": "/etc/passwd", "size": 1, "sha256": "0" * 64},
    {"name": "1-" + "a" * 32 + ".jsonl/..", "size": 1, "sha256": "0" * 64},
    {"name": "01-" + "a" * 32 + ".jsonl", "size": 1, "sha256": "0" * 64},
    {"name": "1-" + "A" * 32 + ".jsonl", "size": 1, "sha256": "0" * 64},
    {"name": "1-" + "a" * 32 + ".jsonl", "size": MAX_VALUE_BYTES + 1, "sha256": "0" * 64},
    {"name": "1-" + "a" * 32 + ".jsonl", "size": True, "sha256": "0" * 64},
    {"name": "1-" + "a" * 32 + ".jsonl", "size": 1.5, "sha256": "0" * 64},
    {"name": "1-" + "a" * 32 + ".jsonl", "size": 1, "sha256": "0" * 63},
    {"name": "1-" + "a" * 32 + ".jsonl", "size": 1, "sha256": "0" * 64, "path": "/etc"},
    {"name": "1-" + "a" * 32 + ".jsonl", "size": 1},
    ["1-" + "a" * 32 + ".jsonl", 1, "0" * 64],
    None,
]


@pytest.mark.parametrize("value", HOSTILE_REFS, ids=range(len(HOSTILE_REFS)))
def test_a_hostile_part_ref_is_refused_before_any_file_is_touched(value: object) -> None:
    with pytest.raises(ContractError, match=r"^a result's part"):
        PartRef.from_wire(value)


def test_removing_the_directory_follows_no_link_planted_in_place_of_the_parts_directory(
    tmp_path: Path, parts: PartDir
) -> None:
    # Given the parts directory moved away and a link in its place, to a tree holding a
    # directory of the batch's name
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / BATCH).mkdir(parents=True)
    (elsewhere / BATCH / "keep.txt").write_text("keep")
    (tmp_path / PARTS_DIR).rename(tmp_path / "moved")
    (tmp_path / PARTS_DIR).symlink_to(elsewhere)
    # When the producer removes the batch's directory
    parts.remove_all()
    # Then what the link points at is untouched, and the directory the producer made is gone
    assert (elsewhere / BATCH / "keep.txt").read_text() == "keep"
    assert list((tmp_path / "moved").iterdir()) == []


def test_the_batchs_directory_is_closed_to_other_users_whatever_the_umask(tmp_path: Path) -> None:
    # The records are the prompts: no user but the producer and its group reaches the parts.
    old = os.umask(0)
    try:
        parts = PartDir.create(tmp_path, BATCH)
    finally:
        os.umask(old)
    assert parts is not None
    assert stat.S_IMODE(os.stat(parts.path).st_mode) & 0o007 == 0


def test_a_part_the_disk_has_no_room_for_is_not_left_behind_and_the_records_go_through_redis(
    tmp_path: Path, parts: PartDir
) -> None:
    # A file size limit makes the write fail as a full disk does (EFBIG instead of ENOSPC).
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10, hard))
    try:
        ref = write_part(tmp_path, BATCH, 1, RECORDS, ME)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert ref is None and os.listdir(parts.path) == []


def test_a_part_of_any_chunk_number_a_worker_accepts_is_one_the_producer_takes(tmp_path: Path, parts: PartDir) -> None:
    ref = write_part(tmp_path, BATCH, MAX_CHUNK_NUMBER, RECORDS, ME)
    assert ref is not None
    assert parts.load(PartRef.from_wire(json.loads(ref.to_wire()))) == RECORDS


def _nest(top: int, depth: int) -> None:
    fd = os.dup(top)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)


def _unnest(top: Path) -> None:
    """Remove a tree of nested ``d`` directories a level at a time (no recursion, no long path)."""
    while (top / "d").exists():
        if (top / "d" / "d").exists():
            os.rename(top / "d" / "d", top / "x")
            os.rmdir(top / "d")
            os.rename(top / "x", top / "d")
        else:
            os.rmdir(top / "d")


def test_a_deep_tree_planted_in_the_directory_does_not_break_its_removal(tmp_path: Path, parts: PartDir) -> None:
    # Given a part, and a tree of directories deeper than Python's recursion limit planted beside it
    ref = write_part(tmp_path, BATCH, 1, RECORDS, ME)
    assert ref is not None
    top = os.open(parts.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _nest(top, 3 * sys.getrecursionlimit())
    finally:
        os.close(top)
    # When the producer removes the directory, Then it raises nothing (it raised RecursionError,
    # which stopped a batch whose output was complete) and the part is gone
    try:
        parts.remove_all()
        assert not os.path.exists(os.path.join(parts.path, ref.name))
    finally:
        _unnest(Path(parts.path))


def test_a_file_already_under_the_parts_name_is_neither_written_nor_removed(
    tmp_path: Path, parts: PartDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file of the name the worker is about to take (a uuid4 it did not draw alone)
    drawn = uuid.UUID(int=7)
    monkeypatch.setattr(uuid, "uuid4", lambda: drawn)
    other = Path(parts.path) / f"1-{drawn.hex}.jsonl"
    other.write_bytes(b"another's\n")
    # Then the worker writes no part (its records go by Redis) and leaves that file as it was
    assert write_part(tmp_path, BATCH, 1, RECORDS, ME) is None
    assert other.read_bytes() == b"another's\n"
