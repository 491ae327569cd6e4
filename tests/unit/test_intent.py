"""The intent of a lookup, read from the caller's system call: a process blocked in
open(O_CREAT) on a fifo (no reader yet) is creating; one blocked in a plain open is not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stormount.fuse.intent import creating
from tests.helpers.mounts import wait_for

OPENER = "import os, sys; os.open(sys.argv[1], int(sys.argv[2]))"


@pytest.mark.parametrize(("flags", "expected"), [
    (os.O_WRONLY | os.O_CREAT, True),
    (os.O_WRONLY, False),
])
def test_a_caller_blocked_in_open_is_creating_only_with_o_creat(tmp_path, flags, expected):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-c", OPENER, str(fifo), str(flags)])
    try:
        # blocked in the open once it waits for a reader
        wait_for(lambda: _waiting(proc.pid), what="the open to block")
        assert creating(proc.pid) is expected
    finally:
        proc.kill()
        proc.wait()


def _waiting(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() == "wait_for_partner"  # the fifo's open waits
    except OSError:
        return False


def test_nothing_is_assumed_of_a_thread_that_cannot_be_read():
    assert creating(0) is False
    assert creating(2**22 + 12345) is False  # no such thread
