"""The sandbox as an adversary, and other people's containers.

Two promises. First, the host trusts nothing a sandbox container sends back: a container whose
engine was taken over by a prompt may lie about anything in its replies (provenance, records,
lines, ids, counts, error codes, sizes, the framing itself), and every lie is refused; the
container is replaced, the chunk retried and split, the item behind it gets a ``sandbox_failure``
record written by the host, and every other item its true record. The lies come from the real
engine server in a real container, told through the test hooks (``HERMES_SANDBOX_TEST_HOOKS``,
set only by tests, never by a prompt).

Second, reaping and cleanup touch only the containers of their own deployment
(``hermes.deployment``): another checkout's or another cluster's containers survive, even when
their owner is dead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from hermes_worker import contract
from hermes_worker.engine import Profile, provenance
from hermes_worker.probe import probe, self_test_request
from hermes_worker.sandbox import BadReply, SessionFailed
from hermes_worker.sandbox import docker_backend as backend
from hermes_worker.sandbox.protocol import BytesRecv, DockerDemux, FrameReader, FrameTooLarge
from hermes_worker.sandbox.reply import Expected, check_result, provenance_tail
from hermes_worker.sandbox.server import DATA_LIES, handle
from hermes_worker.settings import Settings, SettingsError
from hermes_worker.wire import ChunkRequest, ChunkResult

from .support.chunks import chunk, locally, records, run
from .support.environment import TEST_DEPLOYMENT
from .support.fixture_types import SessionFactory

LIE = "hermes-test:lie"
TEXTS = ["ﬁrst “quoted” line  ", "Ã©tÃ© cafÃ©", "plain", "", "zero\u200bwidth", "\ud800 lone", "x" * 50, "last"]
HONEST = {"text"}  # a lie about the text itself keeps the shape: only the self-test can catch it


def text_chunk(lines: list[str], first: int = 41) -> dict[str, Any]:
    """A chunk of raw JSONL lines, as `hermes batch` sends it (the worker parses them)."""
    request = chunk(["x"])
    del request["items"]
    return request | {"format": "jsonl", "first": first, "text": "\n".join(lines), "bad": []}


def jsonl(texts: list[str]) -> list[str]:
    """JSONL lines with ids, then a broken line and one without an id."""
    lines = [json.dumps({"id": f"id-{n}", "prompt": t}) for n, t in enumerate(texts)]
    return [*lines, "{broken", '{"prompt": "no id"}']


# The host's checks, on the real server's lies (in this process: fast, exact) -----------------


def expected_for(payload: dict[str, Any], worker: str = "w1", image: str = "sha256:img") -> Expected:
    """What a session of ``worker`` on ``image`` expects, for a sandbox that is this very process."""
    request = ChunkRequest.from_payload(payload)
    profile = Profile.from_spec(request.profile)
    return Expected.of(request, profile, provenance(profile, mode="container", worker=worker, image=image))


def honest_reply(payload: dict[str, Any], lie: str = "") -> tuple[dict[str, Any], bytes]:
    """The real engine server's reply and records, in this process (lying as ``lie`` says, if
    given); a text chunk's lines go in the blob, as the session sends them."""
    request: dict[str, Any] = {"op": "chunk", "id": 1, "worker": "w1", "image": "sha256:img", "payload": payload}
    blob = b""
    if "text" in payload:
        request |= {"text": True, "payload": {k: v for k, v in payload.items() if k != "text"}}
        blob = payload["text"].encode("utf-8", "surrogatepass")
    return handle(request, test_hooks=bool(lie), lie=lie.removeprefix("lie="), blob=blob)


def test_an_honest_reply_passes_unchanged() -> None:
    """Given honest replies to item, JSONL and plain-text chunks, the host's rebuilt result equals the sandbox's.

    (A plain-text chunk has no guard ids: its honest reply was refused, and every such chunk
    replaced its container and ran again item by item.)"""
    plain = text_chunk([t for t in TEXTS if t]) | {"format": "text"}
    for payload in (chunk([*TEXTS, 7, LIE]), text_chunk(jsonl([*TEXTS, LIE])), plain):
        reply, records = honest_reply(payload)
        checked = check_result(reply["result"], records, expected_for(payload))
        assert checked.counts_wire() == reply["result"] and checked.records.encode("utf-8", "surrogatepass") == records


