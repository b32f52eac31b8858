"""Docker sessions against the real engine: reuse, hardening, limits, recovery, cleanup, reaping;
and the dagger backend's failure paths, for real."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from hermes_worker import contract
from hermes_worker.contract import ContractError
from hermes_worker.engine import ProfileError
from hermes_worker.processing import process_chunk
from hermes_worker.sandbox import SessionFailed, open_session
from hermes_worker.sandbox import docker_backend as backend
from hermes_worker.sandbox.protocol import encode_frame
from hermes_worker.wire import ChunkRequest

from .support.chunks import batch_chunks, chunk, golden_chunks, locally, records, run
from .support.environment import TEST_DEPLOYMENT, needs_module
from .support.fixture_types import SessionFactory
from .support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]


def created_containers(client: Any, worker_id: str, since: int) -> int:
    """Containers created for ``worker_id`` since ``since``, counted from Docker's own events."""
    wanted = {"type": "container", "event": "create", "label": f"hermes.worker={worker_id}"}
    events = client.events(since=since, until=int(time.time()) + 1, decode=True, filters=wanted)
    return sum(1 for _ in events)


def test_one_container_serves_a_5000_prompt_batch(session_factory: SessionFactory, docker_client: Any,
                                                  worker_id: str) -> None:  # fmt: skip
    # Given a 5,000-prompt batch in 256-prompt chunks
    chunks = batch_chunks(5000)
    since = int(time.time()) - 1
    # When every chunk runs through one session
    session = session_factory()
    results = [run(session, c) for c in chunks]
    session.close()
    # Then Docker created exactly one container, and every record equals the local one
    assert created_containers(docker_client, worker_id, since) == 1
    assert sum(r.count for r in results) == 5000
    for request, result in zip(chunks, results, strict=True):
        assert records(result) == records(locally(request))
        assert result.provenance["mode"] == "container"
        assert result.provenance["image"] == session.image_digest


def test_container_output_equals_local_output_on_the_golden_data(session_factory: SessionFactory) -> None:
    session = session_factory()
    for request in golden_chunks():
        inside = run(session, request)
        local = process_chunk(
            ChunkRequest.from_payload(request), mode="container", worker="w1", image=session.image_digest
        )
        assert records(inside) == records(local)
        # Byte for byte, once the interpreter's patch level (3.11.x, same Unicode) is set aside
        here, there = (f'"python":"{r.provenance["python"]}"' for r in (local, inside))
        assert inside.records == local.records.replace(here, there)


INSIDE_CHECK = """
import json, os
status = dict(line.split(":\\t", 1) for line in open("/proc/1/status").read().splitlines() if ":\\t" in line)
nics = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
def fails(action):
    try:
        action()
    except OSError as exc:
        return exc.strerror
    return None
def run_tmp():
    with open("/tmp/x.sh", "w") as handle:
        handle.write("#!/bin/sh\\nexit 0\\n")
    os.chmod("/tmp/x.sh", 0o755)
    os.execv("/tmp/x.sh", ["/tmp/x.sh"])
print(json.dumps({"uid": os.getuid(), "nics": nics, "cap_eff": status["CapEff"].strip(),
                  "cap_bnd": status["CapBnd"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
                  "write_root": fails(lambda: open("/hermes-test", "w")), "exec_tmp": fails(run_tmp)}))
"""


def test_every_hardening_setting_is_in_force(session_factory: SessionFactory, docker_client: Any) -> None:
    session = session_factory()
    container = docker_client.containers.get(session.container_id)
    host, config = container.attrs["HostConfig"], container.attrs["Config"]
    # Seen by Docker
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 64 and host["NanoCpus"] == 1_000_000_000
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
    assert "noexec" in host["Tmpfs"]["/tmp"] and not host["Binds"] and container.attrs["Mounts"] == []
    assert config["User"] == "10001:10001" and host["LogConfig"]["Type"] == "none"
    assert config["Labels"]["hermes.session"] == "1" and config["Labels"]["hermes.pid"] == str(os.getpid())
    # Seen from inside (a second process in the same container, looking at the server, pid 1)
    exit_code, output = container.exec_run(["python3", "-c", INSIDE_CHECK])
    inside = json.loads(output)
    assert exit_code == 0, output
    assert inside["nics"] == ["lo"] and inside["uid"] == 10001
    assert inside["cap_eff"] == inside["cap_bnd"] == "0000000000000000" and inside["no_new_privs"] == "1"
    assert inside["write_root"] == "Read-only file system" and inside["exec_tmp"] == "Permission denied"


