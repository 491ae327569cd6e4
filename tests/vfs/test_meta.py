"""Metadata persists in the cache directory: a restarted mount lists and stats its tree
without the store while entries are fresh, and from its last knowledge while the store
is unreachable; an uncached name still fails with the store's error, not ENOENT."""

from __future__ import annotations

import errno
import os
import uuid

import pytest
import trio
import trio.testing

from stormount.backends import open_backend
from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig, parse_tier_url
from stormount.errors import FsError, Transient
from stormount.vfs.fs import Vfs
from stormount.vfs.nodes import ROOT_INO
from tests.helpers.faults import FaultyBackend
from tests.helpers.vfs import VfsFactory


@pytest.fixture
def make(tmp_path, nursery):
    url = f"memory://meta-{uuid.uuid4().hex}"
    factory = VfsFactory(tmp_path, nursery)
    opened = []

    def _make(cache: CacheConfig | None = None) -> tuple[FaultyBackend, Vfs]:
        backend = FaultyBackend(open_backend(parse_tier_url(url)))
        meta = MetaStore(str(tmp_path / "meta.sqlite3"))
        opened.append(meta)
        return backend, factory(backend, cache=cache, meta=meta)
    _make.settle = factory.settle  # type: ignore[attr-defined]
    yield _make
    for meta in opened:
        meta.close()
    factory.close()


async def names(vfs: Vfs, ino: int = ROOT_INO) -> list[str]:
    fh = await vfs.opendir(ino)
    try:
        return [name for name, _, _ in vfs.readdir(fh, 0)]
    finally:
        vfs.releasedir(fh)


async def test_restart_lists_and_stats_without_the_store_while_fresh(make):
    backend, first = make()
    await backend.put_bytes("docs/a.txt", b"aaa", {"mode": "33188"})
    await backend.put_bytes("docs/b.txt", b"bb", {})
    assert await names(first) == ["docs"]
    docs = await first.lookup(ROOT_INO, "docs")
    assert await names(first, docs.ino) == ["a.txt", "b.txt"]
    assert (await first.lookup(docs.ino, "a.txt")).attrs.size == 3

    backend, second = make()  # a new daemon on the same cache directory
    for op in ("list", "head"):
        backend.fail(op, RuntimeError("the store must not be asked"))
    assert await names(second) == ["docs"]
    docs = await second.lookup(ROOT_INO, "docs")
    assert await names(second, docs.ino) == ["a.txt", "b.txt"]
    assert (await second.lookup(docs.ino, "a.txt")).attrs.size == 3


async def test_stale_entries_are_served_while_the_store_is_unreachable(make):
    backend, first = make()
    await backend.put_bytes("d/f", b"12345", {})
    d = await first.lookup(ROOT_INO, "d")
    await names(first, d.ino)
    await first.lookup(d.ino, "f")

    stale = CacheConfig(metadata_ttl=0, listing_ttl=0, negative_ttl=0)
    backend, second = make(stale)
    for op in ("list", "head"):
        backend.fail(op, Transient("connection refused"))
    d = await second.lookup(ROOT_INO, "d")
    assert await names(second, d.ino) == ["f"]
    f = await second.lookup(d.ino, "f")
    assert (await second.getattr(f.ino)).attrs.size == 5
    with pytest.raises(Exception) as info:
        await second.lookup(d.ino, "never-seen")
    assert getattr(info.value, "errno", None) != errno.ENOENT  # an outage, not "no such file"


