"""mount.stormount, run as mount(8) runs it (`mount.stormount SOURCE DIR -o OPTS`, also
from fstab): it returns once the mount is ready, takes every option as -o, and the
ownership, mode and read-only options do what they say."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stormount.registry import mounted_fuse
from tests.helpers.cli import run
from tests.helpers.mounts import LIVE, unmount_quietly

pytestmark = pytest.mark.timeout(120)
HELPER = str(Path(sys.executable).parent / "mount.stormount")


def helper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([HELPER, *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def mountpoint(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    LIVE.add(mp)
    yield mp
    if mounted_fuse(str(mp)) is not None:
        run("unmount", str(mp), "--timeout", "30")
    unmount_quietly(mp)
    LIVE.discard(mp)


def mount_options(mountpoint: Path) -> set[str]:
    with open("/proc/self/mounts") as f:
        for line in f:
            _, point, fstype, options, *_ = line.split()
            if point == str(mountpoint):
                assert fstype == "fuse.stormount"
                return set(options.split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


def test_owner_and_modes_from_o_options(s3_store, mountpoint, tmp_path):
    s3_store.put("docs/report.txt", b"quarterly\n")  # written by another tool: no metadata
    result = helper(s3_store.url, str(mountpoint), "-o",
                    f"cache_dir={tmp_path / 'cache'},uid=1234,gid=2345,umask=027,"
                    "file_mode=0666,dir_mode=0777,allow_other,noexec,debounce=0",
                    "-o", "_netdev,nofail,x-systemd.automount,noatime", env=s3_store.env)
    assert result.returncode == 0, result.stderr
    # it returned once the mount serves, as mount(8) expects: no waiting here
    assert mounted_fuse(str(mountpoint)) == "fuse.stormount"
    # nosuid and nodev are FUSE's own, always
    assert {"allow_other", "default_permissions", "noexec", "nosuid", "nodev"} \
        <= mount_options(mountpoint)
    doc = os.stat(mountpoint / "docs" / "report.txt")
    folder = os.stat(mountpoint / "docs")
    assert (doc.st_uid, doc.st_gid) == (1234, 2345)
    assert (folder.st_uid, folder.st_gid) == (1234, 2345)
    assert stat.S_IMODE(doc.st_mode) == 0o640 and stat.S_ISREG(doc.st_mode)
    assert stat.S_IMODE(folder.st_mode) == 0o750 and stat.S_ISDIR(folder.st_mode)
    assert (mountpoint / "docs" / "report.txt").read_bytes() == b"quarterly\n"
    # default_permissions: the kernel checks those modes, so another user is kept out
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                os.listdir(mountpoint / "docs")
                code = 2
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert run("unmount", str(mountpoint)).returncode == 0
    assert mounted_fuse(str(mountpoint)) is None


def test_read_only_mount_refuses_changes_and_queues_nothing(s3_store, mountpoint, tmp_path):
    s3_store.put("keep.txt", b"original")
    cache = tmp_path / "cache"
    result = helper(s3_store.url, str(mountpoint), "-r", "-o", f"cache_dir={cache}",
                    env=s3_store.env)
    assert result.returncode == 0, result.stderr
    assert "ro" in mount_options(mountpoint)
    assert (mountpoint / "keep.txt").read_bytes() == b"original"
    attempts = {
        "create": lambda: (mountpoint / "new.txt").write_bytes(b"x"),
        "overwrite": lambda: (mountpoint / "keep.txt").write_bytes(b"changed"),
        "mkdir": lambda: (mountpoint / "dir").mkdir(),
        "unlink": lambda: (mountpoint / "keep.txt").unlink(),
        "rename": lambda: (mountpoint / "keep.txt").rename(mountpoint / "moved.txt"),
        "chmod": lambda: os.chmod(mountpoint / "keep.txt", 0o600),
        "utime": lambda: os.utime(mountpoint / "keep.txt", (1, 1)),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, what
    queue = run("ctl", "-m", str(mountpoint), "--json", "queue")
    assert queue.returncode == 0, queue.stderr
    assert '"uploads": []' in queue.stdout
    assert run("unmount", str(mountpoint)).returncode == 0
    assert s3_store.keys() == ["keep.txt"]
    assert s3_store.get("keep.txt") == b"original"


def test_fake_sloppy_and_failures(file_store, mountpoint, tmp_path):
    source = file_store.url
    cache = f"cache_dir={tmp_path / 'cache'}"
    # -f checks everything but does not mount
    fake = helper(source, str(mountpoint), "-f", "-o", cache)
    assert fake.returncode == 0, fake.stderr
    assert mounted_fuse(str(mountpoint)) is None
    # an unknown option is refused, with mount(8)'s "mount failed" status ...
    bad = helper(source, str(mountpoint), "-o", f"{cache},frobnicate=1")
    assert bad.returncode == 32
    assert bad.stderr.strip() == "mount.stormount: unknown mount option -o frobnicate"
    assert mounted_fuse(str(mountpoint)) is None
    # ... unless -s (sloppy) asks to pass over it
    sloppy = helper(source, str(mountpoint), "-s", "-v", "-o", f"{cache},frobnicate=1")
    assert sloppy.returncode == 0, sloppy.stderr
    assert mounted_fuse(str(mountpoint)) == "fuse.stormount"
    assert f"mounted at {mountpoint}" in sloppy.stdout
    # a second mount at the same place fails cleanly
    busy = helper(source, str(mountpoint), "-o", f"cache_dir={tmp_path / 'c2'}")
    assert busy.returncode == 32 and "busy" in busy.stderr
    # wrong invocations are status 1
    assert helper(source).returncode == 1
    assert helper(source, str(mountpoint), "-t", "ext4").returncode == 1
