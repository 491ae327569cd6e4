"""`stormount ctl` and the control socket against real mounts: daemons in their own
processes over moto and local directories, asked the way an operator asks them."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.cli import one_error_line, run
from tests.helpers.mounts import wait_for
from tests.helpers.proxy import OutageProxy, proxied
from tests.stores import S3Store, free_port, unique_name

pytestmark = pytest.mark.timeout(180)
NOBODY = 65534


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def state_of(mount) -> str:
    return mount.ask("health")["state"]


def test_health_while_healthy_degraded_and_down(s3_store, moto_server, make_mount):
    second = S3Store(moto_server, unique_name("tier1"))
    port = moto_server.port
    with OutageProxy(port) as first_proxy, OutageProxy(port) as second_proxy:
        m = make_mount(proxied(s3_store, first_proxy), env=s3_store.env,
                       args=("--tier", proxied(second, second_proxy)))
        result = m.ctl("health")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ok")
        health = m.ask("health")
        assert health["ok"] and health["state"] == "ok" and health["reasons"] == []
        assert [(t["index"], t["role"], t["state"]) for t in health["tiers"]] == [
            (0, "primary", "up"), (1, "spill-over", "up")]
        assert health["mountpoint"] == str(m.path) and health["pid"] == m.proc.pid
        assert os.listdir(m.path) == []  # a listed directory takes new files in an outage

        first_proxy.stop()
        wait_for(lambda: state_of(m) == "degraded", timeout=30, what="degraded")
        result = m.ctl("health")
        assert result.returncode == 3, result
        assert "degraded" in result.stdout and "tier 0" in result.stdout
        tier = m.ask("health")["tiers"][0]
        assert tier["state"] == "down" and tier["breaker"] == "open"
        assert tier["last_error"] and tier["probe_ok"] is False
        # writes go on, to the second tier
        (m.path / "during.txt").write_bytes(b"written while tier 0 is down")

        second_proxy.stop()
        wait_for(lambda: state_of(m) == "down", timeout=30, what="down")
        assert m.ctl("health").returncode == 4

        first_proxy.start()
        second_proxy.start()
        wait_for(lambda: state_of(m) == "ok", timeout=30, what="ok again")
        m.settle()
        wait_for(lambda: s3_store.exists("during.txt"), timeout=30,
                 what="the spilled file to reach tier 0")


def test_stats_move_with_real_operations_and_reset(store, make_mount):
    m = make_mount(store.url, env=store.env, args=("-o", "debounce=0,log_format=json"))
    data = os.urandom(300_000)
    (m.path / "a.bin").write_bytes(data)
    m.settle()
    assert (m.path / "a.bin").read_bytes() == data
    stats = m.ask("stats")
    fuse = stats["fuse"]
    assert fuse["bytes_written"] == len(data) and fuse["bytes_read"] >= len(data)
    assert fuse["ops"]["create"]["count"] == 1 and fuse["ops"]["write"]["count"] >= 1
    assert fuse["ops"]["write"]["p50_ms"] > 0
    ops = stats["backend"]["tiers"][0]["ops"]
    assert ops["put"]["count"] >= 1 and ops["put"]["errors"] == 0
    assert stats["writeback"]["uploaded"] == 1 and stats["writeback"]["bytes"] == len(data)
    assert stats["writeback"]["queue_depth"] == 0
    assert stats["cache"]["metadata"]["hits"] + stats["cache"]["metadata"]["misses"] > 0
    result = m.ctl("stats")  # the tables
    assert result.returncode == 0 and "FUSE operations" in result.stdout, result

    reset = m.ask("stats", "--reset")
    assert reset["reset"] and reset["fuse"]["bytes_written"] == len(data)
    after = m.ask("stats")
    assert after["fuse"]["bytes_written"] == 0 and after["writeback"]["uploaded"] == 0
    (m.path / "b.txt").write_bytes(b"12345")
    m.settle()
    again = m.ask("stats")
    assert again["fuse"]["bytes_written"] == 5 and again["writeback"]["uploaded"] == 1
    # the daemon's log is one JSON object per line
    lines = [line for line in m.log_path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= events[0].keys()
    assert any(e["message"].startswith("mounted ") for e in events)


def test_invalidate_shows_what_changed_behind_the_mounts_back(s3_store, make_mount):
    s3_store.put("f.txt", b"version one")
    s3_store.put("d/x.txt", b"x")
    m = make_mount(s3_store.url, env=s3_store.env)
    assert (m.path / "f.txt").read_bytes() == b"version one"
    assert os.listdir(m.path / "d") == ["x.txt"]
    s3_store.put("f.txt", b"version two, longer")  # another client changes the bucket
    s3_store.put("d/y.txt", b"y")
    # the kernel's caches (1 s) and the daemon's (metadata_ttl 60 s) still hold it
    assert (m.path / "f.txt").read_bytes() == b"version one"
    assert os.listdir(m.path / "d") == ["x.txt"]

    result = m.ctl("invalidate", "f.txt")
    assert result.returncode == 0 and "invalidated path /f.txt" in result.stdout, result
    assert (m.path / "f.txt").read_bytes() == b"version two, longer"
    reply = m.ask("invalidate", str(m.path / "d"), "-r")  # an absolute path works too
    assert reply["path"] == "/d" and reply["recursive"] is True
    assert sorted(os.listdir(m.path / "d")) == ["x.txt", "y.txt"]
    # a name looked up in vain is remembered as absent, by the kernel too
    assert not (m.path / "new.txt").exists()
    s3_store.put("new.txt", b"new")
    assert not (m.path / "new.txt").exists()
    assert m.ctl("invalidate", "new.txt").returncode == 0
    assert (m.path / "new.txt").read_bytes() == b"new"
    error = one_error_line(m.ctl("invalidate", "/etc/passwd"))
    assert "not under the mountpoint" in error


def test_path_arguments_work_with_a_leading_slash(s3_store, make_mount):
    """CONTROL.md: PATH arguments are relative to the mount's root, with or without a
    leading `/` (`/f.txt` was refused as "not under the mountpoint")."""
    s3_store.put("f.txt", b"version one")
    m = make_mount(s3_store.url, env=s3_store.env)
    assert (m.path / "f.txt").read_bytes() == b"version one"
    s3_store.put("f.txt", b"version two")
    result = m.ctl("invalidate", "/f.txt")
    assert result.returncode == 0 and "invalidated path /f.txt" in result.stdout, result
    assert (m.path / "f.txt").read_bytes() == b"version two"
    assert m.ask("invalidate", "/")["path"] == "/"
    assert m.ctl("flush", "/f.txt").returncode == 0
    error = one_error_line(m.ctl("invalidate", "/etc/passwd"))  # a path of this host
    assert "not under the mountpoint" in error and "etc/passwd" in error


def test_flush_empties_the_queue(s3_store, make_mount):
    m = make_mount(s3_store.url, env=s3_store.env, args=("-o", "debounce=3600"))
    files = {f"f{i}.txt": os.urandom(1000 + i) for i in range(3)}
    for name, data in files.items():
        (m.path / name).write_bytes(data)
    queue = m.ask("queue")
    assert sorted(up["path"] for up in queue["uploads"]) == sorted(files)
    assert all(up["state"] == "queued" for up in queue["uploads"])
    assert queue["repairs"] == []
    assert s3_store.keys() == []  # an hour's debounce: nothing went yet
    result = m.ctl("flush")
    assert result.returncode == 0, result
    assert "uploaded 3 of 3 file(s)" in result.stdout
    assert m.ask("queue")["uploads"] == []
    stored = s3_store.keys()
    assert {k: s3_store.get(k) for k in stored} == files


def test_drain_makes_writes_go_to_the_next_tier(s3_store, make_mount, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    m = make_mount(s3_store.url, env=s3_store.env,
                   args=("--tier", f"file://{spill}", "-o", "debounce=0"))
    (m.path / "before.txt").write_bytes(b"before")
    m.settle()
    result = m.ctl("drain", "0")
    assert result.returncode == 0 and "drained" in result.stdout, result
    tiers = m.ask("tiers")["tiers"]
    assert [t["state"] for t in tiers] == ["drained", "up"]
    assert m.ctl("health").returncode == 3
    (m.path / "during.txt").write_bytes(b"during the drain")
    m.settle()
    assert (spill / "during.txt").read_bytes() == b"during the drain"
    assert not s3_store.exists("during.txt")
    repairs = m.ask("queue")["repairs"]
    assert [(r["key"], r["tier"], r["action"]) for r in repairs] == [("during.txt", 0, "copy")]
    # reads and listings go on (the drained tier still answers)
    assert sorted(os.listdir(m.path)) == ["before.txt", "during.txt"]
    assert (m.path / "before.txt").read_bytes() == b"before"
    assert "last tier in service" in one_error_line(m.ctl("drain", "1"))
    assert "no tier '7'" in one_error_line(m.ctl("drain", "7"))

    assert m.ctl("undrain", "0").returncode == 0
    wait_for(lambda: s3_store.exists("during.txt"), timeout=30, what="the copy up")
    assert s3_store.get("during.txt") == b"during the drain"
    wait_for(lambda: not (spill / "during.txt").exists(), timeout=30, what="the spill copy")
    assert state_of(m) == "ok"


def test_metrics_parse_as_prometheus_text_from_ctl_and_http(file_store, make_mount):
    port = free_port()
    m = make_mount(file_store.url, args=("-o", f"debounce=0,metrics_listen=127.0.0.1:{port}"))
    (m.path / "m.txt").write_bytes(b"metrics")
    m.settle()
    result = m.ctl("metrics")
    assert result.returncode == 0, result
    got = samples(result.stdout)
    assert got[("stormount_health", (("state", "ok"),))] == 1
    assert got[("stormount_fuse_requests_total", (("op", "create"),))] == 1
    assert got[("stormount_written_bytes_total", ())] == 7
    assert got[("stormount_writeback_uploaded_total", ())] == 1
    assert got[("stormount_tier_up", (("tier", "0"),))] == 1
    assert got[("stormount_backend_requests_total", (("op", "put"), ("tier", "0")))] >= 1
    assert ("stormount_fuse_request_duration_seconds_bucket",
            (("le", "+Inf"), ("op", "create"))) in got
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        scraped = samples(resp.read().decode())
    assert scraped[("stormount_written_bytes_total", ())] == 7
    m.stop()
    with pytest.raises(OSError):  # the endpoint goes with the daemon
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def as_uid(uid: int, path: str, chunk: bytes) -> str:
    """Connect to `path` as `uid` (in a forked child), send `chunk`, return what came back
    or the error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        out = b""
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(path)
                s.sendall(chunk)
                out = s.makefile("rb").readline()
        except BaseException as e:
            out = f"{type(e).__name__}: {e}".encode()
        finally:
            os.write(write_end, out)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out.decode()


