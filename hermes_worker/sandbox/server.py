"""The engine server that runs inside the sandbox container.

``python3 -m hermes_worker.sandbox.server`` reads request frames on standard input and writes one
response frame per request on standard output, until standard input ends. Request headers
(:mod:`.protocol`)::

    {"op": "hello", "id": 0}
    {"op": "chunk", "id": 7, "worker": "w1", "image": "sha256:...", "payload": {...chunk request...}}

A text chunk's lines travel as the frame's blob (raw UTF-8), with ``"text": true`` in the header
and no ``text`` in the payload; an items chunk has its items in the payload and no blob.
Responses carry the request's ``id`` and either ``"ok": true`` with a ``result`` (the chunk
result's counts, provenance and ids; its records, raw JSONL, are the frame's blob), or
``"ok": false`` with an ``error`` (``type`` and ``message``). A bad item never reaches this level
(``process_chunk`` turns it into an error record); a bad payload becomes an error response; only
a broken stream ends the server, and the host then starts a new container.

``--once`` reads one JSON request (no framing) and writes one JSON response, the records as the
result's ``records`` string: the form the dagger backend uses, where each chunk is a process of
its own.

Imports the standard library, the engine, the contract and processing only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from ..contract import ContractError
from ..engine import ProfileError, engine_versions
from ..processing import process_chunk, request_items
from ..wire import ChunkRequest
from .errors import FrameTooLarge, ProtocolError
from .protocol import HEADER_BYTES, MAX_FRAME_BYTES, FrameReader, encode_frame

__all__ = ["DATA_LIES", "FRAME_LIES", "TEST_HOOKS_ENV", "handle", "main"]

# Test containers set this variable (the session's ``test_hooks`` option); production containers
# never do, and a container's environment is fixed by the host when it creates it, so no prompt
# can turn the hooks below on. "1" lets the marker prompts act; "lie=KIND" (or "lie=KIND:always")
# also makes the reply to a chunk holding the _LIE marker (or to every chunk) lie as KIND says:
# the hostile sandbox the host's checks (reply.py) are tested against.
TEST_HOOKS_ENV = "HERMES_SANDBOX_TEST_HOOKS"
_EXHAUST_MEMORY = "hermes-test:exhaust-memory"
_SLOW = "hermes-test:sleep"  # keeps a chunk in flight for half a second
_LIE = "hermes-test:lie"
# Lies about the result (data) and about the frame that carries it (transport).
DATA_LIES = (
    "mode", "worker", "image", "version", "drop", "extra", "line", "id", "newline", "huge", "ids", "code",
    "counts", "not_json", "changed", "extra_field", "text", "reply_id", "contract", "too_large",
    "not_utf8", "no_newline",
)  # fmt: skip
FRAME_LIES = ("giant_frame", "stderr_flood", "trickle", "blob_length")


def _hello() -> dict[str, Any]:
    return {
        **engine_versions(),
        "uid": os.getuid(),
        "pid": os.getpid(),
    }


def _run_test_hooks(request: ChunkRequest) -> bool:
    """Act on the marker prompts; True when the chunk holds the _LIE marker."""
    hog: list[bytes] = []
    marked = False
    for item in request_items(request)[0]:
        prompt = item.prompt
        marked = marked or prompt == _LIE
        if prompt == _SLOW:
            time.sleep(0.5)
        while prompt == _EXHAUST_MEMORY:  # bytes of 'x' touch every page: the cgroup's OOM killer ends us
            hog.append(b"x" * (16 * 1024 * 1024))
    return marked


def _recode(result: dict[str, Any], index: int, change: Any) -> None:
    record = json.loads(result["lines"][index])
    change(record)
    result["lines"][index] = json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _lie(kind: str, reply: dict[str, Any], records: bytes) -> tuple[dict[str, Any], bytes]:
    """``reply`` and its records turned into the lie ``kind`` names (tests only), as consistent as
    a liar can make it."""
    if kind == "not_utf8":
        return reply, b"\xff\xfe" + records
    if kind == "no_newline":
        return reply, records.rstrip(b"\n")
    result = reply.get("result")
    if isinstance(result, dict):
        result["lines"] = records.decode("utf-8", "surrogatepass").split("\n")[:-1]
    reply = _lie_in_lines(kind, reply)
    if isinstance(result, dict):
        lines = result.pop("lines")
        records = "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
    return reply, records


def _lie_in_lines(kind: str, reply: dict[str, Any]) -> dict[str, Any]:
    """``reply`` (its records a list, ``lines``) turned into the lie ``kind`` names."""
    result = reply.get("result")
    if kind == "reply_id":
        return reply | {"id": (reply.get("id") or 0) + 1}
    if kind in ("contract", "too_large"):
        error = {"type": "ContractError" if kind == "contract" else "FrameTooLarge", "message": "forged"}
        return {"id": reply.get("id"), "ok": False, "error": error}
    if not isinstance(result, dict) or not result.get("lines"):
        return reply
    lines, last = result["lines"], len(result["lines"]) - 1
    forged = {"mode": ("mode", "local"), "worker": ("worker", "container@someone-else"),
              "image": ("image", "sha256:" + "0" * 64), "version": ("engine", "0.0.0-forged")}  # fmt: skip
    if kind in forged:
        key, value = forged[kind]
        result["provenance"][key] = value
        for index in range(len(lines)):
            _recode(result, index, lambda r: r["provenance"].__setitem__(key, value))
    elif kind == "drop":
        lines.pop()
        result["ok"] -= 1
    elif kind == "extra":
        lines.append(lines[-1])
        result["ok"] += 1
    elif kind == "line":
        for index in range(len(lines)):
            _recode(result, index, lambda r: r.__setitem__("line", r["line"] + 1000))
    elif kind == "id":
        _recode(result, 0, lambda r: r.__setitem__("id", "stolen-id"))
    elif kind == "newline":
        lines[0] += "\n" + lines[0]
    elif kind == "huge":
        _recode(result, 0, lambda r: r.__setitem__("text", "x" * (8 << 20)))
    elif kind == "ids" and result.get("ids"):
        result["ids"] = ["poison"] * len(result["ids"])
    elif kind == "code":
        error = {"code": "forged|code", "message": "forged", "line": json.loads(lines[last])["line"]}

        def to_error(record: dict[str, Any]) -> None:
            for key in ("text", "changed", "validation", "explain"):
                record.pop(key, None)
            record["error"] = error

        _recode(result, last, to_error)
        result["errors"].append([error["line"], error["code"], error["message"]])
        result["ok"] -= 1
        result["failed"] += 1
    elif kind == "counts":
        result["ok"] += 3
    elif kind == "not_json":
        lines[0] = "{not json"
    elif kind == "changed":
        _recode(result, 0, lambda r: r.__setitem__("changed", not r.get("changed")))
    elif kind == "extra_field":
        _recode(result, 0, lambda r: r.__setitem__("mode", "local"))
    elif kind == "text":
        for index in range(len(lines)):
            _recode(result, index, lambda r: "text" in r and r.update(text=r["text"] + " [forged]", changed=True))
    return reply


def _frame_lie(kind: str, frame: bytes) -> bytes:
    """The frame to write instead of ``frame`` (tests only); may write to standard error first."""
    if kind == "giant_frame":  # announces 4 GiB: the host must refuse it before allocating anything
        return b"\xff\xff\xff\xff" + frame[HEADER_BYTES:]
    if kind == "blob_length":  # the header announces a byte more of records than the frame holds
        blob = len(frame) - frame.index(b"\n", HEADER_BYTES) - 1
        body = frame[HEADER_BYTES:].replace(b'"blob":%d' % blob, b'"blob":%d' % (blob + 1), 1)
        return len(body).to_bytes(HEADER_BYTES, "big") + body
    if kind == "stderr_flood":  # 16 MiB of noise first: the host keeps only a bounded tail
        noise = b"flood " * 10_000
        for _ in range((16 << 20) // len(noise)):
            os.write(2, noise)
    while kind == "trickle":  # a byte at a time, never an answer: only a deadline ends the wait
        os.write(2, b".")
        time.sleep(0.05)
    return frame


def handle(
    request: dict[str, Any], test_hooks: bool = False, lie: str = "", blob: bytes = b""
) -> tuple[dict[str, Any], bytes]:
    """The response to one request (its header and its blob: the records); never raises.

    ``blob``: the request's blob (a text chunk's lines). ``lie``: tests only (see TEST_HOOKS_ENV).
    """
    reply: dict[str, Any] = {"id": request.get("id")}
    op = request.get("op")
    marked = False
    records = b""
    try:
        if op == "hello":
            result = _hello()
        elif op == "chunk":
            chunk = ChunkRequest.from_payload(_chunk_payload(request, blob))
            if test_hooks:
                marked = _run_test_hooks(chunk)
            worker, image = request.get("worker"), request.get("image")
            done = process_chunk(chunk, mode="container", worker=str(worker), image=image)
            result, records = done.counts_wire(), done.records.encode("utf-8", "surrogatepass")
        else:
            raise ContractError(f"unknown request op {op!r}")
    except (ContractError, ProfileError) as exc:
        return reply | {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}, b""
    except Exception as exc:  # a bug in the engine: report it, keep serving
        return reply | {"ok": False, "error": {"type": "EngineFailure", "message": f"{type(exc).__name__}: {exc}"}}, b""
    reply |= {"ok": True, "result": result}
    kind, _, when = lie.partition(":")
    if kind in DATA_LIES and op == "chunk" and (marked or when == "always"):
        reply, records = _lie(kind, reply, records)
    elif kind in FRAME_LIES and op == "chunk" and (marked or when == "always"):
        reply["frame_lie"] = kind
    return reply, records


def _chunk_payload(request: dict[str, Any], blob: bytes) -> dict[str, Any]:
    """A chunk request's payload, with its lines from the blob when the header says they are there."""
    payload = request.get("payload")
    if not isinstance(payload, dict):
        raise ContractError("request has no chunk payload object")
    if request.get("text") is not True:
        if blob:
            raise ContractError("request carries a blob but no 'text': true")
        return payload
    if "text" in payload:
        raise ContractError("request has its lines both in the payload and in the blob")
    try:
        return payload | {"text": blob.decode("utf-8", "surrogatepass")}
    except UnicodeDecodeError as exc:
        raise ContractError(f"the request's lines are not UTF-8 (byte {exc.start})") from None


