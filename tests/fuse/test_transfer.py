"""Reads transfer what they need, not whole objects: measured at the wire, between the
daemon and a real S3 server."""

from __future__ import annotations

import os
import urllib.parse

import pytest

from tests.helpers.proxy import CountingProxy

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


def test_small_range_of_large_object_transfers_about_that_range(s3_store, make_mount):
    # no larger: stock moto serves a ranged GET by reading the whole object (a 1 MiB range
    # of a 256 MiB object takes 218 ms)
    data = os.urandom(16 * MiB)
    s3_store.put("large.bin", data)
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    with CountingProxy(port) as proxy:
        url = f"s3://{s3_store.bucket}?endpoint=http://127.0.0.1:{proxy.port}"
        m = make_mount(url, env=s3_store.env)
        assert os.stat(m.path / "large.bin").st_size == len(data)
        proxy.reset()
        with open(m.path / "large.bin", "rb") as f:
            chunk = os.pread(f.fileno(), 4096, 9 * MiB + 5)
        assert chunk == data[9 * MiB + 5: 9 * MiB + 5 + 4096]
        print(f"4 KiB read of a 16 MiB object moved {proxy.downstream_bytes} bytes")
        # a first random touch fetches the range the kernel asked for (measured: 4 KiB
        # plus HTTP headers); the bound leaves room for kernel read-ahead
        assert proxy.downstream_bytes < 512 * 1024, proxy.downstream_bytes
