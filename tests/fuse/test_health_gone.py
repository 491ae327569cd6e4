"""`ctl health` turns at once when the bucket is deleted under a live mount, and back
once a probe succeeds (issue 19, finding 5); before, it said `ok` until the next
5-minute probe."""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

from tests.helpers.mounts import wait_for

pytestmark = pytest.mark.timeout(120)


def test_health_turns_at_once_when_the_bucket_is_deleted(s3_store, make_mount):
    s3_store.put("a.txt", b"alpha")
    s3_store.put("sub/b.txt", b"beta")
    m = make_mount(s3_store.tier_url(probe_interval_down=1), env=s3_store.env)
    assert sorted(os.listdir(m.path)) == ["a.txt", "sub"]
    assert m.ask("health")["state"] == "ok"
    for key in s3_store.keys():  # noqa: SIM118 - a store, not a dict
        s3_store.client.delete_object(Bucket=s3_store.bucket, Key=key)
    s3_store.client.delete_bucket(Bucket=s3_store.bucket)
    with contextlib.suppress(OSError):
        os.listdir(m.path / "sub")  # may come from the cache
    with pytest.raises(OSError) as gone:  # never read before: asks the store
        (m.path / "a.txt").read_bytes()
    assert gone.value.errno == errno.ENODEV
    health = wait_for(lambda: (h := m.ask("health"))["state"] != "ok" and h, timeout=5,
                      what="health to turn")
    assert health["state"] == "down", health
    assert any("does not exist" in r for r in health["reasons"]), health
    s3_store.client.create_bucket(Bucket=s3_store.bucket)  # a probe succeeds again
    wait_for(lambda: m.ask("health")["state"] == "ok", timeout=15, what="health back to ok")
    m.path.joinpath("b.txt").write_text("beta")
    assert m.path.joinpath("b.txt").read_text() == "beta"