@pytest.mark.parametrize("lie", sorted(set(DATA_LIES) - HONEST - {"reply_id", "contract", "too_large"}))
def test_every_lie_in_a_result_is_refused(lie: str) -> None:
    """Given the real server's reply to a chunk holding the marker, made to lie as ``lie`` says,
    the host's check refuses it (and names the problem)."""
    payload = text_chunk(jsonl([*TEXTS, LIE]))
    reply, records = honest_reply(payload, lie=lie)
    assert reply["ok"] is True and (reply["result"], records) != honest_reply(payload), "the hook did not lie"
    with pytest.raises(BadReply, match="sandbox"):
        check_result(reply["result"], records, expected_for(payload))


def test_a_result_for_another_worker_or_image_is_refused() -> None:
    """The provenance the host expects is its own: this worker, the image it looked up."""
    payload = chunk(TEXTS)
    reply, records = honest_reply(payload)
    with pytest.raises(BadReply, match="provenance"):
        check_result(reply["result"], records, expected_for(payload, worker="w2"))
    with pytest.raises(BadReply, match="provenance"):
        check_result(reply["result"], records, expected_for(payload, image="sha256:other"))


# Records are the frame's raw bytes: what the host makes of bytes that are not what they claim.
RECORD_BLOB_LIES = {
    "not UTF-8": (lambda r: r[:5] + b"\xc3\x28" + r[5:], "not UTF-8"),
    "a lone continuation byte": (lambda r: b"\x80" + r, "not UTF-8"),
    "cut short": (lambda r: r[:-7], "do not end with a line break"),
    "no records": (lambda r: b"", "returned 0 records for 5 items"),
    "an empty record added": (lambda r: r + b"\n", "returned 6 records for 5 items"),
    "a record split in two": (lambda r: r.replace(b",", b"\n", 1), "returned 6 records for 5 items"),
    "two records joined by CR": (lambda r: r.replace(b"\n", b"\r", 1), "returned 4 records for 5 items"),
    "a raw U+2028 in the second record": (
        lambda r: r.replace(b'"text":"b', '"text":"\u2028b'.encode(), 1),
        "record for line 42 holds a raw line break",
    ),
    "a raw CR in the first record": (
        lambda r: r.replace(b'"text":"a', b'"text":"\ra', 1),
        "record for line 41 holds a raw line break",
    ),
    "a record that is not JSON": (lambda r: b"{not json}\n" + r.split(b"\n", 1)[1], "not valid JSON"),
    "a JSON array": (lambda r: b"[1,2]\n" + r.split(b"\n", 1)[1], "not a JSON object"),
    "NUL bytes": (lambda r: b"\0" * len(r.split(b"\n", 1)[0]) + r[len(r.split(b"\n", 1)[0]) :], "not valid JSON"),
    "records of another chunk's lines": (lambda r: r.replace(b'"line":', b'"line":1', 3), "names line"),
}


@pytest.mark.parametrize("lie", sorted(RECORD_BLOB_LIES))
def test_record_bytes_that_lie_are_refused(lie: str) -> None:
    """Given the honest records blob of a 5-line chunk altered (bytes that are not UTF-8, a blob
    cut short, records added, split or joined, bytes that are not JSON records), the host refuses
    it, naming the problem."""
    payload = text_chunk(jsonl(["a", "b", "c"]))
    reply, records = honest_reply(payload)
    change, problem = RECORD_BLOB_LIES[lie]
    with pytest.raises(BadReply, match=problem):
        check_result(reply["result"], change(records), expected_for(payload))


def test_honest_records_end_with_the_provenance_the_host_expects() -> None:
    """The host decodes only the head of a record that ends with its own provenance: honest
    records (ok and error ones) must take that path, or the shortcut is dead code."""
    payload = text_chunk(jsonl(["a", "\u2028b"]))
    _, records = honest_reply(payload)
    tail = provenance_tail(expected_for(payload).provenance)
    lines = records.decode().split("\n")[:-1]
    assert len(lines) == 4 and all(line.endswith(tail) for line in lines)


