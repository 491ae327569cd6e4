"""A dead FUSE mount at the mountpoint (issue 19, finding 9): its daemon was killed and
its auto_unmount did not fire, so every request there fails with ENOTCONN. The next
mount at the same place says so, detaches it and mounts."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

from stormount.registry import mounted_fuse
from tests.helpers.mounts import Mount, wait_for


def _auto_unmount_helper(daemon_pid: int, mountpoint: Path) -> int:
    """The pid of the fusermount3 that watches the daemon to unmount after it."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if (ppid == daemon_pid and cmdline and cmdline[0].endswith(b"fusermount3")
                and os.fsencode(str(mountpoint)) in cmdline):
            return int(entry)
    raise AssertionError("no auto_unmount fusermount3 found for the daemon")


def _dead(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def test_dead_mount_is_cleared_and_mounted_over(tmp_path: Path, file_store) -> None:
    mnt = tmp_path / "mnt"
    first = Mount(path=mnt, url=file_store.url, cache_dir=tmp_path / "cache",
                  log_path=tmp_path / "first.log", env=file_store.env)
    first.start()
    try:
        assert first.proc is not None
        helper = wait_for(lambda: _auto_unmount_helper(first.proc.pid, mnt), timeout=10,
                          what="the auto_unmount helper")
        os.kill(helper, signal.SIGKILL)  # no auto_unmount then
        first.proc.kill()
        first.proc.wait()
        wait_for(lambda: _dead(mnt), timeout=10, what="the mount to be dead")
    except BaseException:
        first.stop()
        raise
    first.proc = None
    second = Mount(path=mnt, url=file_store.url, cache_dir=tmp_path / "cache",
                   log_path=tmp_path / "second.log", env=file_store.env)
    try:
        second.start()  # the dead mount's entry counts as mounted: wait for the new one

        def serving() -> bool:
            if second.proc is not None and second.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {second.proc.returncode}")
            return not _dead(mnt) and mounted_fuse(str(mnt)) == "fuse.stormount"
        wait_for(serving, timeout=30, what="the new mount to serve")
        (mnt / "hello.txt").write_text("alive")
        assert (mnt / "hello.txt").read_text() == "alive"
        assert "is a dead FUSE mount" in second.log()
        assert second.stop() == 0
        assert mounted_fuse(str(mnt)) is None
        assert os.listdir(mnt) == []  # the file went to the store, not under the mount
    except BaseException:
        print(second.log())
        raise
    finally:
        second.stop()
        first.stop()
