"""Running the stormount command line as a user would, and reading its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from unittest import mock

from click.testing import CliRunner

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


@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str


def run_in_process(*args: str, env: dict[str, str] | None = None) -> Ran:
    """`stormount ARGS` in this process (so it sees the memory:// stores of the test),
    through cli.main as the installed command runs: the errors it knows become one line;
    anything else escapes here, as the traceback a user would see."""
    from stormount import cli

    with CliRunner().isolation(env=env) as (out, err, _), \
            mock.patch.object(sys, "argv", ["stormount", *args]):
        try:
            cli.main()
            code: object = 0
        except SystemExit as e:
            code = e.code
        return Ran(code if isinstance(code, int) else 1, out.getvalue().decode(),
                   err.getvalue().decode())
