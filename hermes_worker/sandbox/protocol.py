"""The framed protocol between the host and the engine server inside the sandbox.

A frame is a 4-byte big-endian length followed by that many bytes of body. The body is a header,
one JSON object in UTF-8 (never a raw line break: JSON escapes it), then ``b"\n"``, then a raw
payload of bytes (the *blob*: a chunk's input lines going in, its JSONL records coming back), so
that neither side encodes or decodes a prompt or a record as a JSON string on the way::

    length | {"frame": 2, "blob": 1234, "op": "chunk", ...} \n | 1234 bytes

The header names the frame protocol version (``frame``) and the blob's length (``blob``), and
both are checked: a version other than :data:`FRAME_VERSION` is refused naming both versions
(a body with no line break at all is the JSON-only frame of protocol 1, and is refused the
same way), and a blob length that is not exactly what the frame holds is refused. Prompt text
travels either in the blob, which the frame's length delimits, or inside JSON strings: a prompt
that imitates the framing (length bytes, braces, newlines) cannot end a frame early. Lengths
are checked against a bound before anything is allocated, and a stream that ends inside a frame
is reported as torn, never silently truncated. Underneath, :class:`DockerDemux` takes our
frames out of Docker's own multiplexing of a container's standard output and error.

>>> reader = FrameReader(BytesRecv(encode_frame({"op": "hello"}) + encode_frame({"n": 1}, b"raw")).recv)
>>> reader.read_frame(), reader.read_frame(), reader.read_frame()
(({'op': 'hello'}, b''), ({'n': 1}, b'raw'), None)

The standard library and :mod:`hermes_worker.fast_json`'s shared encoder only: this module ships
inside the sandbox image.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ..fast_json import encode_compact
from .errors import FrameTooLarge, ProtocolError, TornStream

__all__ = [
    "FRAME_VERSION",
    "HEADER_BYTES",
    "MAX_FRAME_BYTES",
    "BytesRecv",
    "DockerDemux",
    "FrameReader",
    "decode_body",
    "encode_frame",
    "split_body",
]

HEADER_BYTES = 4
# The version of the frame layout. 2: a JSON header, a line break, raw bytes; 1 (before it):
# the body was one JSON object. The sandbox image is tagged by its content, so a host whose
# protocol changed builds an image whose server speaks the same one; a mismatch means an image
# from another checkout (HERMES_SANDBOX_IMAGE pinned to an old tag).
FRAME_VERSION = 2
# 64 MiB: a default chunk (1,024 ordinary prompts) is well under 1 MiB; a bigger request is split
# by the session before it is sent, and the container's memory limit (512m by default) must hold
# the frame, its decoded form and the result at the same time.
MAX_FRAME_BYTES = 64 * 1024 * 1024
_RECV_BYTES = 256 * 1024

Recv = Callable[[int], bytes]
"""Read up to n bytes; return ``b""`` only at the end of the stream."""


def encode_frame(message: Mapping[str, Any], blob: bytes = b"", max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame holding ``message`` (the header, with the version and blob length added) and ``blob``.

    Raises:
        FrameTooLarge: the frame's body is larger than ``max_bytes``.
    """
    # surrogatepass: a lone surrogate in a prompt must reach the engine, which reports it as an
    # item error; a strict encoder would fail the whole chunk instead.
    header = encode_compact({**message, "frame": FRAME_VERSION, "blob": len(blob)}).encode("utf-8", "surrogatepass")
    size = len(header) + 1 + len(blob)
    if size > max_bytes:
        raise FrameTooLarge(f"frame of {size:,} bytes is larger than the {max_bytes:,}-byte bound")
    return b"".join((size.to_bytes(HEADER_BYTES, "big"), header, b"\n", blob))


