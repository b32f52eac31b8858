"""Provenance: everything that determines a result's bytes, recorded next to the result.

Two results with equal provenance were produced by the same code on the same Unicode data:
their bytes are identical for the same input.
"""

from __future__ import annotations

import platform
import unicodedata
from typing import Any

import ftfy

from .. import __version__
from .profiles import Profile

__all__ = ["engine_versions", "provenance"]


def engine_versions() -> dict[str, str]:
    """The versions that decide the engine's output bytes here: engine, Python, Unicode, ftfy.

    The one list: provenance records, worker registry entries, the sandbox's hello and
    ``hermes doctor`` all show these, and two places that agree on them give the same bytes.
    """
    return {
        "engine": __version__,
        "python": platform.python_version(),
        "unicode": unicodedata.unidata_version,
        "ftfy": ftfy.__version__,
    }


def provenance(profile: Profile, *, mode: str, worker: str, image: str | None = None) -> dict[str, Any]:
    """The provenance record for results of ``profile`` produced here.

    Args:
        profile: the profile that ran.
        mode: ``local`` (no isolation) or ``container`` (ran inside the sandbox).
        worker: who ran it, e.g. ``embedded@host`` or a Celery worker name.
        image: the sandbox image digest when ``mode`` is ``container``.
    """
    return {
        "profile": profile.name,
        "profile_digest": profile.digest,
        **engine_versions(),
        "mode": mode,
        "worker": worker,
        "image": image,
    }
