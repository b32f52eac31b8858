"""Faults a chaos test injects below Hermes: a network path to cut, a Docker engine to stop.

- :class:`TcpProxy`: sits between Hermes and Redis; ``cut()`` resets every connection and
  refuses new ones (Redis unreachable, its data intact) until ``restore()``.
- :class:`PrivateDockerd`: a second Docker engine of the test's own (own data root, exec root,
  pid file and socket, no bridge, no iptables), holding the sandbox image, that a test may
  stop and start. The system engine is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support.environment import free_port, missing
from .support.waiting import wait_until


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; ``cut()`` makes the target unreachable.

    While cut, every open connection has been reset and nothing listens on ``port``: clients
    get *connection refused*, as when a network path or the server is gone, while the server
    itself keeps its data.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()  # cleared by hold(): data is read but not passed on
        self._flowing.set()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut() closed the listener
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(256 * 1024):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)
        # Linger 0: close() sends a reset. shutdown() first: close() alone would not wake the
        # other pump thread blocked in recv() on it, and the connection would stay up.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def hold(self) -> None:
        """Pass nothing on, keeping every connection open: what is sent meanwhile waits in the proxy
        (and the kernel), and a :meth:`cut` after it loses it; :meth:`release` passes it on."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Reset every connection and stop listening (what a :meth:`hold` kept is lost)."""
        if self._listener is not None:
            # shutdown() first: close() alone does not wake the thread blocked in accept(),
            # which would let one more connection through.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            self._close(sock)
        self._flowing.set()  # pumps held with data: their connections are gone, the data with them

    def restore(self) -> None:
        self.start()


# A private Docker engine -------------------------------------------------------------------------


class PrivateDockerd:
    """A second dockerd of the test's own, under a short directory in /tmp (socket paths are short).

    Never the system engine: its own ``--data-root``, ``--exec-root``, ``--pidfile``, unix
    socket and containerd, no bridge network and no iptables rules.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        binary = shutil.which("dockerd")
        if binary is None:
            missing("dockerd is not installed")
        assert binary is not None
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "docker.pid"), "--host", self.host, "--bridge", "none",
             "--iptables=false", "--ip-masq=false", "--shutdown-timeout", "2", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                missing(f"a private dockerd cannot run here: {self.log()[-1500:]}")
            done = subprocess.run(["docker", "-H", self.host, "version"], capture_output=True, timeout=30)
            return done.returncode == 0

        wait_until(answers, timeout, 0.5, "the private dockerd")

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")

    def load(self, image: str) -> None:
        """Copy ``image`` from the system engine into this one (docker save | docker load)."""
        saver = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        loaded = subprocess.run(["docker", "-H", self.host, "load"], stdin=saver.stdout, capture_output=True,
                                timeout=300)  # fmt: skip
        assert saver.stdout is not None
        saver.stdout.close()
        assert saver.wait(timeout=60) == 0 and loaded.returncode == 0, loaded.stderr

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.process = None

    def destroy(self) -> None:
        self.stop()
        # A daemon stopped in a hurry can leave mounts under its roots: unmount before removing.
        mounts = Path("/proc/mounts").read_text().splitlines()
        for target in sorted((m.split()[1] for m in mounts if m.split()[1].startswith(str(self.root))), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_dockerd(sandbox_image: Any) -> Iterator[PrivateDockerd]:
    """A private Docker engine holding the sandbox image of this run, shared by a module's tests
    (loading the image is the slow part); tests may stop it and start it again. Removed afterwards."""
    if os.geteuid() != 0:
        missing("a private dockerd needs root")
    daemon = PrivateDockerd()
    try:
        daemon.start()
        daemon.load(sandbox_image.tag)
        yield daemon
    finally:
        daemon.destroy()
