"""The Docker backend: one hardened, long-running container per session, fed over one socket.

The container runs the engine server (:mod:`.server`); the session attaches to its standard
input and output once and sends every chunk over that one stream, so a chunk costs a round trip
of a few hundred microseconds instead of a container start (~0.3 s) or an exec (~50 ms).
Every Docker, requests and socket error is translated at this boundary (:func:`.errors.translate`).
The session is not thread-safe: one per worker process, used by one thread at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

# The Docker SDK ships no type information (typeshed's types-docker would add it).
import docker
import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig

from ..sentinel_url import SentinelUrl, is_sentinel
from .errors import (
    ContainerDied,
    DockerUnavailable,
    ImageMissing,
    ProtocolError,
    SandboxError,
    SessionFailed,
    TornStream,
    translate,
)
from .protocol import DockerDemux, FrameReader, encode_frame
from .reply import BadReply, check_hello
from .server import TEST_HOOKS_ENV
from .session import SandboxSession, timed, unwrap_reply

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "LABEL_DEPLOYMENT",
    "LABEL_SESSION",
    "DockerSession",
    "connect",
    "deployment_id",
    "hardening",
    "owner_labels",
    "reap_orphans",
    "session_filters",
]

log = logging.getLogger("hermes.sandbox")

SERVER_COMMAND = ["python3", "-m", "hermes_worker.sandbox.server"]
SANDBOX_USER = "10001:10001"
_API_TIMEOUT_S = 60.0  # container create/start/remove on a busy engine; the probe uses its own
_START_TIMEOUT_S = 60.0  # from start() to the engine's hello
LABEL_SESSION = "hermes.session"
# Which deployment owns a session container: reaping and cleanup never look past it.
LABEL_DEPLOYMENT = "hermes.deployment"
# Query parameters of a Redis URL that carry credentials (redis-py reads them like the user part).
_CREDENTIAL_PARAMS = frozenset({"password", "username", "user"})


def deployment_id(settings: Settings) -> str:
    """The deployment that owns the sandbox containers this process starts.

    ``HERMES_DEPLOYMENT`` when set. Otherwise derived from the result backend: the Redis that
    holds a cluster's registry, results and log is what makes workers one cluster, so every
    worker of a cluster derives the same id, and two checkouts (or test runs) on private Redis
    instances derive different ones. Credentials are left out (rotating a password must not
    orphan the containers started before), and so is the Docker host: a listing only ever sees
    one engine's containers, so the engine adds nothing to tell deployments apart on it.
    HERMES_HOME is not used either: the workers of one cluster (systemd units, pods) each have
    their own, and they must still reap each other's leftovers on a shared host.

    >>> from pathlib import Path
    >>> from hermes_worker.settings import Settings
    >>> a = deployment_id(Settings(home=Path("."), result_backend="redis://:s3cret@Redis:6379/0"))
    >>> a == deployment_id(Settings(home=Path("."), result_backend="redis://redis/0?password=other"))
    True
    >>> a == deployment_id(Settings(home=Path("."), result_backend="redis://redis:6379/1"))
    False
    >>> deployment_id(Settings(home=Path("."), deployment="prod-eu"))
    'prod-eu'
    """
    if settings.deployment:
        return settings.deployment
    if is_sentinel(settings.result_backend):
        # A group, wherever its primary is now: its sentinels (in any order), the master's name, the database.
        group = SentinelUrl.parse(settings.result_backend)
        canonical = f"sentinel://{','.join(sorted(group.hosts().lower().split(',')))}/{settings.sentinel_master}/{group.db}"
        return "auto-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]
    parts = urlsplit(settings.result_backend)
    scheme = parts.scheme.lower()
    where = parts.netloc.rpartition("@")[2].lower()  # the address, without user:password@
    path = parts.path
    if scheme in ("redis", "rediss"):
        where = where if ":" in where.rpartition("]")[2] else f"{where}:6379"
        path = path if path.strip("/") else "/0"
    params = parse_qsl(parts.query, keep_blank_values=True)
    query = sorted((k, v) for k, v in params if k.lower() not in _CREDENTIAL_PARAMS)
    canonical = f"{scheme}://{where}{path}?{urlencode(query)}"
    return "auto-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def session_filters(deployment: str, **labels: str) -> dict[str, list[str]]:
    """Docker list filters for the session containers of ``deployment`` (and ``labels``, all of them).

    Everything that lists or removes Hermes containers goes through this: the reaper, the
    tests' cleanup, the benchmarks. Another deployment's containers never match.
    """
    wanted = {LABEL_SESSION: "1", LABEL_DEPLOYMENT: deployment, **labels}
    return {"label": [f"{key}={value}" for key, value in wanted.items()]}


def _check_socket(timeout_s: float) -> None:
    """Connect once to a unix DOCKER_HOST ourselves, so a missing or forbidden socket is reported
    plainly (and the SDK, which leaks the socket of a failed connect, never tries it)."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout_s)
            probe.connect(host.removeprefix("unix://"))