async def test_own_changes_invalidate_the_persisted_listing(make):
    backend, first = make()
    await backend.put_bytes("x", b"1", {})
    assert await names(first) == ["x"]
    await first.unlink(ROOT_INO, "x")
    fh, _ = await first.create(ROOT_INO, "y", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await first.flush(fh)
    await first.release(fh)
    await make.settle()

    backend, second = make()
    assert await names(second) == ["y"]
    with pytest.raises(FsError) as info:
        await second.lookup(ROOT_INO, "x")
    assert info.value.errno == errno.ENOENT


async def test_invalidate_makes_the_next_access_see_the_store(make):
    backend, vfs = make()
    await backend.put_bytes("d/f", b"old", {})
    d = await vfs.lookup(ROOT_INO, "d")
    assert await names(vfs, d.ino) == ["f"]
    f = await vfs.lookup(d.ino, "f")
    await backend.inner.put_bytes("d/f", b"newer", {})  # someone else, within every TTL
    await backend.inner.put_bytes("d/g", b"", {})
    assert (await vfs.getattr(f.ino)).attrs.size == 3  # still the cached view
    touched = vfs.invalidate("/d", recursive=True)
    assert {n.path for n in touched} == {"d", "d/f"}
    assert await names(vfs, d.ino) == ["f", "g"]
    assert (await vfs.lookup(d.ino, "f")).attrs.size == 5

    backend, restarted = make()  # nothing stale was left on disk either
    d = await restarted.lookup(ROOT_INO, "d")
    assert (await restarted.lookup(d.ino, "f")).attrs.size == 5


async def test_stale_listing_is_served_at_once_and_refreshed_in_the_background(make, nursery):
    backend, vfs = make(CacheConfig(listing_ttl=0))
    vfs.background = nursery  # as in the daemon
    await backend.put_bytes("a", b"", {})
    assert await names(vfs) == ["a"]  # nothing cached: listed before answering
    await backend.inner.put_bytes("b", b"", {})  # someone else
    assert await names(vfs) == ["a"]  # stale: answered at once, refreshed behind
    await trio.testing.wait_all_tasks_blocked()
    assert await names(vfs) == ["a", "b"]


async def test_a_listing_racing_an_own_change_does_not_undo_it(make, nursery):
    backend, vfs = make(CacheConfig(listing_ttl=0))
    vfs.background = nursery
    assert await names(vfs) == []
    inner_list = backend.inner.list
    slow = [True]

    async def slow_list(*args, **kwargs):  # the store answers, then the answer is slow
        page = await inner_list(*args, **kwargs)
        if slow.pop() if slow else False:
            await trio.sleep(0.2)
        return page
    backend.list = slow_list  # type: ignore[method-assign]
    assert await names(vfs) == []
    await trio.sleep(0.01)  # the refresh has its (soon outdated) answer in hand
    fh, _ = await vfs.create(ROOT_INO, "mine", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await vfs.flush(fh)  # ...and an own file lands while it runs
    await vfs.release(fh)
    await trio.sleep(0.3)
    assert await names(vfs) == ["mine"]


async def test_a_first_listing_racing_an_upload_keeps_the_new_file(make, nursery):
    backend, vfs = make()
    inner_list = backend.inner.list
    slow = [True]

    async def slow_list(*args, **kwargs):  # answered before the upload, delivered after
        page = await inner_list(*args, **kwargs)
        if slow.pop() if slow else False:
            await trio.sleep(0.2)
        return page
    backend.list = slow_list  # type: ignore[method-assign]

    async def write_new() -> None:
        await trio.sleep(0.05)
        fh, _ = await vfs.create(ROOT_INO, "new", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
        await vfs.write(fh, 0, b"data")
        await vfs.flush(fh)
        await vfs.release(fh)
    nursery.start_soon(write_new)
    await names(vfs)  # the first listing of the root, racing the upload
    assert await names(vfs) == ["new"]
    assert (await vfs.lookup(ROOT_INO, "new")).attrs.size == 4


async def test_an_older_listing_does_not_undo_a_newer_stat(make):
    backend, vfs = make(CacheConfig(metadata_ttl=0))
    await backend.put_bytes("f", b"old", {})
    assert await names(vfs) == ["f"]
    f = await vfs.lookup(ROOT_INO, "f")
    await backend.inner.put_bytes("f", b"newer", {})  # someone else
    assert (await vfs.getattr(f.ino)).attrs.size == 5  # seen by a HEAD
    await names(vfs)  # the cached listing still has the old version
    assert (await vfs.getattr(f.ino)).attrs.size == 5


async def test_invalidate_of_a_path_never_loaded_drops_what_is_on_disk(make):
    backend, first = make()
    await backend.put_bytes("a/b/c", b"x", {})
    a = await first.lookup(ROOT_INO, "a")
    b = await first.lookup(a.ino, "b")
    await names(first, b.ino)
    backend, second = make()  # restarted: nothing in memory
    assert second.invalidate("a/b/c", recursive=True) == []
    second.invalidate("a/b", recursive=True)
    backend.fail("list", Transient("down"))
    backend.fail("head", Transient("down"))
    a = await second.lookup(ROOT_INO, "a")  # not invalidated: still known offline
    with pytest.raises(Exception) as info:
        await second.lookup(a.ino, "b")  # forgotten: only the store could answer
    assert getattr(info.value, "errno", None) != errno.ENOENT


async def test_subtree_invalidation_is_case_sensitive(tmp_path):
    meta = MetaStore(str(tmp_path / "m.sqlite3"))
    meta.put_listing("Docs/", {})
    meta.put_listing("docs/", {})
    meta.forget_prefix("Docs/")
    assert meta.listing("Docs/") is None and meta.listing("docs/") is not None
    meta.close()


async def test_a_broken_metadata_cache_does_not_fail_operations(make):
    backend, vfs = make()
    await backend.put_bytes("f", b"x", {})
    assert await names(vfs) == ["f"]
    assert vfs.meta is not None
    vfs.meta._db.close()  # the cache database becomes unusable
    await vfs.unlink(ROOT_INO, "f")
    assert await names(vfs) == []


async def test_a_directory_moved_over_an_empty_one_lists_its_own_entries(make, nursery):
    """rename(c, a) replaces the empty directory a, listed before: the listing persisted
    for a is of the replaced directory and is never served for the moved one, not even
    while listings are served stale and refreshed behind (found by
    tests/fuse/test_model.py[uncached], whose every step lists every directory: the mount
    showed a/ empty where a/a was)."""
    _, vfs = make(CacheConfig(metadata_ttl=0, listing_ttl=0, negative_ttl=0))
    vfs.background = nursery  # as in the daemon: a stale listing is served, then refreshed
    c = await vfs.mkdir(ROOT_INO, "c", 0o755, 0, 0)
    a = await vfs.mkdir(ROOT_INO, "a", 0o755, 0, 0)
    await vfs.mkdir(c.ino, "a", 0o755, 0, 0)
    await make.settle()
    assert await names(vfs, a.ino) == []
    await trio.testing.wait_all_tasks_blocked()  # (its refresh is persisted)
    assert vfs.ns.meta.listing("a/") is not None  # type: ignore[union-attr]

    await vfs.rename(ROOT_INO, "c", ROOT_INO, "a")
    moved = await vfs.lookup(ROOT_INO, "a")
    assert await names(vfs, moved.ino) == ["a"]
    assert await names(vfs) == ["a"]


async def test_a_directory_moved_over_an_empty_one_keeps_its_own_attributes(make):
    """The attributes persisted for the replaced directory's marker are not the moved
    one's: once the kernel forgets the moved directory, it is looked up with its own."""
    _, vfs = make()
    c = await vfs.mkdir(ROOT_INO, "c", 0o700, 0, 0)
    a = await vfs.mkdir(ROOT_INO, "a", 0o755, 0, 0)
    await make.settle()
    await vfs.rename(ROOT_INO, "c", ROOT_INO, "a")
    assert c.attrs.mode & 0o777 == 0o700
    vfs.forget(c.ino, 1)
    vfs.forget(a.ino, 1)
    assert vfs.inodes.get(c.ino) is None  # dropped: the next lookup makes a new node
    assert (await vfs.lookup(ROOT_INO, "a")).attrs.mode & 0o777 == 0o700
