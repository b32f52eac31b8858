"""The delaying proxy (tests/support/delay_proxy.py) adds latency, not a bandwidth limit, and loses nothing.

Real sockets on 127.0.0.1: an echo server behind the proxy, the proxy in a thread of this process.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .support.delay_proxy import DelayProxy, main

DELAY = 0.2  # each way


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1 that closes its side when the client closes its own."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[DelayProxy]:
    started = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port), DELAY).start_in_thread()
    yield started
    started.stop()


def _receive(conn: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size and (data := conn.recv(65536)):
        got += data
    return got


def test_every_round_trip_takes_two_delays_more_and_messages_overlap(proxy: DelayProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        sent = time.monotonic()
        conn.sendall(b"ping")
        assert _receive(conn, 4) == b"ping"
        round_trip = time.monotonic() - sent
        assert 2 * DELAY <= round_trip < 2 * DELAY + 1.0, round_trip

        # Five messages 0.1 s apart: each comes back two delays after it left, so all five take
        # about 0.4 + 0.4 s, not five round trips (2 s): latency, not a narrower pipe.
        started = time.monotonic()
        for n in range(5):
            conn.sendall(b"m%d" % n)
            time.sleep(0.1)
        assert _receive(conn, 10) == b"m0m1m2m3m4"
        assert time.monotonic() - started < 5 * 2 * DELAY, time.monotonic() - started


def test_a_megabyte_comes_back_whole_and_in_order_then_the_close(proxy: DelayProxy) -> None:
    payload = bytes(range(256)) * 4096
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        threading.Thread(target=conn.sendall, args=(payload,), daemon=True).start()
        assert _receive(conn, len(payload)) == payload
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(1) == b""  # the server's close, passed on after the delay


def test_a_target_that_is_not_listening_closes_the_client_at_once(echo_port: int) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        nobody = spare.getsockname()[1]  # bound, not listening: connections are refused
        proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", nobody), DELAY).start_in_thread()
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn, \
                    contextlib.suppress(ConnectionResetError):
                assert conn.recv(1) == b""
        finally:
            proxy.stop()


@pytest.mark.parametrize(
    "argv",
    [[], ["127.0.0.1", "0", "127.0.0.1", "1"], ["127.0.0.1", "0", "127.0.0.1", "1", "-5"],
     ["127.0.0.1", "port", "127.0.0.1", "1", "50"], ["127.0.0.1", "0", "127.0.0.1", "1", "50", "extra"]],
)  # fmt: skip
def test_absurd_arguments_get_the_usage_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS" in capsys.readouterr().err


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        DelayProxy(("127.0.0.1", 0), ("127.0.0.1", 1), -0.1)
