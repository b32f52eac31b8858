"""The one private redis-server harness of the suite.

Every test that needs Redis gets a server of its own (never the shared one on 6379): the
session-wide server of the cluster tests, the servers a chaos test stops, kills or pauses,
the ones started with extra options, with a password or with TLS.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import pytest
import redis

from .environment import free_port, missing, needs_mark
from .waiting import wait_until


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    if shutil.which("openssl") is None:
        missing("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=hermes-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")


@dataclass
class RedisServer:
    """A redis-server of the test's own on 127.0.0.1, in ``workdir`` (its log, its append-only file).

    Started explicitly (:meth:`start`, which returns once it answers), on a free port it keeps:
    a chaos test may :meth:`stop` it (SIGTERM: a clean shutdown), :meth:`kill` it (a crash),
    :meth:`pause` and :meth:`resume` it (a server that hangs), and :meth:`start` it again on the
    same port. ``options`` are extra ``redis-server`` arguments (``"--proto-max-bulk-len", "1mb"``).
    Nothing is kept on disk unless ``appendonly``.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    tls: TlsFiles | None = None
    appendonly: bool = False
    options: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, port: int | None = None) -> str:
        """The URL of database ``db``; ``port`` replaces the server's (a proxy in front of it)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{port or self.port}/{db}"
        return f"rediss://{auth}127.0.0.1:{port or self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}"

    def client(self) -> redis.Redis:
        """A new client of database 0 (short connect timeout: a stopped server is found out fast)."""
        return redis.Redis.from_url(self.url(), socket_connect_timeout=1, socket_timeout=10)

    @property
    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> RedisServer:
        """Start the server (again, after a stop) and return once it answers PING."""
        needs_mark("cluster", "a redis-server")
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed (apt-get install redis-server)")
        assert binary is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "no"]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += self.options
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}: {self.log[-2000:]}")
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        try:
            wait_until(answers, 30, 0.05, f"redis-server on port {self.port}")
        except BaseException:
            self.kill()  # started and never answered: do not leave it behind
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (the append-only file is flushed); SIGKILL: a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.send_signal(signal.SIGCONT)  # a paused server would never act on SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server crashes, losing whatever it had not written."""
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections and answers nothing until :meth:`resume`."""
        assert self.process is not None and self.process.poll() is None, "the server is not running"
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused server answers again."""
        assert self.process is not None, "the server is not running"
        self.process.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        """Empty every database."""
        self.client().flushall()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.kill()


