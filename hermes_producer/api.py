"""Hermes from Python: :func:`normalize` one prompt, or a :class:`Client` for many.

>>> from hermes_producer import normalize
>>> cleaned = normalize("cafÃ©  ", profile="prompt")
>>> cleaned.text, cleaned.changed, cleaned.validation["converged"]
('café', True, True)

A client runs prompts where ``hermes batch`` would, by the same rules: on the cluster when the
broker answers and a worker serves the isolation asked for, else in-process (the embedded
default). Records come back in input order, one per prompt, as the records of ``hermes batch``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from hermes_worker import fast_json
from hermes_worker.engine import ItemError, resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.registry import WorkerInfo
from hermes_worker.settings import SETTINGS, Settings
from hermes_worker.wire import ChunkRequest, Item

from .batch import BatchOptions, BatchSummary, chunk_options, chunk_requests
from .batch_job import BatchJob, refuse_input_as_output
from .cluster import Cluster, ClusterUnavailable
from .context import Context
from .dispatch import Placement, choose_executor
from .output import BatchOutput, check_output
from .reader import InputFormat, detect_format

__all__ = ["Cleaned", "Client", "normalize"]


@dataclass(frozen=True, slots=True)
class Cleaned:
    """One prompt, normalized: what a ``hermes batch`` record says of it.

    Attributes:
        text: the normalized text.
        changed: whether it differs from the prompt.
        validation: ``{"rounds": N, "converged": true|false|null}``.
        provenance: what produced it (profile and digest, engine, Python, Unicode, ftfy, mode).
        explain: with ``explain=True``, the steps that changed it, in order; else None.
    """

    text: str
    changed: bool
    validation: dict[str, Any]
    provenance: dict[str, Any]
    explain: list[dict[str, Any]] | None = None


def normalize(
    text: str,
    profile: str | None = None,
    *,
    max_validation: int | None = None,
    explain: bool = False,
    settings: Settings | None = None,
) -> Cleaned:
    """Normalize one prompt here, in this process, as a worker would (same checks, same record).

    Args:
        text: the prompt.
        profile: a built-in profile's name; default: the configured one (HERMES_PROFILE).
        max_validation: validation rounds; default: HERMES_MAX_VALIDATION.
        explain: also say which steps changed it.
        settings: default: read from the environment.

    Raises:
        ItemError: the prompt cannot be normalized (empty, too large, NUL...): its ``code``
            is the record's error code.
        ProfileError: no such profile.
    """
    settings = settings or Settings.from_env()
    chosen = resolve_profile(settings.profile if profile is None else profile)
    given = {} if max_validation is None else {"max_validation": max_validation}
    options = chunk_options(settings, explain=explain, **given)
    request = ChunkRequest(0, chosen.spec(), options, items=[Item(1, 1, text)])
    result = process_chunk(request, mode="local", worker=f"embedded@{socket.gethostname()}")
    record = json.loads(result.records)
    if "error" in record:
        raise ItemError(record["error"]["code"], record["error"]["message"])
    return Cleaned(record["text"], record["changed"], record["validation"], record["provenance"],
                   record.get("explain"))  # fmt: skip


def _as_text(value: Any) -> str:
    """A setting's value as its variable would hold it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class Client:
    """Send prompts to Hermes: the cluster when it can take them, in-process otherwise.

    Args:
        broker_url: the broker; None: HERMES_BROKER_URL (and with no broker answering there,
            in-process).
        **settings: any setting by its field name (``chunk_size=256``, ``isolation="local"``,
            ``processes=2``...), over what the environment says.

    Use it as a context manager; it closes what it opened.

    >>> with Client(isolation="local", processes=1) as client:   # doctest: +SKIP
    ...     [r["text"] for r in client.map(["a\\u00a0 b", "ﬁne"], profile="nfkc")]
    ['a  b', 'fine']
    """

    def __init__(self, broker_url: str | None = None, **settings: Any) -> None:
        # Each given setting is read as its variable would be: the same parser, bounds and
        # message (naming the variable), so Client(chunk_size=0) fails as HERMES_CHUNK_SIZE=0 does.
        by_name = {spec.name: spec.variable for spec in SETTINGS}
        unknown = sorted(set(settings) - set(by_name))
        if unknown:
            known = ", ".join(sorted(by_name))
            raise TypeError(f"Client() got unknown settings: {', '.join(unknown)} (known: {known})")
        given = {by_name[name]: _as_text(value) for name, value in settings.items() if value is not None}
        if broker_url is not None:
            given["HERMES_BROKER_URL"] = broker_url
        self.settings = Settings.from_env(given=given)
        log = logging.getLogger("hermes.client")
        self._ctx = Context(settings=self.settings, log=log, quiet=True)
        self._cluster: Cluster | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections this client opened (nothing runs after this)."""
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def _options(self, profile: str | None, input_format: InputFormat, chunk: dict[str, Any]) -> BatchOptions:
        settings = self.settings
        options = chunk_options(settings, **chunk)
        chosen = resolve_profile(settings.profile if profile is None else profile)
        return BatchOptions(chosen, input_format, options, settings.chunk_size)

    def map(
        self, prompts: Iterable[str], profile: str | None = None, isolation: str | None = None, **options: Any
    ) -> Iterator[dict[str, Any]]:
        """One record per prompt, in order, as chunks finish: memory stays bounded however many.

        Each record is a ``hermes batch`` record (``id`` and ``line``: the prompt's position
        from 1; ``text``... or ``error``). ``options``: ``max_validation``, ``explain``,
        ``max_prompt_bytes``, ``item_time_budget``.
        """
        batch = self._options(profile, "text", dict(options))
        executor = choose_executor(self._ctx, Placement(isolation=isolation), self.settings.processes, board=True)
        items = (Item(n, n, prompt) for n, prompt in enumerate(prompts, 1))
        with executor:
            for result in executor.map_ordered(chunk_requests(items, batch)):
                yield from (fast_json.loads(line) for line in result.record_lines())
        executor.finish()

    async def amap(
        self, prompts: Iterable[str], profile: str | None = None, isolation: str | None = None, **options: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """:meth:`map` for asyncio: the work runs in a thread; records come as they are ready."""
        records = self.map(prompts, profile, isolation, **options)
        done = object()
        while (record := await asyncio.to_thread(next, records, done)) is not done:
            yield record  # type: ignore[misc]

    def batch(
        self,
        input_path: str | Path,
        output_path: str | Path,
        *,
        profile: str | None = None,
        isolation: str | None = None,
        input_format: InputFormat | None = None,
        resume: bool = False,
        **options: Any,
    ) -> BatchSummary:
        """``hermes batch INPUT -o OUTPUT``: the file's records, in order, in OUTPUT (written whole
        at the end, resumable with ``resume=True`` after an interruption); returns the summary.

        Raises:
            OutputError, BatchError, JournalError, ExecutorError: as the command's exit 2 and 3.
        """
        input_path, output_path = str(input_path), str(output_path)
        with open(input_path, "rb") as source:
            fmt = input_format or detect_format(input_path, source)
            batch = self._options(profile, fmt, dict(options))
            target = check_output(output_path, "output")
            try:
                with BatchOutput(target) as output:
                    refuse_input_as_output(source, input_path, output)
                    output.lock()
                    output.check_leftovers()
                    job = BatchJob(self._ctx, source, input_path, input_path, batch, Placement(isolation=isolation),
                                   self.settings.processes)  # fmt: skip
                    summary, _how = job.to_file(output, resume)
            finally:
                target.close()
        return summary

    def workers(self) -> list[WorkerInfo]:
        """The live workers (none without a broker)."""
        try:
            if self._cluster is None:
                self._cluster = Cluster.connect(self.settings)
            return self._cluster.live_workers()
        except ClusterUnavailable:
            return []