def test_an_item_that_exhausts_memory_fails_alone(session_factory: SessionFactory, sandbox_settings: Any) -> None:
    # Given a small memory limit and a chunk whose 11th item allocates without end (a test hook)
    session = session_factory(sandbox_settings.with_overrides(container_memory="96m"), test_hooks=True)
    texts = [f"prompt number {n} Ã©tÃ©" for n in range(16)]
    texts[10] = "hermes-test:exhaust-memory"
    request = chunk(texts)
    # When it runs
    result = run(session, request)
    # Then that item alone is a sandbox_failure, the others are what local mode gives
    assert result.failed == 1 and result.ok == 15
    assert (result.errors[0].line, result.errors[0].code) == (11, contract.SANDBOX_FAILURE)
    assert "out-of-memory" in result.errors[0].message
    local = records(locally(request))
    assert [r for r in records(result) if r["line"] != 11] == [r for r in local if r["line"] != 11]
    assert session.restarts >= 2
    assert run(session, chunk(["still works"])).ok == 1


class KillWhenInFlight(threading.Thread):
    """Kills ``container`` once its server sleeps in the ``hermes-test:sleep`` marker: a chunk in flight.

    The condition is the kernel's: a process of the container waits in a nanosleep (``ps`` WCHAN).
    """

    def __init__(self, container: Any) -> None:
        super().__init__(daemon=True)
        self.container, self.killed, self.failure = container, False, ""
        self.start()

    def sleeping(self) -> bool:
        top = self.container.top(ps_args="-o pid,wchan:32")
        return any("nanosleep" in " ".join(process) for process in top["Processes"] or [])

    def run(self) -> None:
        try:
            wait_until(self.sleeping, 30, 0.01, "the chunk in flight (the server sleeping)")
            self.container.kill()
            self.killed = True
        except BaseException as exc:  # pytest.fail raises an Exception subclass of BaseException
            self.failure = str(exc)


def test_a_killed_container_is_replaced_and_nothing_is_lost(session_factory: SessionFactory,
                                                            docker_client: Any) -> None:  # fmt: skip
    # Given a session and six chunks, the fourth of which stays in flight for half a second (asleep)
    session = session_factory(test_hooks=True)
    chunks = batch_chunks(3000, size=500)
    chunks[3]["items"][7][2] = "hermes-test:sleep"
    results = []
    for number, request in enumerate(chunks):
        first = session.container_id
        # When the container is killed between two chunks, and while a chunk is in flight
        if number == 1:
            docker_client.containers.get(first).kill()
        if number == 3:
            killer = KillWhenInFlight(docker_client.containers.get(first))
        results.append(run(session, request))
        if number == 3:
            killer.join(timeout=30)
            assert killer.killed, killer.failure
        if number in (1, 3):
            assert session.container_id != first
    # Then each was replaced once, and every record is there and right
    assert session.restarts == 2
    for request, result in zip(chunks, results, strict=True):
        assert records(result) == records(locally(request))


def test_a_chunk_over_the_time_limit_fails_and_the_next_gets_a_fresh_container(
    session_factory: SessionFactory, sandbox_settings: Any
) -> None:
    session = session_factory(sandbox_settings.with_overrides(chunk_time_limit_s=0.2), test_hooks=True)
    first = session.container_id
    with pytest.raises(SessionFailed, match=r"did not answer within 0\.2 s"):
        run(session, chunk(["hermes-test:sleep"]))
    assert run(session, chunk(["next"])).ok == 1
    assert session.restarts == 1 and session.container_id != first


