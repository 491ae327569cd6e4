"""Hostile requests on the control socket of a real mount (issue 19): a fixed handful of
what tests/chain/test_fuzz_control.py fuzzes kernel-free, sent raw to a daemon in its own
process: bytes that are not JSON, JSON that is not a request, the commands with hostile
arguments (`unmount` among them), a request too large, several in one write, a
connection half-closed. Every one gets an error answer; then the mount still serves its
files, takes new ones, `ctl health` answers, and the daemon logged no error."""

from __future__ import annotations

import json
import socket
import time

import pytest

from stormount import registry
from stormount.control.server import MAX_REQUEST
from tests.helpers.mounts import wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(60)]

HOSTILE = [
    b"\xff\xfe\x00 not json",
    b"\x00" * 16,
    b"[]",
    b'"health"',
    b"{'command': 'health'}",
    b"[" * 30000 + b"]" * 30000,
    b'{"command": "no such"}',
    b'{"command": ["health"]}',
    b'{"command": "unmount", "timeout": NaN}',
    b'{"command": "unmount", "timeout": -1}',
    b'{"command": "unmount", "timeout": "soon"}',
    b'{"command": "unmount", "lazy": "yes"}',
    b'{"command": "unmount", "force": 1}',
    b'{"command": "unmount", "timeout": NaN, "lazy": true}',
    b'{"command": "unmount", "timeout": NaN, "lazy": true, "force": true}',
    b'{"command": "flush", "timeout": NaN}',
    b'{"command": "flush", "timeout": 0}',
    b'{"command": "invalidate", "path": "../../etc", "recursive": true}',
    b'{"command": "invalidate", "path": "/etc/passwd"}',
    b'{"command": "invalidate", "path": "\\udcff"}',
    b'{"command": "invalidate", "path": "a\\u0000b"}',
    b'{"command": "pin", "path": "../.."}',
    b'{"command": "unpin", "path": "\\ud800"}',
    b'{"command": "drain", "tier": "\\u00b2"}',
    b'{"command": "drain", "tier": "' + b"9" * 5000 + b'"}',
    b'{"command": "drain", "tier": 0}',  # the only tier: refused
    b'{"command": "stats", "reset": "yes"}',
]


def answers(path: str, payload: bytes, half_close: bool = False) -> list[dict]:
    """Every answer line the daemon sends back until it or we are done."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        expected = payload.count(b"\n") + (1 if half_close else 0)
        out, buffer = [], b""
        while len(out) < expected:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                out.append(json.loads(line))
        return out


def refused(reply: dict, line: bytes) -> None:
    assert reply["ok"] is False, (line[:100], reply)
    assert isinstance(reply["error"], str) and reply["error"], reply
    assert "internal error" not in reply["error"], (line[:100], reply)


def test_hostile_requests_leave_the_mount_serving(file_store, make_mount):
    started = time.monotonic()
    m = make_mount(file_store.url, args=("-o", "debounce=0"))
    (m.path / "kept.txt").write_bytes(b"kept")
    record = registry.lookup(str(m.path))
    assert record is not None and record.socket
    path = record.socket

    for line in HOSTILE:  # one connection each; each answered with an error
        (reply,) = answers(path, line + b"\n")
        refused(reply, line)
    # all of them in one write, on one connection, answered in order
    replies = answers(path, b"\n".join(HOSTILE) + b"\n")
    assert len(replies) == len(HOSTILE)
    for reply, line in zip(replies, HOSTILE, strict=True):
        refused(reply, line)
    # a last one without its newline, the connection half-closed
    (reply,) = answers(path, b'{"command": "unmount", "timeout": NaN}', half_close=True)
    refused(reply, b"half-closed")
    # too large: an error, and that connection is closed
    big = b'{"command": "health", "x": "' + b"y" * MAX_REQUEST + b'"}\n'
    (reply,) = answers(path, big + b'{"command": "health"}\n')
    assert "too large" in reply["error"]

    # the mount serves as before
    assert (m.path / "kept.txt").read_bytes() == b"kept"
    (m.path / "new.txt").write_bytes(b"new")
    assert sorted(p.name for p in m.path.iterdir()) == ["kept.txt", "new.txt"]
    result = m.ctl("health")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert m.ask("flush")["ok"] is True
    wait_for(lambda: file_store.get("new.txt") == b"new", timeout=10, what="new.txt stored")
    assert m.proc is not None and m.proc.poll() is None
    log = m.log()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert time.monotonic() - started < 15