@pytest.mark.parametrize(("head", "problem"), [
    ('{"id":"id-0","line":41,"provenance":{},"text":"a","changed":false,"validation":{"rounds":1,"converged":true}',
     "provenance twice"),
    ('{"id":"id-0","line":41,"text":"a","changed":false,"validation":{"rounds":1,"converged":true},', "not valid JSON"),
    ('{"id":"id-0","line":41,"text":"a', "not valid JSON"),
    ('{"id":"id-0","line":41,"text":"a\\', "not valid JSON"),
    ("{", "names line"),
    ("[", "not valid JSON"),
])  # fmt: skip
def test_a_record_that_ends_with_the_true_provenance_is_still_checked_whole(head: str, problem: str) -> None:
    """Given records whose end is the host's own provenance but whose head lies (a provenance of
    its own, a dangling comma, a string left open, nothing), the host refuses them."""
    payload = text_chunk(jsonl(["a"]))
    reply, records = honest_reply(payload)
    tail = provenance_tail(expected_for(payload).provenance)
    forged = (head + tail).encode() + b"\n" + records.split(b"\n", 1)[1]
    with pytest.raises(BadReply, match=problem):
        check_result(reply["result"], forged, expected_for(payload))


def test_records_that_are_not_bytes_are_refused() -> None:
    payload = chunk(["a"])
    reply, records = honest_reply(payload)
    with pytest.raises(BadReply, match="not bytes"):
        check_result(reply["result"], records.decode(), expected_for(payload))  # type: ignore[arg-type]


def test_a_refusal_quotes_the_container_only_as_printable_text() -> None:
    """What a refusal quotes from the container reaches log lines and an error record: a forged
    log line or a terminal escape in it becomes plain spaces."""
    payload = chunk(["a"])
    result, records = honest_reply(payload)
    record = json.loads(records)
    record["line"] = "1\n2026-01-01 INFO forged log line \x1b[2J"
    with pytest.raises(BadReply) as caught:
        check_result(result["result"], json.dumps(record).encode() + b"\n", expected_for(payload))
    assert "forged log line" in caught.value.reason and caught.value.reason.isprintable()


def test_hooks_never_act_in_a_production_server() -> None:
    """Regression guard: the marker prompts are ordinary text unless the host set the variable."""
    payload = chunk([LIE, "hermes-test:sleep"])
    _, records = handle({"op": "chunk", "id": 1, "worker": "w", "payload": payload})
    assert [json.loads(line)["text"] for line in records.splitlines()] == [LIE, "hermes-test:sleep"]


# The frame reader and the demultiplexer, against a hostile stream ------------------------------


def test_a_4_gib_frame_header_is_refused_before_anything_is_read() -> None:
    """Regression guard: the length is checked against the bound before a byte is buffered."""
    reader = FrameReader(BytesRecv(b"\xff\xff\xff\xff" + b"{}").recv)
    with pytest.raises(FrameTooLarge, match="4,294,967,295"):
        reader.read()


class RecordingSocket:
    """A socket's ``recv`` over bytes in memory that records how much each call asked for."""

    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, []

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        piece, self.data = self.data[:n], self.data[n:]
        return piece

    def settimeout(self, _timeout: float | None) -> None:
        pass


def test_a_huge_stderr_header_never_asks_for_a_huge_read() -> None:
    """Given Docker framing that announces 4 GiB of standard error, no read asks for more than
    256 KiB (a recv(4 GiB) would allocate it) and the kept tail is bounded and printable."""
    noise = b"\x1b[31mforged\nlog line\x07 " * 20_000
    sock = RecordingSocket(b"\x02\0\0\0\xff\xff\xff\xff" + noise)
    demux = DockerDemux(sock)  # type: ignore[arg-type]
    assert demux.recv(1024) == b""
    assert max(sock.asked) <= 256 * 1024
    tail = demux.stderr_tail()
    assert 0 < len(tail) <= 600 and tail.isprintable()


def test_a_trickling_container_cannot_stretch_the_deadline() -> None:
    """Given a peer that sends a byte of standard error every 50 ms and never a frame, a read
    with a 0.5 s deadline ends with TimeoutError in about that time (the per-recv socket timeout
    alone would restart with every byte)."""
    ours, theirs = socket.socketpair()
    stop = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):
            theirs.sendall(b"\x02\0\0\0\0\0\x10\0")  # 4 KiB of standard error announced
            for _ in range(60):  # 3 s at most, then the stream ends
                if stop.wait(0.05):
                    break
                theirs.sendall(b".")
            theirs.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=trickle, daemon=True)
    writer.start()
    try:
        ours.settimeout(0.3)
        demux = DockerDemux(ours)
        demux.deadline = time.monotonic() + 0.5
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            FrameReader(demux.recv).read()
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        writer.join()
        ours.close()
        theirs.close()


