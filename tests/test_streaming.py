"""Batches stream: memory does not grow with the input, and a terminal gets a progress line."""

from __future__ import annotations

import os
import pty
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from .support.environment import REPO


def peak_rss_mib(args: list[str], env: dict[str, str], cwd: Path) -> float:
    """Run a command to completion and return its own peak resident memory, in MiB."""
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, args
    return usage.ru_maxrss / 1024  # Linux reports KiB


@pytest.mark.slow
def test_producer_memory_does_not_grow_with_the_input(hermes_env: dict[str, str], tmp_path: Path) -> None:
    line = '{"prompt": "Summarize the plot of Hamlet in three sentences, please.  "}\n'
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_text(line * 10_000, encoding="utf-8")
    large.write_text(line * 250_000, encoding="utf-8")  # 25x the input
    command = [sys.executable, "-m", "hermes_producer", "batch", "--processes", "1", "--profile", "nfc"]
    small_rss = peak_rss_mib([*command, str(small), "-o", str(tmp_path / "s.out")], hermes_env, tmp_path)
    large_rss = peak_rss_mib([*command, str(large), "-o", str(tmp_path / "l.out")], hermes_env, tmp_path)
    with (tmp_path / "l.out").open(encoding="utf-8") as records:
        assert sum(1 for _ in records) == 250_000
    assert large_rss - small_rss < 10, f"peak RSS grew from {small_rss:.1f} MiB to {large_rss:.1f} MiB"


def test_a_terminal_gets_a_progress_line_and_a_pipe_does_not(hermes_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello\n" * 3000, encoding="utf-8")
    command = [sys.executable, "-m", "hermes_producer", "batch", str(src), "-o", str(tmp_path / "out.jsonl")]

    leader, follower = pty.openpty()
    with subprocess.Popen(
        command, env=hermes_env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower
    ) as process:
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        assert process.wait(timeout=60) == 0
    os.close(leader)
    assert b"records" in seen and b"3,000 prompts" in seen

    piped = subprocess.run(command, env=hermes_env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "records" not in piped.stderr and "\x1b[" not in piped.stderr
    assert "3,000 prompts" in piped.stderr


def test_resource_module_reports_kib_on_this_platform() -> None:
    # peak_rss_mib() relies on Linux semantics of ru_maxrss.
    assert sys.platform.startswith("linux"), "the memory test assumes Linux ru_maxrss (KiB)"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 1024
