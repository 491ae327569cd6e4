"""`stormount unmount` of a mount in use: refused by default, naming what holds it, with
the mount left serving; `--lazy` detaches at once and serves the holders until they let
go, then uploads everything; `--force` cuts them off once the queue is uploaded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stormount.control import client
from stormount.registry import lookup, mounted_fuse, record_name
from tests.helpers.cli import one_error_line, run
from tests.helpers.mounts import Mount, stormount_cmd, wait_for

pytestmark = pytest.mark.timeout(120)

# holds M/busy open for appending; writes each line it reads to it; closes at EOF
WRITER = 'exec 3>>"$1"; echo a >&3; echo ready; while read -r x; do echo "$x" >&3; done'


class Holder:
    """A process holding something in a mount, steered through its stdin."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the holder says when it holds
        assert line == b"ready\n", line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def finish(self) -> int:
        """Let go: EOF on its stdin; its exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)


@pytest.fixture
def local(tmp_path: Path, make_mount: Callable[..., Mount]) -> Mount:
    store = tmp_path / "store"
    store.mkdir()
    m = make_mount(f"file://{store}")
    m.store_dir = store  # type: ignore[attr-defined]
    return m


@pytest.fixture
def hold(make_mount: Callable[..., Mount]) -> Iterator[Callable[..., Holder]]:
    """hold(script, *args, cwd=None) -> a Holder running `sh -c script sh args`. Set up
    after make_mount, so torn down before it: holders are killed before the mounts are
    stopped (a lazily detached mount would wait for them)."""
    procs: list[subprocess.Popen[bytes]] = []

    def _hold(script: str, *args: str, cwd: Path | None = None) -> Holder:
        proc = subprocess.Popen(["sh", "-c", script, "sh", *args], cwd=cwd,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        return Holder(proc)

    yield _hold
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def still_serves(m: Mount) -> None:
    assert mounted_fuse(str(m.path)) == "fuse.stormount"
    assert m.proc is not None and m.proc.poll() is None
    (m.path / "after.txt").write_text("still here\n")
    assert (m.path / "after.txt").read_text() == "still here\n"


def test_a_file_open_for_writing_refuses_the_unmount(local, hold):
    writer = hold(WRITER, str(local.path / "busy"))
    line = one_error_line(run("unmount", str(local.path)))
    assert f"pid {writer.pid} (sh: file {local.path}/busy)" in line, line
    assert "--lazy" in line and "--force" in line
    still_serves(local)
    writer.send("b\n")  # nothing was signalled: the writer goes on
    assert writer.finish() == 0
    local.settle()
    assert (local.store_dir / "busy").read_text() == "a\nb\n"


def test_a_shell_in_the_mount_refuses_the_unmount(local, hold):
    (local.path / "dir").mkdir()
    shell = hold("echo ready; read -r x", cwd=local.path / "dir")
    line = one_error_line(run("unmount", str(local.path)))
    assert f"pid {shell.pid} (sh: cwd {local.path}/dir)" in line, line
    still_serves(local)


def test_the_daemon_unmounts_plainly_and_refuses_when_busy(local, hold):
    # a holder that came after the command's own check: the daemon's unmount is not
    # lazy, so the kernel refuses it, and the mount serves on
    writer = hold(WRITER, str(local.path / "busy"))
    record = lookup(str(local.path))
    assert record is not None and record.socket
    reply = client.request(record.socket, {"command": "unmount", "timeout": 30})
    assert reply["ok"] is False and reply["busy"] is True, reply
    still_serves(local)
    assert writer.finish() == 0
    result = run("unmount", str(local.path))
    assert result.returncode == 0, result.stderr
    assert mounted_fuse(str(local.path)) is None
    assert local.proc is not None and local.proc.wait(timeout=30) == 0
    assert (local.store_dir / "busy").read_text() == "a\n"
    assert (local.store_dir / "after.txt").read_text() == "still here\n"


def test_lazy_detaches_at_once_and_uploads_what_is_written_after(local, hold):
    writer = hold(WRITER, str(local.path / "busy"))
    result = run("unmount", str(local.path), "--lazy", "--timeout", "0")
    assert result.returncode == 0, result.stderr
    assert mounted_fuse(str(local.path)) is None  # detached at once
    assert f"detached; still in use by pid {writer.pid}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    lines = [f"line {i}\n" for i in range(100)]
    for text in lines:
        writer.send(text)  # after the detach, the daemon still serves the open file
    assert local.proc is not None and local.proc.poll() is None
    assert writer.finish() == 0
    assert local.proc.wait(timeout=60) == 0  # once the last user let go and all is stored
    assert (local.store_dir / "busy").read_text() == "a\n" + "".join(lines)


def test_lazy_waits_for_the_holders_and_the_uploads(local, hold):
    writer = hold(WRITER, str(local.path / "busy"))
    (local.path / "closed.txt").write_text("queued\n")
    unmount = subprocess.Popen(stormount_cmd("unmount", str(local.path), "--lazy"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: mounted_fuse(str(local.path)) is None, what="the detach")
        writer.send("written after the detach\n")
        assert unmount.poll() is None  # still waiting for the writer
        assert writer.finish() == 0
        _, stderr = unmount.communicate(timeout=60)
        assert unmount.returncode == 0, stderr
    finally:
        if unmount.poll() is None:
            unmount.kill()
            unmount.communicate()
    assert local.proc is not None and local.proc.wait(timeout=30) == 0
    assert (local.store_dir / "busy").read_text() == "a\nwritten after the detach\n"
    assert (local.store_dir / "closed.txt").read_text() == "queued\n"


def test_a_signal_ends_a_detached_mount_for_its_holders_and_uploads(local, hold):
    # the service's stop: `unmount --lazy`, then systemd's SIGTERM to what is left
    writer = hold(WRITER, str(local.path / "busy"))
    assert run("unmount", str(local.path), "--lazy", "--timeout", "0").returncode == 0
    assert local.proc is not None
    local.proc.send_signal(signal.SIGTERM)
    assert local.proc.wait(timeout=60) == 0
    assert (local.store_dir / "busy").read_text() == "a\n"  # open, written, uploaded
    writer.send("too late\n")
    writer.finish()  # its write failed
    assert b"too late" not in (local.store_dir / "busy").read_bytes()


def test_force_unmounts_a_busy_mount_and_uploads_its_open_files(local, hold):
    writer = hold(WRITER, str(local.path / "busy"))
    result = run("unmount", str(local.path), "--force")
    assert result.returncode == 0, result.stderr
    assert mounted_fuse(str(local.path)) is None
    assert local.proc is not None and local.proc.wait(timeout=30) == 0
    assert (local.store_dir / "busy").read_text() == "a\n"  # still open, yet stored
    writer.send("cut off\n")
    writer.finish()  # its write failed
    assert b"cut off" not in (local.store_dir / "busy").read_bytes()


def test_an_idle_mount_unmounts_as_before(local):
    (local.path / "f.txt").write_text("written\n")
    result = run("unmount", str(local.path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert mounted_fuse(str(local.path)) is None
    assert local.proc is not None and local.proc.wait(timeout=30) == 0
    assert (local.store_dir / "f.txt").read_text() == "written\n"


def test_lazy_force_serves_until_the_timeout_then_cuts_off_and_uploads(local, hold):
    # the service's stop: the holders get --timeout to finish, then they are cut off
    writer = hold(WRITER, str(local.path / "busy"))
    result = run("unmount", str(local.path), "--lazy", "--force", "--timeout", "2")
    assert result.returncode == 0, result.stderr
    assert mounted_fuse(str(local.path)) is None
    assert local.proc is not None and local.proc.wait(timeout=30) == 0
    assert (local.store_dir / "busy").read_text() == "a\n"  # open, written, uploaded
    writer.send("cut off\n")
    writer.finish()  # its write failed


def test_without_a_known_daemon_a_busy_mount_is_refused_too(local, hold):
    # no record of the daemon (it died, or another user's): the command unmounts the
    # mount itself, plainly
    shell = hold("echo ready; read -r x", cwd=local.path)
    record = os.path.join(os.environ["STORMOUNT_RUNTIME_DIR"], record_name(str(local.path)))
    wait_for(lambda: os.path.exists(record), what="the mount's record")  # written once ready
    os.unlink(record)
    line = one_error_line(run("unmount", str(local.path)))
    assert f"pid {shell.pid} (sh: cwd {local.path})" in line, line
    assert mounted_fuse(str(local.path)) == "fuse.stormount"


def test_unmount_after_the_daemon_died_names_what_it_left_queued(tmp_path, make_mount):
    """Issue 19: it said only "is not mounted"; the queued files upload at the next
    mount, and the operator is told which they are."""
    store = tmp_path / "store"
    store.mkdir()
    m = make_mount(f"file://{store}", args=("-o", "debounce=3600"))
    for name in ("a.txt", "b.txt"):
        (m.path / name).write_bytes(b"queued")
    wait_for(lambda: len(m.pending()) == 2, what="both files queued")
    wait_for(lambda: lookup(str(m.path)) is not None, what="the mount's record")
    assert m.proc is not None
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait()
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
    wait_for(lambda: mounted_fuse(str(m.path)) is None, what="the dead mount to go")
    line = one_error_line(run("unmount", str(m.path)))
    assert "is not mounted" in line and "2 file(s) queued (a.txt, b.txt)" in line, line
    assert "upload at the next mount" in line and str(m.cache_dir) in line, line


def test_unmount_of_a_stopped_daemon_fails_within_its_timeout(local):
    """Issue 19: `unmount --timeout 5` of a daemon under SIGSTOP took 36 s to fail."""
    wait_for(lambda: lookup(str(local.path)) is not None, what="the mount's record")
    assert local.proc is not None
    local.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        line = one_error_line(run("unmount", "--timeout", "5", str(local.path)))
        assert time.monotonic() - started < 10
        assert "is stopped" in line and f"kill -CONT {local.proc.pid}" in line, line
    finally:
        local.proc.send_signal(signal.SIGCONT)
    still_serves(local)
