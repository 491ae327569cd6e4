"""Big uploads are not started over: a daemon killed mid-multipart continues from the
parts already stored once it is started again, and a store that stops answering for
longer than the stall timeout (SIGSTOP) costs only the parts that were in flight. The
bytes are counted where they cross the wire, at a proxy in front of the store."""

from __future__ import annotations

import os
import signal
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from stormount.writeback import read_multiparts
from tests.fuse.test_durability import kill_9
from tests.helpers.mounts import wait_for
from tests.helpers.proxy import CountingProxy
from tests.stores import Emulator, S3Store, _tool, free_port, start_emulator, unique_name

pytestmark = pytest.mark.timeout(240)

MiB = 1024 * 1024


def _landed(cache_dir: Path) -> int:
    """Parts the daemon's journal records as stored."""
    return sum(len(r.parts) for r in read_multiparts(str(cache_dir / "journal.sqlite3")))


def _url(store: S3Store, proxy: CountingProxy, **options: object) -> str:
    opts = {"part_size": "8MiB", "multipart_threshold": "8MiB", **options}
    query = "&".join(f"{k}={v}" for k, v in opts.items())
    return f"s3://{store.bucket}?endpoint=http://127.0.0.1:{proxy.port}&{query}"


def test_a_daemon_killed_mid_multipart_resumes_from_its_stored_parts_after_restart(
        s3_store, make_mount):
    size = 48 * MiB
    data = os.urandom(size)
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    # a slow uplink (2 MiB/s a connection, four parts at once): six parts of 8 MiB
    with CountingProxy(port, upload_rate=2 * MiB) as proxy:
        m = make_mount(_url(s3_store, proxy), env=s3_store.env, args=("-o", "debounce=0"))
        (m.path / "big").write_bytes(data)
        wait_for(lambda: _landed(m.cache_dir) >= 3, timeout=90, what="half the parts")
        queue = m.ask("queue")["uploads"]
        assert queue[0]["bytes_sent"] >= size // 2, queue
        kill_9(m)
        before = proxy.upstream_bytes
        landed = _landed(m.cache_dir)
        proxy.reset()
        m.start()  # the same cache directory: the journal names the upload and its parts
        m.settle(timeout=120)
        after = proxy.upstream_bytes
        m.stop()
    print(f"object {size} B; sent before the kill {before} B, after the restart {after} B "
          f"({landed} of 6 parts were stored)")
    assert s3_store.get("big") == data
    assert s3_store.multipart_uploads() == []
    assert after <= size - landed * 8 * MiB + 2 * MiB  # only the missing parts went again
    assert "resumed:" in m.log_path.read_text(errors="replace")


@pytest.fixture
def own_moto(tmp_path: Path) -> Iterator[Emulator]:
    """A moto server of this test alone: it is stopped (SIGSTOP) for a while."""
    port = free_port()
    server = start_emulator("moto_stopped", [_tool("moto_server"), "-H", "127.0.0.1", "-p",
                                             str(port)], port, tmp_path)
    try:
        yield server
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_a_store_stopped_past_the_stall_timeout_does_not_restart_the_upload_from_zero(
        own_moto, make_mount):
    store = S3Store(own_moto, unique_name("stop"))
    size = 96 * MiB
    data = os.urandom(size)
    with CountingProxy(own_moto.port, upload_rate=4 * MiB) as proxy:
        url = _url(store, proxy, max_connections=2, transfer_stall_timeout=2,
                   connect_timeout=1, read_timeout=3, sdk_retries=0, probe_interval=1,
                   probe_interval_down=1)
        m = make_mount(url, env=store.env, args=("-o", "debounce=0"))
        (m.path / "big").write_bytes(data)
        wait_for(lambda: _landed(m.cache_dir) >= 3, timeout=90, what="three parts stored")
        os.kill(own_moto.proc.pid, signal.SIGSTOP)
        try:
            # the attempt stalls, is given up and fails (recorded in the journal)
            wait_for(lambda: any(int(str(row["attempts"])) >= 1 for row in m.pending()),
                     timeout=60, what="the stalled attempt to be given up")
        finally:
            os.kill(own_moto.proc.pid, signal.SIGCONT)
        m.settle(timeout=120)
        sent = proxy.upstream_bytes
        m.stop()
    print(f"object {size} B; sent {sent} B ({sent / size:.2f} x)")
    assert store.get("big") == data
    assert sent <= 1.3 * size
