"""Start-up checks: a mount that cannot work as asked is refused with one clear line and
a non-zero exit, before anything is mounted; a tier that cannot be reached is started
without (the default), waited for, or refused, as `on_unreachable` says."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.parse

import pytest

from stormount.registry import mounted_fuse
from tests.helpers.cli import one_error_line, run
from tests.helpers.mounts import LIVE, stormount_cmd, unmount_quietly, wait_for
from tests.helpers.proxy import OutageProxy, proxied

pytestmark = pytest.mark.timeout(120)


def refusal(result: subprocess.CompletedProcess, mnt) -> str:
    """The one error line of a start that was refused: exit 1, nothing mounted."""
    assert result.returncode == 1, result
    assert mounted_fuse(str(mnt)) is None
    return one_error_line(result)


def test_cache_dir_inside_the_mountpoint(data, mnt):
    result = run("mount", f"file://{data}", str(mnt), "--cache-dir", str(mnt / "cache"))
    assert "must not be inside the mountpoint" in refusal(result, mnt)


def test_cache_dir_on_a_stormount_mount(data, mnt, tmp_path):
    ok = run("mount", f"file://{data}", str(mnt), "--cache-dir", str(tmp_path / "c1"))
    assert ok.returncode == 0, ok.stderr
    other = tmp_path / "mnt2"
    other.mkdir()
    try:
        result = run("mount", f"file://{data}", str(other), "--cache-dir",
                     str(mnt / "nested-cache"))
        line = refusal(result, other)
        assert f"is on the stormount mount {mnt}" in line and "local disk" in line
    finally:
        run("unmount", str(mnt))
        unmount_quietly(other)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only filesystem (root writes anywhere else)."""
    path = tmp_path / "ro-cache"
    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    yield path
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.mark.parametrize("background", [False, True])
def test_cache_dir_not_writable(data, mnt, read_only_dir, background):
    args = () if background else ("--foreground",)
    result = run("mount", f"file://{data}", str(mnt), "--cache-dir", str(read_only_dir), *args)
    line = refusal(result, mnt)
    assert f"cannot use cache directory {read_only_dir}" in line
    assert "Read-only file system" in line


def down_store(s3_store, proxy: OutageProxy) -> str:
    proxy.stop()
    return proxied(s3_store, proxy)


def test_unreachable_with_a_cold_cache_is_refused_by_default(s3_store, mnt, tmp_path):
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy:
        result = run("mount", down_store(s3_store, proxy), str(mnt), "--cache-dir",
                     str(tmp_path / "c"), env=s3_store.env)
    assert "no tier is reachable" in refusal(result, mnt)


@pytest.mark.parametrize("spill_tier", [False, True])
def test_on_unreachable_refuse(s3_store, mnt, tmp_path, spill_tier):
    """Alone, or with a second tier that answers (which the default would start with)."""
    spill = tmp_path / "spill"
    spill.mkdir()
    tiers = ("--tier", f"file://{spill}") if spill_tier else ()
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy:
        result = run("mount", down_store(s3_store, proxy), str(mnt), *tiers, "--cache-dir",
                     str(tmp_path / "c"), "-o", "on_unreachable=refuse", env=s3_store.env)
    line = refusal(result, mnt)
    assert "not mounting (on_unreachable = refuse): tier 0" in line
    assert "cannot be reached" in line