def test_a_chunk_too_large_for_one_frame_is_split(session_factory: SessionFactory,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(backend, "encode_frame", functools.partial(encode_frame, max_bytes=6000))
    session = session_factory()
    texts = [f"{n} " + "é" * 900 for n in range(12)]
    texts[5] = "x" * 7000  # alone over the bound
    result = run(session, chunk(texts))
    assert result.ok == 11 and [(e.line, e.code) for e in result.errors] == [(6, contract.SANDBOX_FAILURE)]
    assert [r["line"] for r in records(result)] == list(range(1, 13))


def test_bad_payloads_and_profiles_raise_as_they_do_locally(session_factory: SessionFactory) -> None:
    session = session_factory()
    with pytest.raises(ContractError):
        run(session, chunk(["a"]) | {"v": 99})
    with pytest.raises(ProfileError):
        run(session, chunk(["a"], profile={"name": "bad", "steps": ["no_such_step"]}))
    assert run(session, chunk(["a"])).ok == 1


def test_close_removes_the_container(session_factory: SessionFactory, docker_client: Any) -> None:
    session = session_factory()
    container_id = session.container_id
    session.close()
    session.close()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container_id)


def test_a_failed_start_leaves_nothing_behind(sandbox_settings: Any, docker_client: Any, worker_id: str) -> None:
    # Given an image that exists but has no engine in it
    settings = sandbox_settings.with_overrides(sandbox_image="hermes-base:bookworm")
    # When a session is entered / Then it fails plainly, and its container is gone
    with pytest.raises(SessionFailed, match="did not start"), open_session(settings, worker_id):
        pass
    assert docker_client.containers.list(all=True, filters={"label": f"hermes.worker={worker_id}"}) == []
    # Nor when start() is called directly, as a worker's runner does
    with pytest.raises(SessionFailed, match="did not start"):
        open_session(settings, worker_id).start()
    assert docker_client.containers.list(all=True, filters={"label": f"hermes.worker={worker_id}"}) == []


def test_reap_orphans_removes_containers_of_dead_owners_only(docker_client: Any, sandbox_image: Any,
                                                             worker_id: str) -> None:  # fmt: skip
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = functools.partial(backend.owner_labels, deployment=TEST_DEPLOYMENT)
    mine = labels(worker_id)
    cases = {
        "dead owner": labels("other-worker", dead.pid),
        "pid reused": mine | {"hermes.pid_start": "1"},
        "same worker, other host": mine | {"hermes.host": "elsewhere"},
        "live owner": labels("other-worker"),
        "live owner, other host": labels("other-worker") | {"hermes.host": "elsewhere"},
    }
    made = {name: docker_client.containers.create(sandbox_image.tag, ["true"], labels=labels)
            for name, labels in cases.items()}  # fmt: skip
    try:
        removed = set(backend.reap_orphans(docker_client, worker_id, TEST_DEPLOYMENT))
        assert {name for name, c in made.items() if c.id in removed} == {
            "dead owner", "pid reused", "same worker, other host"}  # fmt: skip
    finally:
        for container in made.values():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)



def test_reaping_survives_containers_removed_while_it_looks(docker_client: Any, sandbox_image: Any,
                                                            worker_id: str) -> None:  # fmt: skip
    # Given session containers of a live owner that someone else removes while we reap
    # (sibling pool processes reap at the same time when a worker starts; sessions close)
    labels = backend.owner_labels(worker_id, deployment=TEST_DEPLOYMENT)
    made = [docker_client.containers.create(sandbox_image.tag, ["true"], labels=labels) for _ in range(24)]
    remover = threading.Thread(target=lambda: [c.remove(force=True) for c in made])
    try:
        # When reaping runs over and over while they disappear
        remover.start()
        rounds = 0
        while remover.is_alive() or rounds == 0:
            # Then it never fails on a container that went between listing and inspecting it
            assert backend.reap_orphans(docker_client, worker_id, TEST_DEPLOYMENT) == []  # their owner is alive
            rounds += 1
    finally:
        remover.join()
        for container in made:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