# Real containers that lie ---------------------------------------------------------------------


def assert_true_records(result: ChunkResult, payload: dict[str, Any], session: Any, liar_index: int | None) -> None:
    """Every record but the liar's equals the local one; the liar's is a host-written
    sandbox_failure; provenance is the host's everywhere; counts match the records."""
    local = locally(payload)
    got, want = records(result), records(local)
    assert len(got) == len(want) == len(result.record_lines())
    for index, (record, expected) in enumerate(zip(got, want, strict=True)):
        if index == liar_index:
            assert record["error"]["code"] == contract.SANDBOX_FAILURE, record
            assert record["line"] == expected["line"] and record["id"] == expected["id"]
        else:
            assert record == expected, index
    for line in result.record_lines():
        prov = json.loads(line)["provenance"]
        assert (prov["mode"], prov["worker"], prov["image"]) == ("container", "w1", session.image_digest)
        assert prov["engine"] == local.provenance["engine"]
    assert result.failed == len(result.errors) == sum("error" in r for r in got)
    assert result.ok == len(got) - result.failed
    assert result.provenance["mode"] == "container" and result.provenance["worker"] == "w1"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("lie", sorted(set(DATA_LIES) - HONEST - {"reply_id"}))
def test_a_container_that_lies_is_replaced_and_its_item_isolated(session_factory: SessionFactory, lie: str) -> None:
    """Given a container whose engine lies (as ``lie`` says) in its reply to any chunk holding
    the marker prompt, when a raw-lines chunk with the marker runs through the session, then the
    lie never reaches the result: the marker's line gets a sandbox_failure record written by the
    host, every other line its true record, and the container was replaced."""
    session = session_factory(test_hooks=f"lie={lie}")
    lines = jsonl([*TEXTS[:5], LIE, *TEXTS[5:]])
    payload = text_chunk(lines)
    result = run(session, payload)
    assert result.ids == locally(payload).ids  # the guard's ids: the host's
    if lie == "ids":  # only a raw-lines reply carries ids: the retry, as items, cannot lie about them
        assert_true_records(result, payload, session, liar_index=None)
        assert session.restarts == 1
        return
    assert_true_records(result, payload, session, liar_index=5)
    assert "refused" in json.loads(result.record_lines()[5])["error"]["message"]
    assert session.restarts >= 2


@pytest.mark.docker
@pytest.mark.parametrize("lie", ["giant_frame", "reply_id", "blob_length"])
def test_a_container_that_breaks_the_framing_is_replaced_and_its_item_isolated(
    session_factory: SessionFactory, lie: str
) -> None:
    """A frame announcing 4 GiB, or an answer to another request, is a dead container: the same
    recovery, and the same true records."""
    session = session_factory(test_hooks=f"lie={lie}")
    payload = chunk([*TEXTS[:2], LIE, *TEXTS[2:]])
    result = run(session, payload)
    assert_true_records(result, payload, session, liar_index=2)


@pytest.mark.docker
def test_a_stderr_flood_is_drained_within_bounds(session_factory: SessionFactory) -> None:
    """16 MiB of standard error before an honest reply: the reply is accepted as it is, and the
    host keeps only a short printable tail of the noise. (A regression guard end to end: Docker
    cuts standard error into small pieces, so the unbounded read of 2c90978 never showed here;
    the bound itself is proven by test_a_huge_stderr_header_never_asks_for_a_huge_read.)"""
    session = session_factory(test_hooks="lie=stderr_flood")
    payload = chunk([LIE, *TEXTS])
    result = run(session, payload)
    assert records(result) == records(locally(payload))
    assert session.restarts == 0
    assert len(session._stream.stderr_tail()) <= 600
    assert sum(len(piece) for piece in session._stream.stderr) <= 64 * 256 * 1024