def test_on_unreachable_default_starts_without_the_tier(s3_store, mnt, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy:
        result = run("mount", down_store(s3_store, proxy), str(mnt), "--tier",
                     f"file://{spill}", "--cache-dir", str(tmp_path / "c"), env=s3_store.env)
        assert result.returncode == 0, result.stderr
        try:
            health = run("ctl", "-m", str(mnt), "health")
            assert health.returncode == 3  # degraded
        finally:
            unmounted = run("unmount", str(mnt))
        assert unmounted.returncode == 0, unmounted.stderr


def test_on_unreachable_wait_mounts_once_the_tier_answers(s3_store, mnt, tmp_path):
    s3_store.put("hello.txt", b"hi")
    log_path = tmp_path / "daemon.log"
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy, \
            open(log_path, "wb") as log:
        url = down_store(s3_store, proxy)
        proc = subprocess.Popen(
            stormount_cmd("mount", url, str(mnt), "--foreground", "--cache-dir",
                          str(tmp_path / "c"), "-o", "on_unreachable=wait"),
            env={**os.environ, **s3_store.env}, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL)
        LIVE.add(mnt)
        try:
            wait_for(lambda: b"waiting for unreachable tier(s)" in log_path.read_bytes(),
                     what="the wait to be logged")
            assert mounted_fuse(str(mnt)) is None and proc.poll() is None
            proxy.start()
            wait_for(lambda: mounted_fuse(str(mnt)) == "fuse.stormount", timeout=60,
                     what="the mount once the tier answers")
            assert (mnt / "hello.txt").read_bytes() == b"hi"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            unmount_quietly(mnt)
            LIVE.discard(mnt)


def test_on_unreachable_wait_in_the_background_returns_once_mounted(s3_store, mnt, tmp_path):
    """`mount` (and so mount.stormount) waits with the daemon, and returns 0 once it serves."""
    s3_store.put("hello.txt", b"hi")
    cache = tmp_path / "c"
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy:
        waiting = subprocess.Popen(
            stormount_cmd("mount", down_store(s3_store, proxy), str(mnt), "--cache-dir",
                          str(cache), "-o", "on_unreachable=wait"),
            env={**os.environ, **s3_store.env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        LIVE.add(mnt)
        try:
            wait_for(lambda: (cache / "stormount.log").exists() and b"waiting for unreachable"
                     in (cache / "stormount.log").read_bytes(), what="the wait to be logged")
            assert waiting.poll() is None and mounted_fuse(str(mnt)) is None
            proxy.start()
            assert waiting.wait(timeout=60) == 0, waiting.stderr.read() if waiting.stderr else ""
            assert mounted_fuse(str(mnt)) == "fuse.stormount"
            assert (mnt / "hello.txt").read_bytes() == b"hi"
            assert run("unmount", str(mnt)).returncode == 0
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
            # the daemon has a session of its own: found by its cache directory
            subprocess.run(["pkill", "-KILL", "-f", "--", f"--cache-dir {cache}"], check=False)
            unmount_quietly(mnt)
            LIVE.discard(mnt)


def test_on_unreachable_wait_ends_on_sigterm(s3_store, mnt, tmp_path):
    log_path = tmp_path / "daemon.log"
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy, \
            open(log_path, "wb") as log:
        proc = subprocess.Popen(
            stormount_cmd("mount", down_store(s3_store, proxy), str(mnt), "--foreground",
                          "--cache-dir", str(tmp_path / "c"), "-o", "on_unreachable=wait"),
            env={**os.environ, **s3_store.env}, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: b"waiting for unreachable tier(s)" in log_path.read_bytes(),
                     what="the wait to be logged")
            proc.send_signal(signal.SIGHUP)  # a logrotate run meanwhile does not end it
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert b"SIGTERM: stopped before mounting" in log_path.read_bytes()
    assert mounted_fuse(str(mnt)) is None


def test_on_unreachable_wait_does_not_wait_for_a_missing_bucket(s3_store, mnt, tmp_path):
    url = s3_store.url.replace(s3_store.bucket, "no-such-bucket-here", 1)
    result = run("mount", url, str(mnt), "--cache-dir", str(tmp_path / "c"),
                 "-o", "on_unreachable=wait", env=s3_store.env)
    assert "no-such-bucket-here" in refusal(result, mnt)


def test_on_unreachable_bad_value(data, mnt):
    line = refusal(run("mount", f"file://{data}", str(mnt), "-o", "on_unreachable=sometimes"),
                   mnt)
    assert "on_unreachable must be degraded, wait or refuse, not 'sometimes'" in line
