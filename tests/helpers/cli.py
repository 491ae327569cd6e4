"""Running the stormount command line as a user would, and reading its errors."""

from __future__ import annotations

import os
import subprocess

from tests.helpers.mounts import stormount_cmd


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
        wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(wrap or []), *stormount_cmd(*args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("stormount: error: "), lines[0]
    return lines[0]
