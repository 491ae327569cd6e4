"""Filesystem semantics over an object store, without FUSE.

Every method takes and returns plain values (inode numbers, str names, Node objects)
and raises StormountError subclasses carrying the errno the caller should see, so the
whole layer is testable without the kernel and fuse/ops.py stays a thin adapter.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from stormount.backends.base import Backend, ObjectInfo, list_all
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.chain.health import RESERVED
from stormount.config import CacheConfig, FuseConfig
from stormount.errors import BackendError, Changed, FsError, NotFound, Transient
from stormount.vfs.attrs import (
    DIR,
    FILE,
    LINK,
    SPECIAL,
    Attrs,
    carries_attrs,
    kind_of,
    metadata_of,
    now_ns,
    shown,
    with_attrs,
    with_ctime,
)
from stormount.vfs.handles import Handle, Handles
from stormount.vfs.names import NAME_MAX, join, too_long, utf8, valid_name
from stormount.vfs.namespace import Namespace
from stormount.vfs.nodes import Listing, Node
from stormount.vfs.pages import KernelPages
from stormount.vfs.quota import Quotas
from stormount.vfs.reader import Reader
from stormount.vfs.writer import Writer
from stormount.writeback import CLOSED, MARKER, Upload, Writeback

RESERVED_NAME = RESERVED.rstrip("/")

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
COPY_PARALLEL = 16
# files read whole one after another in a directory (cp -r, tar c, rsync): the next
# ones are fetched ahead, this many, of at most SIBLING_MAX bytes, AHEAD_MAX in all
SIBLINGS_AHEAD = 16
SIBLING_MAX = 1024 * 1024
AHEAD_MAX = 8 * 1024 * 1024
WALKS_MAX = 1024  # directories whose order of reading is followed


@dataclass(frozen=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int


class Vfs:
    def __init__(self, backend: Backend, fuse: FuseConfig, cache: CacheConfig,
                 staging_dir: str, writeback: Writeback, blocks: BlockCache | None = None,
                 meta: MetaStore | None = None, quotas: Quotas | None = None) -> None:
        self.backend = backend
        self.quotas = quotas  # None: no [[quota]] configured
        self.writeback = writeback  # the upload queue
        self.fsync_upload = writeback.cfg.fsync == "upload"
        self.meta = meta  # persisted listings and attributes; None: memory only
        # names, listings, the metadata cache and invalidation
        self.ns = Namespace(backend, fuse, cache, meta,
                            lambda prefix: bool(writeback.under(prefix)))
        self.inodes = self.ns.inodes
        # without a block cache (cache disabled), every read is one ranged GET
        self.reader = None if blocks is None else Reader(
            backend, blocks, max_window=cache.read_ahead_max)
        self._fuse = fuse
        self._cache = cache
        self.staging_dir = staging_dir
        # staging copies of files being written, and their hand-over to the queue
        self.writer = Writer(backend, writeback, self.ns, staging_dir, blocks, self._charge)
        self.handles = Handles()
        # the kernel's page cache, given the blocks the reader has (set by the daemon)
        self.pages: KernelPages | None = None
        # per directory: the last file opened for reading there, and how many were
        # opened in the order of their names
        self._walks: OrderedDict[int, tuple[str, int]] = OrderedDict()

    # the configuration in force (SIGHUP changes the live parts), shared with the namespace
    @property
    def fuse(self) -> FuseConfig:
        return self._fuse

    @fuse.setter
    def fuse(self, value: FuseConfig) -> None:
        self._fuse = self.ns.fuse = value

    @property
    def cache(self) -> CacheConfig:
        return self._cache

    @cache.setter
    def cache(self, value: CacheConfig) -> None:
        self._cache = self.ns.cache = value

    @property
    def background(self) -> trio.Nursery | None:
        """Set by the daemon: stale listings are then served at once and refreshed, and
        listed entries completed, beside the requests."""
        return self.ns.background

    @background.setter
    def background(self, nursery: trio.Nursery | None) -> None:
        self.ns.background = nursery

    @property
    def metadata_hits(self) -> int:
        return self.ns.hits

    @property
    def metadata_misses(self) -> int:
        return self.ns.misses

    # --- helpers --------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise FsError(errno.ESTALE, f"unknown inode {ino}")
        return node

    async def known(self, ino: int) -> Node:
        """The node of an inode with its attributes as the store has them (a provisional
        one is completed first); ESTALE when the store now has another kind of entry
        under its name."""
        node = self.node(ino)
        if node.complete:
            return node
        found = await self.ns.known(node)
        if found is not node:
            raise FsError(errno.ESTALE, f"{node.path} is now another kind of entry")
        return found

    def handle(self, fh: int) -> Handle:
        return self.handles.file(fh)

    def _check_writable(self) -> None:
        if self.fuse.read_only:
            raise FsError(errno.EROFS, "mounted read-only")

    @staticmethod
    def _check_name(name: str) -> None:
        if too_long(name):
            raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
        if not valid_name(name):
            raise FsError(errno.EINVAL, f"invalid name {name!r}")
        if not utf8(name):
            raise FsError(errno.EILSEQ, "object names must be valid UTF-8")

    def _check_unreserved(self, parent: Node, name: str) -> None:
        """The top-level `.stormount` of the bucket is the daemon's own (probes, a local
        tier's staging): nothing is made there, and its uploads could never be stored."""
        if parent is self.inodes.root and name == RESERVED_NAME:
            raise FsError(errno.EACCES, f"/{name} is reserved for stormount's own use")

    @staticmethod
    def _dir_of(node: Node) -> Node:
        if node.kind != DIR:
            raise FsError(errno.ENOTDIR, f"{node.path} is not a directory")
        return node

    async def _existing(self, parent_ino: int, name: str) -> tuple[Node, Node]:
        parent = self._dir_of(self.node(parent_ino))
        if parent is self.inodes.root and name == RESERVED_NAME:
            raise FsError(errno.ENOENT, f"/{name} is hidden")
        return parent, await self.ns.existing(parent, name)

    async def _touch_dir(self, node: Node) -> None:
        """An entry of this directory was added or removed here: its mtime and ctime
        move, as on a local disk. A marker waiting for its upload (made or changed here)
        carries them; a stored one is not rewritten for them, since rewriting it from
        what this mount knows could undo another client's chmod. Best effort: the
        change itself is done."""
        node.attrs.mtime_ns = node.attrs.ctime_ns = now_ns()
        if not node.marker_queued or node.unlinked or self.writeback.get(node.key) is None:
            return
        try:
            await self.writer.queue_marker(node)
        except OSError as e:
            log.warning("the times of /%s stay in memory: %s", node.path, e)

    # --- lookups and attributes -----------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Node:
        """Resolve a name and count a kernel reference; FsError(ENOENT) when absent."""
        _, node = await self._existing(parent_ino, name)
        node.lookups += 1
        return node

    def count_lookup(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self.inodes.get(ino)
        if node is not None:
            self.ns.forget(node, count)

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if not node.complete:
            return await self.known(ino)
        if (node is self.inodes.root or node.unlinked or node.staging is not None
                or node.marker_queued or node.etag is None
                or self.ns._fresh(node.checked_at, self.cache.metadata_ttl)):
            self.ns.hits += 1
            return node
        self.ns.misses += 1
        key, parent = node.key, node.parent
        try:
            info = await self.backend.head(key)
        except Transient as e:
            self.ns._offline(node.path, e)
            return node  # offline: its last known attributes stand
        except NotFound:
            if node.key != key or node.unlinked:
                return node  # moved or removed here meanwhile: the answer is stale
            if node.kind == DIR and not node.etag:  # still no marker: as it was
                node.checked_at = trio.current_time()
                return node
            if node.kind == DIR:  # its marker is gone; its keys may stay: a lookup tells
                node.complete = False
                return await self.known(ino)
            if node.opens > 0:
                return node  # still open here: its last known state stands
            if node.parent is not None:
                self.ns.absent(node.parent, node.name)
            self.inodes.detach(node)
            raise FsError(errno.ENOENT, f"{node.path} was removed from the store") from None
        if node.key != key or node.unlinked or node.parent is not parent or (
                node.staging is not None):
            return node  # changed here meanwhile: what this mount did is newer
        assert node.parent is not None
        kind = kind_of(node.key, info.metadata, info.size)
        self.ns.remember(kind, info)
        found = self.ns.child_from_object(node.parent, node.name, kind, info, complete=True)
        if found is not node:
            raise FsError(errno.ESTALE, f"{node.path} is now another kind of entry")
        return node

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      mtime_ns: int | None = None) -> Node:
        self._check_writable()
        node = await self.getattr(ino)  # what is stored now: it is rewritten whole
        if size is not None:
            if node.kind == DIR:
                raise FsError(errno.EISDIR, f"{node.path} is a directory")
            if node.kind in (LINK, SPECIAL):
                raise FsError(errno.EINVAL, f"cannot truncate {node.path}: not a file")
        if size is not None:
            await self.settle_pages(node)  # no block stored past the new end
        async with node.lock:
            if size is not None:
                await self.writer.truncate(node, size)
            if mode is not None:
                node.attrs.mode = stat.S_IFMT(node.attrs.mode) | stat.S_IMODE(mode)
            if uid is not None:
                node.attrs.uid = uid
            if gid is not None:
                node.attrs.gid = gid
            if mtime_ns is not None:
                node.attrs.mtime_ns = mtime_ns
            node.attrs.ctime_ns = now_ns()
            if node.unlinked or (node.staging is not None and node.staging.dirty):
                pass  # gone from the store, or the coming upload carries the attributes
            elif node is self.inodes.root:
                pass  # the root's attributes come from the mount options
            elif node.kind == DIR:
                await self.writer.queue_marker(node)
            elif node.etag is not None:
                info = await self.backend.copy(node.key, node.key,
                                               with_attrs(node.stored, node.attrs))
                self.ns.set_version(node, info)
                if node.parent is not None:
                    self.ns.stored(node.parent, node.name, node.kind, info)
            node.checked_at = trio.current_time()
        if node.writers == 0:
            await self.writer.handover(node)  # a path truncate, or new attributes of a queued file
            self.writer.drop_staging_if_clean(node)
        return node

    async def readlink(self, ino: int) -> str:
        node = await self.known(ino)
        if node.kind != LINK:
            raise FsError(errno.EINVAL, f"{node.path} is not a symbolic link")
        if node.link_target is None:
            data = await self.backend.get_range(node.key, 0, max(node.attrs.size, 4096))
            node.link_target = os.fsdecode(data)
        return node.link_target

    async def access(self, ino: int, mode: int, uid: int, gids: list[int]) -> bool:
        attrs = shown((await self.known(ino)).attrs, self.fuse)
        if uid == 0:
            return not (mode & os.X_OK) or attrs.kind == DIR or bool(attrs.mode & 0o111)
        perms = stat.S_IMODE(attrs.mode)
        if uid == attrs.uid:
            bits = perms >> 6
        elif attrs.gid in gids:
            bits = perms >> 3
        else:
            bits = perms
        return (bits & mode) == mode

    def statfs(self) -> StatFs:
        # object stores have no fixed size: report a large, honest "unknown", or the
        # quota of the whole mount
        blocks, blocks_free, files, files_free = 2**40, 2**40, 2**32, 2**32
        whole = self.quotas.whole() if self.quotas is not None else None
        if whole is not None:
            limit, used = whole
            if limit.max_bytes is not None:
                blocks = -(-limit.max_bytes // 4096)
                blocks_free = max(0, limit.max_bytes - used.bytes) // 4096
            if limit.max_files is not None:
                files, files_free = limit.max_files, max(0, limit.max_files - used.files)
        return StatFs(block_size=4096, blocks=blocks, blocks_free=blocks_free, files=files,
                      files_free=files_free, name_max=NAME_MAX)

    def _charge(self, at: Node | str, nbytes: int, nfiles: int = 0, *,
                check: bool = True) -> None:
        """Count a change in the quotas (EDQUOT when it does not fit). An unlinked file
        that is still open is in no folder: its changes count nowhere."""
        if self.quotas is None or not (nbytes or nfiles):
            return
        if isinstance(at, Node):
            if at.unlinked:
                return
            at = at.path
        self.quotas.charge(at, nbytes, nfiles, check=check)

    async def recount_quotas(self) -> None:
        """Count quota usage anew: the files in the store under the quota folders, page
        by page, with files not uploaded yet (or being written) at their local size."""
        if self.quotas is None:
            return
        prefixes = [f"{top}/" if top else "" for top in self.quotas.outermost()]
        await self.quotas.recount(self._files(prefixes, self.inodes.all()))

    async def _files(self, prefixes: list[str],
                     nodes: list[Node]) -> AsyncIterator[tuple[str, int]]:
        """(key, size) of every file under the prefixes: the store's, page by page, and
        of `nodes` those not uploaded yet (or being written), at their local size."""
        local = {node.key: node.attrs.size for node in nodes
                 if node.kind != DIR and node.staging is not None and not node.unlinked}
        for prefix in prefixes:
            token: str | None = None
            while True:
                page = await self.backend.list(prefix, "", token)
                for info in page.objects:
                    if not info.key.endswith("/") and info.key not in local:
                        yield info.key, info.size
                token = page.token
                if token is None:
                    break
        for item in local.items():
            yield item

    # --- directories ----------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        node = self._dir_of(self.node(ino))
        entries = await self.ns.list_dir(node)
        if node is self.inodes.root and any(name == RESERVED_NAME for name, _ in entries):
            # another client's object `.stormount`: its lookup says ENOENT, so it is not
            # listed either
            self.ns.warn_skip(RESERVED_NAME, "the name is reserved for stormount's own use")
            entries = [(name, child) for name, child in entries if name != RESERVED_NAME]
        return self.handles.opendir(node, entries)

    def readdir(self, fh: int, start: int) -> list[tuple[str, Node, int]]:
        """Entries from position `start`, each with the position after it."""
        handle = self.handles.dir(fh)
        out = []
        for i, (name, node) in enumerate(handle.entries):
            if i < start:
                continue
            if node.unlinked or self.inodes.get(node.ino) is not node:
                # replaced since opendir (the store said it is of another kind), or
                # removed: the kernel must never learn a dead inode
                replaced = handle.node.children.get(name)
                if replaced is None and not node.unlinked:
                    # only forgotten (stored, clean, unreferenced, e.g. its upload
                    # landed meanwhile): the entry stands
                    replaced = self.inodes.revive(node)
                if replaced is None or replaced.unlinked:
                    continue
                node = replaced
            out.append((name, node, i + 1))
        return out

    def nlink(self, node: Node) -> int:
        """A directory's link count as on a local disk, 2 + its subdirectories, once its
        listing is known; 1 before (find(1) then assumes nothing of it). Files: 1."""
        if node.kind != DIR:
            return 1
        listing = node.listing
        return 1 if listing is None else 2 + listing.subdirs

    def releasedir(self, fh: int) -> None:
        self.handles.closedir(fh)

    async def _free_name(self, parent_ino: int, name: str, *, offline: bool = False) -> Node:
        """The parent directory, once `name` is known to be free in it (or, `offline`,
        not known to be taken while the store cannot be asked: see `_to_make`)."""
        self._check_writable()
        self._check_name(name)
        parent = self._dir_of(self.node(parent_ino))
        self._check_unreserved(parent, name)
        found = await (self._to_make(parent, name) if offline else
                       self.ns.lookup(parent, name))
        if found is not None:
            raise FsError(errno.EEXIST, f"{join(parent, name)} exists")
        return parent

    async def _to_make(self, parent: Node, name: str) -> Node | None:
        """What is at a name a create or mkdir is about to make. When no tier can be
        reached, a name this mount knows nothing of is taken as free, so a write-back
        mount keeps taking new files: their uploads are conditional on nothing being
        there (If-None-Match), so one that is there after all is kept, and the new file
        is stored beside it as a conflict copy."""
        try:
            return await self.ns.lookup(parent, name)
        except Transient as e:
            log.warning("store unreachable: %s is made here without knowing whether the "
                        "store has that name; its upload will not replace anything there "
                        "(%s)", join(parent, name), e)
            return None

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        parent = await self._free_name(parent_ino, name, offline=True)
        now = now_ns()
        attrs = Attrs(mode=stat.S_IFDIR | stat.S_IMODE(mode), uid=uid, gid=gid, size=0,
                      mtime_ns=now, ctime_ns=now)
        node = self.inodes.add(parent, name, attrs)
        node.complete = True
        node.checked_at = trio.current_time()
        node.listing = Listing(entries={}, at=trio.current_time())  # new: known empty
        try:
            await self.writer.queue_marker(node)
        except BaseException:
            self.inodes.detach(node)  # not journaled: it was never made
            raise
        self.ns.added(parent, name, DIR, None)
        await self._touch_dir(parent)
        node.lookups += 1
        return node

    async def fsyncdir(self, fh: int) -> None:
        """A directory whose marker is queued: journal it durably (and, with
        fsync=upload, wait for the store)."""
        node = self.handles.dir(fh).node
        up = self.writeback.get(node.key) if node.marker_queued else None
        if up is None:
            return
        self.writer.journal(node.key, MARKER, None, metadata_of(node.attrs), durable=True)
        if self.fsync_upload:
            await self.writeback.wait_uploaded(node.key)

    async def _is_empty(self, node: Node) -> bool:
        if any(c.etag is None and not c.unlinked for c in node.children.values()):
            return False
        page = await self.backend.list(node.key, "/", limit=2)
        return not page.prefixes and all(o.key == node.key for o in page.objects)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent, node = await self._existing(parent_ino, name)
        self._dir_of(node)
        if not await self._is_empty(node):
            raise FsError(errno.ENOTEMPTY, f"{node.path} is not empty")
        if not node.marker_queued:
            await self._check_marker_empty(node)
        queued = await self.writeback.discard(node.key)  # after an upload in flight
        node.marker_queued = False
        try:
            await self.backend.delete(node.key)
        except BaseException:
            if queued:  # rmdir failed: the directory stays, and so does its marker
                await self.writer.queue_marker(node)
            raise
        for child in list(node.children.values()):
            self.inodes.detach(child)
        self.ns.removed(parent, name)
        self.inodes.detach(node)
        await self._touch_dir(parent)

    async def _check_marker_empty(self, node: Node) -> None:
        """A directory whose marker object holds data (another tool wrote some to
        `dir/`) is not removed: deleting the marker would delete that data unseen."""
        try:
            info = await self.backend.head(node.key)
        except NotFound:
            return
        if info.size:
            log.error("rmdir of /%s refused: its marker object %s holds %d bytes, which "
                      "removing the directory would delete", node.path, node.key, info.size)
            raise FsError(errno.ENOTEMPTY, f"the marker {node.key} of {node.path} holds "
                          f"{info.size} bytes")

    # --- files ----------------------------------------------------------------------

    async def keep_page_cache(self, node: Node, flags: int) -> bool:
        """May the kernel keep cached pages of this file from an earlier open? Only if the
        object is the version they were read from (or written as) here. (Called as a
        file is opened: blocks stored in its pages for another version, or before a
        writer came, never land after.)"""
        keep = node.staging is not None or (
            node.etag is not None and node.etag == node.page_cache_etag)
        node.page_cache_etag = node.etag
        if not keep or (flags & os.O_ACCMODE) != os.O_RDONLY:
            await self.settle_pages(node)
        return keep

    async def settle_pages(self, node: Node) -> None:
        if self.pages is not None:
            await self.pages.settle(node)

    async def open(self, ino: int, flags: int) -> int:
        node = await self.known(ino)
        if node.kind == DIR:
            raise FsError(errno.EISDIR, f"{node.path} is a directory")
        if node.kind == SPECIAL:  # (the kernel opens fifos and devices itself)
            raise FsError(errno.ENXIO, f"{node.path} is a fifo, socket or device")
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self._check_writable()
        if writable and flags & os.O_TRUNC:
            async with node.lock:
                await self.writer.truncate(node, 0, writing=True)
        return self.handles.open(node, writable)

    def _walked(self, node: Node) -> None:
        """A stored file was read whole: when the files of its directory are being read
        so, one after another in the order of their names, fetch the next small ones
        ahead, so that a cp -r, tar or rsync of many small files waits for one GET at a
        time no more."""
        parent = node.parent
        if parent is None or self.reader is None or parent.listing is None:
            return
        last = self._walks.pop(parent.ino, None)
        count = last[1] + 1 if last is not None and last[0] < node.name else 1
        self._walks[parent.ino] = (node.name, count)
        if len(self._walks) > WALKS_MAX:
            self._walks.popitem(last=False)
        if count < 2:
            return  # one file read is no walk yet
        listing = parent.listing
        limit = min(self.reader.blocks.block_size, SIBLING_MAX)
        budget = AHEAD_MAX
        for name in listing.after(node.name, SIBLINGS_AHEAD):
            kind, info = listing.entries[name]
            child = parent.children.get(name)
            if child is not None and (child.staging is not None or child.etag is None):
                continue  # read from its local copy
            etag = child.etag if child is not None and child.complete else (
                info.etag if info is not None else None)
            size = child.attrs.size if child is not None and child.complete else (
                info.size if info is not None else 0)
            if kind == FILE and etag and 0 < size <= min(limit, budget):
                budget -= size
                self.reader.prefetch_object(join(parent, name), etag, size)

    async def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int,
                     gid: int) -> tuple[int, Node]:
        self._check_writable()
        self._check_name(name)
        parent = self._dir_of(self.node(parent_ino))
        self._check_unreserved(parent, name)
        existing = await self._to_make(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise FsError(errno.EEXIST, f"{existing.path} exists")
            if existing.kind == DIR:
                raise FsError(errno.EISDIR, f"{existing.path} is a directory")
            fh = await self.open(existing.ino, flags)  # O_CREAT alone keeps data
            existing.lookups += 1
            return fh, existing
        self._charge(join(parent, name), 0, 1)
        try:
            staging = self.writer.new_staging()
        except BaseException:
            self._charge(join(parent, name), 0, -1)
            raise
        now = now_ns()
        attrs = Attrs(mode=stat.S_IFREG | stat.S_IMODE(mode), uid=uid, gid=gid, size=0,
                      mtime_ns=now, ctime_ns=now)
        node = self.inodes.add(parent, name, attrs)
        node.complete = True
        node.staging = staging
        node.staging.dirty = True
        node.lookups += 1
        self.ns.added(parent, name, FILE, None)
        fh = self.handles.open(node, True)
        await self._touch_dir(parent)
        return fh, node

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        node = self.handle(fh).node
        staging = node.staging
        if staging is not None:
            return os.pread(staging.fd, size, offset)
        handle = self.handle(fh)
        version, total = (handle.version, handle.size) if handle.version else (
            node.etag or None, node.attrs.size)
        size = min(size, total - offset)
        if size <= 0:
            return b""
        handle.read_to = max(handle.read_to, offset + size)
        try:
            if self.reader is not None and version:
                return await self.reader.read(node.key, version, total, offset, size,
                                              handle.read_state)
            return await self.backend.get_range(node.key, offset, size, version)
        except NotFound:
            raise FsError(errno.ESTALE, f"{node.path} was removed from the store") from None
        except Changed:
            node.checked_at = -math.inf  # the next stat or open looks it up again
            raise FsError(errno.ESTALE, f"{node.path} was replaced in the store") from None

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handle(fh)
        if not handle.writable:
            raise FsError(errno.EBADF, "file not open for writing")
        return await self.writer.write(handle.node, offset, data)

    async def flush(self, fh: int) -> None:
        """A close of a descriptor (of possibly several: dup, fork): what is written is
        journaled, so close() reports a journal that cannot take it, and held: another
        descriptor may still write, and the upload waits for the release of the last.
        A crash before that release uploads this content at the next start, unless a
        write came after it."""
        handle = self.handle(fh)
        if handle.writable:
            await self.writer.handover(handle.node, held=CLOSED)

    async def fsync(self, fh: int) -> None:
        await self.writer.fsync(self.handle(fh).node, self.fsync_upload)

    async def release(self, fh: int) -> None:
        handle = self.handles.close(fh)
        if handle is None:
            return
        node = handle.node
        if (not handle.writable and node.staging is None and node.etag
                and 0 < node.attrs.size <= handle.read_to):
            self._walked(node)
        if handle.writable and node.writers == 0:
            try:
                await self.writer.handover(node)  # its last writer is done: upload it
            except OSError as e:  # nobody hears a release's error: say it in the log
                log.error("%s: closed with changes that cannot be queued for upload (kept "
                          "in %s until the next close or unmount): %s", node.path,
                          node.staging.path if node.staging else "?", e)
        self.writer.drop_staging_if_clean(node)
        self.inodes.maybe_drop(node)

    async def unlink(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent, node = await self._existing(parent_ino, name)
        if node.kind == DIR:
            raise FsError(errno.EISDIR, f"{node.path} is a directory")
        async with node.lock:
            if node.opens > 0 and node.etag is not None:
                await self.writer.stage(node)  # open files stay readable until closed
            await self.writeback.discard(node.key)  # after an upload in flight, if any
            if node.etag is not None:
                await self.backend.delete(node.key)
            self._charge(node, -node.attrs.size, -1)
            node.unlinked = True
        self.ns.removed(parent, name)
        self.inodes.detach(node)
        self.writer.drop_staging_if_clean(node)
        await self._touch_dir(parent)

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int,
                      gid: int) -> Node:
        data = os.fsencode(target)
        return await self._put_entry(parent_ino, name, stat.S_IFLNK | 0o777, uid, gid, data,
                                     target=target)

    async def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int,
                    gid: int) -> Node:
        """A fifo, socket or character or block device: an empty object whose mode (and
        rdev) say what it is, as s3fs stores them. A regular file is created and queued
        for upload as `create` would."""
        if stat.S_ISREG(mode) or not stat.S_IFMT(mode):
            fh, node = await self.create(parent_ino, name, stat.S_IFREG | stat.S_IMODE(mode),
                                         os.O_CREAT | os.O_EXCL | os.O_WRONLY, uid, gid)
            await self.flush(fh)
            await self.release(fh)
            return node
        if stat.S_IFMT(mode) not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL, f"mknod of an unknown file type {stat.S_IFMT(mode):o}")
        keep_rdev = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        return await self._put_entry(parent_ino, name, mode, uid, gid, b"",
                                     rdev=rdev if keep_rdev else 0)

    async def _put_entry(self, parent_ino: int, name: str, mode: int, uid: int, gid: int,
                         data: bytes, *, target: str | None = None, rdev: int = 0) -> Node:
        """Store a small entry at once (a symlink, a fifo, a device): the object with its
        metadata, then the node."""
        parent = await self._free_name(parent_ino, name)
        now = now_ns()
        attrs = Attrs(mode=mode, uid=uid, gid=gid, size=len(data), mtime_ns=now, ctime_ns=now,
                      rdev=rdev)
        path = join(parent, name)
        self._charge(path, len(data), 1)
        try:
            info = await self.backend.put_bytes(path, data, metadata_of(attrs))
        except BaseException:
            self._charge(path, -len(data), -1)
            raise
        node = self.ns.child_from_object(parent, name, attrs.kind, info, complete=True)
        node.attrs = attrs  # as asked (the store's clock may differ from ours)
        node.link_target = target
        self.ns.added(parent, name, attrs.kind, info)
        await self._touch_dir(parent)
        node.lookups += 1
        return node

    async def link(self, ino: int, parent_ino: int, name: str) -> Node:
        raise FsError(errno.EPERM, "hard links cannot be stored as objects")

    # --- rename ---------------------------------------------------------------------

    async def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int,
                     new_name: str, flags: int = 0) -> None:
        self._check_writable()
        self._check_name(new_name)
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        old_parent, src = await self._existing(old_parent_ino, old_name)
        new_parent = self._dir_of(self.node(new_parent_ino))
        self._check_unreserved(new_parent, new_name)
        if old_parent is new_parent and old_name == new_name:
            return
        while src in self.writer.moving:  # one move of a node at a time
            await self.writer.moving[src].wait()
        moved = self.writer.moving[src] = trio.Event()  # closes below it wait for the new name
        try:
            await self._rename(old_parent, old_name, src, new_parent, new_name, flags)
        finally:
            del self.writer.moving[src]
            moved.set()
            # open files read their objects under the new names (a copy may be a new version)
            self.handles.follow(self._subtree(src))

    async def _rename(self, old_parent: Node, old_name: str, src: Node, new_parent: Node,
                      new_name: str, flags: int) -> None:
        dst = await self.ns.lookup(new_parent, new_name)
        if dst is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, f"{dst.path} exists")
        new_path = join(new_parent, new_name)
        # quotas first: a refused move must change nothing
        taken = await self._quota_rename(src, dst, new_path)
        ctime = src.attrs.ctime_ns
        src.attrs.ctime_ns = now_ns()  # a rename changes the entry: its copy carries that
        moving = (src.key, new_path + "/") if src.kind == DIR else None
        if moving is not None:
            self.ns.begin_move(*moving)  # no listing of either place is believed meanwhile
        try:
            info = await self._rename_objects(src, dst, new_path, new_parent)
        except BaseException:
            src.attrs.ctime_ns = ctime
            if taken is not None and self.quotas is not None:
                self.quotas.move(new_path, src.path, *taken, check=False)
                if dst is not None and dst.kind != DIR:
                    self.quotas.charge(new_path, dst.attrs.size, 1, check=False)
            raise
        finally:
            if moving is not None:
                self.ns.end_move(*moving)
        if dst is not None:
            dst.unlinked = True
            self.inodes.detach(dst)
            if dst.kind != DIR and taken is None and self.quotas is not None:
                self.quotas.charge(new_path, -dst.attrs.size, -1, check=False)
        self.ns.removed(old_parent, old_name)
        if old_parent.children.get(old_name) is src:
            del old_parent.children[old_name]
        src.name, src.parent = new_name, new_parent
        new_parent.children[new_name] = src
        self.ns.added(new_parent, new_name, src.kind, info)
        await self._touch_dir(old_parent)
        if new_parent is not old_parent:
            await self._touch_dir(new_parent)
        self.inodes.maybe_drop(old_parent)

    async def _quota_rename(self, src: Node, dst: Node | None,
                            new_path: str) -> tuple[int, int] | None:
        """Move the usage of what a rename moves; EDQUOT when the new place has no room.
        The (bytes, files) moved, or None when no quota is concerned."""
        quotas = self.quotas
        if quotas is None or set(quotas.folders(src.path)) == set(quotas.folders(new_path)):
            return None
        if src.kind == DIR:
            moved = await self._subtree_usage(src)
        else:
            moved = (src.attrs.size, 1)
        if dst is not None and dst.kind != DIR:  # the file it replaces frees its room
            quotas.charge(new_path, -dst.attrs.size, -1, check=False)
        try:
            quotas.move(src.path, new_path, *moved)
        except FsError:
            if dst is not None and dst.kind != DIR:
                quotas.charge(new_path, dst.attrs.size, 1, check=False)
            raise
        return moved

    async def _subtree_usage(self, top: Node) -> tuple[int, int]:
        nbytes = nfiles = 0
        async for _, size in self._files([top.key], self._subtree(top)):
            nbytes, nfiles = nbytes + size, nfiles + 1
        return nbytes, nfiles

    async def _rename_objects(self, src: Node, dst: Node | None, new_path: str,
                              new_parent: Node) -> ObjectInfo | None:
        """Move what the store holds of `src` to `new_path`; the object a file is now,
        or None (a directory, or a file not stored yet)."""
        if src.kind == DIR:
            if new_parent.is_under(src):
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            if dst is not None:
                if dst.kind != DIR:
                    raise FsError(errno.ENOTDIR, f"{dst.path} is not a directory")
                if not await self._is_empty(dst):
                    raise FsError(errno.ENOTEMPTY, f"{dst.path} is not empty")
                await self.writeback.discard(dst.key)  # its queued marker is replaced too
                dst.marker_queued = False
                await self.backend.delete(dst.key)  # before the move brings src's marker
            await self._upload_now(src.key)  # queued files move as stored objects
            # its own marker, where it has one with attributes, carries its new ctime
            marker = {} if src.stored is None or not carries_attrs(src.stored) else {
                src.key: with_ctime(src.stored, src.attrs.ctime_ns)}
            moved = await self._move_tree(src.key, new_path + "/", marker)
            for node in self._subtree(src):
                if node.etag is not None and (node.kind != DIR or node is src):
                    info = moved.get(node.key)
                    if info is None:
                        node.etag = None if node.kind != DIR else ""
                    else:
                        self.ns.set_version(node, info)
                if node.kind == DIR:
                    node.listing = None  # (its entries name the old keys) listed anew
            return None
        else:
            if dst is not None and dst.kind == DIR:
                raise FsError(errno.EISDIR, f"{dst.path} is a directory")
            replaced: str | None = None
            if dst is not None:
                async with dst.lock:
                    if dst.opens > 0 and dst.etag is not None:
                        await self.writer.stage(dst)  # it is about to be overwritten in the store
                    await self.writeback.discard(dst.key)  # its queued content is replaced
                    replaced = dst.etag
            return await self._move_file(src, new_path, replaced)

    async def _move_file(self, src: Node, new_key: str, replaced: str | None
                         ) -> ObjectInfo | None:
        """Move a file's object; `replaced` is the version of the object it replaces at
        `new_key` (None: nothing is there). The object it is now, if stored."""
        async with src.lock:
            old_key = src.key
            await self.writeback.settle(old_key)  # an upload in flight lands first
            stored = src.etag is not None
            if await self.writeback.rename(old_key, new_key, replaced,
                                           metadata_of(src.attrs)):  # with the new ctime
                staging = src.staging
                if staging is not None and staging.queued is not None:
                    staging.queued = (staging.queued[0], metadata_of(src.attrs))
                # its content is still to be uploaded: it will be, under the new name (the
                # journal says so first, so a crash now cannot bring the old name back)
                src.etag = replaced
                if stored:
                    try:
                        await self.backend.delete(old_key)
                    except BackendError as e:  # the move stands; the old copy stays
                        log.warning("renamed %s to %s, but its old object stays in the "
                                    "store: %s", old_key, new_key, e)
                return None
            if not stored:
                src.etag = replaced  # created here, not flushed yet: nothing to move
                return None
            # the copy carries the new ctime where the object carries attributes; one
            # written by another tool keeps its metadata, and its Last-Modified, the
            # time of the copy, is its ctime
            metadata = None if src.stored is None or not carries_attrs(src.stored) else \
                with_ctime(src.stored, src.attrs.ctime_ns)
            info = await self.backend.copy(old_key, new_key, metadata)
            await self.backend.delete(old_key)
            self.ns.set_version(src, info)
            return info

    async def _upload_now(self, prefix: str) -> None:
        """Upload the queued files under a directory and wait (before it moves)."""
        failing = await self.writeback.flush(up.path for up in self.writeback.under(prefix))
        if failing:
            raise FsError(errno.EIO, f"{len(failing)} file(s) under /{prefix} cannot be "
                          f"uploaded yet ({failing[0].path}: {failing[0].last_error})")

    def _subtree(self, top: Node) -> list[Node]:
        out, todo = [], [top]
        while todo:
            node = todo.pop()
            out.append(node)
            todo.extend(node.children.values())
        return out

    async def _move_tree(self, old_prefix: str, new_prefix: str,
                         metadata: dict[str, dict[str, str]]) -> dict[str, ObjectInfo]:
        """Copy every key under a directory to its new name (those in `metadata` with
        that metadata), then delete the old keys: a failure part-way leaves both copies,
        never neither. Returns the copies by the old keys."""
        objects, _ = await list_all(self.backend, old_prefix, "")
        limiter = trio.CapacityLimiter(COPY_PARALLEL)
        moved: dict[str, ObjectInfo] = {}

        async def _copy(key: str) -> None:
            async with limiter:
                moved[key] = await self.backend.copy(key, new_prefix + key[len(old_prefix):],
                                                     metadata.get(key))

        async def _delete(key: str) -> None:
            async with limiter:
                await self.backend.delete(key)

        async with trio.open_nursery() as nursery:
            for info in objects:
                nursery.start_soon(_copy, info.key)
        async with trio.open_nursery() as nursery:
            for info in objects:
                nursery.start_soon(_delete, info.key)
        return moved

    # --- invalidation ---------------------------------------------------------------

    def invalidate(self, path: str, recursive: bool = False) -> list[Node]:
        """Forget what every cache knows of a path (and, recursively, of everything
        below it): attributes, listings and negative entries in memory and on disk, and
        cached blocks. The next access asks the store. Returns the known nodes whose
        kernel entries the caller should drop too."""
        nodes = self.ns.invalidate(path, recursive)
        path = path.strip("/")
        if self.reader is not None:
            blocks = self.reader.blocks
            blocks.drop(path)
            if recursive:
                blocks.drop_prefix(path + "/" if path else "")
        return nodes

    def nearest(self, path: str) -> tuple[Node, str] | None:
        return self.ns.nearest(path)

    # --- lifecycle ------------------------------------------------------------------

    def restore(self) -> list[Upload]:
        """Put the files an earlier run left queued back in the tree (listed, readable,
        from their staging files) and queue their uploads again."""
        return self.writer.restore()

    async def hand_over(self, path: str = "") -> list[Upload]:
        """Queue what is written under `path` ("" for everything), files still open
        included; the queue entries under it, to upload now and wait on."""
        return await self.writer.hand_over(path)

    async def shutdown(self) -> list[str]:
        """Upload the whole queue, files still open included (the caller bounds the
        wait); the paths still pending."""
        return await self.writer.shutdown()

