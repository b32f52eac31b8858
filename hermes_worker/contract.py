"""The contract between producers and workers: names, keys, error codes and bounds.

Task and queue names, Redis keys, the item error codes scripts match on, and the bounds every
request is checked against. The values that cross a wire (chunk requests and results, items,
replies) are in :mod:`hermes_worker.wire`, their options in :mod:`hermes_worker.chunk_options`;
all three use only the standard library, so they also ship inside the sandbox image. Payloads
are plain JSON: no pickle, ever.
"""

from __future__ import annotations

import re
import reprlib
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .errors import HermesError

# 2: results cross Redis as raw JSONL ("t") next to their counts ("r"), not as a list in "r".
# 3: requests may carry raw input lines ("text"), parsed by the worker; results carry "ids".
PAYLOAD_VERSION = 3

TASK_NORMALIZE_CHUNK = "hermes.normalize_chunk"
QUEUE_CONTAINER = "hermes.container"
QUEUE_LOCAL = "hermes.local"
QUEUE_FOR_TAG = {"container": QUEUE_CONTAINER, "local": QUEUE_LOCAL}
# The public task (hermes_worker.public): prompts in, records out through Celery's result backend,
# for Celery clients that know only the URLs. Sent to Celery's default queue, which a plain client
# sends to without any routing of its own; workers take it from there (HERMES_PUBLIC_TASK) and run
# it, or send it on to the queue of the tag that must run it, by the rules chunks are routed by.
TASK_NORMALIZE = "hermes.normalize"
QUEUE_PUBLIC = "celery"


def worker_queues(tag: str, public: bool) -> list[str]:
    """The queues a worker tagged ``tag`` consumes: its tag's, and the public queue when it takes
    public tasks.

    >>> worker_queues("local", True), worker_queues("container", False)
    (['hermes.local', 'celery'], ['hermes.container'])
    """
    return [QUEUE_FOR_TAG[tag], *([QUEUE_PUBLIC] if public else [])]

# Said by a worker that found no usable Docker, and by a producer with no container worker to
# send to: one wording, which operators grep logs for.
FALLBACK_MESSAGE = "Docker is unavailable, using local processing"

# Redis keys, all of them. Results come back on a per-batch stream, never over pub/sub: a
# producer that reads slowly must not make Redis drop its connection.
KEY_PREFIX = "hermes:"
KEY_WORKER = KEY_PREFIX + "worker:{name}"  # a worker's registry entry, JSON, expires with its heartbeat
KEY_RESULTS = KEY_PREFIX + "results:{batch}"  # stream of chunk results and start notices of one batch
# The raw lines of one chunk sent through Celery, as UTF-8 bytes; see TEXT_KEY.
KEY_CHUNK_TEXT = KEY_PREFIX + "chunk:{batch}:{chunk}"
KEY_EVENTS = KEY_PREFIX + "events"  # capped stream: the cluster log
KEY_BATCH = KEY_PREFIX + "batch:{batch}"  # a running batch's progress, JSON, written by its producer, expiring
EVENTS_MAXLEN = 20_000
# The largest value Hermes writes to Redis (a chunk's lines, a chunk's records). Redis refuses
# values over 512 MB (proto-max-bulk-len) by dropping the connection, which looks like an
# outage; far below that, a chunk this large would also strain a worker's memory. A larger
# chunk is split by the producer (its lines) or on the worker's notice (its records).
MAX_VALUE_BYTES = 64 * 1024 * 1024

# Error codes of item records, each declared once, here, with what it means: ITEM_CODES gives
# the README's table of codes (python -m hermes_worker.settings_docs --update README.md) and the
# set a request's item errors are checked against. Stable: scripts match on them.
#
# The engine's codes are here too. The engine imports only the error root of the worker package
# (it must run alone in the sandbox), so it cannot read a constant from here: its checks raise
# their codes as literals (``ItemError("too_slow", ...)``), and tests/test_item_codes.py finds
# every code any module raises, literal or constant, and fails unless it is declared here. A new
# code, the engine's or not, is then one line here and its raise; had the engine kept constants
# of its own, a new one would take three files (its constant, this list, the check raising it).
_item_codes: dict[str, str] = {}
ITEM_CODES: Mapping[str, str] = MappingProxyType(_item_codes)  # code -> meaning, in the README's order


def _item_code(code: str, meaning: str) -> str:
    """Declare ``code``: one line of the README's table, and the constant raisers use."""
    _item_codes[code] = meaning
    return code