@pytest.mark.skipif(os.getuid() != 0, reason="trying another uid needs root")
def test_socket_is_private_and_other_uids_are_refused(file_store, make_mount):
    where = Path(tempfile.mkdtemp(prefix="stormount-ctl-"))
    try:
        where.chmod(0o755)  # others may reach the socket file; its own mode decides
        sock = where / "ctl.sock"
        m = make_mount(file_store.url, args=("--socket", str(sock)))
        st = sock.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert m.ask("health")["state"] == "ok"  # ctl -m finds the socket given
        request = b'{"command": "health"}\n'
        assert as_uid(NOBODY, str(sock), request).startswith("PermissionError")
        sock.chmod(0o666)  # even with the file open to all, the daemon checks the peer
        answer = as_uid(NOBODY, str(sock), request)
        reply = json.loads(answer or "null") or answer
        assert reply["ok"] is False and "uid 65534 may not control this mount" in reply["error"]
        assert "refused a client running as uid 65534" in m.log()
        assert m.ask("health")["state"] == "ok"
        m.stop()
        assert not sock.exists()  # removed on exit
    finally:
        with contextlib.suppress(OSError):
            (where / "ctl.sock").unlink()
        where.rmdir()


def test_bad_requests_get_errors_while_other_clients_are_served(file_store, make_mount):
    m = make_mount(file_store.url)
    path = str(m.cache_dir / "control.sock")
    assert os.path.exists(path)
    clients = []
    try:
        def connect() -> socket.socket:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            s.connect(path)
            clients.append(s)
            return s

        stalled = connect()
        stalled.sendall(b'{"command": "heal')  # and nothing more: half-sent
        garbage = connect()
        garbage.sendall(b"\x00\x01 not json at all\n")
        oversized = connect()
        oversized.sendall(b'{"command": "' + b"x" * 100_000)
        # meanwhile other clients are answered at once
        for _ in range(3):
            assert m.ask("health")["state"] == "ok"
        assert "not a JSON object" in json.loads(garbage.makefile("rb").readline())["error"]
        reply = json.loads(oversized.makefile("rb").readline())
        assert "request too large" in reply["error"]
        cut = connect()
        cut.sendall(b'{"command": "stat')
        cut.shutdown(socket.SHUT_WR)
        assert "not a JSON object" in json.loads(cut.makefile("rb").readline())["error"]
        unknown = connect()
        unknown.sendall(b'{"command": "format-disk"}\n{"command": "tiers"}\n')
        lines = unknown.makefile("rb")
        assert "unknown command 'format-disk'" in json.loads(lines.readline())["error"]
        assert json.loads(lines.readline())["tiers"][0]["state"] == "up"
        # the stalled one is still open (it gets its error after REQUEST_TIMEOUT:
        # tests/unit/test_control_server.py), and it held nobody up
        assert stalled.fileno() >= 0
    finally:
        for s in clients:
            s.close()
    assert (m.path / "still-works").write_bytes(b"yes") == 3


