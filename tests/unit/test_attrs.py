"""How POSIX attributes are read back from object metadata written by other tools."""

from __future__ import annotations

import stat

from stormount.backends.base import ObjectInfo
from stormount.config import FuseConfig
from stormount.vfs.attrs import FILE, LINK, attrs_from_object, kind_of


def info(**meta: str) -> ObjectInfo:
    return ObjectInfo(key="f", size=3, mtime=1_000.5, etag="e", metadata=meta)


def test_s3fs_decimal_and_rclone_octal_modes():
    fuse = FuseConfig()
    assert stat.S_IMODE(attrs_from_object(info(mode="33188"), FILE, fuse).mode) == 0o644
    assert stat.S_IMODE(attrs_from_object(info(mode="0100640"), FILE, fuse).mode) == 0o640
    assert kind_of("l", {"mode": str(stat.S_IFLNK | 0o777)}) == LINK
    assert kind_of("l", {"mode": "0120777"}) == LINK


def test_missing_or_bad_metadata_falls_back_to_defaults():
    fuse = FuseConfig(uid=7, gid=8)
    a = attrs_from_object(info(mode="rwx", mtime="yesterday"), FILE, fuse)
    assert stat.S_IMODE(a.mode) == 0o644 and (a.uid, a.gid) == (7, 8)
    assert a.mtime_ns == 1_000_500_000_000  # the store's Last-Modified


def test_mtime_keeps_nanoseconds():
    a = attrs_from_object(info(mtime="1600000000.123456789"), FILE, FuseConfig())
    assert a.mtime_ns == 1_600_000_000_123_456_789