def _serve(test_hooks: bool, lie: str) -> int:
    # Frames go to the real standard output only; anything else that prints (a library warning,
    # a stray print) goes to standard error, so it cannot corrupt the frame stream.
    frames_out = os.dup(1)
    os.dup2(2, 1)
    reader = FrameReader(lambda n: os.read(0, n))
    while True:
        try:
            frame_in = reader.read_frame()
        except ProtocolError as exc:
            print(f"hermes sandbox server: {exc}; exiting", file=sys.stderr)
            return 2
        if frame_in is None:
            return 0
        reply, records = handle(frame_in[0], test_hooks, lie, frame_in[1])
        frame_lie = reply.pop("frame_lie", None)
        try:
            frame = encode_frame(reply, records)
        except FrameTooLarge as exc:
            frame = encode_frame(
                {"id": reply["id"], "ok": False, "error": {"type": "FrameTooLarge", "message": str(exc)}}
            )
        if frame_lie:
            frame = _frame_lie(frame_lie, frame)
        view = memoryview(frame)
        while view:
            view = view[os.write(frames_out, view) :]


def _once(test_hooks: bool, lie: str) -> int:
    request = json.loads(sys.stdin.buffer.read(MAX_FRAME_BYTES + 1).decode("utf-8", "surrogatepass"))
    if not isinstance(request, dict):
        request = {}
    reply, records = handle(request, test_hooks, lie)
    reply.pop("frame_lie", None)
    if reply.get("ok") is True and request.get("op") == "chunk":
        reply["result"]["records"] = records.decode("utf-8", "surrogatepass")
    # ASCII-only output: the dagger SDK hands standard output back as text.
    sys.stdout.write(json.dumps(reply, ensure_ascii=True, separators=(",", ":")))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve framed requests on stdio (or answer one, with ``--once``); return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    hooks = os.environ.get(TEST_HOOKS_ENV, "")
    lie = hooks.removeprefix("lie=") if hooks.startswith("lie=") else ""
    test_hooks = hooks == "1" or bool(lie)
    return _once(test_hooks, lie) if "--once" in args else _serve(test_hooks, lie)


if __name__ == "__main__":
    sys.exit(main())