@pytest.mark.docker
def test_a_container_that_trickles_stderr_forever_times_out_on_the_deadline(
    session_factory: SessionFactory, sandbox_settings: Any
) -> None:
    """A byte of standard error every 50 ms and never an answer: the chunk fails at the chunk time
    limit (2 s here), not whenever the container chooses to stop."""
    session = session_factory(sandbox_settings.with_overrides(chunk_time_limit_s=2.0), test_hooks="lie=trickle")
    started = time.monotonic()
    with pytest.raises(SessionFailed, match="did not answer within 2 s"):
        run(session, chunk([LIE]))
    assert time.monotonic() - started < 8


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("lie", ["text", "mode"])
def test_a_sandbox_that_lies_in_the_self_test_gets_no_container_tag(sandbox_settings: Any, worker_id: str,
                                                                    lie: str) -> None:  # fmt: skip
    """A sandbox that lies on every chunk, with forged text (well-formed) or forged provenance
    (refused), fails the probe's self-test: the worker is tagged local, with the reason."""

    def liar(settings: Settings, worker: str) -> Any:
        return backend.DockerSession(settings, worker, test_hooks=f"lie={lie}:always")

    outcome = probe(sandbox_settings, worker_id, open_sandbox=liar)
    assert outcome.tag == "local", outcome
    assert "self-test" in outcome.reason
    assert len(self_test_request().items or []) > 1


# Deployments: nobody reaps what is not theirs ---------------------------------------------------


def test_workers_of_one_cluster_share_a_deployment_and_private_redis_instances_do_not() -> None:
    """The derived id: the result backend's address, without credentials; HERMES_DEPLOYMENT wins."""
    one = functools.partial(Settings, home=Path("."))
    cluster = {backend.deployment_id(one(result_backend=url)) for url in (
        "redis://:pw1@redis.internal:6379/0", "redis://user:pw2@REDIS.internal:6379/0",
        "redis://redis.internal/0?password=pw3", "redis://redis.internal:6379")}  # fmt: skip
    assert len(cluster) == 1
    private = {backend.deployment_id(one(result_backend=f"redis://127.0.0.1:{port}/0")) for port in (40001, 40002)}
    assert len(private) == 2 and not private & cluster
    assert backend.deployment_id(one(result_backend="redis://127.0.0.1:40001/1")) not in private
    assert backend.deployment_id(one(deployment="prod-eu", result_backend="redis://x/0")) == "prod-eu"
    for derived in cluster | private:
        assert Settings.from_env({"HERMES_DEPLOYMENT": derived}).deployment == derived  # label-safe


@pytest.mark.parametrize("value", ["a b", "x=y", "-lead", "é", "a" * 64, "../etc", "a,b"])
def test_a_deployment_that_is_not_label_safe_is_refused_naming_it(value: str) -> None:
    with pytest.raises(SettingsError, match="HERMES_DEPLOYMENT"):
        Settings.from_env({"HERMES_DEPLOYMENT": value})


def test_the_cli_refuses_a_bad_deployment_with_exit_2(hermes: Any) -> None:
    done = hermes("run", "--prompt", "x", env={"HERMES_DEPLOYMENT": "no spaces"})
    assert done.returncode == 2 and "HERMES_DEPLOYMENT" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


@pytest.fixture
def made(docker_client: Any, sandbox_image: Any) -> Any:
    """Create stopped containers with given labels; all removed after the test."""
    containers: list[Any] = []

    def make(labels: dict[str, str]) -> Any:
        containers.append(docker_client.containers.create(sandbox_image.tag, ["true"], labels=labels))
        return containers[-1]

    yield make
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def exists(client: Any, container: Any) -> bool:
    try:
        client.containers.get(container.id)
    except docker.errors.NotFound:
        return False
    return True


