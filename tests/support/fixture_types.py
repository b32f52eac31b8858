"""The types of the factory fixtures, for the annotations of the tests that take them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from .processes import Producer, WorkerProcess

# `hermes`, `chermes`: run `hermes ARGS...` as a real subprocess, get the completed process (text).
HermesRunner = Callable[..., subprocess.CompletedProcess[str]]
# `start_worker`: start(name, mode="local", concurrency=1, env=None, expect_tag="local", wait=True).
WorkerFactory = Callable[..., WorkerProcess]
# `session_factory`: factory(settings=None, *, test_hooks=False, start=True) -> an open DockerSession.
SessionFactory = Callable[..., Any]
# `hermes_process`: start(*args, env=..., stdout=None) -> a running `hermes ARGS...`, killed after the test.
HermesProcessFactory = Callable[..., Producer]
