"""How POSIX attributes are read back from object metadata written by other tools."""

from __future__ import annotations

import logging
import os
import stat
import time

import pyfuse3
import pytest

from stormount.backends.base import ObjectInfo
from stormount.config import FuseConfig
from stormount.vfs import attrs
from stormount.vfs.attrs import (
    DIR,
    FILE,
    LINK,
    SPECIAL,
    attrs_from_object,
    default_attrs,
    kind_of,
    metadata_of,
    shown,
)


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
    assert stat.S_IMODE(a.mode) == 0o644 and (a.uid, a.gid) == (os.getuid(), os.getgid())
    assert (shown(a, fuse).uid, shown(a, fuse).gid) == (7, 8)  # the options show
    assert a.mtime_ns == 1_000_500_000_000  # the store's Last-Modified


def test_mtime_keeps_nanoseconds():
    a = attrs_from_object(info(mtime="1600000000.123456789"), FILE, FuseConfig())
    assert a.mtime_ns == 1_600_000_000_123_456_789


def test_ctime_is_stored_else_the_stores_last_modified():
    a = attrs_from_object(info(mtime="1600000000.5", ctime="1700000000.000000001"), FILE,
                          FuseConfig())
    assert a.ctime_ns == 1_700_000_000_000_000_001
    b = attrs_from_object(info(mtime="1600000000.5"), FILE, FuseConfig())
    assert b.ctime_ns == 1_000_500_000_000  # the store's Last-Modified
    meta = metadata_of(a)
    assert meta["ctime"] == "1700000000.000000001" and "rdev" not in meta


def test_kinds_from_mode_and_size():
    link, fifo = str(stat.S_IFLNK | 0o777), str(stat.S_IFIFO | 0o644)
    assert kind_of("l", {"mode": link}, 6) == LINK
    assert kind_of("l", {"mode": link}, 4096) == FILE  # no target is that long
    assert kind_of("l", {"mode": link}, 0) == FILE
    assert kind_of("p", {"mode": fifo}, 0) == SPECIAL
    assert kind_of("p", {"mode": fifo}, 3) == FILE  # it holds data: a file
    assert kind_of("d/", None, 0) == DIR
    dev = ObjectInfo(key="c", size=0, mtime=1.0, etag="e",
                     metadata={"mode": str(stat.S_IFCHR | 0o600), "rdev": "259"})
    attrs = attrs_from_object(dev, SPECIAL, FuseConfig())
    assert stat.S_ISCHR(attrs.mode) and attrs.rdev == 259 and attrs.kind == SPECIAL
    assert metadata_of(attrs)["rdev"] == "259"


def test_ownership_options_apply_to_every_entry_when_given():
    stored = attrs_from_object(info(mode=str(stat.S_IFREG | 0o600), uid="0", gid="0"), FILE,
                               FuseConfig())
    assert shown(stored, FuseConfig()) is stored  # nothing given: as stored
    over = shown(stored, FuseConfig(uid=1000, gid=1001))
    assert (over.uid, over.gid, stat.S_IMODE(over.mode)) == (1000, 1001, 0o600)
    assert stat.S_IMODE(shown(stored, FuseConfig(file_mode=0o664)).mode) == 0o644
    assert stat.S_IMODE(shown(stored, FuseConfig(file_mode=0o664, umask=0)).mode) == 0o664
    assert stat.S_IMODE(shown(stored, FuseConfig(umask=0o077)).mode) == 0o600
    dir_attrs = default_attrs(DIR, FuseConfig())
    assert stat.S_IMODE(shown(dir_attrs, FuseConfig(dir_mode=0o700)).mode) == 0o700
    link = default_attrs(LINK, FuseConfig())
    assert stat.S_IMODE(shown(link, FuseConfig(umask=0o077, file_mode=0o600)).mode) == 0o777


