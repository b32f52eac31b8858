"""A TCP proxy that delays every byte by a fixed time each way: latency where ``netem`` is missing.

The kernel this suite runs on has no ``netem`` qdisc, so a link's latency is made here: what the
proxy reads from one side at time *t* is written to the other side at *t + delay*, in order, while
later bytes keep flowing in behind it (a long, fat pipe, not a slow one: throughput is unchanged,
each round trip takes two delays more). A side that closes is closed on the other side after the
same delay; a side that fails resets both.

Standard library only, so a host of :mod:`tests.support.hosts` runs it as a plain script::

    ip netns exec NS python tests/support/delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS

It prints ``listening on HOST:PORT`` once it accepts connections. Tests may also run it in a thread
(:meth:`DelayProxy.start_in_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable

_READ_SIZE = 64 * 1024
_IN_FLIGHT = 256  # reads held back at most per direction: past that the reading side waits


class DelayProxy:
    """Forwards ``listen`` to ``target``, every byte ``delay`` seconds late in each direction."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
        if delay < 0:
            raise ValueError(f"a delay cannot be negative: {delay}")
        self.listen, self.target, self.delay = listen, target, delay
        self.port = listen[1]  # the port bound, once started (0 asks for a free one)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None

    async def serve(self, on_ready: Callable[[int], object] = lambda port: None) -> None:
        """Accept connections until cancelled; ``on_ready(port)`` once listening."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._connect, *self.listen, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        on_ready(self.port)
        async with self._server:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serve_forever()

    async def _connect(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            target_in, target_out = await asyncio.open_connection(*self.target)
        except OSError:
            client_out.transport.abort()
            return
        both = (client_out, target_out)
        try:
            await asyncio.gather(self._pipe(client_in, target_out, both), self._pipe(target_in, client_out, both),
                                 return_exceptions=True)  # fmt: skip
        finally:  # also when the proxy stops: its connections go with it
            for writer in both:
                writer.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    both: tuple[asyncio.StreamWriter, ...]) -> None:  # fmt: skip
        """Copy ``source`` to ``sink``, each read written ``delay`` seconds after it arrived.

        A failure on either side resets both connections, as a broken path would.
        """
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_IN_FLIGHT)
        writer = asyncio.create_task(self._deliver(held, sink))
        try:
            while data := await source.read(_READ_SIZE):
                put = asyncio.ensure_future(held.put((loop.time() + self.delay, data)))
                await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
                if writer.done():  # the sink broke: nothing more can go through
                    put.cancel()
                    raise ConnectionResetError("the other side is gone")
            await held.put((loop.time() + self.delay, b""))  # end of stream, delayed like the data
            await writer
        except OSError:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            for side in both:
                side.transport.abort()
            raise

    async def _deliver(self, held: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await held.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                if sink.can_write_eof():
                    sink.write_eof()
                return
            sink.write(data)
            await sink.drain()

    def start_in_thread(self) -> DelayProxy:
        """Serve from a daemon thread of this process; returns once it listens (see :attr:`port`)."""
        ready = threading.Event()
        threading.Thread(target=asyncio.run, args=(self.serve(lambda port: ready.set()),), daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the delay proxy did not start listening within 10 s")
        return self

    def stop(self) -> None:
        """Stop listening (a proxy in a thread)."""
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)


def main(argv: list[str]) -> int:
    try:
        listen_host, listen_port, target_host, target_port, delay_ms = argv
        proxy = DelayProxy((listen_host, int(listen_port)), (target_host, int(target_port)), int(delay_ms) / 1000)
    except ValueError as exc:
        print(f"usage: delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS ({exc})",
              file=sys.stderr)  # fmt: skip
        return 2
    asyncio.run(proxy.serve(lambda port: print(f"listening on {listen_host}:{port}", flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
