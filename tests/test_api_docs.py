"""The API reference is generated from the docstrings (pdoc, ops/api-docs.sh) and covers Hermes'
Python API: ``normalize``, ``Client`` (every public method) and ``Cleaned``, and the public Celery
task's contract. Each run leaves the reference in ``artifacts/api/``.
"""

from __future__ import annotations

import html
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from hermes_producer import Cleaned, Client, normalize
from hermes_worker import public

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("HERMES_TEST_ARTIFACTS", REPO / "artifacts"))


def first_line(obj: object) -> str:
    """The first line of ``obj``'s docstring, as its page reads (markup and backquotes gone)."""
    doc = inspect.getdoc(obj)
    assert doc, f"{obj!r} has no docstring"
    return doc.splitlines()[0].replace("``", "").replace(":class:", "").replace("`", "")


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_the_api_reference_is_generated_from_the_docstrings() -> None:
    out = ARTIFACTS / "api"
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")} | {"PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "ops" / "api-docs.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = (out / "hermes_producer.html").read_text(encoding="utf-8")
    methods = [name for name, _ in inspect.getmembers(Client, inspect.isfunction) if not name.startswith("_")]
    assert {"map", "amap", "batch", "workers", "close"} <= set(methods)
    for name in ["normalize", "Client", "Cleaned", *(f"Client.{m}" for m in methods)]:
        assert f'id="{name}"' in page, name
    for documented in (normalize, Client, Cleaned, Client.map, Client.batch):
        assert first_line(documented) in text_of(page), documented
    # Only the API: the command line and the batch machinery are not in it.
    assert not (out / "hermes_producer").exists()
    task = (out / "hermes_worker" / "public.html").read_text(encoding="utf-8")
    for name in ("NormalizeCall", "BadArguments", "NotRun", "placement", "records"):
        assert f'id="{name}"' in task, name
    assert first_line(public) in text_of(task)
