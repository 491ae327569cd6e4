"""What a listing shows, and when attributes are fetched: a listing without metadata
(S3's) never shows a guess as a fact, its entries are completed by HEADs (in the
background, and before anything relies on them), a HEAD result is never downgraded by
a listing of the same version, and it persists, keyed by version, across restarts."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import uuid
from dataclasses import replace

import pytest
import trio

from stormount.backends import open_backend
from stormount.backends.memory import _STORES
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig, FuseConfig, parse_tier_url
from stormount.errors import FsError, Transient
from stormount.fuse.ops import Operations
from stormount.vfs.fs import Vfs
from stormount.vfs.names import Negatives
from stormount.vfs.nodes import ROOT_INO, Node
from tests.helpers.vfs import GID, UID, S3LikeListings, VfsFactory, read, write

LINK_MODE = str(stat.S_IFLNK | 0o777)
SECRET = {"mode": str(stat.S_IFREG | 0o600), "uid": "1000", "gid": "1000",
          "mtime": "1000000000.000000000"}


@pytest.fixture
def store_name():
    name = f"ns-{uuid.uuid4().hex}"
    yield name
    _STORES.pop(name, None)


@pytest.fixture
def other(store_name):
    """Another client of the store, which writes with metadata."""
    return open_backend(parse_tier_url(f"memory://{store_name}"))


@pytest.fixture
def make(tmp_path, nursery, store_name):
    """make(meta=False, cache=None, background=False) -> (S3-like backend, Vfs); with
    `meta`, every Vfs shares one metadata cache (a restart of the same mount)."""
    factory = VfsFactory(tmp_path, nursery)
    stores: list[MetaStore] = []

    def _make(meta: bool = False, cache: CacheConfig | None = None,
              background: bool = False) -> tuple[S3LikeListings, Vfs]:
        backend = S3LikeListings(open_backend(parse_tier_url(f"memory://{store_name}")))
        store = None
        if meta:
            store = MetaStore(str(tmp_path / "meta.sqlite3"))
            stores.append(store)
        vfs = factory(backend, cache=cache, meta=store)  # type: ignore[arg-type]
        if background:
            vfs.background = nursery
        return backend, vfs
    yield _make
    for store in stores:
        store.close()
    factory.close()


async def listed(vfs: Vfs, ino: int = ROOT_INO) -> dict[str, Node]:
    fh = await vfs.opendir(ino)
    try:
        return {name: node for name, node, _ in vfs.readdir(fh, 0)}
    finally:
        vfs.releasedir(fh)


async def until(predicate, seconds: float = 30.0) -> None:
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.01)


async def test_a_listing_without_metadata_never_shows_a_guess(make, other):
    await other.put_bytes("ln", b"target", {"mode": LINK_MODE})
    await other.put_bytes("secret", b"top secret", SECRET)
    await other.put_bytes("big", b"x" * 8192, {})
    await other.put_bytes("d/inner", b"", {})
    _backend, vfs = make()
    entries = await listed(vfs)
    # nothing the listing did not say is a fact: not the kind of a small object (it may
    # be a link), nor any mode, owner or time; a directory and a big file are certain
    assert not entries["ln"].complete and not entries["ln"].kind_known
    assert not entries["secret"].complete and not entries["secret"].kind_known
    assert not entries["big"].complete and entries["big"].kind_known
    assert not entries["d"].complete and entries["d"].kind_known
    ops = Operations(vfs, FuseConfig())
    shown = ops._entry(entries["ln"])
    assert (shown.st_mode, shown.entry_timeout, shown.attr_timeout) == (0, 0, 0)
    assert stat.S_IFMT(ops._entry(entries["d"]).st_mode) == stat.S_IFDIR
    assert ops._entry(entries["d"]).attr_timeout == 0

    # what the kernel asks next gets the facts
    ln = await vfs.lookup(ROOT_INO, "ln")
    assert stat.S_ISLNK(ln.attrs.mode) and ln.complete
    assert await vfs.readlink(ln.ino) == "target"
    secret = await vfs.getattr((await vfs.lookup(ROOT_INO, "secret")).ino)
    assert stat.S_IMODE(secret.attrs.mode) == 0o600
    assert (secret.attrs.uid, secret.attrs.gid) == (1000, 1000)
    assert secret.attrs.mtime_ns == 1_000_000_000 * 10**9
    assert not await vfs.access(secret.ino, os.R_OK, 65534, [65534])
    # and a listing of the same version never turns them back into guesses
    again = await listed(vfs)
    assert again["ln"] is ln and stat.S_ISLNK(again["ln"].attrs.mode) and ln.complete
    assert ops._entry(again["ln"]).st_mode == stat.S_IFLNK | 0o777


async def test_a_lookup_completes_an_entry_before_anything_relies_on_it(make, other):
    await other.put_bytes("run.sh", b"#!/bin/sh\n", {"mode": str(stat.S_IFREG | 0o750)})
    _backend, vfs = make()
    node = (await listed(vfs))["run.sh"]
    assert not node.complete
    # getattr, access and open of the inode the kernel may hold ask the store first
    assert await vfs.access(node.ino, os.X_OK, UID, [GID]) is False  # other: no x bit
    assert node.complete and stat.S_IMODE(node.attrs.mode) == 0o750
    fh = await vfs.open(node.ino, os.O_RDONLY)
    await vfs.release(fh)


async def test_entries_are_completed_in_the_background_once_one_is_needed(make, other):
    for i in range(40):
        await other.put_bytes(f"f{i:02d}", b"x", {"mode": str(stat.S_IFREG | 0o640)})
    backend, vfs = make(background=True, cache=CacheConfig(head_parallel=4))
    entries = await listed(vfs)
    assert backend.requests["head"] == 0  # names alone (ls) need no HEAD
    await vfs.lookup(ROOT_INO, "f00")  # the first entry someone needs: the rest follow
    await until(lambda: all(node.complete for node in entries.values()))
    assert backend.requests["head"] == 40
    for name in entries:  # ls -l, rsync and find then find them ready
        node = await vfs.lookup(ROOT_INO, name)
        assert stat.S_IMODE(node.attrs.mode) == 0o640
    assert backend.requests["head"] == 40


async def test_a_lookup_joins_a_head_under_way_and_a_fresh_listing_saves_the_list(
        make, other):
    await other.put_bytes("f", b"x", {"mode": str(stat.S_IFREG | 0o600)})
    await other.put_bytes("d/g", b"y", {})
    backend, vfs = make()
    await listed(vfs)
    before = backend.requests.copy()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(vfs.lookup, ROOT_INO, "f")
    # five lookups of a name the fresh listing shows: one HEAD, no LIST
    assert backend.requests - before == {"head": 1}
    before = backend.requests.copy()
    d = await vfs.lookup(ROOT_INO, "d")  # a directory the listing shows: its marker's HEAD
    assert backend.requests - before == {"head": 1}
    before = backend.requests.copy()
    await vfs.lookup(ROOT_INO, "f")
    await vfs.getattr(d.ino)
    assert backend.requests - before == {}  # cached: nothing


async def test_head_results_persist_by_version_across_restarts(make, other, store_name):
    await other.put_bytes("ln", b"target", {"mode": LINK_MODE})
    await other.put_bytes("secret", b"top secret", SECRET)
    backend, first = make(meta=True)
    for node in (await listed(first)).values():
        await first.lookup(ROOT_INO, node.name)
    backend, second = make(meta=True, cache=CacheConfig(listing_ttl=0, metadata_ttl=0))
    # a restart lists again, and the listing shows the versions the HEADs described
    entries = await listed(second)
    assert backend.requests == {"list": 1}
    assert entries["ln"].complete and stat.S_ISLNK(entries["ln"].attrs.mode)
    assert entries["secret"].complete and entries["secret"].attrs.uid == 1000

    # another client chmods it: the same ETag, another Last-Modified
    await other.copy("secret", "secret", {**SECRET, "mode": str(stat.S_IFREG | 0o644)})
    data, info = _STORES[store_name]["secret"]
    _STORES[store_name]["secret"] = (data, replace(info, mtime=info.mtime + 5))
    backend, third = make(meta=True, cache=CacheConfig(listing_ttl=0, metadata_ttl=0))
    entries = await listed(third)
    assert entries["ln"].complete and not entries["secret"].complete
    node = await third.lookup(ROOT_INO, "secret")
    assert stat.S_IMODE(node.attrs.mode) == 0o644 and backend.requests["head"] == 1


async def test_a_new_version_makes_an_entry_provisional_again(make, other):
    await other.put_bytes("x", b"target", {"mode": LINK_MODE})
    _backend, vfs = make(cache=CacheConfig(listing_ttl=0))
    await listed(vfs)
    link = await vfs.lookup(ROOT_INO, "x")
    assert link.kind == "link"
    await other.put_bytes("x", b"now a file", {"mode": str(stat.S_IFREG | 0o600)})
    entries = await listed(vfs)
    assert not entries["x"].complete  # the listing saw a new version: asked again
    node = await vfs.lookup(ROOT_INO, "x")
    assert node.kind == "file" and stat.S_IMODE(node.attrs.mode) == 0o600
    # the kernel held the link: the file is a new inode, the link's is gone from the
    # tree (as a replaced file's inode is)
    assert node is not link and link.unlinked


async def test_trust_listings_shows_listed_objects_with_the_defaults(make, other):
    await other.put_bytes("ln", b"target", {"mode": LINK_MODE})
    backend, vfs = make(cache=CacheConfig(trust_listings=True))
    entries = await listed(vfs)
    node = entries["ln"]
    assert node.complete and node.kind == "file" and stat.S_IMODE(node.attrs.mode) == 0o644
    assert await vfs.lookup(ROOT_INO, "ln") is node
    assert backend.requests == {"list": 1}


async def test_a_name_over_255_bytes_is_enametoolong_on_lookup_too(make):
    backend, vfs = make()
    with pytest.raises(FsError) as info:
        await vfs.lookup(ROOT_INO, "n" * 256)
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(FsError) as info:
        await vfs.lookup(ROOT_INO, "\u00e9" * 128)  # 256 bytes of UTF-8
    assert info.value.errno == errno.ENAMETOOLONG
    assert backend.requests == {}


async def test_negative_entries_are_bounded_in_number_and_age(autojump_clock):
    negatives = Negatives(limit=3)
    parent = Node(ino=1, name="", parent=None, attrs=None)  # type: ignore[arg-type]
    for name in "abcd":
        negatives.add(parent, name)
    assert len(negatives) == 3 and not negatives.fresh(parent, "a", 5.0)
    assert negatives.fresh(parent, "d", 5.0)
    await trio.sleep(5.0)
    assert not negatives.fresh(parent, "d", 5.0) and len(negatives) == 2


async def walk(vfs: Vfs, ino: int = ROOT_INO, path: str = "") -> list[str]:
    """What find prints: every path, directories looked up and listed in turn, files
    only listed (their kind is certain)."""
    out = []
    for name, node in sorted((await listed(vfs, ino)).items()):
        out.append(f"{path}{name}")
        if node.kind == "dir":
            child = await vfs.lookup(ino, name)
            out += await walk(vfs, child.ino, f"{path}{name}/")
    return out


async def test_a_walk_of_a_small_subtree_costs_one_flat_listing(make, other):
    keys = [f"t/d{i}/e{j}/f{k}" for i in range(3) for j in range(3) for k in range(4)]
    for key in keys:
        await other.put_bytes(key, b"x" * 5000, {})  # big enough to be surely files
    await other.put_bytes("t/d1/", b"", {"mode": str(stat.S_IFDIR | 0o700)})  # a marker
    backend, vfs = make(background=True)
    t = await vfs.lookup(ROOT_INO, "t")  # (a HEAD, and a LIST that sees subdirectories)
    found = await walk(vfs, t.ino)
    assert len([p for p in found if "/f" in p]) == len(keys)
    # the lookup of t, the listing of t, its flat listing, and the HEAD of the one
    # marker: no LIST per directory, no HEAD of a directory without a marker
    assert backend.requests == {"list": 3, "head": 2}
    d1 = await vfs.lookup(t.ino, "d1")
    assert stat.S_IMODE(d1.attrs.mode) == 0o700
    d0 = await vfs.lookup(t.ino, "d0")
    assert d0.complete and stat.S_IMODE(d0.attrs.mode) == 0o755  # no marker: defaults


async def test_a_lookup_in_a_directory_not_listed_lists_it_for_the_next_ones(make, other):
    for i in range(5):
        await other.put_bytes(f"s/f{i}", b"x", {"mode": str(stat.S_IFREG | 0o600)})
    backend, vfs = make(background=True)
    s = await vfs.lookup(ROOT_INO, "s")
    await vfs.lookup(s.ino, "f0")
    await vfs.lookup(s.ino, "f1")  # a second name: the directory is worth listing
    await until(lambda: s.listing is not None)  # listed in the background
    before = backend.requests.copy()
    assert await vfs.ns.lookup(s, "nope") is None  # the listing answers: no such name
    assert backend.requests - before == {}


async def test_a_flat_listing_raced_by_an_own_change_is_not_adopted(make, other):
    await other.put_bytes("t/a/f", b"x" * 5000, {})
    backend, vfs = make(background=True)
    t = await vfs.lookup(ROOT_INO, "t")
    gate = trio.Event()
    real_list = backend.list

    async def slow_list(prefix, delimiter="/", token=None, limit=1000):
        if delimiter == "":
            await gate.wait()
        return await real_list(prefix, delimiter, token, limit)
    backend.list = slow_list  # type: ignore[method-assign]
    await listed(vfs, t.ino)
    fh, _node = await vfs.create(t.ino, "new", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    await vfs.release(fh)
    gate.set()
    a = await vfs.lookup(t.ino, "a")
    assert "f" in await listed(vfs, a.ino)
    assert "new" in await listed(vfs, t.ino)


async def test_a_store_answer_older_than_an_own_move_tells_nothing(make, other, nursery):
    for name in ("x", "y"):
        await other.put_bytes(f"d/{name}", b"small", {"mode": str(stat.S_IFREG | 0o600)})
    backend, vfs = make(background=True)
    moved = trio.Event()
    real_head = backend.__getattr__("head")

    async def head(key: str):
        if key == "d/x":  # asked before the move, answered after it
            await moved.wait()
        return await real_head(key)
    backend.head = head  # type: ignore[method-assign]
    d = await vfs.lookup(ROOT_INO, "d")
    await listed(vfs, d.ino)
    nursery.start_soon(vfs.lookup, d.ino, "x")
    await trio.sleep(0.01)
    await vfs.rename(ROOT_INO, "d", ROOT_INO, "e")
    moved.set()
    await trio.sleep(0.05)
    assert sorted(await listed(vfs, d.ino)) == ["x", "y"]
    assert (await vfs.lookup(d.ino, "x")).attrs.size == 5


async def test_a_new_version_of_uncertain_kind_is_listed_without_a_type(make, other):
    await other.put_bytes("l", b"target", {"mode": LINK_MODE})
    _backend, vfs = make(cache=CacheConfig(listing_ttl=0))
    link = await vfs.lookup(ROOT_INO, "l")  # the kernel holds it as a link
    assert link.kind == "link"
    await other.put_bytes("l", b"#!/bin/sh\n", {})
    entry = (await listed(vfs))["l"]
    assert not entry.complete and not entry.kind_known
    assert Operations(vfs, FuseConfig())._entry(entry).st_mode == 0  # DT_UNKNOWN


async def test_a_directory_the_kernel_forgot_keeps_its_listing_for_an_outage(make):
    backend, vfs = make(meta=True)
    d = await vfs.mkdir(ROOT_INO, "w", 0o755, UID, GID)
    fh, f = await vfs.create(d.ino, "a", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    await vfs.release(fh)
    assert not await vfs.writeback.flush()
    vfs.forget(f.ino, f.lookups)  # memory pressure, drop_caches: the kernel lets go
    vfs.forget(d.ino, d.lookups)
    assert vfs.inodes.get(d.ino) is None

    async def unreachable(*args, **kwargs):
        raise Transient("the store is unreachable")
    backend.head = backend.list = unreachable  # type: ignore[method-assign]
    again = await vfs.lookup(ROOT_INO, "w")  # its marker, as stored, from the cache
    assert await vfs.ns.lookup(again, "new") is None  # its listing says: no such name
    fh, _ = await vfs.create(again.ino, "new", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    await vfs.release(fh)
    assert sorted(await listed(vfs, again.ino)) == ["a", "new"]


async def test_files_read_one_after_another_are_fetched_ahead(tmp_path, nursery, make, other):
    for i in range(12):
        await other.put_bytes(f"d/f{i:02d}", f"content {i}".encode(), {})
    blocks = BlockCache(str(tmp_path / "blocks"), block_size=64 * 1024, max_bytes=1 << 30,
                        min_free_bytes=0)
    backend = S3LikeListings(open_backend(parse_tier_url(f"memory://{other.url[9:]}")))
    vfs = VfsFactory(tmp_path, nursery)(backend, blocks=blocks)  # type: ignore[arg-type]
    vfs.background = nursery
    assert vfs.reader is not None
    vfs.reader.background = nursery
    d = await vfs.lookup(ROOT_INO, "d")
    names = sorted(await listed(vfs, d.ino))

    for name in names[:2]:  # a cp -r begins
        await read(vfs, f"d/{name}")
    await until(lambda: all(blocks.has(f"d/{n}", (vfs.inodes.get(d.ino).children[n].etag
                                                  or ""), 0) for n in names[2:]))
    before = backend.requests["get_range"]
    for i, name in enumerate(names[2:], 2):
        assert await read(vfs, f"d/{name}") == f"content {i}".encode()
    assert backend.requests["get_range"] == before  # every one was there already
    blocks.close()


# --- flat listings, glances and walks: what a change of this mount must never lose ----

async def scanned(vfs: Vfs, t: Node) -> None:
    await until(lambda: not vfs.ns.ahead._scans and t.listing is not None)


@pytest.fixture
def slow(tmp_path, nursery, store_name):
    """slow(rtt, blocks=None) -> (S3-like backend whose requests take rtt, Vfs)."""
    factory = VfsFactory(tmp_path, nursery)

    def _make(rtt: float = 0.0, blocks: BlockCache | None = None
              ) -> tuple[S3LikeListings, Vfs]:
        backend = S3LikeListings(open_backend(parse_tier_url(f"memory://{store_name}")), rtt)
        vfs = factory(backend, blocks=blocks)  # type: ignore[arg-type]
        vfs.background = nursery
        if vfs.reader is not None:
            vfs.reader.background = nursery
        return backend, vfs
    yield _make
    factory.close()


async def test_a_directory_moved_over_an_empty_one_shows_its_own_names(slow, other):
    for key in ("t/a/f", "t/a/g"):
        await other.put_bytes(key, b"x" * 5000, {})
    await other.put_bytes("t/b/", b"", {})
    _backend, vfs = slow()
    t = await vfs.lookup(ROOT_INO, "t")  # scanned: a/ and b/ derived
    await scanned(vfs, t)
    a = await vfs.lookup(t.ino, "a")
    await vfs.lookup(t.ino, "b")
    await vfs.rename(t.ino, "a", t.ino, "b")  # mv -T t/a t/b
    assert sorted(await listed(vfs, a.ino)) == ["f", "g"]
    assert (await vfs.lookup(a.ino, "f")).attrs.size == 5000


async def test_a_name_removed_after_a_move_does_not_come_back(slow, other):
    for key in ("t/a/f", "t/a/g", "t/z/h"):
        await other.put_bytes(key, b"x" * 5000, {})
    _backend, vfs = slow()
    t = await vfs.lookup(ROOT_INO, "t")
    await scanned(vfs, t)
    a = await vfs.lookup(t.ino, "a")
    await vfs.rename(t.ino, "a", t.ino, "b")
    await vfs.lookup(a.ino, "f")
    await vfs.unlink(a.ino, "f")
    await vfs.rename(t.ino, "b", t.ino, "a")
    assert sorted(await listed(vfs, a.ino)) == ["g"]


async def test_a_flat_listing_taken_while_a_directory_moves_is_not_used(slow, other,
                                                                        autojump_clock):
    for i in range(10):
        await other.put_bytes(f"t/a/f{i}", b"x" * 5000, {})
    await other.put_bytes("t/z/h", b"x" * 5000, {})
    backend, vfs = slow(0.01)
    half_deleted, answered = trio.Event(), trio.Event()
    deleted: list[str] = []

    async def on_list(prefix, delimiter, token, limit):
        if prefix == "t/" and delimiter == "":  # the flat listing of t, mid-move
            await half_deleted.wait()

    async def on_delete(key):
        if key >= "t/a/f5":
            await answered.wait()
        deleted.append(key)
        if len(deleted) == 5:
            half_deleted.set()
    backend.hooks.update(list=on_list, delete=on_delete)
    t = await vfs.lookup(ROOT_INO, "t")
    await listed(vfs, t.ino)
    a = await vfs.lookup(t.ino, "a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(vfs.rename, t.ino, "a", t.ino, "b")
        await half_deleted.wait()
        await trio.sleep(0.5)
        answered.set()
    assert sorted(await listed(vfs, a.ino)) == [f"f{i}" for i in range(10)]


async def test_parallel_lookups_in_a_big_directory_all_answer(slow, other, autojump_clock):
    for i in range(1001):  # more than a page: no glance gives it a listing
        await other.put_bytes(f"p/f{i:04}", b"x" * 5000, {})
    backend, vfs = slow(0.02)
    p = await vfs.lookup(ROOT_INO, "p")
    before = backend.requests.copy()
    async with trio.open_nursery() as nursery:
        for i in range(8):  # a data loader's workers opening files by name
            nursery.start_soon(vfs.lookup, p.ino, f"f{i * 100:04}")
    asked = backend.requests - before
    assert asked["head"] == 8 and asked["list"] <= 9  # a probe each, one glance


async def test_a_big_directory_is_glanced_once(slow, other, autojump_clock):
    for i in range(1001):
        await other.put_bytes(f"p/f{i:04}", b"x" * 5000, {})
    backend, vfs = slow(0.01)
    p = await vfs.lookup(ROOT_INO, "p")
    for i in range(20):  # rsync's generator stats each name
        await vfs.lookup(p.ino, f"f{i:04}")
        await trio.sleep(0.1)
    glances = [e for e in backend.log if e[0] == "list" and e[1] == "p/" and e[4] == 1000]
    assert len(glances) == 1


async def test_a_file_beside_a_big_subdirectory_is_not_held_up(slow, other, autojump_clock):
    for i in range(3000):
        await other.put_bytes(f"t/a/x{i:05}", b"", {})
    await other.put_bytes("t/b", b"x" * 5000, {})
    backend, vfs = slow(0.1)
    t = await vfs.lookup(ROOT_INO, "t")
    await listed(vfs, t.ino)  # ls t
    before, t0 = backend.requests.copy(), trio.current_time()
    await vfs.lookup(t.ino, "b")  # stat t/b: a HEAD, nothing more, at once
    assert backend.requests - before == {"head": 1}
    assert trio.current_time() - t0 < 0.15


async def test_a_lookup_then_a_listing_scan_the_subtree_once(slow, other, autojump_clock):
    for i in range(3):
        await other.put_bytes(f"t/d{i}/f", b"x" * 5000, {})
    backend, vfs = slow(0.02)
    t = await vfs.lookup(ROOT_INO, "t")  # stat t: its probe sees subdirectories
    await listed(vfs, t.ino)  # ls t
    await trio.sleep(1)
    assert len([e for e in backend.log if e[0] == "list" and e[2] == ""]) == 1


async def test_reading_the_start_of_each_file_fetches_nothing_ahead(slow, other, tmp_path,
                                                                    autojump_clock):
    for i in range(10):
        await other.put_bytes(f"photos/p{i:02}.jpg", os.urandom(300_000), {})
    blocks = BlockCache(str(tmp_path / "blocks"), block_size=1 << 20, max_bytes=1 << 30,
                        min_free_bytes=0)
    backend, vfs = slow(0.01, blocks=blocks)
    d = await vfs.lookup(ROOT_INO, "photos")
    for name in sorted(await listed(vfs, d.ino)):  # file *, head -c 64 *, a thumbnailer
        node = await vfs.lookup(d.ino, name)
        fh = await vfs.open(node.ino, os.O_RDONLY)
        await vfs.read(fh, 0, 64)
        await vfs.release(fh)
    await trio.sleep(5)
    assert backend.requests["get_range"] == 10  # what was asked for, no more
    blocks.close()


async def test_writes_elsewhere_do_not_throw_a_flat_listing_away(slow, other,
                                                                 autojump_clock):
    for key in [f"t/d{i}/e{j}/f{k}" for i in range(3) for j in range(3) for k in range(4)]:
        await other.put_bytes(key, b"x" * 5000, {})
    backend, vfs = slow(0.02)
    w = await vfs.mkdir(ROOT_INO, "w", 0o755, UID, GID)
    stop = trio.Event()

    async def writer() -> None:  # another program saving files in another directory
        i = 0
        while not stop.is_set():
            await write(vfs, f"n{i}", b"data", parent=w.ino)
            i += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(0.05)
        before = backend.log[:]
        t = await vfs.lookup(ROOT_INO, "t")
        await walk(vfs, t.ino)  # find t
        stop.set()
    lists = [e for e in backend.log[len(before):] if e[0] == "list" and e[1].startswith("t")]
    assert len(lists) <= 3  # the lookup's probe, t's listing, its flat listing


async def test_names_a_local_directory_holds_in_another_encoding_are_not_shown(
        tmp_path, nursery, caplog):
    """Found by tests/vfs/test_fuzz_store.py: a file named b"bad\\xff" in a local tier
    was listed, but its lookup said ENOENT (ls showed it, ls -l and cat failed); and a
    folder of such a name below a directory with subdirectories stopped the mount (the
    flat listing in the background put the name in the metadata cache: an escaping
    UnicodeEncodeError). Such names are skipped, each key warned about once."""
    data = tmp_path / "data"
    for path, body in ((b"bad\xff", b"x"), (b"dir\xfe/in", b"y"), (b"good", b"g"),
                       (b"top/sub\xff/x", b"z"), (b"top/ok/y", b"w")):
        full = bytes(data) + b"/" + path
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(body)
    meta = MetaStore(str(tmp_path / "meta.sqlite3"))
    factory = VfsFactory(tmp_path, nursery)
    vfs = factory(open_backend(parse_tier_url(f"file://{data}")), meta=meta)
    vfs.background = nursery  # as the daemon: flat listings beside the requests
    try:
        with caplog.at_level("WARNING", logger="stormount"):
            for _ in range(2):
                assert list(await listed(vfs)) == ["good", "top"]
                top = await vfs.lookup(ROOT_INO, "top")
                await trio.sleep(0.2)  # the flat listing of top/ runs meanwhile
                assert list(await listed(vfs, top.ino)) == ["ok"]
                assert await read(vfs, "top/ok/y") == b"w"
                vfs.invalidate("", recursive=True)  # listed and looked up again
            with pytest.raises(FsError) as e:
                await vfs.lookup(ROOT_INO, "bad\udcff")
            assert e.value.errno == errno.ENOENT
    finally:
        vfs.background = None
        factory.close()
        meta.close()
    skipped = [r.args[0] for r in caplog.records  # type: ignore[index]
               if r.msg.startswith("skipping object")]
    # a listing names `dir\udcfe/`, a flat listing `dir\udcfe/in`: each key once
    bad = ("bad\udcff", "dir\udcfe/", "top/sub\udcff/")
    assert len(skipped) == len(set(skipped))
    assert all(any(key.startswith(b) for b in bad) for key in skipped), skipped
    assert all(any(key.startswith(b) for key in skipped) for b in bad), skipped


async def test_an_unexpected_error_in_a_flat_listing_never_stops_the_mount(make, other,
                                                                           caplog):
    """The flat listing in the background let only StormountError go: anything else (a
    UnicodeEncodeError from the metadata cache, as the store fuzz found) ended the
    daemon's nursery, so the whole mount. It is logged and the walk goes on."""
    await other.put_bytes("top/a/x", b"x", {})
    await other.put_bytes("top/b/y", b"y", {})
    backend, vfs = make(background=True)

    async def broken(prefix, delimiter, token, limit):
        if delimiter == "":
            raise RuntimeError("a bug")
    backend.hooks["list"] = broken
    with caplog.at_level("ERROR", logger="stormount"):
        top = await vfs.lookup(ROOT_INO, "top")
        assert sorted(await listed(vfs, top.ino)) == ["a", "b"]
        await trio.sleep(0.2)
        assert await read(vfs, "top/a/x") == b"x"
    assert any("flat listing of /top/ failed" in r.getMessage() for r in caplog.records)


