"""With the store unreachable, a mount keeps serving what it has cached, also after a
restart, and fails fast with EIO (never ENOENT) for what it does not have."""

from __future__ import annotations

import errno
import os
import time
import urllib.parse

import pytest

from tests.helpers.proxy import CountingProxy

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


def test_cached_tree_and_data_survive_an_outage_and_a_restart(s3_store, make_mount):
    data = os.urandom(5 * MiB + 7)
    s3_store.put("docs/big.bin", data)
    s3_store.put("docs/small.txt", b"small\n")
    s3_store.put("docs/never-read.txt", b"nope\n")
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    proxy = CountingProxy(port).__enter__()
    url = (f"s3://{s3_store.bucket}?endpoint=http://127.0.0.1:{proxy.port}"
           "&connect_timeout=1&read_timeout=2&sdk_retries=0")
    m = make_mount(url, env=s3_store.env)
    assert sorted(os.listdir(m.path / "docs")) == ["big.bin", "never-read.txt", "small.txt"]
    assert (m.path / "docs/big.bin").read_bytes() == data
    assert (m.path / "docs/small.txt").read_bytes() == b"small\n"
    assert (m.path / "docs/big.bin").read_bytes() == data  # now whole blocks are cached

    proxy.cut()  # the store becomes unreachable
    assert sorted(os.listdir(m.path / "docs")) == ["big.bin", "never-read.txt", "small.txt"]
    assert os.stat(m.path / "docs/big.bin").st_size == len(data)

    m.stop()
    m.start()  # restart while the store is still unreachable: starts degraded
    assert "starting from the warm cache" in m.log()
    assert sorted(os.listdir(m.path / "docs")) == ["big.bin", "never-read.txt", "small.txt"]
    assert (m.path / "docs/big.bin").read_bytes() == data
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        (m.path / "docs/never-read.txt").read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < 10  # fails fast, does not hang
