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


# --- uploads wait for the last writer ---------------------------------------------------

# dd's way: a descriptor dup'ed and the first one closed (a FUSE flush) before the rest
# of the data is written through the other
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.close(os.dup(fd))
src = open(sys.argv[2], "rb")
for line in sys.stdin:
    if line.strip() == "close":
        break
    os.write(fd, src.read(int(line)))
    print("written", flush=True)
os.close(fd)
print("closed", flush=True)
"""


class Writer:
    """A process writing one file through a descriptor it keeps open, a chunk per
    `write()`, until `close()`."""

    def __init__(self, path: Path, source: Path) -> None:
        self.proc = subprocess.Popen(["python3", "-c", WRITER, str(path), str(source)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _say(self, line: str, answer: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == answer

    def write(self, nbytes: int) -> None:
        self._say(str(nbytes), "written")

    def close(self) -> None:
        self._say("close", "closed")
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_a_file_still_open_for_writing_is_not_uploaded_until_its_last_close(
        s3_store, make_mount, tmp_path):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(6 << 20))
    m = make_mount(s3_store.url, env=s3_store.env, args=("-o", "debounce=0"))
    writer = Writer(m.path / "f", source)
    try:
        for _ in range(6):  # dd from a slow pipe: a MiB at a time
            writer.write(1 << 20)
            assert m.pending()[0]["state"] == "open"  # journaled, not uploaded
            assert s3_store.keys("f") == []
        writer.close()
    finally:
        writer.kill()
    m.settle()
    assert s3_store.get("f") == source.read_bytes()  # one whole object
    uploads = m.ask("stats")["writeback"]
    assert (uploads["uploaded"], uploads["bytes"]) == (1, 6 << 20)  # sent once


def test_kill_9_while_a_file_is_written_uploads_no_half_file(s3_store, make_mount,
                                                             tmp_path):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(4 << 20))
    m = make_mount(s3_store.url, env=s3_store.env, args=("-o", "debounce=0"))
    (m.path / "done").write_bytes(b"closed before the crash")
    writer = Writer(m.path / "huge", source)
    try:
        writer.write(3 << 20)  # of 4 MiB, when the daemon dies
        kill_9(m)
    finally:
        writer.kill()
    m.start()
    m.settle()
    assert s3_store.keys("huge") == []  # never uploaded half-written under its name
    assert s3_store.get("done") == b"closed before the crash"
    recovered = list((m.cache_dir / "recovered").glob("*/huge"))
    assert [p.read_bytes() for p in recovered] == [source.read_bytes()[:3 << 20]]
    assert "huge was still being written" in m.log()
