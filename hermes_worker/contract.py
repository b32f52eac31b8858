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
from typing import Any

from .engine.errors import EMPTY_PROMPT as EMPTY_PROMPT  # re-exported: contract lists every code
from .engine.errors import LONE_SURROGATE as LONE_SURROGATE
from .engine.errors import NUL_BYTE as NUL_BYTE
from .engine.errors import TOO_LARGE as TOO_LARGE
from .engine.errors import TOO_SLOW as TOO_SLOW
from .errors import HermesError

# 2: results cross Redis as raw JSONL ("t") next to their counts ("r"), not as a list in "r".
# 3: requests may carry raw input lines ("text"), parsed by the worker; results carry "ids".
PAYLOAD_VERSION = 3

TASK_NORMALIZE_CHUNK = "hermes.normalize_chunk"
QUEUE_CONTAINER = "hermes.container"
QUEUE_LOCAL = "hermes.local"
QUEUE_FOR_TAG = {"container": QUEUE_CONTAINER, "local": QUEUE_LOCAL}
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
EVENTS_MAXLEN = 20_000
# The largest value Hermes writes to Redis (a chunk's lines, a chunk's records). Redis refuses
# values over 512 MB (proto-max-bulk-len) by dropping the connection, which looks like an
# outage; far below that, a chunk this large would also strain a worker's memory. A larger
# chunk is split by the producer (its lines) or on the worker's notice (its records).
MAX_VALUE_BYTES = 64 * 1024 * 1024

# Error codes of item records. Stable: scripts match on them. The engine's own checks declare
# theirs (empty, too large, NUL, lone surrogate, over the CPU budget: too_slow).
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_PROMPT = "missing_prompt"
PROMPT_NOT_STRING = "prompt_not_string"
BAD_ID = "bad_id"
DUPLICATE_ID = "duplicate_id"
VALIDATION_FAILED = "validation_failed"
ENGINE_FAILURE = "engine_failure"
# The item kept killing the sandbox container (memory, crash) or cannot fit in one frame.
SANDBOX_FAILURE = "sandbox_failure"


# Through Celery, a text request's ``text`` does not ride in the task message: the producer
# stores it, as the UTF-8 bytes it read, under KEY_CHUNK_TEXT and the message names that key
# here. The worker puts it back before anything else sees the payload. The task message stays a
# few hundred bytes, so the prompts are not JSON-escaped, base64-encoded and copied again by
# the broker transport (and again for its unacknowledged-message store) on their way.
TEXT_KEY = "text_key"

# Every error code above: item errors a producer may put in a request (``bad``, ``items``) must
# be one of these. Add a new code here as well as above.
ERROR_CODES = frozenset(
    {
        INVALID_UTF8, MALFORMED_JSON, NOT_AN_OBJECT, MISSING_PROMPT, PROMPT_NOT_STRING, BAD_ID, DUPLICATE_ID,
        EMPTY_PROMPT, TOO_LARGE, NUL_BYTE, LONE_SURROGATE, VALIDATION_FAILED, ENGINE_FAILURE, SANDBOX_FAILURE,
        TOO_SLOW,
    }
)  # fmt: skip

# Bounds every request is checked against before a worker acts on it: anyone who can write to
# the broker can send a task message by hand, so nothing in one is taken on trust (SECURITY.md).
MAX_CHUNK_NUMBER = (1 << 62) - 1  # producers number chunks from 0; `hermes queue` by the million
MAX_LINE_NUMBER = (1 << 62) - 1
MAX_CHUNK_LINES = 1 << 20  # lines or items in one chunk (HERMES_CHUNK_SIZE is checked against it)
MAX_PROMPT_BYTES = 64 * 1024 * 1024  # HERMES_MAX_PROMPT_BYTES at most: no larger frame crosses the sandbox
MAX_VALIDATION = 1000  # validation rounds (--max-validation)
MAX_ITEM_TIME_BUDGET = 100.0  # the largest scale of an item's CPU-time budget (hermes_worker.engine.budget)
MAX_RESULT_TTL_S = 30 * 86_400  # HERMES_RESULT_TTL at most
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


