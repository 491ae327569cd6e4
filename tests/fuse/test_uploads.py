"""A big upload seen from outside while it goes: a real mount against moto, over a slow
uplink (a throttling proxy), watched with `ctl queue` as an operator would."""

from __future__ import annotations

import os
import time
import urllib.parse

import pytest

from tests.helpers.mounts import wait_for
from tests.helpers.proxy import CountingProxy

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


def test_queue_shows_a_big_upload_moving(s3_store, make_mount):
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    data = os.urandom(16 * MiB)
    # four parts of 5 MiB at 512 KiB/s each: about ten seconds
    with CountingProxy(port, upload_rate=512 * 1024) as proxy:
        url = (f"s3://{s3_store.bucket}?endpoint=http://127.0.0.1:{proxy.port}"
               "&part_size=5MiB")
        m = make_mount(url, env=s3_store.env, args=("-o", "debounce=0"))
        (m.path / "big.bin").write_bytes(data)

        def uploading() -> dict | None:
            ups = m.ask("queue")["uploads"]
            return ups[0] if ups and ups[0]["state"] == "uploading" else None

        seen = [wait_for(uploading, timeout=30, what="the upload to start")]
        deadline = time.monotonic() + 60
        while (up := uploading()) is not None and time.monotonic() < deadline:
            seen.append(up)
        human = m.ctl("queue")
        m.settle()
    assert human.returncode == 0, human.stderr
    sent = [up["bytes_sent"] for up in seen]
    assert len(set(sent)) >= 3, sent  # it moved while we looked
    assert sent == sorted(sent) and sent[-1] <= 16 * MiB
    assert {(up["bytes_total"], up["attempt"]) for up in seen} == {(16 * MiB, 1)}
    moving = [up for up in seen if up["rate"] > 0 and up["eta"] is not None]
    assert moving, seen
    assert all(0 < up["eta"] < 120 for up in moving), moving
    assert s3_store.get("big.bin") == data
    log = m.log()
    assert "uploaded big.bin: 16.0 MiB in " in log