def test_ctl_errors_are_one_line_and_non_zero(file_store, make_mount, tmp_path):
    env = {"STORMOUNT_RUNTIME_DIR": str(tmp_path / "empty-runtime")}
    assert "no stormount mount is running" in one_error_line(run("ctl", "health", env=env))
    assert "is not mounted" in one_error_line(run("ctl", "-m", str(tmp_path), "health"))
    assert "no control socket at" in one_error_line(
        run("ctl", "--socket", str(tmp_path / "none.sock"), "health"))
    m = make_mount(file_store.url)
    result = run("ctl", "health")  # the only mount running is found without -m
    assert result.returncode == 0, result
    assert "both" in run("ctl", "--socket", "x", "-m", str(m.path), "health").stderr
    # -m names the mount: a STORMOUNT_SOCKET in the environment does not get in its way
    result = run("ctl", "-m", str(m.path), "health", env={"STORMOUNT_SOCKET": "/nowhere"})
    assert result.returncode == 0, result
    assert "no control socket at /nowhere" in one_error_line(
        run("ctl", "health", env={"STORMOUNT_SOCKET": "/nowhere"}))
    m.stop()
    assert "no stormount mount is running" in one_error_line(run("ctl", "health"))


def test_a_metrics_port_in_use_stops_the_mount_with_one_line(file_store, mnt, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run("mount", file_store.url, str(mnt), "--cache-dir", str(tmp_path / "c"),
                     "-o", f"metrics_listen=127.0.0.1:{port}")
    assert f"cannot serve metrics on 127.0.0.1:{port}" in one_error_line(result)
    assert os.listdir(mnt) == []  # nothing was mounted
    assert "metrics_listen: expected HOST:PORT" in one_error_line(
        run("mount", file_store.url, str(mnt), "-o", "metrics_listen=nine"))
