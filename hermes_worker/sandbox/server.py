"""The engine server that runs inside the sandbox container.

``python3 -m hermes_worker.sandbox.server`` reads request frames on standard input and writes one
response frame per request on standard output, until standard input ends. Requests::

    {"op": "hello", "id": 0}
    {"op": "chunk", "id": 7, "worker": "w1", "image": "sha256:...", "payload": {...chunk request...}}

Responses carry the request's ``id`` and either ``"ok": true`` with a ``result``, or
``"ok": false`` with an ``error`` (``type`` and ``message``). A bad item never reaches this level
(``process_chunk`` turns it into an error record); a bad payload becomes an error response; only
a broken stream ends the server, and the host then starts a new container.

``--once`` reads one JSON request (no framing) and writes one JSON response: the form the dagger
backend uses, where each chunk is a process of its own.

Imports the standard library, the engine, the contract and processing only.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import unicodedata
from typing import Any

from .. import __version__
from ..contract import ChunkRequest, ContractError
from ..engine import ProfileError
from ..processing import process_chunk, request_items
from .errors import FrameTooLarge, ProtocolError
from .protocol import MAX_FRAME_BYTES, FrameReader, encode_frame

__all__ = ["TEST_HOOKS_ENV", "handle", "main"]

# Test containers set this variable (the session's ``test_hooks`` option); production containers
# never do, so no prompt can trigger the hooks below.
TEST_HOOKS_ENV = "HERMES_SANDBOX_TEST_HOOKS"
_EXHAUST_MEMORY = "hermes-test:exhaust-memory"
_SLOW = "hermes-test:sleep"  # keeps a chunk in flight for half a second


def _hello() -> dict[str, Any]:
    import ftfy  # the engine imports it anyway; here only for its version

    return {
        "engine": __version__,
        "python": platform.python_version(),
        "unicode": unicodedata.unidata_version,
        "ftfy": ftfy.__version__,
        "uid": os.getuid(),
        "pid": os.getpid(),
    }


def _run_test_hooks(payload: dict[str, Any]) -> None:
    hog: list[bytes] = []
    items = request_items(ChunkRequest.from_payload(payload))[0]
    for item in items:
        prompt = item[2] if isinstance(item, list) and len(item) == 4 else None
        if prompt == _SLOW:
            time.sleep(0.5)
        while prompt == _EXHAUST_MEMORY:  # bytes of 'x' touch every page: the cgroup's OOM killer ends us
            hog.append(b"x" * (16 * 1024 * 1024))


def handle(request: dict[str, Any], test_hooks: bool = False) -> dict[str, Any]:
    """The response to one request; never raises."""
    reply: dict[str, Any] = {"id": request.get("id")}
    op = request.get("op")
    try:
        if op == "hello":
            result = _hello()
        elif op == "chunk":
            payload = request.get("payload")
            if not isinstance(payload, dict):
                raise ContractError("request has no chunk payload object")
            if test_hooks:
                _run_test_hooks(payload)
            worker, image = request.get("worker"), request.get("image")
            result = process_chunk(payload, mode="container", worker=str(worker), image=image)
        else:
            raise ContractError(f"unknown request op {op!r}")
    except (ContractError, ProfileError) as exc:
        return reply | {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
    except Exception as exc:  # a bug in the engine: report it, keep serving
        return reply | {"ok": False, "error": {"type": "EngineFailure", "message": f"{type(exc).__name__}: {exc}"}}
    return reply | {"ok": True, "result": result}


def _serve(test_hooks: bool) -> int:
    # Frames go to the real standard output only; anything else that prints (a library warning,
    # a stray print) goes to standard error, so it cannot corrupt the frame stream.
    frames_out = os.dup(1)
    os.dup2(2, 1)
    reader = FrameReader(lambda n: os.read(0, n))
    while True:
        try:
            request = reader.read()
        except ProtocolError as exc:
            print(f"hermes sandbox server: {exc}; exiting", file=sys.stderr)
            return 2
        if request is None:
            return 0
        reply = handle(request, test_hooks)
        try:
            frame = encode_frame(reply)
        except FrameTooLarge as exc:
            frame = encode_frame(
                {"id": reply["id"], "ok": False, "error": {"type": "FrameTooLarge", "message": str(exc)}}
            )
        view = memoryview(frame)
        while view:
            view = view[os.write(frames_out, view) :]


def _once(test_hooks: bool) -> int:
    request = json.loads(sys.stdin.buffer.read(MAX_FRAME_BYTES + 1).decode("utf-8", "surrogatepass"))
    # ASCII-only output: the dagger SDK hands standard output back as text.
    sys.stdout.write(json.dumps(handle(request, test_hooks), ensure_ascii=True, separators=(",", ":")))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve framed requests on stdio (or answer one, with ``--once``); return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    test_hooks = os.environ.get(TEST_HOOKS_ENV) == "1"
    return _once(test_hooks) if "--once" in args else _serve(test_hooks)


if __name__ == "__main__":
    sys.exit(main())
