"""The README's generated tables: settings and item error codes, from their declarations.

    python -m hermes_worker.settings_docs --markdown codes      # print one table
    python -m hermes_worker.settings_docs --update README.md    # rewrite the marked tables in place

Settings are declared in :mod:`hermes_worker.settings`, item error codes in
:mod:`hermes_worker.contract` (``ITEM_CODES``). In README.md each table sits between
``<!-- BEGIN generated: NAME ... -->`` and ``<!-- END generated: NAME -->``;
tests/test_settings.py fails when they differ from what this module generates, so the words of a
setting or of an error code are changed in its declaration only.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from .contract import ITEM_CODES
from .settings import LIMITS, SETTINGS, Setting, show_number

__all__ = ["TABLES", "update_readme"]


def _meaning(spec: Setting) -> str:
    words = spec.help + (f" ({spec.note})" if spec.note else "")
    if spec.options:
        words += f" ({', '.join(f'`{option}`' for option in spec.options)})"
    return words


def settings_table() -> str:
    """Every setting: its variable, its default and what it means."""
    rows = [f"| `{spec.variable}` | {spec.shown_default} | {_meaning(spec)} |" for spec in SETTINGS]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


def limits_table() -> str:
    """Every numeric setting's bounds, and the options checked against the same bounds."""
    rows = []
    for spec in SETTINGS:
        if spec.variable not in LIMITS:
            continue
        low, high = LIMITS[spec.variable]
        notes = [f"`{option}`" for option in spec.options] + ([f"({spec.bounds_note})"] if spec.bounds_note else [])
        cells = [f"`{spec.variable}`", show_number(low), show_number(high), " ".join(notes)]
        rows.append(f"| {' | '.join(cells)} |".replace("|  |", "| |"))
    return "\n".join(["| variable | lowest | highest | option |", "|---|---|---|---|", *rows])


def codes_table() -> str:
    """Every item error code and what it means, in the order they are declared."""
    rows = [f"| `{code}` | {meaning} |" for code, meaning in ITEM_CODES.items()]
    return "\n".join(["| code | meaning |", "|---|---|", *rows])


TABLES: dict[str, Callable[[], str]] = {"settings": settings_table, "limits": limits_table, "codes": codes_table}


def update_readme(readme: str) -> str:
    """``readme`` with every marked table replaced by what the declarations say now.

    Raises:
        ValueError: a table's markers are missing.
    """
    for name, render in TABLES.items():
        marked = re.compile(
            rf"(<!-- BEGIN generated: {name} [^\n]*-->\n).*?(<!-- END generated: {name} -->)", re.DOTALL
        )
        if not marked.search(readme):
            raise ValueError(f"no '<!-- BEGIN generated: {name} ... -->' ... '<!-- END generated: {name} -->' markers")
        readme = marked.sub(lambda found: f"{found[1]}{render()}\n{found[2]}", readme)  # noqa: B023 - used at once
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hermes_worker.settings_docs", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", choices=sorted(TABLES), help="print this table")
    group.add_argument("--update", type=Path, metavar="README", help="rewrite the marked tables in this file")
    args = parser.parse_args(argv)
    if args.markdown:
        print(TABLES[args.markdown]())
        return 0
    try:
        args.update.write_text(update_readme(args.update.read_text(encoding="utf-8")), encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"{args.update}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
