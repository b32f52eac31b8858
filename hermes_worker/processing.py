"""Process one chunk: the pure function behind every way Hermes runs.

In-process pools, Celery tasks and the sandbox server all call :func:`process_chunk`; only who
calls it, and the ``mode`` they report, differ. It never raises for a bad item: each item gets
exactly one record, an error record if need be, and every record is one line of JSON that can
be written as UTF-8 (whatever the item, its id or an exception's message held).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from . import contract
from .engine import ItemError, Profile, check_prompt, provenance
from .engine.budget import chunk_clock, normalize_within_budget
from .fast_json import encode_compact, encode_string
from .lines import id_problem, items_from_text
from .wire import ChunkRequest, ChunkResult, Item, ItemFailure

__all__ = ["failed_chunk_result", "process_chunk", "request_items", "with_errors"]

# JSON allows these raw inside strings, but many line-oriented tools (str.splitlines, editors,
# JavaScript before ES2019) split lines on them: escaping keeps one record per physical line.
_LINE_BREAKERS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _dumps(value: object) -> str:
    if type(value) is int:
        return str(value)  # ids are mostly integers: skip the encoder's set-up
    text = encode_string(value) if type(value) is str else encode_compact(value)
    if not text.isascii():
        for raw, escaped in _LINE_BREAKERS:
            if raw in text:
                text = text.replace(raw, escaped)
    return text


# What a request says about each of its items, read from it once per chunk: max_validation,
# explain, max_prompt_bytes, item_time_budget. A plain tuple: unpacking it per item is the cheapest read.
_ItemOptions = tuple[int, bool, int, float]
_CONVERGED = {True: "true", False: "false", None: "null"}
# The only code points UTF-8 cannot encode: lone surrogates (JSON's "\\ud800").
_SURROGATE = re.compile("[\\ud800-\\udfff]")
# Error messages are for people: one that quotes a whole prompt (an exception's text) is cut.
_MAX_MESSAGE_CHARS = 2000


def _printable(text: str) -> str:
    """``text`` with every character that is not printable written as an escape, e.g. ``\\u001b``.

    Messages reach terminals (the summary), logs and JUnit XML as well as records: a lone
    surrogate could not be written as UTF-8, a control character could drive a terminal.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def _clean(code: Any, message: Any) -> tuple[str, str]:
    """An error's code and message as they may go into a record: strings, printable, bounded."""
    code, message = _printable(str(code)[:200]), str(message)
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 1] + "\u2026"
    return code, _printable(message)


def _error_line(item_id: str, line: int, code: str, message: str, prov: str) -> str:
    code, message = _clean(code, message)
    error = _dumps({"code": code, "message": message, "line": line})
    return f'{{"id":{item_id},"line":{line},"error":{error},"provenance":{prov}}}'


def _record_id(raw_id: Any, line: int) -> tuple[str, tuple[str, str] | None]:
    """The id as it goes into the record, and a ``bad_id`` error if it cannot be one.

    Ids parsed from JSONL lines are checked already; items built elsewhere (``hermes run``,
    ``hermes queue``, a hand-made request) may hold anything. A bad id's record carries the
    line number instead, so it is still valid JSON.
    """
    if raw_id == line and type(raw_id) is int:
        return str(line), None
    problem = id_problem(raw_id)
    if problem is None:
        return _dumps(raw_id), None
    return str(line), (contract.BAD_ID, problem)


@chunk_clock  # one SIGPROF handler for the chunk; each item's normalization has a CPU-time budget
def process_chunk(request: ChunkRequest, *, mode: str, worker: str, image: str | None = None) -> ChunkResult:
    """Normalize every item of a chunk request and encode one output record per item.

    Args:
        request: a checked chunk request (:meth:`ChunkRequest.from_payload` checks a payload).
        mode: ``local`` or ``container``: where this code is running, for provenance.
        worker: the name of whoever runs it, for provenance.
        image: the sandbox image digest in container mode.

    Raises:
        ProfileError: the request's profile is invalid.
    """
    items, ids = request_items(request)
    profile = Profile.from_spec(request.profile)
    prov_dict = provenance(profile, mode=mode, worker=worker, image=image)
    prov = _dumps(prov_dict)
    # Read once here, the one place: every item of the chunk runs under the same options.
    chunk = request.options
    options = (chunk.max_validation, chunk.explain, chunk.max_prompt_bytes, chunk.item_time_budget)
    lines: list[str] = []
    errors: list[ItemFailure] = []

    for item in items:
        line = item.line
        item_id, id_error = _record_id(item.id, line)
        failure = item.error if item.error is not None else id_error
        if failure is None:
            try:
                lines.append(_ok_record(item.prompt, item_id, line, prov, profile, options))
                continue
            except ItemError as exc:
                failure = exc.code, exc.message
            except Exception as exc:
                if _belongs_to_the_chunk(exc):
                    raise
                failure = contract.ENGINE_FAILURE, f"engine failed on this item: {type(exc).__name__}: {exc}"
        code, message = _clean(*failure)
        errors.append(ItemFailure(line, code, message))
        lines.append(_error_line(item_id, line, code, message, prov))

    text_request = request.text is not None
    return ChunkResult(request.chunk, _jsonl(lines), len(lines) - len(errors), len(errors), tuple(errors), prov_dict,
                       request.first if text_request else None, ids if text_request else None)  # fmt: skip


