"""systemd's notify protocol, with this test as systemd: the daemon gets a NOTIFY_SOCKET
we listen on, and must say READY=1 only once its mount is usable, ping the watchdog,
and say STOPPING=1 (with the queue in STATUS=) when told to stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from stormount.registry import mounted_fuse
from tests.helpers.cli import run
from tests.helpers.mounts import LIVE, stormount_cmd, unmount_quietly

pytestmark = pytest.mark.timeout(120)


class Systemd:
    """The listening end of NOTIFY_SOCKET."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 30.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        raw = self.sock.recv(65536).decode()
        message = dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)
        self.messages.append(message)
        return message

    def until(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()


def test_ready_watchdog_and_stopping(s3_store, tmp_path):
    systemd = Systemd(str(tmp_path / "notify.sock"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, **s3_store.env, "NOTIFY_SOCKET": systemd.path,
           "WATCHDOG_USEC": "400000"}
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        stormount_cmd("mount", s3_store.url, str(mnt), "--foreground", "--cache-dir",
                      str(tmp_path / "cache"), "-o", "debounce=3600"),
        env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    LIVE.add(mnt)
    try:
        ready = systemd.until("READY")
        # READY=1 means usable: the mount serves and the control socket answers
        assert ready["READY"] == "1" and "mounted s3://" in ready["STATUS"]
        assert mounted_fuse(str(mnt)) == "fuse.stormount"
        assert os.listdir(mnt) == []
        assert run("ctl", "-m", str(mnt), "health").returncode == 0
        assert not any("READY" in m for m in systemd.messages[:-1])
        pings = [systemd.until("WATCHDOG") for _ in range(3)]
        assert all(p["WATCHDOG"] == "1" for p in pings)

        (mnt / "queued.txt").write_bytes(b"journaled, not uploaded yet")
        assert not s3_store.exists("queued.txt")  # an hour's debounce
        proc.send_signal(signal.SIGTERM)
        stopping = systemd.until("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert "queued file(s), then unmounting" in stopping["STATUS"]
        assert proc.wait(timeout=60) == 0
        assert mounted_fuse(str(mnt)) is None
        assert s3_store.get("queued.txt") == b"journaled, not uploaded yet"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        unmount_quietly(mnt)
        LIVE.discard(mnt)
        log.close()
        systemd.close()
        print((tmp_path / "daemon.log").read_text(errors="replace")[-4000:])


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    from stormount import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert not notify.enabled() and notify.watchdog_interval() is None
    notify.notify(READY=1)  # and does not fail
    monkeypatch.setenv("NOTIFY_SOCKET", "@stormount-test-nobody-listens")
    notify.notify(READY=1)  # nobody listening: logged, not raised
    assert notify.watchdog_interval() == 0.5
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert notify.watchdog_interval() is None