@pytest.mark.docker
def test_reaping_removes_only_this_deployments_dead_owners_containers(
    docker_client: Any, made: Any, dead_pid: int, worker_id: str
) -> None:
    """Given session containers of this deployment and of another, with dead and live owners,
    and containers of a Hermes older than the label; when this deployment reaps, then only its
    own dead-owner containers go (and an unlabelled one only when it carries our worker id)."""
    other = f"{TEST_DEPLOYMENT}-other"
    ours = functools.partial(backend.owner_labels, deployment=TEST_DEPLOYMENT)
    theirs = functools.partial(backend.owner_labels, deployment=other)
    legacy = {k: v for k, v in ours(worker_id, dead_pid).items() if k != backend.LABEL_DEPLOYMENT}
    cases = {
        "ours, dead owner": (made(ours("w-dead", dead_pid)), False),
        "ours, live owner": (made(ours("w-live")), True),
        "theirs, dead owner": (made(theirs("w-dead", dead_pid)), True),
        "theirs, same worker id, other host": (made(theirs(worker_id) | {"hermes.host": "elsewhere"}), True),
        "unlabelled, dead owner, other worker": (made(legacy | {"hermes.worker": "someone"}), True),
        "unlabelled, dead owner, our worker id": (made(legacy), False),
    }
    removed = set(backend.reap_orphans(docker_client, worker_id, TEST_DEPLOYMENT))
    survived = {name: exists(docker_client, c) for name, (c, _) in cases.items()}
    assert survived == {name: keep for name, (_, keep) in cases.items()}
    assert removed == {c.id for c, keep in cases.values() if not keep}


@pytest.mark.docker
def test_workers_reaping_the_same_orphans_at_once_never_fail_their_sessions(
    docker_client: Any, made: Any, dead_pid: int
) -> None:
    """Seen in-process: after a pool process was killed, both new pool processes reaped its
    container at once; Docker answered one "removal … is already in progress" (409), and that
    failed the whole batch with exit 3. A container someone else is removing is reaped."""
    import threading

    for _round in range(8):
        # Given orphans of this deployment, and four workers reaping at the same moment
        orphans = [made(backend.owner_labels("w-dead", dead_pid, deployment=TEST_DEPLOYMENT)) for _ in range(3)]
        start, failures = threading.Barrier(4), []

        def reap(n: int, start: threading.Barrier, failures: list[Exception]) -> None:
            start.wait()
            try:
                backend.reap_orphans(docker_client, f"w-reaper-{n}", TEST_DEPLOYMENT)
            except Exception as exc:  # what a session start would have died of
                failures.append(exc)

        reapers = [threading.Thread(target=reap, args=(n, start, failures)) for n in range(4)]
        for reaper in reapers:
            reaper.start()
        for reaper in reapers:
            reaper.join(timeout=60)
        # Then none of them fails, and the orphans are gone
        assert failures == []
        assert not any(exists(docker_client, orphan) for orphan in orphans)


@pytest.mark.docker
def test_a_hermes_run_of_another_deployment_leaves_our_orphans_alone(
    hermes: Any, sandbox_image: Any, docker_client: Any, made: Any, dead_pid: int
) -> None:
    """The reported case: a `hermes run --isolation container` in another checkout (another
    deployment) used to remove this test run's dead-owner session containers when it reaped."""
    ours = made(backend.owner_labels("w-dead", dead_pid, deployment=TEST_DEPLOYMENT))
    elsewhere = {"HERMES_SANDBOX_IMAGE": sandbox_image.tag, "HERMES_DEPLOYMENT": f"{TEST_DEPLOYMENT}-b"}
    done = hermes("run", "--prompt", "ﬁne", "--isolation", "container", "--json", env=elsewhere)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["provenance"]["mode"] == "container"
    assert exists(docker_client, ours), "another deployment's run removed our container"
    # And a run of our own deployment does reap it: the container really was an orphan.
    done = hermes("run", "--prompt", "ﬁne", "--isolation", "container", env={"HERMES_SANDBOX_IMAGE": sandbox_image.tag})
    assert done.returncode == 0, done.stderr
    assert not exists(docker_client, ours)


@pytest.mark.docker
def test_session_containers_carry_the_deployment(session_factory: SessionFactory, docker_client: Any) -> None:
    session = session_factory()
    labels = docker_client.containers.get(session.container_id).labels
    assert labels[backend.LABEL_DEPLOYMENT] == TEST_DEPLOYMENT == session.deployment
    found = docker_client.containers.list(all=True, filters=backend.session_filters(TEST_DEPLOYMENT))
    assert session.container_id in {c.id for c in found}
    other = docker_client.containers.list(all=True, filters=backend.session_filters(f"{TEST_DEPLOYMENT}-x"))
    assert session.container_id not in {c.id for c in other}