def decode_body(body: bytes) -> dict[str, Any]:
    """The JSON object a frame header (or a protocol-1 body) holds.

    Raises:
        ProtocolError: the body is not UTF-8 JSON holding one object.
    """
    try:
        message = json.loads(body.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ProtocolError(f"frame body is not UTF-8 JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame body is a JSON {type(message).__name__}, not an object")
    return message


def split_body(body: bytes) -> tuple[dict[str, Any], bytes]:
    """A frame body's header (without ``frame`` and ``blob``) and blob, both checked.

    Raises:
        ProtocolError: the header is not a JSON object, names another protocol version, or
            announces a blob length other than the one the frame holds.
    """
    end = body.find(b"\n")
    header = decode_body(body if end < 0 else body[:end])
    version = header.pop("frame", None)
    if end < 0 or version != FRAME_VERSION or type(version) is not int:
        said = 1 if end < 0 and version is None else shown(version)
        raise ProtocolError(
            f"the other side speaks frame protocol {said}, this side {FRAME_VERSION}",
            "rebuild the sandbox image from this checkout (hermes image build), or unset HERMES_SANDBOX_IMAGE",
        )
    blob = body[end + 1 :]
    announced = header.pop("blob", None)
    if type(announced) is not int or announced != len(blob):
        raise ProtocolError(f"frame header announces a blob of {shown(announced)} bytes, the frame holds {len(blob):,}")
    return header, blob


def shown(value: Any) -> str:
    """A value from the other side, short and printable, for an error message."""
    text = json.dumps(value)[:40] if isinstance(value, (int, float, str, type(None))) else type(value).__name__
    return "".join(c if c.isprintable() else " " for c in text)


class FrameReader:
    """Reads frames from a byte stream that arrives in pieces of any size."""

    def __init__(self, recv: Recv, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._recv = recv
        self._max = max_bytes
        self._buffer = bytearray()

    def _fill(self, needed: int, what: str) -> bool:
        """Buffer at least ``needed`` bytes; False at a clean end of stream (nothing buffered)."""
        while len(self._buffer) < needed:
            piece = self._recv(max(needed - len(self._buffer), _RECV_BYTES))
            if not piece:
                if not self._buffer:
                    return False
                raise TornStream(f"stream ended inside a frame {what}: {len(self._buffer)} of {needed} bytes")
            self._buffer += piece
        return True

    def read_frame(self) -> tuple[dict[str, Any], bytes] | None:
        """The next frame's header and blob, or None when the stream ended cleanly between frames.

        Raises:
            FrameTooLarge: the announced length is over the bound (the stream is unusable after it).
            TornStream: the stream ended inside a frame.
            ProtocolError: the header is not a JSON object, the version or the blob length is wrong.
        """
        if not self._fill(HEADER_BYTES, "header"):
            return None
        size = int.from_bytes(self._buffer[:HEADER_BYTES], "big")
        if size > self._max:
            raise FrameTooLarge(f"incoming frame announces {size:,} bytes, over the {self._max:,}-byte bound")
        self._fill(HEADER_BYTES + size, "body")
        body = bytes(self._buffer[HEADER_BYTES : HEADER_BYTES + size])
        del self._buffer[: HEADER_BYTES + size]
        return split_body(body)

    def read(self) -> dict[str, Any] | None:
        """The next frame's header, for a frame that carries no blob (a hello, a test's message).

        Raises:
            ProtocolError: as :meth:`read_frame`, and a frame that carries a blob.
        """
        frame = self.read_frame()
        if frame is None:
            return None
        if frame[1]:
            raise ProtocolError(f"unexpected blob of {len(frame[1]):,} bytes in a frame that carries none")
        return frame[0]


class BytesRecv:
    """A ``recv`` over bytes in memory, handing out at most ``step`` bytes a call (for tests)."""

    def __init__(self, data: bytes, step: int | None = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def recv(self, n: int) -> bytes:
        n = min(n, self._step or n)
        piece = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(piece)
        return piece


class DockerDemux:
    """Standard output of an attached Docker container (no TTY), as a ``recv`` for FrameReader.

    Docker multiplexes the container's standard output and error on the attach stream: each
    piece has an 8-byte header (stream number, 3 zero bytes, 4-byte big-endian length). Standard
    error is kept aside (its tail explains why a container died); it never reaches the frames.

    The container is not trusted: :attr:`deadline` bounds a whole exchange (a container that
    trickles a byte at a time, on either stream, cannot hold the caller past it, where a socket
    timeout alone restarts with every byte), no read asks for more than 256 KiB whatever a header
    announces, and the kept standard error is at most 64 reads.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._left = 0
        self._kind = 1
        self.stderr: deque[bytes] = deque(maxlen=64)  # the tail, for the reason a container died
        self.deadline: float | None = None  # time.monotonic() after which reading raises TimeoutError

    def _recv(self, n: int) -> bytes:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the sandbox did not answer in time")
            self.sock.settimeout(left)
        return self.sock.recv(min(n, _RECV_BYTES))

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            piece = self._recv(n - len(data))
            if not piece:
                return b""
            data += piece
        return data

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes of standard output; ``b""`` when the stream ends."""
        while True:
            if self._left == 0:
                header = self._exact(8)
                if not header:
                    return b""
                self._kind, self._left = header[0], int.from_bytes(header[4:8], "big")
                continue
            data = self._recv(min(n, self._left) if self._kind == 1 else self._left)
            if not data:
                return b""
            self._left -= len(data)
            if self._kind == 1:
                return data
            self.stderr.append(data)

    def stderr_tail(self) -> str:
        """The last few hundred characters the container wrote to standard error, printable only.

        It goes into log lines and error records: control characters (a forged log line, a
        terminal escape) become spaces.
        """
        tail = b"".join(self.stderr).decode("utf-8", "replace").strip()[-600:]
        return "".join(c if c.isprintable() else " " for c in tail)