ABANDONING_WORKER = """
import sys, time
from pathlib import Path
from hermes_worker.settings import Settings
from hermes_worker.sandbox.docker_backend import DockerSession
settings = Settings(home=Path(sys.argv[1]), sandbox_image=sys.argv[2], deployment=sys.argv[4])
session = DockerSession(settings, sys.argv[3])
session.start()
print(session.container_id, flush=True)
time.sleep(120)
"""


def test_a_sigkilled_workers_container_is_reaped_when_the_worker_starts_again(
    session_factory: SessionFactory, docker_client: Any, sandbox_image: Any, worker_id: str, tmp_path: Path
) -> None:
    # Given a worker process that opened a session and was killed with SIGKILL (no cleanup ran)
    command = [sys.executable, "-c", ABANDONING_WORKER, str(tmp_path), sandbox_image.tag, worker_id, TEST_DEPLOYMENT]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as worker:
        assert worker.stdout is not None
        left = worker.stdout.readline().strip()
        worker.kill()
    assert docker_client.containers.get(left).status == "running"
    # When the worker starts again (same worker id, new process) / Then the leftover is gone
    session_factory()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(left)


# Dagger: the engine cannot run here, so its failure paths are tested for real in subprocesses.

DAGGER_START = """
import sys
from pathlib import Path
from hermes_worker.settings import Settings
from hermes_worker.sandbox import DaggerUnavailable, open_session
try:
    with open_session(Settings(home=Path(sys.argv[1]), container_backend="dagger"), "dagger-test"):
        print("STARTED")
except DaggerUnavailable as exc:
    print("UNAVAILABLE", exc.reason, "|", exc.fix)
"""


def dagger_start(tmp_path: Path, env: dict[str, str], pre: str = "") -> str:
    done = subprocess.run([sys.executable, "-c", pre + DAGGER_START, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return done.stdout + done.stderr


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "DAGGER" not in k}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not Path(p, "dagger").exists())
    return env | extra


def test_dagger_without_dagger_io_says_how_to_install_it(tmp_path: Path) -> None:
    out = dagger_start(tmp_path, clean_env(), pre="import sys; sys.modules['dagger'] = None\n")
    assert "UNAVAILABLE dagger-io is not installed" in out and "pip install 'dagger-io>=0.21'" in out


def test_dagger_without_its_cli_says_so(tmp_path: Path) -> None:
    needs_module("dagger", reason="dagger-io is not installed (pip install -e '.[dagger]')")
    out = dagger_start(tmp_path, clean_env())
    assert "UNAVAILABLE no Dagger CLI found on PATH" in out


def test_dagger_engine_that_cannot_start_is_reported(tmp_path: Path) -> None:
    needs_module("dagger", reason="dagger-io is not installed (pip install -e '.[dagger]')")
    cli = tmp_path / "dagger"
    cli.write_text("#!/bin/sh\necho 'engine: cannot reach the engine image' >&2\nexit 1\n")
    cli.chmod(0o755)
    out = dagger_start(tmp_path, clean_env(_EXPERIMENTAL_DAGGER_CLI_BIN=str(cli)))
    assert "UNAVAILABLE the Dagger engine cannot start" in out
    assert "cannot enforce memory, CPU or network limits" in out


@pytest.mark.skipif(os.environ.get("HERMES_TEST_DAGGER") != "1",
                    reason="needs a working Dagger engine (its CLI and engine image come only from the internet); "
                    "set HERMES_TEST_DAGGER=1 where one runs")  # fmt: skip
def test_dagger_session_output_equals_local(tmp_path: Path, sandbox_settings: Any) -> None:
    with open_session(
        sandbox_settings.with_overrides(container_backend="dagger"), f"dagger@{socket.gethostname()}"
    ) as s:
        for request in golden_chunks():
            assert records(run(s, request)) == records(locally(request))