INVALID_UTF8 = _item_code("invalid_utf8", "the line is not valid UTF-8 (the message names the byte and its offset)")
MALFORMED_JSON = _item_code(
    "malformed_json", "the line is blank or not valid JSON, nests too deeply, or names `prompt` or `id` twice"
)
NOT_AN_OBJECT = _item_code("not_an_object", "the line is JSON, but not an object")
MISSING_PROMPT = _item_code("missing_prompt", "the object has no `prompt` field")
PROMPT_NOT_STRING = _item_code("prompt_not_string", "`prompt` is not a string")
BAD_ID = _item_code(
    "bad_id",
    "the `id` is not a string or an integer Hermes accepts (the message says why); the record's `id` is the line "
    "number",
)
DUPLICATE_ID = _item_code("duplicate_id", "an earlier line used the same `id` (the message names that line)")
EMPTY_PROMPT = _item_code("empty_prompt", "the prompt is empty")
TOO_LARGE = _item_code("too_large", "the prompt, or its line, is larger than `--max-prompt-bytes`")
NUL_BYTE = _item_code("nul_byte", "the prompt holds a NUL character: binary data is not a prompt")
LONE_SURROGATE = _item_code("lone_surrogate", "the prompt holds a lone surrogate: it is not valid Unicode text")
VALIDATION_FAILED = _item_code(
    "validation_failed", "the output still holds a character the profile forbids (see `--max-validation`)"
)
ENGINE_FAILURE = _item_code(
    "engine_failure",
    "no worker could finish the item: the engine failed on it, or its process died or ran past the time limit "
    "every time (the message says which)",
)
SANDBOX_FAILURE = _item_code(
    "sandbox_failure", "the item kept killing the sandbox container (memory, crash) or cannot fit in one frame"
)
TOO_SLOW = _item_code(
    "too_slow",
    "normalizing the item used more CPU time than its budget, named in the message; see `HERMES_ITEM_TIME_BUDGET`",
)

# Through Celery, a text request's ``text`` does not ride in the task message: the producer
# stores it, as the UTF-8 bytes it read, under KEY_CHUNK_TEXT and the message names that key
# here. The worker puts it back before anything else sees the payload. The task message stays a
# few hundred bytes, so the prompts are not JSON-escaped, base64-encoded and copied again by
# the broker transport (and again for its unacknowledged-message store) on their way.
TEXT_KEY = "text_key"

# Every error code declared above: item errors a producer may put in a request (``bad``, ``items``)
# must be one of these.
ERROR_CODES = frozenset(ITEM_CODES)

# Bounds every request is checked against before a worker acts on it: anyone who can write to
# the broker can send a task message by hand, so nothing in one is taken on trust (SECURITY.md).
MAX_CHUNK_NUMBER = (1 << 62) - 1  # producers number chunks from 0; `hermes queue` by the million
MAX_LINE_NUMBER = (1 << 62) - 1
MAX_USER_ID = (1 << 32) - 1  # a user id: a --shared batch's producer, owner of its part directory
MAX_CHUNK_LINES = 1 << 20  # lines or items in one chunk (HERMES_CHUNK_SIZE is checked against it)
MAX_PROMPT_BYTES = 64 * 1024 * 1024  # HERMES_MAX_PROMPT_BYTES at most: no larger frame crosses the sandbox
MAX_VALIDATION = 1000  # validation rounds (--max-validation)
MAX_ITEM_TIME_BUDGET = 100.0  # the largest scale of an item's CPU-time budget (hermes_worker.engine.budget)
MAX_RESULT_TTL_S = 30 * 86_400  # HERMES_RESULT_TTL at most
# The largest public task message a worker decodes (its prompts ride in it): the largest value
# Hermes writes. A larger one is refused before its body is parsed.
MAX_PUBLIC_MESSAGE_BYTES = MAX_VALUE_BYTES
MAX_MESSAGE_CHARS = 4096  # an error message in a request
MAX_NAME_CHARS = 64  # a profile name or a step name
# A batch id: 32 hex digits (uuid4) on a cluster, 16 for a batch begun in-process and resumed.
BATCH_ID = re.compile(r"[0-9a-f]{16}(?:[0-9a-f]{16})?")
# The result stream names the worker may write to, and nothing else.
RESULTS_PREFIX = KEY_RESULTS.format(batch="")
# A chunk a worker refused without running it: {"chunk": N, "worker": NAME, "reason": TEXT}.
# The producer sends it again (a few times at most, then the batch stops with exit 3).
NOTICE_REFUSED = "x"
# The only value of a request's ``isolation``: the chunk must run inside a container.
ISOLATION_CONTAINER = "container"


def new_batch_id() -> str:
    """A fresh batch id, in the one format workers accept."""
    return uuid.uuid4().hex


_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 48, 48, 3, 3, 2


def shown(value: Any) -> str:
    """A value from a message, fit for an error message or a log: one short line, however large.

    >>> len(shown("a" * 10_000)) < 60, shown(["x", 2, 3, 4, 5])
    (True, "['x', 2, 3, ...]")
    """
    return _repr.repr(value)



class ContractError(HermesError, ValueError):
    """A payload does not follow the contract (a bug, a version mismatch, or a hand-made message).

    Still a ``ValueError`` too: a payload that breaks the contract is a bad value, and readers of
    untrusted data (the result-stream reader, JSON decoding) catch ``ValueError`` around decoding
    and checking alike, to skip what no Hermes component wrote.
    """


