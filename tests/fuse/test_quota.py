"""Quotas on a real mount: a write past a limit fails with EDQUOT ("Disk quota
exceeded") and loses nothing it had acknowledged, df shows the whole mount's quota, and
usage follows the mount's own changes and, in time, other clients'."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess

import pytest

from stormount.registry import lookup
from tests.helpers.cli import run
from tests.helpers.mounts import wait_for

pytestmark = pytest.mark.timeout(120)
KiB, MiB = 1024, 1024 * 1024

CONFIG = """
quota_interval = {interval}
[[tier]]
url = "file://{data}"
[writeback]
debounce = 0
[[quota]]
path = "/"
max_bytes = "1MiB"
[[quota]]
path = "/small"
max_files = 2
"""


@pytest.fixture
def quota_mount(data, mnt, tmp_path):
    (data / "old.bin").write_bytes(b"o" * (200 * KiB))  # there before: counted at start
    config = tmp_path / "quota.toml"
    config.write_text(CONFIG.format(data=data, interval=1))
    result = run("mount", str(config), str(mnt), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    (mnt / "small").mkdir()
    yield mnt
    assert run("unmount", str(mnt)).returncode == 0


def df(path) -> tuple[int, int]:
    """(size, used) in bytes, as df shows them."""
    out = subprocess.run(["df", "-B1", "--output=size,used", str(path)], capture_output=True,
                         text=True, check=True).stdout.split("\n")[1].split()
    return int(out[0]), int(out[1])


def test_dd_past_the_quota_fails_with_disk_quota_exceeded_and_keeps_what_it_wrote(
        quota_mount, data):
    assert df(quota_mount) == (MiB, 200 * KiB)
    dd = subprocess.run(["dd", "if=/dev/zero", f"of={quota_mount / 'big.bin'}", "bs=64K",
                         "count=20"], capture_output=True, text=True, timeout=60)
    assert dd.returncode != 0
    assert "Disk quota exceeded" in dd.stderr
    kept = (quota_mount / "big.bin").stat().st_size
    # every whole block that fits, none past it: a write that does not fit writes nothing
    assert kept == (MiB - 200 * KiB) // (64 * KiB) * 64 * KiB
    # what was acknowledged is uploaded whole
    wait_for(lambda: (data / "big.bin").exists() and (data / "big.bin").stat().st_size == kept,
             what="the upload of what fitted")
    assert df(quota_mount)[1] == 200 * KiB + kept
    # ctl health shows the quotas with what they hold
    health = json.loads(run("ctl", "-m", str(quota_mount), "--json", "health").stdout)
    assert {"path": "/", "max_bytes": MiB, "max_files": None, "bytes": 200 * KiB + kept,
            "files": 2} in health["quotas"]
    assert "quota /: " in run("ctl", "-m", str(quota_mount), "health").stdout
    # freeing room lets writes in again
    (quota_mount / "old.bin").unlink()
    (quota_mount / "new.bin").write_bytes(b"n" * (100 * KiB))
    assert df(quota_mount)[1] == kept + 100 * KiB


def test_file_count_quota_of_a_folder(quota_mount):
    small = quota_mount / "small"
    (small / "a").write_bytes(b"1")
    (small / "b").write_bytes(b"2")
    with pytest.raises(OSError) as info:
        (small / "c").write_bytes(b"3")
    assert info.value.errno == errno.EDQUOT
    assert sorted(os.listdir(small)) == ["a", "b"]
    # moving a file in is a new file there too; moving one out makes room
    (quota_mount / "loose").write_bytes(b"x")
    with pytest.raises(OSError) as info:
        os.rename(quota_mount / "loose", small / "loose")
    assert info.value.errno == errno.EDQUOT
    assert (quota_mount / "loose").exists()  # the refused move changed nothing
    os.rename(small / "a", quota_mount / "a")
    os.rename(quota_mount / "loose", small / "loose")
    assert sorted(os.listdir(small)) == ["b", "loose"]


def test_usage_is_reconciled_with_what_other_clients_store(quota_mount, data):
    assert df(quota_mount)[1] == 200 * KiB
    (data / "from-elsewhere.bin").write_bytes(b"e" * (300 * KiB))  # not through the mount
    wait_for(lambda: df(quota_mount)[1] == 500 * KiB, timeout=30,
             what="the recount to see the other client's file")
    with pytest.raises(OSError) as info:
        (quota_mount / "too-much.bin").write_bytes(b"t" * (600 * KiB))
    assert info.value.errno == errno.EDQUOT


def test_sighup_brings_new_quotas_into_force(quota_mount, data, tmp_path):
    (quota_mount / "a.bin").write_bytes(b"a" * (300 * KiB))  # 500 KiB of 1 MiB now
    config = tmp_path / "quota.toml"
    config.write_text(CONFIG.format(data=data, interval=1).replace('"1MiB"', '"400KiB"'))
    record = lookup(str(quota_mount))
    assert record is not None
    os.kill(record.pid, signal.SIGHUP)
    wait_for(lambda: df(quota_mount)[0] == 400 * KiB, what="the new quota in force")
    assert df(quota_mount)[1] == 400 * KiB  # full (df cannot show more used than its size)
    health = json.loads(run("ctl", "-m", str(quota_mount), "--json", "health").stdout)
    assert health["quotas"][0]["bytes"] == 500 * KiB  # counted anew: over the new limit
    with pytest.raises(OSError) as info:
        (quota_mount / "b.bin").write_bytes(b"b")
    assert info.value.errno == errno.EDQUOT
    (quota_mount / "a.bin").unlink()  # under it again: writes go in
    (quota_mount / "b.bin").write_bytes(b"b")