def _ok_record(prompt: Any, item_id: str, line: int, prov: str, profile: Profile, options: _ItemOptions) -> str:
    """One item normalized and encoded as its record; an :class:`ItemError` says why it cannot be.

    Building the record is part of the item: whatever fails here fails that item alone.
    """
    max_validation, explain, max_bytes, time_budget = options
    if not isinstance(prompt, str):
        raise ItemError(contract.PROMPT_NOT_STRING, f"prompt must be a string, got {type(prompt).__name__}")
    check_prompt(prompt, max_bytes)
    result = normalize_within_budget(prompt, profile, max_validation, explain, time_budget, checked=True)
    if result.violations:
        raise ItemError(
            contract.VALIDATION_FAILED,
            f"output still holds characters profile {profile.name!r} forbids: " + "; ".join(result.violations),
        )
    record = (
        f'{{"id":{item_id},"line":{line},"text":{_dumps(result.text)},'
        f'"changed":{"true" if result.changed else "false"},'
        f'"validation":{{"rounds":{result.rounds},"converged":{_CONVERGED[result.converged]}}},'
        f'"provenance":{prov}'
    )
    if result.explanation is not None:
        record += f',"explain":{_dumps(result.explanation)}'
    if not record.isascii() and (bad := _SURROGATE.search(record)) is not None:
        raise ItemError(
            contract.ENGINE_FAILURE,
            f"the record for this item cannot be written as UTF-8: it holds a lone surrogate U+{ord(bad.group()):04X}",
        )
    return record + "}"


def _jsonl(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def _belongs_to_the_chunk(exc: BaseException) -> bool:
    """Whether an exception raised while one item ran is about the whole chunk, not that item.

    Celery's soft time limit arrives as an exception in whatever code runs when the chunk's time is
    up: the item running then is not to blame, and the worker must see the exception to split the
    chunk. Matched by name because the engine does not import Celery (the sandbox has none).
    """
    return type(exc).__name__ == "SoftTimeLimitExceeded"


def request_items(request: ChunkRequest) -> tuple[list[Item], list[Any] | None]:
    """A request's items (parsing its raw lines if it carries text) and their guard ids."""
    if request.text is None:
        return request.items or [], None
    return items_from_text(
        request.text, request.first, request.format, request.options.max_prompt_bytes, request.bad_lines()
    )


def with_errors(result: ChunkResult, replaced: dict[int, tuple[str, str]]) -> ChunkResult:
    """``result`` with the records at the given indexes replaced by error records.

    Args:
        result: a chunk result.
        replaced: index of the record in the chunk -> ``(code, message)``.

    The replacement keeps the record's id, line and provenance: it only says why the item
    failed (the producer's duplicate guard uses it).
    """
    lines = result.record_lines()
    prov = _dumps(result.provenance)
    errors = {error.line: error for error in result.errors}
    ok, failed = result.ok, result.failed
    for index, (code, message) in replaced.items():
        record = json.loads(lines[index])
        line = record["line"]
        if line not in errors:
            ok, failed = ok - 1, failed + 1
        errors[line] = ItemFailure(line, *_clean(code, message))
        lines[index] = _error_line(_record_id(record.get("id"), line)[0], line, code, message, prov)
    failures = tuple(errors[line] for line in sorted(errors))
    return replace(result, records=_jsonl(lines), ok=ok, failed=failed, errors=failures)


def failed_chunk_result(
    payload: Mapping[str, Any], code: str, message: str, *, mode: str, worker: str
) -> ChunkResult:
    """A result that gives every item of ``payload`` the same error record.

    Used when a chunk cannot be processed at all (a payload or profile the worker rejects, a
    sandbox that cannot start): its items still get exactly one record each. ``payload`` is an
    encoded request, maybe one that breaks the contract: whatever it holds, its lines get records.
    """
    spec = payload.get("profile") if isinstance(payload, Mapping) else None
    spec = spec if isinstance(spec, Mapping) else {}
    try:
        profile = Profile.from_spec(spec)
        prov_dict = provenance(profile, mode=mode, worker=worker)
    except Exception:
        prov_dict = {"profile": _printable(str(spec.get("name"))[:200]), "mode": mode, "worker": worker}
    prov = _dumps(prov_dict)
    items = payload.get("items") if isinstance(payload, Mapping) else None
    ids: list[Any] | None = None
    first = payload.get("first") if isinstance(payload, Mapping) else None
    if isinstance(payload, Mapping) and isinstance(payload.get("text"), str):
        try:
            parsed, ids = request_items(ChunkRequest.from_payload(payload))
            items = [[item.line, item.id] for item in parsed]
        except Exception:  # the payload is what is wrong: a record per line all the same
            text, start = payload["text"], first if isinstance(first, int) else 0
            items, ids = [[start + n, start + n] for n in range(text.count("\n") + 1)], None
    lines, errors = [], []
    for item in items if isinstance(items, list) else []:
        line, raw_id = (item[0], item[1]) if isinstance(item, list) and len(item) >= 2 else (0, None)
        lines.append(_error_line(_record_id(raw_id, line)[0], line, code, message, prov))
        errors.append(ItemFailure(line, *_clean(code, message)))
    chunk = payload.get("chunk") if isinstance(payload, Mapping) else None
    # The guard still learns these ids: a later line reusing one is a duplicate either way.
    text_request = isinstance(first, int) and isinstance(payload.get("text"), str)
    return ChunkResult(chunk, _jsonl(lines), 0, len(lines), tuple(errors), prov_dict,  # type: ignore[arg-type]
                       first if text_request else None, ids if text_request else None)  # fmt: skip
