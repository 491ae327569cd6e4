"""Nothing acknowledged is lost: files closed before a `kill -9` of the daemon reach the
store after a restart, also when the store was unreachable at the crash; `unmount`
returns once the store has everything, or after its timeout leaves the rest journaled
for the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from stormount.registry import mounted_fuse
from tests.helpers.mounts import Mount, stormount_cmd, wait_for
from tests.helpers.proxy import CountingProxy

pytestmark = pytest.mark.timeout(180)


def content(i: int) -> bytes:
    return f"file {i}\n".encode() * (1 + i % 50)


def write_files(root: Path, n: int) -> None:
    for i in range(n):
        sub = root / f"d{i % 10}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:03d}").write_bytes(content(i))


def check_files(store, n: int, prefix: str = "") -> None:
    keys = {k for k in store.keys(prefix) if not k.endswith("/")}
    assert len(keys) == n, sorted(keys)[:5]
    for i in range(n):
        assert store.get(f"{prefix}d{i % 10}/f{i:03d}") == content(i), i


def kill_9(m: Mount) -> None:
    assert m.proc is not None
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait()
    m.proc = None
    # auto_unmount: the kernel mount goes with the daemon
    wait_for(lambda: mounted_fuse(str(m.path)) is None, what="auto unmount")


def test_kill_9_after_the_last_close_loses_nothing(s3_store, make_mount):
    # a long debounce: at the crash, (nearly) every file is still only in the journal
    m = make_mount(s3_store.url, env=s3_store.env, args=("-o", "debounce=60"))
    (m.path / "w").mkdir()
    write_files(m.path / "w", 200)
    kill_9(m)
    assert len(s3_store.keys("w/")) < 200
    m.args = ()
    m.start()  # the same cache directory: the journal is replayed
    assert len(os.listdir(m.path / "w" / "d3")) == 20  # listed before they are uploaded
    m.settle()
    check_files(s3_store, 200, "w/")


def test_kill_9_while_the_store_is_unreachable_loses_nothing(s3_store, make_mount):
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    with CountingProxy(port) as proxy:
        url = (f"s3://{s3_store.bucket}?endpoint=http://127.0.0.1:{proxy.port}"
               "&connect_timeout=1&read_timeout=2&sdk_retries=0")
        m = make_mount(url, env=s3_store.env, args=("-o", "debounce=0"))
        (m.path / "w").mkdir()
        for d in range(10):
            (m.path / "w" / f"d{d}").mkdir()
            os.listdir(m.path / "w" / f"d{d}")  # listed: new names need no store
        proxy.cut()
        write_files(m.path / "w", 200)  # acknowledged while every upload fails
        kill_9(m)
    assert s3_store.keys("w/d0/") == ["w/d0/"]
    m.url = s3_store.url  # the store is back (reached directly this time)
    m.start()
    m.settle()
    check_files(s3_store, 200, "w/")


def unmount(m: Mount, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(stormount_cmd("unmount", str(m.path), *args), capture_output=True,
                          text=True, timeout=120, env={**os.environ, **m.env})


def test_unmount_returns_when_every_file_is_stored(s3_store, make_mount):
    m = make_mount(s3_store.url, env=s3_store.env)  # the default debounce
    write_files(m.path, 50)
    result = unmount(m)
    assert result.returncode == 0, result.stderr
    assert mounted_fuse(str(m.path)) is None
    check_files(s3_store, 50)
    assert m.proc is not None and m.proc.wait(timeout=30) == 0


def test_unmount_timeout_leaves_the_queue_for_the_next_start(s3_store, make_mount):
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    with CountingProxy(port) as proxy:
        url = (f"s3://{s3_store.bucket}?endpoint=http://127.0.0.1:{proxy.port}"
               "&connect_timeout=1&read_timeout=2&sdk_retries=0")
        m = make_mount(url, env=s3_store.env)
        os.listdir(m.path)
        proxy.cut()
        for i in range(5):
            (m.path / f"late{i}").write_bytes(b"x" * i)
        result = unmount(m, "--timeout", "3")
        assert result.returncode == 1
        assert "5 file(s) still queued" in result.stderr
        assert "late3" in result.stderr
        assert mounted_fuse(str(m.path)) is None
        assert m.proc is not None and m.proc.wait(timeout=30) == 1
    m.proc = None
    m.url = s3_store.url
    m.start()
    m.settle()
    assert [s3_store.get(f"late{i}") for i in range(5)] == [b"x" * i for i in range(5)]
