"""Shared by the CLI tests: an expected error is exactly one red line on stderr, exit code 1, no traceback."""

from __future__ import annotations


def error_line(result) -> str:
    """The one line a failed command printed (asserting there is exactly one and no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]
