"""The one private redis-server harness of the suite.

Every test that needs Redis gets a server of its own (never the shared one on 6379): the
session-wide server of the cluster tests, the servers a chaos test stops, kills or pauses,
the ones started with extra options, with a password or with TLS.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

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
        auth = f":{self.password}@" if self.password else ""
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