def connect(timeout_s: float = _API_TIMEOUT_S) -> docker.DockerClient:
    """A client of the engine DOCKER_HOST names (or the default socket) that has answered a ping.

    Raises:
        DockerUnavailable: not running, permission denied, nothing at DOCKER_HOST, too slow.
    """
    client: docker.DockerClient | None = None
    try:
        _check_socket(timeout_s)
        client = docker.from_env(timeout=timeout_s)
        client.ping()
    except Exception as exc:
        if client is not None:
            client.close()
        raise translate(exc, "connect", timeout_s) from exc
    return client


def hardening(settings: Settings) -> dict[str, Any]:
    """The container options that isolate a session container, from ``settings``."""
    return {
        "user": SANDBOX_USER,
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=16m"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": settings.container_pids,
        "mem_limit": settings.container_memory,
        "memswap_limit": settings.container_memory,  # no swap: over the limit means OOM, not thrashing
        "nano_cpus": int(settings.container_cpus * 1e9),
        "ipc_mode": "none",
        # Frames carry prompts: keep them off the engine's disk. Standard error is read by the session.
        "log_config": LogConfig(type="none"),
    }


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first), or [] if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (Linux clock ticks since boot), or "" if unknown.

    A pid alone can be reused by an unrelated process after the owner died; pid plus start time
    cannot.
    """
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else ""


def owner_labels(worker_id: str, pid: int | None = None, *, deployment: str) -> dict[str, str]:
    """The labels that say which deployment and which worker process own a session container."""
    pid = os.getpid() if pid is None else pid
    return {
        LABEL_SESSION: "1",
        LABEL_DEPLOYMENT: deployment,
        "hermes.worker": worker_id,
        "hermes.host": socket.gethostname(),
        "hermes.pid": str(pid),
        "hermes.pid_start": _start_ticks(pid),
    }


def _owner_gone(labels: Mapping[str, str]) -> bool:
    try:
        pid = int(labels.get("hermes.pid", ""))
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):  # no pid label: not ours to judge; EPERM: it exists
        return False
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return True  # killed, and not yet reaped by its new parent: gone all the same
    started = labels.get("hermes.pid_start", "")
    return bool(started) and started != (fields[19] if len(fields) > 19 else "")


def reap_orphans(client: docker.DockerClient, worker_id: str, deployment: str) -> list[str]:
    """Remove session containers of ``deployment`` whose owner is gone; return their ids.

    A container is an orphan when its owner process on this host no longer exists (or its pid
    now belongs to another process, e.g. an earlier run of this worker), or when it carries
    ``worker_id`` but was started on another host. Containers of live processes are kept, even
    those of sibling processes with the same worker id. Containers of other deployments are
    never touched, whatever their owner; containers without a deployment label (started by a
    Hermes older than the label) only when they carry exactly ``worker_id``.
    """
    host, removed = socket.gethostname(), []
    try:
        # The SDK inspects each listed container: one removed in between (a sibling reaping it, a
        # session closing) must not fail the listing, it is gone as we want it.
        found = client.containers.list(all=True, filters=session_filters(deployment), ignore_removed=True)
        legacy = client.containers.list(
            all=True, filters={"label": [f"{LABEL_SESSION}=1", f"hermes.worker={worker_id}"]}, ignore_removed=True
        )
        found += [c for c in legacy if LABEL_DEPLOYMENT not in c.labels]
        for container in found:
            labels = container.labels
            if labels.get(LABEL_DEPLOYMENT, deployment) != deployment:
                continue  # the engine filtered already; a container relabelled since is not ours
            mine = labels.get("hermes.worker") == worker_id
            # On another host we cannot see the owner: only our own worker id is ours to judge.
            if _owner_gone(labels) if labels.get("hermes.host") == host else mine:
                try:
                    container.remove(force=True)
                    removed.append(container.id)
                except docker.errors.NotFound:  # another worker reaped it first
                    pass
                except docker.errors.APIError as exc:
                    # 409 "removal … is already in progress": another worker is reaping it now (the
                    # new processes of a pool whose sibling was killed all reap at start). Gone
                    # all the same; anything else about one leftover must not fail this session.
                    if exc.status_code != 409:
                        log.warning("could not remove leftover sandbox container %s: %s", container.id, exc)
    except Exception as exc:
        raise translate(exc, "reap orphan containers") from exc
    if removed:
        log.warning("removed %d sandbox container(s) left by dead workers: %s", len(removed), ", ".join(removed))
    return removed


class DockerSession(SandboxSession):
    """A session whose sandbox is one hardened Docker container running the engine server."""

    engine_name = "Docker"

    @classmethod
    def preflight(cls, settings: Settings, details: dict[str, Any]) -> None:
        """The engine answers (``docker_version``, ``api_version``) and holds the sandbox ``image``.

        Raises:
            DockerUnavailable: no engine answers within ``settings.docker_timeout_s``.
            ImageMissing: the sandbox image is not built.
        """
        with timed(details, "engine"):
            client = connect(settings.docker_timeout_s)
        try:
            version = client.version()
            details.update(docker_version=version.get("Version"), api_version=version.get("ApiVersion"))
            with timed(details, "image"):
                images = client.images.list(name=settings.sandbox_image)
            if not images:
                raise ImageMissing(
                    f"sandbox image {settings.sandbox_image} is not built",
                    "hermes image build --base hermes-base:bookworm (or ops/ensure-images.sh)",
                )
            details["image"] = images[0].id
        except SandboxError:
            raise
        except Exception as exc:
            raise translate(exc, "talk to the Docker engine", settings.docker_timeout_s) from exc
        finally:
            client.close()

    @classmethod
    def health(cls, settings: Settings) -> str | None:
        """None when the engine answers a ping and holds the sandbox image; otherwise why not.

        The full probe (a session and the self-test) runs only when this turns healthy again.
        """
        try:
            client = connect(settings.docker_timeout_s)
        except SandboxError as exc:
            return exc.reason
        try:
            client.images.get(settings.sandbox_image)
        except Exception as exc:
            return translate(exc, "look up the sandbox image", settings.docker_timeout_s).reason
        finally:
            client.close()
        return None

    def __init__(self, settings: Settings, worker_id: str, *, test_hooks: bool | str = False) -> None:
        super().__init__(settings, worker_id)
        # Tests only: True lets marker prompts exhaust memory or sleep; "lie=KIND" makes the
        # container lie in its replies (see server.TEST_HOOKS_ENV). Never set from settings.
        self._test_hooks = test_hooks
        self._client: docker.DockerClient | None = None
        self._container: Container | None = None
        self._raw: Any = None
        self._stream: DockerDemux | None = None
        self._reader: FrameReader | None = None
        self._next_id = 0
        self.deployment = deployment_id(settings)

    @property
    def container_id(self) -> str | None:
        """The id of the current container (it changes when a dead one is replaced)."""
        return self._container.id if self._container is not None else None

    def _start(self) -> None:
        self._client = connect(_API_TIMEOUT_S)
        try:
            self._digest = self._client.images.get(self.settings.sandbox_image).id
        except docker.errors.ImageNotFound:
            raise ImageMissing(
                f"sandbox image {self.settings.sandbox_image} is not built",
                "hermes image build --base hermes-base:bookworm (or ops/ensure-images.sh)",
            ) from None
        except Exception as exc:
            raise translate(exc, "look up the sandbox image") from exc
        reap_orphans(self._client, self.worker_id, self.deployment)
        self._spawn()
        log.info(
            "sandbox session started: container %s, image %s, deployment %s",
            self.container_id, self._digest, self.deployment,
        )  # fmt: skip

    def _spawn(self) -> None:
        assert self._client is not None
        hooks = "1" if self._test_hooks is True else self._test_hooks
        env = {TEST_HOOKS_ENV: hooks} if hooks else {}
        try:
            self._container = self._client.containers.create(
                self.image_digest,
                SERVER_COMMAND,
                stdin_open=True,
                labels={
                    **dict(self.settings.container_labels),
                    **owner_labels(self.worker_id, deployment=self.deployment),
                },
                environment=env,
                **hardening(self.settings),
            )
            self._raw = self._client.api.attach_socket(
                self._container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            self._stream = DockerDemux(getattr(self._raw, "_sock", self._raw))
            self._reader = FrameReader(self._stream.recv)
            self._container.start()
        except Exception as exc:
            raise translate(exc, "start the sandbox container") from exc
        try:
            # The versions a fresh container reports, before any prompt reached it, are the ones
            # the host writes into provenance and requires in every record.
            self._versions = check_hello(self._call({"op": "hello"}, _START_TIMEOUT_S)[0])
        except ContainerDied as exc:
            raise SessionFailed(f"the sandbox engine did not start: {exc.reason}", "hermes image build") from exc

    def _discard(self) -> None:
        """Close the stream and remove the container, whatever state they are in."""
        for closable in (self._raw, self._stream.sock if self._stream else None):
            if closable is not None:
                closable.close()
        self._raw = self._stream = self._reader = None
        container, self._container = self._container, None
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:  # the engine is gone: the next start reaps it
                log.warning("could not remove sandbox container %s: %s", container.id, translate(exc, "remove it"))

    def close(self) -> None:
        self._discard()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _replace(self) -> None:
        self._discard()
        self._restarts += 1
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                self._spawn()
                break
            except DockerUnavailable:  # e.g. the engine itself is restarting: wait for it
                self._discard()
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        log.warning("sandbox container replaced (restart %d): now %s", self._restarts, self.container_id)

    def _died(self, cause: BaseException) -> ContainerDied:
        state: dict[str, Any] = {}
        if self._container is not None:
            try:
                self._container.reload()
                state = self._container.attrs.get("State", {})
            except Exception as exc:
                state = {"Status": f"unknown ({translate(exc, 'inspect it').reason})"}
        how = "killed by the out-of-memory killer" if state.get("OOMKilled") else f"exit code {state.get('ExitCode')}"
        tail = self._stream.stderr_tail() if self._stream else ""
        return ContainerDied(
            f"sandbox container died ({state.get('Status', 'gone')}, {how}){': ' + tail if tail else ''} [{cause}]",
            f"raise HERMES_CONTAINER_MEMORY (now {self.settings.container_memory})" if state.get("OOMKilled") else "",
        )

    def _call(self, request: dict[str, Any], timeout_s: float, blob: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """The reply's header and blob; it answers this request (its id), nothing else is checked."""
        if self._stream is None or self._reader is None:
            raise self._died(ConnectionError("no container"))
        self._next_id += 1
        frame = encode_frame(request | {"id": self._next_id}, blob)  # FrameTooLarge: the caller splits
        try:
            # One deadline for the whole exchange: the container cannot stretch it byte by byte.
            self._stream.deadline = time.monotonic() + timeout_s
            self._stream.sock.settimeout(timeout_s)
            self._stream.sock.sendall(frame)
            frame_in = self._reader.read_frame()
        except TimeoutError:
            # A hung engine cannot be trusted with the next chunk: drop it now; the next chunk
            # finds no container and gets a fresh one, like after any other death.
            self._discard()
            raise SessionFailed(
                f"the sandbox did not answer within {timeout_s:g} s", "raise HERMES_CHUNK_TIME_LIMIT"
            ) from None
        except (OSError, TornStream) as exc:
            raise self._died(exc) from exc
        except ProtocolError as exc:  # a frame over the bound, a body that is not JSON: not an accident
            raise BadReply(f"the sandbox broke the framing: {exc.reason}") from exc
        if frame_in is None:
            raise self._died(EOFError("stream ended"))
        reply, records = frame_in
        if reply.get("id") != self._next_id:
            raise BadReply(f"the sandbox answered request {str(reply.get('id'))[:20]}, not {self._next_id}")
        return reply, records

    def _attempt(self, payload: Mapping[str, Any], worker: str) -> tuple[dict[str, Any], bytes]:
        body = dict(payload)
        text = body.pop("text", None)
        request: dict[str, Any] = {"op": "chunk", "worker": worker, "image": self.image_digest, "payload": body}
        if text is not None:  # the lines go as they are, in the frame's blob (see server.py)
            request["text"] = True
        lines = b"" if text is None else str(text).encode("utf-8", "surrogatepass")
        reply, records = self._call(request, self.settings.chunk_time_limit_s, lines)
        return unwrap_reply(reply), records
