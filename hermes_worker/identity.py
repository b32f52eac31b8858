"""What a worker is: its tag, the probe outcome behind it, and the versions it runs.

``hermes worker`` decides the identity before Celery starts (to name the node ``TAG@NAME``);
``celery -A hermes_worker.app worker`` decides it when the worker initialises
(:class:`~hermes_worker.runtime.WorkerRuntime`). Either way it is decided once, in the main
process, and pool processes inherit it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .contract import FALLBACK_MESSAGE
from .events import ClusterLog
from .redact import redact
from .settings import Settings

__all__ = ["FALLBACK_MESSAGE", "Identity", "announce", "decide", "versions"]

log = logging.getLogger("hermes.worker")



@dataclass(slots=True)
class Identity:
    """What the main process decided at start-up.

    Attributes:
        tag: ``container`` or ``local``; it decides the queue.
        probe: the probe's outcome (tag, reason, fix, details), or why none ran.
        started_at: when the worker started (Unix time).
    """

    tag: str = "local"
    probe: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)


def versions() -> dict[str, str]:
    """The versions that decide a worker's output bytes (and its Celery), for its registry entry."""
    import celery

    from .engine.provenance import engine_versions

    return {**engine_versions(), "celery": celery.__version__}


def decide(settings: Settings) -> Identity:
    """Run the Docker probe as ``settings.worker_mode`` asks; return the identity it earns."""
    if settings.worker_mode == "local":
        found = {"tag": "local", "reason": "local mode requested (--mode local)", "fix": "", "probed": False}
        return Identity("local", found)
    from .probe import probe  # Docker code only when Docker is wanted

    outcome = probe(settings)
    found = {"tag": outcome.tag, "reason": outcome.reason, "fix": outcome.fix, "details": outcome.details}
    return Identity(outcome.tag, found)


def announce(identity: Identity, events: ClusterLog | None) -> str:
    """Say once, in the worker log and the cluster log, what the probe decided and why.

    The text is redacted: a probe's reason may name ``DOCKER_HOST``, credentials and all.
    """
    found = identity.probe
    if identity.tag == "container":
        text = redact(f"Docker probe passed: using container processing ({found.get('reason', '')})")
        log.info(text)
        if events:
            events.emit("INFO", "probe.container", text, **found)
        return text
    if found.get("probed") is False:
        text = "using local processing: --mode local, Docker not probed"
        log.info(text)
        if events:
            events.emit("INFO", "probe.skipped", text, **found)
        return text
    text = f"{FALLBACK_MESSAGE}: {found.get('reason', 'unknown reason')}"
    if found.get("fix"):
        text += f". Fix: {found['fix']}"
    text = redact(text)
    log.warning(text)
    if events:
        events.emit("WARNING", "probe.fallback", text, **found)
    return text
