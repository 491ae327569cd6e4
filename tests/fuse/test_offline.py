"""With the store unreachable, a mount keeps serving what it has cached, also after a
restart, and fails fast with EIO (never ENOENT) for what it does not have."""

from __future__ import annotations

import errno
import os
import time
import urllib.parse

import pytest

from tests.helpers.proxy import CountingProxy, OutageProxy, proxied

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


def test_files_made_while_the_store_hangs_land_when_it_answers(s3_store, make_mount):
    """A write-back mount takes new files and directories with every tier hung, in a
    directory it never listed; they are uploaded when the store answers again, and a
    name that was taken in the store meanwhile keeps both versions."""
    s3_store.put("top/old.txt", b"old\n")
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    with OutageProxy(port) as proxy:
        m = make_mount(proxied(s3_store, proxy), env=s3_store.env,
                       args=("-o", "debounce=0"))
        assert (m.path / "top").is_dir()  # looked up, never listed
        proxy.hang()
        (m.path / "top" / "new.txt").write_bytes(b"made offline\n")
        with pytest.raises(OSError) as info:  # a stat still hears the truth: unknown
            os.stat(m.path / "top" / "old.txt")
        assert info.value.errno == errno.EIO
        (m.path / "top" / "sub").mkdir()
        (m.path / "top" / "sub" / "deep.txt").write_bytes(b"deep\n")
        s3_store.put("top/clash.txt", b"theirs\n")  # someone else, meanwhile
        (m.path / "top" / "clash.txt").write_bytes(b"mine\n")
        assert s3_store.keys("top/") == ["top/clash.txt", "top/old.txt"]
        proxy.heal()
        m.settle()
    assert s3_store.get("top/new.txt") == b"made offline\n"
    assert s3_store.get("top/sub/deep.txt") == b"deep\n"
    assert s3_store.get("top/clash.txt") == b"theirs\n"
    [copy] = [k for k in s3_store.keys("top/clash.txt.conflict-")]
    assert s3_store.get(copy) == b"mine\n"
