"""The start-up probe: may this worker process prompts in the sandbox, or must it run locally?

It checks the real thing, step by step, each within its own bound: the backend's preflight (for
Docker: the engine answers, honouring DOCKER_HOST, and the sandbox image is there), a session
starts, and a self-test of tricky strings gives, inside the sandbox, the same bytes as the
local engine. Any failure gives the tag
``local`` with a reason and a fix. The probe never raises and leaves no container behind.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .chunk_options import ChunkOptions
from .engine import DEFAULT_MAX_PROMPT_BYTES, resolve_profile
from .processing import process_chunk
from .sandbox.backends import backend, open_session
from .sandbox.errors import SandboxError, SelfTestMismatch
from .sandbox.session import SandboxSession, timed
from .settings import Settings
from .wire import ChunkRequest, ChunkResult, Item

__all__ = ["SELF_TEST_PROMPTS", "ProbeResult", "probe", "self_test", "self_test_request"]

# Strings that differ between Python/Unicode/ftfy versions or that a broken transport would
# mangle: mojibake, emoji sequences, controls, line breaks, compatibility forms, invalid items.
SELF_TEST_PROMPTS: tuple[str, ...] = (
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "Quelle est la diffÃ©rence ? Ã©tÃ©, naÃ¯ve, cafÃ©",
    "family 👩‍👩‍👧‍👦, flag 🏳️‍🌈, skin 👍🏽, keycap 1️⃣",
    "bell\x07 escape\x1b[31mred\x1b[0m delete\x7f nel\x85 end",
    "windows\r\nold mac\rline sep\u2028para sep\u2029unix\n",
    "ﬁ ligature, ＦＵＬＬ width, ① circled, ㍿, Å angstrom, Ω ohm",
    "e\u0301 combining, zero\u200bwidth, joiner\u200d, bom\ufeff, soft\u00adhyphen",
    "rtl \u202eevil\u202c override, \u2066isolate\u2069",
    "\t  tabs   and   spaces \u00a0 nbsp \u3000 ideographic  ",
    "日本語のテキスト、Ελληνικά, עברית, हिन्दी, 한국어",
    "\ud800 lone surrogate",
    "nul \x00 byte",
    "",
    '\x00\x00\x00\x05{"op":"hello"} a prompt that imitates a frame',
)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the probe found.

    Attributes:
        tag: ``container`` (use the sandbox) or ``local`` (process in this process).
        reason: why, in one line.
        fix: what to do to get container mode, or "" when nothing is needed.
        details: docker_version, api_version, image (digest), self_test, sandbox_python,
            host_python, backend and timings_ms (per step).
    """

    tag: str
    reason: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def self_test_request() -> ChunkRequest:
    """The chunk request of the self-test: every tricky string, explained, one validation round."""
    items = [Item(n, f"self-test-{n}", text) for n, text in enumerate(SELF_TEST_PROMPTS, 1)]
    items.append(Item(len(items) + 1, "self-test-not-a-string", 42))
    options = ChunkOptions(max_validation=1, explain=True, max_prompt_bytes=DEFAULT_MAX_PROMPT_BYTES)
    return ChunkRequest(0, resolve_profile("prompt").spec(), options=options, items=items)


def _comparable(result: ChunkResult) -> list[dict[str, Any]]:
    # Provenance legitimately differs (mode, image, the base image's Python patch level); the
    # parts that decide the bytes are compared separately below.
    return [{k: v for k, v in json.loads(line).items() if k != "provenance"} for line in result.record_lines()]


def self_test(session: SandboxSession, worker: str) -> dict[str, Any]:
    """Run the self-test strings in ``session`` and locally; return the sandbox's provenance.

    Raises:
        SelfTestMismatch: naming the first string whose record differs.
        SandboxError: the session failed.
    """
    request = self_test_request()
    inside = session.run_chunk(request, worker)
    local = process_chunk(request, mode="container", worker=worker, image=session.image_digest)
    for key in ("engine", "unicode", "ftfy", "profile_digest"):
        if inside.provenance.get(key) != local.provenance[key]:
            raise SelfTestMismatch(
                f"sandbox {key} is {inside.provenance.get(key)!r}, here it is {local.provenance[key]!r}",
                "rebuild the image from this installation: hermes image build --base <a base with this Python>",
            )
    for got, want in zip(_comparable(inside), _comparable(local), strict=True):
        if got != want:
            raise SelfTestMismatch(
                f"sandbox output differs from local output for self-test item {want['id']}: "
                f"{json.dumps(got, ensure_ascii=True)[:200]} != {json.dumps(want, ensure_ascii=True)[:200]}",
                "rebuild the image from this installation: hermes image build",
            )
    return dict(inside.provenance)


def probe(
    settings: Settings,
    worker_id: str | None = None,
    *,
    open_sandbox: Callable[[Settings, str], SandboxSession] = open_session,
) -> ProbeResult:
    """Decide this worker's tag: ``container`` when the sandbox works end to end, else ``local``.

    Args:
        settings: sandbox_image, container_backend, docker_timeout_s and the container limits.
        worker_id: owner label of the probe's session container (default ``probe@host:pid``).
        open_sandbox: how the session is opened (tests hand in a sandbox that lies).
    """
    worker = worker_id or f"probe@{socket.gethostname()}:{os.getpid()}"
    details: dict[str, Any] = {"backend": settings.container_backend, "timings_ms": {}, "self_test": "not run"}
    try:
        backend(settings.container_backend).preflight(settings, details)
        with timed(details, "session_start"):
            session = open_sandbox(settings, worker)
            session.__enter__()
        try:
            details["image"] = session.image_digest
            with timed(details, "self_test"):
                sandbox = self_test(session, worker)
        finally:
            with timed(details, "close"):
                session.close()
    except SelfTestMismatch as exc:
        details["self_test"] = f"mismatch: {exc.reason}"
        return ProbeResult("local", f"sandbox self-test failed: {exc.reason}", exc.fix, details)
    except SandboxError as exc:
        return ProbeResult("local", exc.reason, exc.fix, details)
    except Exception as exc:  # the probe decides a tag; it must never take the worker down
        return ProbeResult(
            "local", f"probe failed unexpectedly: {type(exc).__name__}: {exc}", "see the worker log", details
        )
    details.update(self_test="passed", sandbox_python=sandbox.get("python"), host_python=_host_python())
    version = details.get("docker_version") or settings.container_backend
    return ProbeResult(
        "container",
        f"Docker {version} answered, sandbox {details['image'][:19]} passed the self-test "
        f"({len(SELF_TEST_PROMPTS) + 1} strings byte-identical to local)",
        "",
        details,
    )


def _host_python() -> str:
    import platform

    return platform.python_version()