@dataclass
class SentinelGroup:
    """A primary, a replica and three sentinels of the test's own, all on 127.0.0.1.

    Sentinel judges a server down after ``down_after_ms`` (1 s here, 30 s by default), so that a
    failover takes seconds. ``password``: the servers' (``requirepass`` and ``masterauth``, in
    the URL as Celery wants it); ``sentinel_password``: the sentinels' own (HERMES_SENTINEL_PASSWORD).
    The servers are :class:`RedisServer` (append-only): a test kills one with :meth:`RedisServer.kill`
    and starts it again on the same port; Sentinel then makes it a replica of the new primary.
    """

    workdir: Path
    master: str = "hermes-test"
    password: str | None = None
    sentinel_password: str | None = None
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    # The port the replica replicates from, given the primary's: a proxy in between (whose
    # hold() delays replication) instead of the primary itself. Sentinel would point the replica
    # at the primary after failover_timeout_ms: make that longer than the test.
    replicate_via: Callable[[int], int] | None = None
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[tuple[int, subprocess.Popen[bytes] | None]] = field(default_factory=list)

    def start(self, settle: bool = True) -> SentinelGroup:
        """Start the primary, its replica (in sync) and three sentinels.

        Each sentinel names the primary at once; they find the replica and each other within a
        few seconds (their hello messages go every 2 s), and only then can they fail over. With
        ``settle`` this returns then; without, call :meth:`wait_settled` before breaking anything.
        """
        needs_mark("cluster", "a Redis Sentinel group")
        sentinel = shutil.which("redis-sentinel")
        if sentinel is None:
            missing("redis-sentinel is not installed (apt-get install redis-sentinel)")
        auth = ("--requirepass", self.password, "--masterauth", self.password) if self.password else ()
        primary = RedisServer(self.workdir / "primary", password=self.password, appendonly=True, options=auth[2:])
        self.servers = [primary.start()]
        link = primary.port if self.replicate_via is None else self.replicate_via(primary.port)
        replica = RedisServer(self.workdir / "replica", password=self.password, appendonly=True,
                              options=(*auth[2:], "--replicaof", "127.0.0.1", str(link)))  # fmt: skip
        self.servers.append(replica.start())
        wait_until(lambda: self._in_sync(replica), 30, 0.05, "the replica to be in sync")
        for n in range(3):
            self.sentinels.append((free_port(), None))
            self._start_sentinel(n)
        wait_until(lambda: all(self._answers(n) for n in range(len(self.sentinels))), 30, 0.05, "the sentinels")
        if settle:
            self.wait_settled()
        return self

    def wait_settled(self) -> None:
        """Wait until every sentinel sees the replica and the other sentinels: ready to fail over."""
        wait_until(self._settled, 60, 0.1, "the sentinels to see the replica and each other")

    def _start_sentinel(self, n: int) -> None:
        port = self.sentinels[n][0]
        directory = self.workdir / f"sentinel-{n}"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {directory}",
                 f"sentinel monitor {self.master} 127.0.0.1 {self.servers[0].port} 2",
                 f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}",
                 f"sentinel failover-timeout {self.master} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {self.master} 1"]  # fmt: skip
        if self.password:
            lines.append(f'sentinel auth-pass {self.master} "{self.password}"')
        if self.sentinel_password:
            lines += [f'requirepass "{self.sentinel_password}"', f'sentinel sentinel-pass "{self.sentinel_password}"']
        config = directory / "sentinel.conf"  # Sentinel rewrites it: one file each
        config.write_text("\n".join(lines) + "\n")
        with (directory / "sentinel.log").open("ab") as log:
            process = subprocess.Popen([str(shutil.which("redis-sentinel")), str(config)], stdout=log,
                                       stderr=subprocess.STDOUT)  # fmt: skip
        self.sentinels[n] = (port, process)

    def url(self, db: int = 0) -> str:
        """``sentinel://[:PASSWORD@]127.0.0.1:P1/DB;sentinel://127.0.0.1:P2;...``, the password quoted."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        first, *rest = (port for port, _ in self.sentinels)
        return ";".join([f"sentinel://{auth}127.0.0.1:{first}/{db}", *(f"sentinel://127.0.0.1:{p}" for p in rest)])

    def env(self) -> dict[str, str]:
        """The Hermes settings for this group besides the URL."""
        return {"HERMES_SENTINEL_MASTER": self.master, "HERMES_SENTINEL_PASSWORD": self.sentinel_password or ""}

    def ask(self, n: int = 0) -> redis.Redis:
        """A client of sentinel ``n`` itself."""
        return redis.Redis(port=self.sentinels[n][0], password=self.sentinel_password, socket_connect_timeout=1,
                           socket_timeout=5, decode_responses=True)  # fmt: skip

    def primary_port(self) -> int | None:
        """The primary's port as the sentinels agree on it (None while they do not)."""
        answers = set()
        for n in range(len(self.sentinels)):
            try:
                answers.add(int(self.ask(n).sentinel_get_master_addr_by_name(self.master)[1]))
            except (redis.RedisError, TypeError):
                return None
        return answers.pop() if len(answers) == 1 else None

    @property
    def primary(self) -> RedisServer:
        """The server the sentinels name as primary now."""
        port = self.primary_port()
        found = next((server for server in self.servers if server.port == port), None)
        if found is None:
            raise redis.ConnectionError("the sentinels do not agree on a primary now")
        return found

    def client(self) -> redis.Redis:
        """A plain client of the primary now (for the checker and the registry)."""
        return self.primary.client()

    def wait_promoted(self, old: RedisServer, timeout: float = 60) -> RedisServer:
        """Wait until every sentinel names another primary than ``old`` and it takes writes; return it."""

        def promoted() -> RedisServer | None:
            port = self.primary_port()
            if port is None or port == old.port:
                return None
            server = next(s for s in self.servers if s.port == port)
            return server if self._role(server) == "master" else None

        found = wait_until(promoted, timeout, 0.05, "Sentinel to promote the replica")
        assert found is not None
        return found

    def wait_replica(self, server: RedisServer, timeout: float = 60) -> None:
        """Wait until ``server`` replicates the primary, in sync."""
        wait_until(lambda: self._in_sync(server) and self.primary_port() != server.port, timeout, 0.1,
                   f"port {server.port} to be a replica")  # fmt: skip

    def stop(self) -> None:
        for _port, process in self.sentinels:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        for server in self.servers:
            server.kill()

    def _info(self, server: RedisServer) -> dict[str, object]:
        try:
            return dict(server.client().info("replication"))
        except redis.RedisError:
            return {}

    def _role(self, server: RedisServer) -> str:
        return str(self._info(server).get("role", ""))

    def _in_sync(self, server: RedisServer) -> bool:
        info = self._info(server)
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def _answers(self, n: int) -> dict[str, object] | None:
        """What sentinel ``n`` knows of the master (None while it does not answer)."""
        process = self.sentinels[n][1]
        assert process is not None
        if process.poll() is not None:
            log = (self.workdir / f"sentinel-{n}" / "sentinel.log").read_text(errors="replace")
            pytest.fail(f"redis-sentinel exited with {process.returncode}: {log[-2000:]}")
        try:
            return dict(self.ask(n).sentinel_master(self.master))
        except redis.RedisError:
            return None

    def _settled(self) -> bool:
        for n in range(len(self.sentinels)):
            state = self._answers(n)
            if state is None or int(str(state["num-slaves"])) < 1:
                return False
            if int(str(state["num-other-sentinels"])) < len(self.sentinels) - 1:
                return False
        return True

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
