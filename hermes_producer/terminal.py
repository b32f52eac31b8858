"""Text from input, made safe to show on a terminal: control characters are shown, never obeyed.

Ids, error messages, prompts in ``hermes task --list``, log records and file names all come
from someone else's input. Printed raw, ``\\x1b]0;title\\x07`` renames the window, ``\\x1b[2J``
clears the screen, a carriage return overwrites the line with something else, and bidi
overrides (U+202E) make text read backwards. Every printer that shows such text passes it
through :func:`printable` (or :func:`printable_json` for JSON on a terminal).
"""

from __future__ import annotations

import json
import re
from typing import Any, TextIO

__all__ = ["TerminalSink", "printable", "printable_json", "printable_json_text"]

# C0 controls but tab and newline, DEL, C1 controls (U+009B is a one-character CSI on many
# terminals), line and paragraph separators, bidi marks, embeddings, overrides and isolates,
# and lone surrogates (undecodable bytes of file names and arguments, via surrogateescape).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_OR_NEWLINE = re.compile(f"[\n{_UNSAFE.pattern[1:-1]}]")
# In JSON text, C0 controls are already escaped by json.dumps; the rest may only occur in strings.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    r"""``text`` with every control character replaced by a visible escape.

    Tabs stay; newlines stay only with ``keep_newlines`` (multi-line output such as a
    traceback), so one record can never pose as two lines.

    >>> printable("id \x1b]0;pwned\x07 at line 2\r")
    'id \\x1b]0;pwned\\x07 at line 2\\x0d'
    >>> printable("caf\udcc3\udca9 \u202egnp.exe")
    'caf\\xc3\\xa9 \\u202egnp.exe'
    """
    return (_UNSAFE if keep_newlines else _UNSAFE_OR_NEWLINE).sub(_escape, text)


def printable_json(value: Any, **dumps: Any) -> str:
    r"""``json.dumps(value, ensure_ascii=False)``, with the characters a terminal obeys escaped.

    Still valid JSON meaning the same thing: those characters can only occur inside strings,
    where ``\uXXXX`` spells them.

    >>> printable_json({"id": "\x9b2J\u202e"})
    '{"id": "\\u009b2J\\u202e"}'
    """
    return printable_json_text(json.dumps(value, ensure_ascii=False, **dumps))


def printable_json_text(text: str) -> str:
    r"""JSON text (records, as ``json.dumps(..., ensure_ascii=False)`` wrote them), made safe for a terminal.

    The C1 controls, bidi marks and line separators that ``json.dumps`` leaves raw become
    ``\uXXXX`` escapes: the same JSON values, shown instead of obeyed.

    >>> printable_json_text('{"id": "a\u009b2J\u202e"}\n')
    '{"id": "a\\u009b2J\\u202e"}\n'
    """
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class TerminalSink:
    """A text stream of JSON lines that escapes what a terminal would obey (``-o -`` on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable_json_text(text))

    def flush(self) -> None:
        self._stream.flush()
