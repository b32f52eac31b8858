"""The dagger backend: each chunk is one ``with_exec`` on a base container built once per session.

dagger-io is optional (``pip install '.[dagger]'`` in the checkout) and imported only here. Dagger
runs every exec in a container of its own engine, but it has no per-exec memory, CPU or network
limits: the session says so, loudly, when it starts. Its results are cached by content, which is
harmless here because the engine is deterministic and the request holds everything that matters.

Hermes does not let dagger-io download its CLI at worker start-up (that reaches the internet from
a production worker, and fails on air-gapped machines): the CLI must be on PATH, or named by
dagger's own ``_EXPERIMENTAL_DAGGER_CLI_BIN``, or the process must run inside ``dagger run``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ContainerDied, DaggerUnavailable
from .image import DEFAULT_BASE, content_tag, context_files
from .protocol import MAX_FRAME_BYTES
from .reply import BadReply, check_hello
from .session import SandboxSession, unwrap_reply

__all__ = ["DaggerSession", "find_cli"]

log = logging.getLogger("hermes.sandbox")

# Installed from the Hermes checkout, never by name from an index: nobody published "hermes-prompts" there.
_FIX_INSTALL = (
    "pip install 'dagger-io>=0.21' into Hermes' environment (or pip install '.[dagger]' in the Hermes checkout), "
    "or use the docker backend (HERMES_CONTAINER_BACKEND=docker)"
)
_FIX_CLI = (
    "install the Dagger CLI on PATH (or set _EXPERIMENTAL_DAGGER_CLI_BIN), or use HERMES_CONTAINER_BACKEND=docker"
)
_NO_LIMITS = (
    "the dagger backend cannot enforce memory, CPU or network limits on the sandbox "
    "(HERMES_CONTAINER_MEMORY, HERMES_CONTAINER_CPUS and network isolation are NOT applied); "
    "use the docker backend where isolation matters"
)


def find_cli() -> str | None:
    """The Dagger CLI this process would use, or None (``dagger run`` sessions need none)."""
    # Dagger's own variables, read here because dagger-io reads them: they are not Hermes settings.
    named = os.environ.get("_EXPERIMENTAL_DAGGER_CLI_BIN")
    if named:
        return named
    if os.environ.get("DAGGER_SESSION_PORT"):
        return "(dagger run session)"
    return shutil.which("dagger")


class DaggerSession(SandboxSession):
    """A session whose chunks run as ``with_exec`` calls in a Dagger engine."""

    engine_name = "Dagger"

    def __init__(self, settings: Any, worker_id: str, *, base: str = DEFAULT_BASE) -> None:
        super().__init__(settings, worker_id)
        self._base_ref = base
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None
        self._base: Any = None
        self._context_dir: tempfile.TemporaryDirectory[str] | None = None

    def _start(self) -> None:
        try:
            import dagger
        except ImportError as exc:
            raise DaggerUnavailable(f"dagger-io is not installed ({exc})", _FIX_INSTALL) from None
        if find_cli() is None:
            raise DaggerUnavailable("no Dagger CLI found on PATH (Hermes does not download it)", _FIX_CLI)
        log.warning("%s", _NO_LIMITS)
        files = context_files()
        self._context_dir = tempfile.TemporaryDirectory(prefix="hermes-dagger-")
        for rel, data in files.items():
            if rel.startswith("site/"):
                path = Path(self._context_dir.name, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        self._loop = asyncio.new_event_loop()
        try:
            self._connection = dagger.Connection(
                dagger.Config(log_output=sys.stderr, timeout=dagger.Timeout(None, connect=30.0))
            )
            client = self._loop.run_until_complete(self._connection.__aenter__())
            site = client.host().directory(str(Path(self._context_dir.name, "site")))
            self._base = (
                client.container()
                .from_(self._base_ref)
                .with_directory("/opt/hermes", site)
                .with_env_variable("PYTHONPATH", "/opt/hermes")
                .with_env_variable("LANG", "C.UTF-8")
                .with_user("10001:10001")
            )
            self._base = self._loop.run_until_complete(self._base.sync())
        except dagger.DaggerError as exc:
            raise DaggerUnavailable(f"the Dagger engine cannot start: {exc}", _FIX_CLI) from exc
        self._digest = f"dagger:{self._base_ref}+{content_tag(files, self._base_ref).split(':', 1)[1]}"
        # The versions the host writes into provenance and requires in every record.
        self._versions = check_hello(self._exec({"op": "hello", "id": 0}))

    def close(self) -> None:
        if self._loop is not None:
            if self._connection is not None:
                try:
                    self._loop.run_until_complete(self._connection.close())
                except Exception as exc:  # closing a half-open connection: nothing left to save
                    log.debug("closing the dagger connection: %s", exc)
            self._loop.close()
        if self._context_dir is not None:
            self._context_dir.cleanup()
        self._loop = self._connection = self._base = self._context_dir = None

    def _replace(self) -> None:
        # Every exec is a fresh container already: nothing to replace.
        self._restarts += 1

    def _attempt(self, payload: Mapping[str, Any], worker: str) -> tuple[dict[str, Any], bytes]:
        request = {"op": "chunk", "id": 1, "worker": worker, "image": self.image_digest, "payload": dict(payload)}
        result = unwrap_reply(self._exec(request))
        records = result.pop("records", None)  # ``--once`` sends them as a JSON string
        if not isinstance(records, str):
            raise BadReply("the sandbox's result holds no records string")
        return result, records.encode("utf-8", "surrogatepass")

    def _exec(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request answered by a fresh ``server --once`` process; its reply, decoded."""
        import dagger

        assert self._loop is not None and self._base is not None, "session not started"
        text = json.dumps(request, ensure_ascii=True)
        command = ["python3", "-m", "hermes_worker.sandbox.server", "--once"]
        try:
            out = self._loop.run_until_complete(self._base.with_exec(command, stdin=text).stdout())
        except dagger.ExecError as exc:
            raise ContainerDied(f"dagger exec failed (exit {exc.exit_code}): {exc.stderr[-400:]}") from exc
        except dagger.DaggerError as exc:
            raise DaggerUnavailable(f"the Dagger engine failed: {exc}", _FIX_CLI) from exc
        if len(out) > MAX_FRAME_BYTES:
            raise BadReply(f"the sandbox's reply is {len(out):,} characters, over the frame bound")
        try:
            reply = json.loads(out)
        except (ValueError, RecursionError):
            raise BadReply("the sandbox's reply is not JSON") from None
        if type(reply) is not dict:
            raise BadReply("the sandbox's reply is not a JSON object")
        return reply
