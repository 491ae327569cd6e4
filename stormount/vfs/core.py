"""The state every kind of filesystem operation shares (the namespace, the writer, the
handle tables, the quotas, the configuration in force) and the checks and lookups they
all make. `Vfs` is this plus the operations; `Dirs`, `Files`, `Entries` and `Moves` each
own one kind of operation and reach the shared state through it."""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator

import trio

from stormount.backends.base import Backend, list_pages
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.chain.health import RESERVED
from stormount.config import CacheConfig, FuseConfig, QuotaConfig, WritebackConfig
from stormount.errors import FsError, Transient
from stormount.vfs.attrs import DIR, now_ns
from stormount.vfs.handles import Handle, Handles
from stormount.vfs.names import NAME_MAX, join, too_long, utf8, valid_name
from stormount.vfs.namespace import Namespace
from stormount.vfs.nodes import Node
from stormount.vfs.pages import KernelPages
from stormount.vfs.quota import Quotas
from stormount.vfs.reader import Reader
from stormount.vfs.writer import Writer
from stormount.writeback import Writeback

RESERVED_NAME = RESERVED.rstrip("/")

log = logging.getLogger(__name__)


class Core:
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
        self.writer = Writer(backend, writeback, self.ns, staging_dir, blocks, self.charge)
        self.handles = Handles()
        # the kernel's page cache, given the blocks the reader has (set by the daemon)
        self.pages: KernelPages | None = None

    def reconfigure(self, fuse: FuseConfig, cache: CacheConfig, writeback: WritebackConfig,
                    quotas: tuple[QuotaConfig, ...]) -> None:
        """The live parts of a new configuration (SIGHUP). Quotas that change are counted
        anew by the caller; a folder that keeps its quota keeps its count meanwhile."""
        self.fuse, self.cache = fuse, cache
        self.writeback.reconfigure(writeback)
        self.fsync_upload = writeback.fsync == "upload"
        if quotas != (() if self.quotas is None else tuple(self.quotas.limits.values())):
            self.quotas = Quotas(quotas, self.quotas) if quotas else None

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
        """Set by the daemon while it serves (None after): stale listings are then
        served at once and refreshed, listed entries completed, blocks read ahead and
        given to the kernel's pages, beside the requests."""
        return self.ns.background

    @background.setter
    def background(self, nursery: trio.Nursery | None) -> None:
        self.ns.background = nursery
        if self.reader is not None:
            self.reader.background = nursery
        if self.pages is not None:
            self.pages.background = nursery

    @property
    def metadata_hits(self) -> int:
        return self.ns.hits

    @property
    def metadata_misses(self) -> int:
        return self.ns.misses

    # --- checks and lookups every operation makes -----------------------------------

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

    def check_writable(self) -> None:
        if self.fuse.read_only:
            raise FsError(errno.EROFS, "mounted read-only")

    @staticmethod
    def check_name(name: str) -> None:
        if too_long(name):
            raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
        if not valid_name(name):
            raise FsError(errno.EINVAL, f"invalid name {name!r}")
        if not utf8(name):
            raise FsError(errno.EILSEQ, "object names must be valid UTF-8")

    def check_unreserved(self, parent: Node, name: str) -> None:
        """The top-level `.stormount` of the bucket is the daemon's own (probes, a local
        tier's staging): nothing is made there, and its uploads could never be stored."""
        if parent is self.inodes.root and name == RESERVED_NAME:
            raise FsError(errno.EACCES, f"/{name} is reserved for stormount's own use")

    @staticmethod
    def dir_of(node: Node) -> Node:
        if node.kind != DIR:
            raise FsError(errno.ENOTDIR, f"{node.path} is not a directory")
        return node

    async def existing(self, parent_ino: int, name: str) -> tuple[Node, Node]:
        parent = self.dir_of(self.node(parent_ino))
        if parent is self.inodes.root and name == RESERVED_NAME:
            raise FsError(errno.ENOENT, f"/{name} is hidden")
        return parent, await self.ns.existing(parent, name)

    async def touch_dir(self, node: Node) -> None:
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

    async def free_name(self, parent_ino: int, name: str, *, offline: bool = False) -> Node:
        """The parent directory, once `name` is known to be free in it (or, `offline`,
        not known to be taken while the store cannot be asked: see `to_make`)."""
        self.check_writable()
        self.check_name(name)
        parent = self.dir_of(self.node(parent_ino))
        self.check_unreserved(parent, name)
        found = await (self.to_make(parent, name) if offline else
                       self.ns.lookup(parent, name))
        if found is not None:
            raise FsError(errno.EEXIST, f"{join(parent, name)} exists")
        return parent

    async def to_make(self, parent: Node, name: str) -> Node | None:
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

    async def is_empty(self, node: Node) -> bool:
        if any(c.etag is None and not c.unlinked for c in node.children.values()):
            return False
        page = await self.backend.list(node.key, "/", limit=2)
        return not page.prefixes and all(o.key == node.key for o in page.objects)

    def subtree(self, top: Node) -> list[Node]:
        out, todo = [], [top]
        while todo:
            node = todo.pop()
            out.append(node)
            todo.extend(node.children.values())
        return out

    def charge(self, at: Node | str, nbytes: int, nfiles: int = 0, *,
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

    async def sizes_under(self, prefixes: list[str],
                     nodes: list[Node]) -> AsyncIterator[tuple[str, int]]:
        """(key, size) of every file under the prefixes: the store's, page by page, and
        of `nodes` those not uploaded yet (or being written), at their local size."""
        local = {node.key: node.attrs.size for node in nodes
                 if node.kind != DIR and node.staging is not None and not node.unlinked}
        for prefix in prefixes:
            async for page in list_pages(self.backend, prefix):
                for info in page.objects:
                    if not info.key.endswith("/") and info.key not in local:
                        yield info.key, info.size
        for item in local.items():
            yield item

    async def settle_pages(self, node: Node) -> None:
        if self.pages is not None:
            await self.pages.settle(node)
