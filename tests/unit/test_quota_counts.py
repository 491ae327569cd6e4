"""The quota counts kept between recounts: what each change does to each folder."""

from __future__ import annotations

import errno

import pytest
import trio

from stormount.config import QuotaConfig, build_config
from stormount.errors import ConfigError, FsError, Transient
from stormount.vfs.quota import Quotas


async def files(*items, fail: bool = False):
    for item in items:
        yield item
    if fail:
        raise Transient("the store stopped answering part-way")


def quotas() -> Quotas:
    q = Quotas([QuotaConfig("", max_bytes=100), QuotaConfig("a", max_files=2),
                QuotaConfig("a/b", max_bytes=10)])
    trio.run(q.recount, files(("a/b/x", 4), ("a/y", 20), ("z", 30)))
    return q


def used(q: Quotas) -> dict[str, tuple[int, int]]:
    return {path: (u.bytes, u.files) for path, u in q.usage.items()}


def test_recount_and_changes_in_place():
    q = quotas()
    assert used(q) == {"": (54, 3), "a": (24, 2), "a/b": (4, 1)}
    q.charge("a/b/x", 6)  # a/b is now exactly full
    with pytest.raises(FsError) as info:
        q.charge("a/b/x", 1)
    assert info.value.errno == errno.EDQUOT
    assert used(q) == {"": (60, 3), "a": (30, 2), "a/b": (10, 1)}  # the refusal counted nothing
    with pytest.raises(FsError):
        q.charge("a/new", 0, 1)  # a holds 2 files, its most
    q.charge("a/y", -20, -1)  # an unlink
    q.charge("a/new", 0, 1)
    assert used(q) == {"": (40, 3), "a": (10, 2), "a/b": (10, 1)}


def test_a_recount_cut_short_keeps_the_counts_as_they_were():
    q = quotas()
    with pytest.raises(Transient):
        trio.run(q.recount, files(("a/b/x", 9), ("z", 99), fail=True))
    assert used(q) == {"": (54, 3), "a": (24, 2), "a/b": (4, 1)}
    assert q.outermost() == [""]


def test_a_move_counts_only_where_it_crosses_a_limit():
    q = quotas()
    q.move("z", "a/b/z", 6, 1, check=False)  # past a's file count: check=False counts anyway
    assert used(q) == {"": (54, 3), "a": (30, 3), "a/b": (10, 2)}
    with pytest.raises(FsError):
        q.move("a/y", "a/b/y", 20, 1)  # a/b has no room for 20 more bytes
    q.move("a/b/z", "z", 6, 1)  # out of a and a/b; the whole mount is unchanged
    assert used(q) == {"": (54, 3), "a": (24, 2), "a/b": (4, 1)}


def test_new_limits_keep_the_usage_of_the_folders_they_keep():
    """A SIGHUP that changes limits: the usage of a folder does not depend on them, so
    df and EDQUOT go on from the count (a fresh Quotas showed 0 used until the
    recount ended, and let writes past the new limit in meanwhile)."""
    q = quotas()
    q.charge("a/b/x", 6)  # this mount's own change since the count
    new = Quotas([QuotaConfig("", max_bytes=50), QuotaConfig("c", max_files=1)], q)
    assert used(new) == {"": (60, 3), "c": (0, 0)}
    assert not new.counted  # c was never counted from the store
    with pytest.raises(FsError):
        new.charge("z", 1)  # 60 of 50: over the new limit at once
    same = Quotas([QuotaConfig("", max_bytes=500), QuotaConfig("a/b", max_bytes=1)], q)
    assert same.counted and used(same) == {"": (60, 3), "a/b": (10, 1)}
    same.charge("a/b/x", -10, -1)
    assert used(q)["a/b"] == (10, 1)  # the old object's counts are not shared


def test_quota_config(tmp_path):
    config = tmp_path / "q.toml"
    config.write_text('[[tier]]\nurl = "file:///srv"\n[[quota]]\npath = "/"\n'
                      'max_bytes = "10GiB"\n[[quota]]\npath = "/photos/"\nmax_files = 5\n')
    cfg = build_config(str(config), str(tmp_path / "m"))
    assert cfg.quotas == (QuotaConfig("", 10 * 1024**3, None), QuotaConfig("photos", None, 5))
    for bad, message in (('path = "/x"', "give max_bytes, max_files or both"),
                         ('path = "../x"\nmax_files = 1', "not a folder of the mount"),
                         ('max_bytes = "lots"', "not a size"),
                         ('max_files = 1\nsize = 3', "unknown option 'size'")):
        config.write_text(f'[[tier]]\nurl = "file:///srv"\n[[quota]]\n{bad}\n')
        with pytest.raises(ConfigError, match=message):
            build_config(str(config), str(tmp_path / "m"))