# issue 19, finding 2: one object with out-of-range metadata, put by another client,
# made stat, cat and rm of it EIO (OverflowError in fuse/ops.py::_entry), and then the
# listing of its directory
@pytest.mark.parametrize(("meta", "unusable"), [
    ({"uid": "99999999999"}, "uid"), ({"uid": "-1"}, "uid"), ({"gid": "-1"}, "gid"),
    ({"gid": str(2**32 - 1)}, "gid"), ({"mode": "99999999999999"}, "mode"),
    ({"mode": "-33188"}, "mode"), ({"mode": "0777777777"}, "mode"),
    ({"mtime": "1e400"}, "mtime"), ({"mtime": "-1e30"}, "mtime"), ({"mtime": "inf"}, "mtime"),
    ({"mtime": "nan"}, "mtime"), ({"ctime": "nan"}, "ctime"), ({"ctime": "-inf"}, "ctime"),
    ({"ctime": "1e999999999"}, "ctime"), ({"mtime": "9" * 5000}, "mtime"),
    ({"mode": str(stat.S_IFCHR | 0o600), "rdev": str(2**70)}, "rdev"),
    ({"mode": str(stat.S_IFBLK | 0o600), "rdev": "-5"}, "rdev"),
])
def test_out_of_range_metadata_falls_back_to_the_mounts_defaults(meta, unusable, caplog):
    fuse = FuseConfig()
    obj = ObjectInfo(key=f"dir/{unusable}-{len(caplog.records)}-{sorted(meta.items())}",
                     size=0, mtime=1_000.5, etag="e", metadata=meta)
    kind = kind_of(obj.key, meta, obj.size)
    with caplog.at_level(logging.WARNING, logger="stormount.vfs.attrs"):
        a = attrs_from_object(obj, kind, fuse)
        attrs_from_object(obj, kind, fuse)  # a second lookup logs nothing more
    default = default_attrs(kind, fuse, size=0, mtime_ns=1_000_500_000_000)
    assert getattr(a, unusable.replace("time", "time_ns")) == (
        1_000_500_000_000 if unusable == "ctime" else
        0 if unusable == "rdev" else getattr(default, unusable.replace("time", "time_ns")))
    # what the kernel is given fits it: pyfuse3 raised OverflowError before
    e = pyfuse3.EntryAttributes()
    shown_attrs = shown(a, fuse)
    e.st_mode, e.st_uid, e.st_gid, e.st_rdev = (shown_attrs.mode, shown_attrs.uid,
                                                 shown_attrs.gid, shown_attrs.rdev)
    e.st_mtime_ns, e.st_ctime_ns = shown_attrs.mtime_ns, shown_attrs.ctime_ns
    assert stat.S_IFMT(a.mode) in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK)
    warnings = [r for r in caplog.records if r.name == "stormount.vfs.attrs"]
    assert len(warnings) == 1 and "the store's value could not be used" in warnings[0].message
    assert obj.key in warnings[0].message and unusable in warnings[0].message


def test_an_unknown_file_type_is_a_regular_file():
    meta = {"mode": str(0o070000 | 0o640)}  # no file type S_IFMT knows
    assert kind_of("f", meta, 0) == FILE
    a = attrs_from_object(ObjectInfo("f", 0, 1.0, "e", meta), FILE, FuseConfig())
    assert a.mode == stat.S_IFREG | 0o640


def test_unusable_metadata_is_logged_once_per_key_in_bounded_memory(caplog):
    for n in range(attrs._WARNED_MAX + 10):
        attrs_from_object(ObjectInfo(f"k{n}", 0, 1.0, "e", {"uid": "-1"}), FILE, FuseConfig())
    assert len(attrs._warned) == attrs._WARNED_MAX


# found by tests/vfs/test_fuzz_store.py: an mtime of "1e999990" (8 characters, within
# Decimal's exponent range) made int() build a number of a million digits, 27 s of the
# event loop for every listing and stat of the object, the whole mount stalled meanwhile
@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", ["1e999990", "1E+999990", "-1e999990", "7e114722",
                                   "1e12", "99999999999.5"])
def test_a_time_with_a_huge_exponent_is_refused_at_once(value):
    started = time.monotonic()
    a = attrs_from_object(info(mtime=value, ctime=value), FILE, FuseConfig())
    assert time.monotonic() - started < 0.5
    assert (a.mtime_ns, a.ctime_ns) == (1_000_500_000_000, 1_000_500_000_000)


def test_times_at_the_edges_of_the_range_are_kept():
    a = attrs_from_object(info(mtime="9223372036.854775807", ctime="0e114722"), FILE,
                          FuseConfig())
    assert (a.mtime_ns, a.ctime_ns) == (2**63 - 1, 0)
    a = attrs_from_object(info(mtime="-9223372036.854775808", ctime="1e-99999"), FILE,
                          FuseConfig())
    assert (a.mtime_ns, a.ctime_ns) == (-(2**63), 0)
