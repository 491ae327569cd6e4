"""Pinning: `ctl pin` keeps a folder whole in the cache, fetched in the background and
never evicted, so it reads with the store unreachable; `ctl unpin` lets it go."""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest

from tests.helpers.cli import one_error_line, run
from tests.helpers.mounts import wait_for
from tests.helpers.proxy import OutageProxy, proxied

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


def ctl(mnt, *args):
    result = run("ctl", "-m", str(mnt), "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_pinned_folder_reads_with_the_store_unreachable(s3_store, mnt, tmp_path):
    want = {"offline/a.bin": os.urandom(5 * MiB), "offline/sub/b.txt": b"small\n"}
    for key, body in want.items():
        s3_store.put(key, body)
    s3_store.put("elsewhere.bin", os.urandom(3 * MiB))
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy:
        # a cache with room for the pin and little more: the pin must not be evicted
        mounted = run("mount", proxied(s3_store, proxy), str(mnt), "--cache-dir",
                      str(tmp_path / "c"), "-o", "max_size=7MiB,block_size=1MiB",
                      env=s3_store.env)
        assert mounted.returncode == 0, mounted.stderr
        try:
            reply = ctl(mnt, "pin", "offline")
            assert reply["pin"]["path"] == "/offline"

            def fetched():
                (pin,) = ctl(mnt, "pins")["pins"]
                return pin["done"] and pin
            pin = wait_for(fetched, what="the pinned folder to be fetched")
            assert (pin["files"], pin["bytes"], pin["cached_bytes"]) == (2, 5 * MiB + 6,
                                                                         5 * MiB + 6)
            # other reads cannot push the pinned blocks out
            assert len((mnt / "elsewhere.bin").read_bytes()) == 3 * MiB
            table = run("ctl", "-m", str(mnt), "pins")
            assert "/offline" in table.stdout and "all cached" in table.stdout

            proxy.stop()  # the store is unreachable from here on
            assert sorted(os.listdir(mnt / "offline")) == ["a.bin", "sub"]
            for key, body in want.items():
                assert (mnt / key).read_bytes() == body

            proxy.start()
            assert ctl(mnt, "unpin", str(mnt / "offline"))["unpinned"] is True  # absolute works too
            assert ctl(mnt, "pins")["pins"] == []
            line = one_error_line(run("ctl", "-m", str(mnt), "unpin", "offline"))
            assert "/offline is not pinned" in line
            assert "cannot pin /nothing-here" in one_error_line(
                run("ctl", "-m", str(mnt), "pin", "nothing-here"))
        finally:
            proxy.start()
            assert run("unmount", str(mnt)).returncode == 0


def test_a_pin_outlives_a_restart_made_while_the_store_is_down(s3_store, mnt, tmp_path):
    body = os.urandom(2 * MiB + 1)
    s3_store.put("keep/data.bin", body)
    cache = str(tmp_path / "c")
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy:
        url = proxied(s3_store, proxy)
        assert run("mount", url, str(mnt), "--cache-dir", cache, "-o", "block_size=1MiB",
                   env=s3_store.env).returncode == 0
        try:
            ctl(mnt, "pin", "keep/data.bin")
            wait_for(lambda: ctl(mnt, "pins")["pins"][0]["done"], what="the pin's fetch")
        finally:
            assert run("unmount", str(mnt)).returncode == 0
        proxy.stop()
        restarted = run("mount", url, str(mnt), "--cache-dir", cache, "-o", "block_size=1MiB",
                        env=s3_store.env)
        assert restarted.returncode == 0, restarted.stderr
        try:
            assert (mnt / "keep" / "data.bin").read_bytes() == body
            assert [p["path"] for p in ctl(mnt, "pins")["pins"]] == ["/keep/data.bin"]
        finally:
            assert run("unmount", str(mnt)).returncode == 0