async def test_a_walk_down_a_tree_1100_folders_deep_is_forgotten_whole(tmp_path, nursery,
                                                                        caplog):
    """Found by the store fuzz: a local tier can hold a file 1,100 folders deep (2,200
    bytes of path). Walked down, then forgotten by the kernel, the nodes were dropped by
    a recursion up the tree: RecursionError at every forget (logged) and every inode of
    the walk kept for the life of the mount."""
    data = deep = tmp_path / "data"
    data.mkdir()
    for _ in range(1100):  # (os.makedirs would recurse)
        deep = deep / "a"
        deep.mkdir()
    (deep / "f").write_bytes(b"bottom")
    factory = VfsFactory(tmp_path, nursery)
    vfs = factory(open_backend(parse_tier_url(f"file://{data}")))
    try:
        path = "/".join(["a"] * 1100 + ["f"])
        walked = []
        node = vfs.node(ROOT_INO)
        for name in path.split("/"):
            node = await vfs.lookup(node.ino, name)
            walked.append(node)
        assert await read(vfs, path) == b"bottom"
        with caplog.at_level("ERROR", logger="stormount"):
            ops = Operations(vfs, FuseConfig())
            ops.forget([(n.ino, n.lookups) for n in walked])
        assert not caplog.records
        assert len(vfs.inodes) == 1  # the root alone
    finally:
        factory.close()
        # pytest's own cleanup (shutil.rmtree) recurses and would fail on this tree
        subprocess.run(["rm", "-rf", "--", str(data)], check=True)


async def test_skipped_keys_are_warned_about_once_in_bounded_memory(make, caplog):
    """A bucket may hold millions of keys no entry can stand for (`a//b`, written by a
    tool that joins paths carelessly): each is warned about once, and the keys
    remembered for that were a set that only grew; now the last 4096."""
    from stormount.vfs.namespace import WARNED_MAX

    _backend, vfs = make()
    with caplog.at_level("WARNING", logger="stormount"):
        for n in range(WARNED_MAX + 100):
            vfs.ns.warn_skip(f"a//{n}", "not a valid file name")
        vfs.ns.warn_skip(f"a//{WARNED_MAX + 99}", "not a valid file name")  # once only
    assert len(vfs.ns._warned) == WARNED_MAX
    assert len(caplog.records) == WARNED_MAX + 100
