"""JUnit XML for CI fan-out jobs: one test case per chunk, failures naming their items.

CI systems (GitHub Actions, GitLab, Jenkins) render JUnit reports natively, so a prompt file
checked by `hermes batch --junit report.xml` shows which chunks, lines and ids went wrong.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hermes_worker.contract import result_lines

__all__ = ["JUnitReport"]


class JUnitReport:
    """Collects chunk results; :meth:`write` produces the XML file."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self._cases: list[ET.Element] = []
        self._failures = 0

    def add(self, result: dict[str, Any]) -> None:
        lines = result_lines(result)
        first = json.loads(lines[0])["line"] if lines else 0
        last = json.loads(lines[-1])["line"] if lines else 0
        provenance = result["provenance"]
        case = ET.Element(
            "testcase",
            {
                "classname": f"hermes.batch.{self.suite}",
                "name": f"chunk {result['chunk']} (lines {first}-{last})",
                "time": "0",
            },
        )
        if result["errors"]:
            self._failures += 1
            ids = {}
            for line in lines:
                if '"error"' in line:
                    record = json.loads(line)
                    ids[record["line"]] = record["id"]
            detail = "\n".join(
                f"line {line} (id {ids.get(line)!r}): {code}: {message}" for line, code, message in result["errors"]
            )
            failure = ET.SubElement(
                case,
                "failure",
                {
                    "message": f"{len(result['errors'])} of {len(lines)} prompts failed",
                    "type": ",".join(sorted({code for _l, code, _m in result["errors"]})),
                },
            )
            failure.text = detail
        ET.SubElement(case, "system-out").text = f"ran on {provenance.get('worker')} ({provenance.get('mode')})"
        self._cases.append(case)

    def write(self, path: Path, seconds: float) -> None:
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
        path.write_text(ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n", encoding="utf-8")
