"""JUnit XML for CI fan-out jobs: one test case per chunk, failures naming their items.

CI systems (GitHub Actions, GitLab, Jenkins) render JUnit reports natively, so a prompt file
checked by `hermes batch --junit report.xml` shows which chunks, lines and ids went wrong.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from hermes_worker.wire import ChunkResult

__all__ = ["JUnitReport", "xml_text"]

# Characters XML 1.0 cannot hold at all, not even as &#...; references: C0 controls but tab,
# newline and carriage return, lone surrogates (they cannot be encoded either), U+FFFE, U+FFFF.
# Ids and messages come from input, so any of them can turn up.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def xml_text(text: str) -> str:
    r"""``text`` with the characters XML 1.0 forbids shown as escapes (``\x1b``, ``\ud800``).

    ElementTree escapes ``&``, ``<`` and ``>`` (so ``]]>`` is harmless) but writes these raw,
    which makes the whole report unreadable to every XML parser.

    >>> xml_text("id \x1b[2J \ufffe")
    'id \\x1b[2J \\ufffe'
    """
    return _NOT_XML.sub(_escape, text)


class JUnitReport:
    """Collects chunk results; :meth:`render` produces the XML document."""

    def __init__(self, suite: str) -> None:
        self.suite = xml_text(suite)
        self._cases: list[ET.Element] = []
        self._failures = 0

    def add(self, result: ChunkResult) -> None:
        lines = result.record_lines()
        first = json.loads(lines[0])["line"] if lines else 0
        last = json.loads(lines[-1])["line"] if lines else 0
        provenance = result.provenance
        case = ET.Element(
            "testcase",
            {
                "classname": f"hermes.batch.{self.suite}",
                "name": f"chunk {result.chunk} (lines {first}-{last})",
                "time": "0",
            },
        )
        if result.errors:
            self._failures += 1
            ids = {}
            for line in lines:
                if '"error"' in line:
                    record = json.loads(line)
                    ids[record["line"]] = record["id"]
            detail = "\n".join(
                f"line {e.line} (id {ids.get(e.line)!r}): {e.code}: {e.message}" for e in result.errors
            )
            failure = ET.SubElement(
                case,
                "failure",
                {
                    "message": f"{len(result.errors)} of {len(lines)} prompts failed",
                    "type": xml_text(",".join(sorted({e.code for e in result.errors}))),
                },
            )
            failure.text = xml_text(detail)
        ran_on = f"ran on {provenance.get('worker')} ({provenance.get('mode')})"
        ET.SubElement(case, "system-out").text = xml_text(ran_on)
        self._cases.append(case)

    def render(self, seconds: float) -> str:
        """The report as an XML document (text)."""
        suite = ET.Element(
            "testsuite",
            {
                "name": f"hermes batch {self.suite}",
                "tests": str(len(self._cases)),
                "failures": str(self._failures),
                "errors": "0",
                "time": f"{seconds:.3f}",
            },
        )
        suite.extend(self._cases)
        root = ET.Element("testsuites")
        root.append(suite)
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
