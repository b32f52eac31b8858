"""Hostile inputs, and how long each profile takes on a megabyte of each: ``python -m bench.hostile``.

Issue 11 (class 1): one line must never stall a worker. ``tests/test_hostile_time.py`` uses these
inputs to prove every step and profile linear (10 KiB against 256 KiB and 1 MiB); this command
prints the absolute cost, CPU seconds per MiB through the whole item path, which is what the
per-item budget (``hermes_worker.engine.budget``: 1 s + 30 s per MiB) is measured against.

    python -m bench.hostile                   # every family, the prompt profile, 1 MiB
    python -m bench.hostile --profile compact --size 262144
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable


def _repeat(unit: str, size: int, head: str = "", tail: str = "") -> str:
    """``head + unit * n + tail`` with n as large as fits in ``size`` UTF-8 bytes."""
    room = size - len((head + tail).encode())
    return head + unit * max(1, room // len(unit.encode())) + tail


def _runs_around_x(char: str, size: int) -> str:
    half = _repeat(char, size // 2 - 1)
    return half + "x" + half


def _distinct_lines(unit: str, size: int) -> str:
    """Lines of ``unit`` and a counter: no two alike, so nothing can be served from a cache."""
    lines, used = [], 0
    for n in itertools.count():
        line = f"{unit}{n:x}\n"
        used += len(line.encode())
        if used > size:
            return "".join(lines)
        lines.append(line)
    raise AssertionError("unreachable")


# Every whitespace and invisible character a profile touches: what str.isspace() and re's \s
# match (rstrip_lines, collapse_blank_lines, trim_blank_edges, strip, collapse_whitespace),
# what strip_invisible removes, and what it keeps on purpose (ZWJ, ZWNJ).
SPACES = {
    "space": " ",
    "tab": "\t",
    "vt": "\x0b",
    "cr": "\r",
    "fs": "\x1c",
    "nel": "\x85",
    "nbsp": "\u00a0",
    **{f"u{cp:04x}": chr(cp) for cp in range(0x2000, 0x200B)},
    "ls": "\u2028",
    "ps": "\u2029",
    "nnbsp": "\u202f",
    "ideographic": "\u3000",
    "zwsp": "\u200b",
    "zwnj": "\u200c",
    "zwj": "\u200d",
    "wj": "\u2060",
    "bom": "\ufeff",
}

FAMILIES: dict[str, Callable[[int], str]] = {
    # A long run, something else, another run: every position of the first run starts a failed
    # match of a pattern like [^\S\n]+$ (rstrip_lines before the fix); the second one ends the text.
    **{f"{name} run, x, {name} run": (lambda size, c=char: _runs_around_x(c, size)) for name, char in SPACES.items()},
    # Alternations.
    "(1000 spaces, x) repeated": lambda size: _repeat(" " * 1000 + "x", size),
    "(NBSP, LF) repeated": lambda size: _repeat("\u00a0\n", size),
    "(tab, LF) repeated": lambda size: _repeat("\t\n", size),
    "(space, CR) repeated": lambda size: _repeat(" \r", size),
    "(ZWSP, space, BOM) repeated": lambda size: _repeat("\u200b \ufeff", size),
    # Newlines and blank-ish lines, every line break mixed.
    "LF run": lambda size: _repeat("\n", size),
    "LF run, then x": lambda size: _repeat("\n", size, tail="x"),
    "(space, LF) repeated": lambda size: _repeat(" \n", size),
    "(LF, space, LF) repeated": lambda size: _repeat("\n \n", size),
    "(CRLF, CR, U+2028, LF) repeated": lambda size: _repeat("\r\n\r\u2028\n", size),
    "CR run": lambda size: _repeat("\r", size),
    "two LFs, then a space run and x": lambda size: _repeat(" ", size, head="\n\n", tail="x"),
    "(LF, 50 spaces) repeated": lambda size: _repeat("\n" + " " * 50, size),
    # Combining marks: CPython sorts a run of them by insertion.
    "a + U+0301 run": lambda size: _repeat("\u0301", size, head="a"),
    "a + U+0301 run + U+0316 run": lambda size: "a" + "\u0301" * (size // 4 - 1) + "\u0316" * (size // 4 - 1),
    "a + (U+0301 U+0316) repeated": lambda size: _repeat("\u0301\u0316", size, head="a"),
    "U+0F73 run (decomposes into marks out of order)": lambda size: _repeat("\u0f73", size),
    "emoji + astral marks out of order": lambda size: _repeat("\U0001d167\U0001d165", size, head="\U0001f600"),
    "c-cedilla-acute + U+0316 run": lambda size: _repeat("\u0316", size, head="\u1e09"),
    "U+FDFA run (18 characters each in NFKD)": lambda size: _repeat("\ufdfa", size),
    # Mojibake-looking text.
    "(A-tilde, copyright) repeated": lambda size: _repeat("\u00c3\u00a9", size),
    "(a-circumflex, euro) repeated": lambda size: _repeat("\u00e2\u20ac", size),
    "A-tilde run": lambda size: _repeat("\u00c3", size),
    "C1 controls": lambda size: _repeat("\x9d\x81", size),
    "A-circumflex run + copyright (ftfy peels one a pass)": lambda size: _repeat("\u00c2", size, tail="\u00a9"),
    "CJK + an embedded A-circumflex chain": lambda size: _repeat(
        "\u00c3\x82", size, head="\u65e5 ", tail="\u00c2\u00a9"
    ),
    "distinct lines of an A-circumflex chain": lambda size: _distinct_lines("\u00c2" * 7 + "\u00a9", size),
    "distinct lines of mojibake": lambda size: _distinct_lines("\u00c3\u0192\u00a9", size),
    "distinct lines of a C1 control": lambda size: _distinct_lines("\x9d", size),
    "CJK + dense mojibake": lambda size: _repeat("\u00c3\u00a9 ", size, head="\u65e5 "),
    "Java NUL in mojibake (utf-8-variants)": lambda size: _repeat("\u00c0\x80", size),
    "CESU-8 surrogates in mojibake": lambda size: _repeat("\u00ed\u00a0\u00bd\u00ed\u00b8\u008d", size),
    # Terminal escapes.
    "ESC [ with a parameter run, no final byte": lambda size: _repeat("1;", size, head="\x1b["),
    "ESC ] with no terminator": lambda size: _repeat("a", size, head="\x1b]"),
    "ESC run": lambda size: _repeat("\x1b", size),
    "(ESC [) repeated": lambda size: _repeat("\x1b[", size),
    "ESC + intermediates, no final byte": lambda size: _repeat(" ", size, head="\x1b"),
    # HTML entities.
    "&amp; repeated": lambda size: _repeat("&amp;", size),
    "& + letters": lambda size: _repeat("a", size, head="&"),
    "&amp; nested (& + amp; amp; ...)": lambda size: _repeat("amp;", size, head="&"),
    "&#38; nested": lambda size: _repeat("#38;", size, head="&"),
    "lines of nested &amp;": lambda size: _repeat("&" + "amp;" * 47 + "\n", size),
}


def _item_seconds(profile: str, text: str) -> tuple[float, str]:
    """CPU seconds of one item through process_chunk (budget off), and its record's outcome."""
    import json

    from hermes_worker.chunk_options import ChunkOptions
    from hermes_worker.engine import BUILTIN_PROFILES
    from hermes_worker.processing import process_chunk
    from hermes_worker.wire import ChunkRequest, Item

    spec = BUILTIN_PROFILES[profile].spec()
    request = ChunkRequest(
        1,
        spec,
        options=ChunkOptions(max_validation=1, explain=False, max_prompt_bytes=1024 * 1024, item_time_budget=0),
        items=[Item(1, 1, text)],
    )
    start = time.process_time()
    result = process_chunk(request, mode="local", worker="bench")
    seconds = time.process_time() - start
    record = json.loads(result.record_lines()[0])
    outcome = record["error"]["code"] if "error" in record else f"ok, rounds {record['validation']['rounds']}"
    return seconds, outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="prompt")
    parser.add_argument("--size", type=int, default=1024 * 1024, help="bytes of each input (default 1 MiB)")
    args = parser.parse_args(argv)
    rows = []
    for family, build in FAMILIES.items():
        text = build(args.size)
        seconds, outcome = _item_seconds(args.profile, text)
        rows.append((seconds, family, outcome))
        print(f"{seconds:8.3f} s  {family}  ({outcome})", flush=True)
    rows.sort(reverse=True)
    mib = args.size / (1024 * 1024)
    print(f"\nslowest: {rows[0][1]}: {rows[0][0]:.2f} s of CPU, {rows[0][0] / mib:.2f} s per MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
