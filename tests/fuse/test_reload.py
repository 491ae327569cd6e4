"""SIGHUP (systemctl reload): the daemon reopens its log file, so that logrotate can move
it away, and re-reads its configuration: what can change at run time changes at once,
the rest is named as waiting for a new mount, and a broken file changes nothing."""

from __future__ import annotations

import os
import signal

import pytest

from stormount.registry import lookup
from tests.helpers.cli import run
from tests.helpers.mounts import unmount_quietly, wait_for

pytestmark = pytest.mark.timeout(120)

CONFIG = """\
log_level = "{level}"
[[tier]]
url = "file://{data}"
[cache]
block_size = "{block}"
[writeback]
debounce = {debounce}
"""


def test_sighup_reopens_the_log_and_applies_the_new_settings(data, mnt, tmp_path):
    config = tmp_path / "mount.toml"
    config.write_text(CONFIG.format(level="info", data=data, block="4MiB", debounce=3600))
    cache = tmp_path / "cache"
    log = cache / "stormount.log"
    started = run("mount", str(config), str(mnt), "--cache-dir", str(cache))
    assert started.returncode == 0, started.stderr
    try:
        record = lookup(str(mnt))
        assert record is not None
        (mnt / "early.txt").write_bytes(b"waits for the debounce")
        assert run("ctl", "-m", str(mnt), "--json", "queue").stdout.count('"path"') == 1

        # logrotate moves the log away, then reloads
        os.rename(log, tmp_path / "stormount.log.1")
        config.write_text(CONFIG.format(level="debug", data=data, block="1MiB", debounce=0))
        os.kill(record.pid, signal.SIGHUP)
        wait_for(lambda: log.exists() and b"SIGHUP: log reopened" in log.read_bytes(),
                 what="the reopened log")
        text = log.read_text()
        assert "changed now: writeback.debounce, log_level;" in text
        assert "takes a new mount to change: cache.block_size" in text
        # the shorter debounce applies to what was already queued ...
        wait_for(lambda: (data / "early.txt").exists(), what="the queued file's upload")
        assert (data / "early.txt").read_bytes() == b"waits for the debounce"
        # ... and the new level to what is logged from now on
        (mnt / "later.txt").write_bytes(b"x")
        wait_for(lambda: "DEBUG stormount.writeback: queued later.txt" in log.read_text(),
                 what="a debug line")
        # the old file was let go: nothing after the reload went into it
        rotated = (tmp_path / "stormount.log.1").read_text()
        assert "SIGHUP: log reopened" not in rotated and "later.txt" not in rotated

        # a broken file changes nothing, and the mount goes on
        config.write_text("log_level = [\n")
        os.kill(record.pid, signal.SIGHUP)
        wait_for(lambda: "configuration not re-read, nothing changed" in log.read_text(),
                 what="the refusal in the log")
        assert "is not valid TOML" in log.read_text()
        assert sorted(os.listdir(mnt)) == ["early.txt", "later.txt"]
    finally:
        stopped = run("unmount", str(mnt))
        unmount_quietly(mnt)
    assert stopped.returncode == 0, stopped.stderr
    assert (data / "later.txt").read_bytes() == b"x"
