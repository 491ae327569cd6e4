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
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from stormount.backends.base import Backend, ObjectInfo, list_all
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig, FuseConfig
from stormount.errors import BackendError, Changed, FsError, NotFound, Transient, first_error
from stormount.vfs.attrs import (
    DIR,
    FILE,
    LINK,
    Attrs,
    attrs_from_object,
    default_attrs,
    kind_of,
    metadata_of,
    now_ns,
)
from stormount.vfs.nodes import InodeTable, Listing, Node, Staging
from stormount.vfs.quota import Quotas
from stormount.vfs.reader import Reader, ReadState
from stormount.writeback import MARKER, Upload, Writeback

log = logging.getLogger(__name__)

NAME_MAX = 255
DOWNLOAD_CHUNK = 8 * 1024 * 1024
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
COPY_PARALLEL = 16


@dataclass(eq=False)
class Handle:
    node: Node
    writable: bool
    read_state: ReadState = field(default_factory=ReadState)


@dataclass(eq=False)
class DirHandle:
    node: Node
    entries: list[tuple[str, Node]]


@dataclass(frozen=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int


def valid_name(name: str) -> bool:
    """Can this key segment be a POSIX file name?"""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name
            and len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(parent: Node, name: str) -> str:
    path = parent.path
    return f"{path}/{name}" if path else name


class Vfs:
    def __init__(self, backend: Backend, fuse: FuseConfig, cache: CacheConfig,
                 staging_dir: str, writeback: Writeback, blocks: BlockCache | None = None,
                 meta: MetaStore | None = None, quotas: Quotas | None = None) -> None:
        self.backend = backend
        self.quotas = quotas  # None: no [[quota]] configured
        self.writeback = writeback  # the upload queue; it reports back to us
        writeback.on_uploaded = self._uploaded
        writeback.on_conflict = self._conflicted
        self.fsync_upload = writeback.cfg.fsync == "upload"
        self.meta = meta  # persisted listings and attributes; None: memory only
        self.background: trio.Nursery | None = None  # set by the daemon: stale listings
        # are then served at once and refreshed beside the requests
        # without a block cache (cache disabled), every read is one ranged GET
        self.reader = None if blocks is None else Reader(
            backend, blocks, max_window=cache.read_ahead_max)
        self.fuse = fuse
        self.cache = cache
        self.staging_dir = staging_dir
        self.inodes = InodeTable(default_attrs(DIR, fuse))
        self.inodes.root.checked_at = math.inf
        self.inodes.root.complete = True
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._moving: dict[Node, trio.Event] = {}  # nodes a rename is moving
        self._start_ns = now_ns()
        self._warned: set[str] = set()
        # lookups, getattrs and listings answered from the caches, and those that asked
        # the store (for the stats)
        self.metadata_hits = 0
        self.metadata_misses = 0

    # --- helpers --------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise FsError(errno.ESTALE, f"unknown inode {ino}")
        return node

    def handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(errno.EBADF, f"unknown file handle {fh}") from None

    def _fresh(self, at: float, ttl: float) -> bool:
        return trio.current_time() - at < ttl

    def _check_writable(self) -> None:
        if self.fuse.read_only:
            raise FsError(errno.EROFS, "mounted read-only")

    @staticmethod
    def _check_name(name: str) -> None:
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
        if not valid_name(name):
            raise FsError(errno.EINVAL, f"invalid name {name!r}")
        if not _utf8(name):
            raise FsError(errno.EILSEQ, "object names must be valid UTF-8")

    @staticmethod
    def _dir_of(node: Node) -> Node:
        if node.kind != DIR:
            raise FsError(errno.ENOTDIR, f"{node.path} is not a directory")
        return node

    def _warn_skip(self, key: str, why: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("skipping object %r: %s", key, why)

    def _new_staging(self) -> Staging:
        fd, path = tempfile.mkstemp(dir=self.staging_dir, prefix="stage-")
        return Staging(path=path, fd=fd)

    def _listing_put(self, parent: Node, name: str, kind: str, info: ObjectInfo | None) -> None:
        parent.changes += 1
        parent.negative.pop(name, None)
        if parent.listing is not None:
            parent.listing.entries[name] = (kind, info)
        self._persist_change(parent, name, kind, info)

    def _listing_drop(self, parent: Node, name: str) -> None:
        parent.changes += 1
        parent.negative[name] = trio.current_time()
        if parent.listing is not None:
            parent.listing.entries.pop(name, None)
        self._persist_change(parent, name, None, None)

    def _persist_change(self, parent: Node, name: str, kind: str | None,
                        info: ObjectInfo | None) -> None:
        """An own change: the persisted listing of the parent no longer holds (a restart
        lists it again), and the object's persisted attributes follow the change."""
        if self.meta is None:
            return
        self.meta.forget_listing(parent.key)
        key = _join(parent, name)
        if kind is None:
            self.meta.forget_prefix(key + "/")
            self.meta.forget_object(key)
        elif info is not None:
            self._remember(kind, info)

    def _load_listing(self, node: Node) -> Listing | None:
        """The directory's listing from memory, else as persisted by an earlier run."""
        if node.listing is None and self.meta is not None:
            persisted = self.meta.listing(node.key)
            if persisted is not None:
                age, entries = persisted
                node.listing = Listing(entries=entries, at=trio.current_time() - age)
        return node.listing

    def _offline(self, what: str, error: Transient) -> None:
        log.warning("store unreachable, serving %s from cache: %s", what, error)

    def _child_from_object(self, parent: Node, name: str, kind: str, info: ObjectInfo,
                           complete: bool) -> Node:
        """Create or refresh the node for a name the store just told us about."""
        attrs = attrs_from_object(info, kind, self.fuse)
        child = parent.children.get(name)
        if child is not None and child.kind != kind:
            if child.staging is not None and child.staging.dirty and not child.unlinked:
                return child  # not uploaded yet: what this mount wrote wins, as in _find
            self.inodes.detach(child)
            child = None
        if child is None:
            child = self.inodes.add(parent, name, attrs)
            child.complete = complete
        elif child.staging is None or not child.staging.dirty:
            same_version = child.etag == info.etag
            if complete or not (same_version and child.complete):
                child.attrs = attrs
                child.complete = complete
            if not same_version:
                child.link_target = None
        child.etag = info.etag
        child.checked_at = trio.current_time()
        parent.negative.pop(name, None)
        return child

    def _implied_dir(self, key: str) -> ObjectInfo:
        return ObjectInfo(key=key, size=0, mtime=self._start_ns / 1e9, etag="", metadata=None)

    async def _stat_remote(self, parent: Node, name: str, hint: str | None,
                           listed_prefix: bool = False) -> tuple[str, ObjectInfo] | None:
        """What the store holds under this name: a directory wins over a file of the
        same name (as in mountpoint-s3), since a directory cannot be shadowed safely.
        `listed_prefix`: a fresh listing showed keys under name/ (a directory, with or
        without a marker), trusted within the listing TTL as its absences are."""
        key = _join(parent, name)
        if hint == DIR:
            try:
                return DIR, await self.backend.head(key + "/")
            except NotFound:
                if listed_prefix:
                    return DIR, self._implied_dir(key + "/")
                page = await self.backend.list(key + "/", "/", limit=1)
                if page.objects or page.prefixes:
                    return DIR, self._implied_dir(key + "/")
        elif hint in (FILE, LINK):
            try:
                info = await self.backend.head(key)
                return kind_of(key, info.metadata), info
            except NotFound:
                pass
        head: ObjectInfo | None = None
        page_has_children = False
        marker: ObjectInfo | None = None

        async def _head() -> None:
            nonlocal head
            try:
                head = await self.backend.head(key)
            except NotFound:
                head = None

        async def _list() -> None:
            nonlocal page_has_children, marker
            page = await self.backend.list(key + "/", "/", limit=1)
            page_has_children = bool(page.objects or page.prefixes)
            if page.objects and page.objects[0].key == key + "/":
                marker = page.objects[0]

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_head)
                nursery.start_soon(_list)
        except ExceptionGroup as group:
            raise first_error(group) from None
        if page_has_children:
            if marker is not None and marker.metadata is None:
                try:
                    marker = await self.backend.head(key + "/")
                except NotFound:
                    marker = None
            return DIR, marker or self._implied_dir(key + "/")
        if head is not None:
            return kind_of(key, head.metadata), head
        return None

    async def _find(self, parent: Node, name: str) -> Node | None:
        """The live node for `name` in `parent`, consulting caches, then the store."""
        if not valid_name(name) or not _utf8(name):
            return None  # such a name cannot be stored, so it does not exist
        child = parent.children.get(name)
        if child is not None and (
                child.staging is not None or child.etag is None
                or (child.complete and self._fresh(child.checked_at, self.cache.metadata_ttl))):
            self.metadata_hits += 1
            return child
        if child is None:
            seen_absent = parent.negative.get(name)
            if seen_absent is not None and self._fresh(seen_absent, self.cache.negative_ttl):
                self.metadata_hits += 1
                return None
        hint: str | None = None
        listing = self._load_listing(parent)
        entry = None if listing is None else listing.entries.get(name)
        if listing is not None and self._fresh(listing.at, self.cache.listing_ttl):
            if entry is None:
                self.metadata_hits += 1
                if child is not None and self._holds_queued(child):
                    return child
                if child is not None:
                    self.inodes.detach(child)
                return None
            hint = entry[0]
        listed_prefix = hint == DIR and entry is not None and entry[1] is None
        remembered = self._remembered(_join(parent, name), hint)
        if remembered is not None and entry is not None and entry[1] is not None and (
                entry[1].etag != remembered[2].etag):
            remembered = None  # the listing knows a newer version
        if remembered is not None and remembered[0] < self.cache.metadata_ttl:
            self.metadata_hits += 1
            return self._child_from_object(parent, name, remembered[1], remembered[2],
                                           complete=True)
        # queued uploads inside: it exists, even if they land while the store is asked
        held = child is not None and self._holds_queued(child)
        self.metadata_misses += 1
        try:
            found = await self._stat_remote(parent, name, hint, listed_prefix)
        except Transient as e:
            # offline: the last thing we knew, however old, beats an error
            if remembered is not None:
                self._offline(_join(parent, name), e)
                return self._child_from_object(parent, name, remembered[1], remembered[2],
                                               complete=True)
            if entry is not None:
                self._offline(_join(parent, name), e)
                kind, listed = entry
                return self._child_from_object(
                    parent, name, kind, listed or self._implied_dir(_join(parent, name) + "/"),
                    complete=False)
            if child is not None and self.inodes.get(child.ino) is child:
                self._offline(_join(parent, name), e)
                return child
            raise
        if child is not None and self.inodes.get(child.ino) is not child:
            child = parent.children.get(name)  # dropped while we asked: never hand it out
        if found is None:
            if held or (child is not None and self._holds_queued(child)):
                # its queued contents landed while the store was asked: it is there
                return child if child is not None else self._child_from_object(
                    parent, name, DIR, self._implied_dir(_join(parent, name) + "/"),
                    complete=False)
            if child is not None:
                self.inodes.detach(child)
            self._listing_drop(parent, name)
            return None
        kind, info = found
        child = self._child_from_object(parent, name, kind, info, complete=True)
        if entry is None or entry[0] != kind:
            self._listing_put(parent, name, kind, info)  # news to the listing
        else:
            if listing is not None:
                listing.entries[name] = (kind, info)
            self._remember(kind, info)
        return child

    def _remember(self, kind: str, info: ObjectInfo) -> None:
        """Persist what a HEAD told us, for restarts and outages."""
        # a listing's attributes lack metadata (S3); a directory known only by its
        # prefix is complete as it is
        if self.meta is not None and (info.metadata is not None or kind == DIR):
            self.meta.put_object(info.key, kind, info)

    def _remembered(self, path: str, hint: str | None) -> tuple[float, str, ObjectInfo] | None:
        """(age, kind, info) of a persisted HEAD result for this path."""
        if self.meta is None:
            return None
        for key in ((path + "/", path) if hint != FILE and hint != LINK else (path,)):
            row = self.meta.object(key)
            if row is not None:
                return row
        return None

    async def _existing(self, parent_ino: int, name: str) -> tuple[Node, Node]:
        parent = self._dir_of(self.node(parent_ino))
        node = await self._find(parent, name)
        if node is None:
            raise FsError(errno.ENOENT, f"no such file: {_join(parent, name)}")
        return parent, node

    async def _stage(self, node: Node, *, load: bool = True) -> Staging:
        """Give a file its staging copy (caller holds node.lock), downloading the
        current content unless `load` is false (the caller truncates it anyway)."""
        if node.staging is not None:
            return node.staging
        staging = self._new_staging()
        try:
            if load and node.etag is not None:
                offset = 0
                while True:
                    # one version throughout, or Changed: never a copy torn across two
                    data = await self.backend.get_range(node.key, offset, DOWNLOAD_CHUNK,
                                                        node.etag or None)
                    if data:
                        os.pwrite(staging.fd, data, offset)
                        offset += len(data)
                    if len(data) < DOWNLOAD_CHUNK:
                        break
                node.attrs.size = offset
        except BaseException:
            staging.close()
            raise
        node.staging = staging
        return staging

    def _submit(self, node: Node, *, durable: bool = False) -> None:
        """Hand a file's staged content to the write-back queue: journaled when this
        returns (durably with `durable`), uploaded in the background."""
        staging = node.staging
        if staging is None or not staging.dirty or node.unlinked:
            return
        metadata = metadata_of(node.attrs)
        state = (staging.generation, metadata)
        if staging.queued == state and not durable:
            return  # journaled as it is
        self._journal(node.key, staging.path, node.etag, metadata, durable)
        staging.queued = state

    def _journal(self, key: str, staging: str, base: str | None, metadata: dict[str, str],
                 durable: bool = False) -> None:
        """Hand an upload to the write-back queue; on a full cache disk, clean cached
        blocks make room first (they can be fetched again, written data cannot)."""
        try:
            self.writeback.submit(key, staging, base, metadata, durable=durable)
        except OSError as e:
            if e.errno != errno.ENOSPC or not self._make_room(1 << 20):
                raise
            self.writeback.submit(key, staging, base, metadata, durable=durable)

    def _make_room(self, nbytes: int) -> bool:
        """A full cache disk: evict clean cached blocks (they can be fetched again,
        written data cannot). False if there were none."""
        return self.reader is not None and self.reader.blocks.release_space(nbytes) > 0

    async def _handover(self, node: Node, *, durable: bool = False) -> None:
        """`_submit` once no rename is moving the file or a directory above it (the
        queue entry would get the old name)."""
        while (moving := self._moving_above(node)) is not None:
            await moving.wait()
        self._submit(node, durable=durable)

    def _moving_above(self, node: Node) -> trio.Event | None:
        """The event of a rename moving this node or a directory above it."""
        if not self._moving:
            return None
        above: Node | None = node
        while above is not None:
            event = self._moving.get(above)
            if event is not None:
                return event
            above = above.parent
        return None

    def _at(self, path: str) -> Node | None:
        """The node at a path, if it is in memory."""
        node: Node | None = self.inodes.root
        for name in path.split("/") if path else []:
            if node is None:
                return None
            node = node.children.get(name)
        return node

    def _uploaded(self, path: str, info: ObjectInfo, done: bool) -> None:
        """The write-back queue stored a file (`done`: nothing newer is queued)."""
        node = self._at(path.rstrip("/"))
        if node is None:
            return
        if node.kind == DIR:
            if path.endswith("/") and self.writeback.get(path) is None:
                node.marker_queued = False
                node.etag = info.etag
                node.checked_at = trio.current_time()
                if node.parent is not None:
                    self._listing_put(node.parent, node.name, DIR, None)
                self.inodes.maybe_drop(node)
            return
        if node.staging is None:
            return
        self._stored_as(node, info)

    def _stored_as(self, node: Node, info: ObjectInfo) -> None:
        node.etag = node.page_cache_etag = info.etag
        node.checked_at = trio.current_time()
        node.complete = True
        staging = node.staging
        if staging is not None and self.writeback.get(node.key) is None and (
                staging.queued == (staging.generation, metadata_of(node.attrs))):
            staging.dirty = False  # unless changed since its last hand-over
            staging.queued = None
        if node.parent is not None:
            self._listing_put(node.parent, node.name, node.kind, info)
        self._drop_staging_if_clean(node)
        self.inodes.maybe_drop(node)

    def _conflicted(self, path: str, conflict: str, info: ObjectInfo) -> None:
        """Someone else changed the object while our version waited: ours went to
        `conflict` (beside it), and the file as this mount has it, open descriptors
        included, lives on under that name; the old name shows the store's version."""
        node = self._at(path)
        if node is None or node.parent is None or node.kind == DIR:
            return
        parent = node.parent
        if parent.children.get(node.name) is node:
            del parent.children[node.name]
        parent.changes += 1
        if parent.listing is not None:
            parent.listing.at = -math.inf  # list again: the old name is theirs now
        self._persist_change(parent, node.name, node.kind, None)
        node.name = conflict.rpartition("/")[2]
        old = parent.children.get(node.name)
        if old is not None:
            self.inodes.detach(old)
        parent.children[node.name] = node
        self._stored_as(node, info)

    def _drop_staging_if_clean(self, node: Node) -> None:
        if node.opens == 0 and node.staging is not None and (
                not node.staging.dirty or node.unlinked):
            node.staging.close()
            node.staging = None

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
        if node is None:
            return
        node.lookups = max(0, node.lookups - count)
        self.inodes.maybe_drop(node)

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if (node.kind == DIR or node.unlinked or node.staging is not None or node.etag is None
                or self._fresh(node.checked_at, self.cache.metadata_ttl)):
            self.metadata_hits += 1
            return node
        self.metadata_misses += 1
        try:
            info = await self.backend.head(node.key)
        except Transient as e:
            self._offline(node.path, e)
            return node  # offline: its last known attributes stand
        except NotFound:
            if node.opens > 0:
                return node  # still open here: its last known state stands
            if node.parent is not None:
                self._listing_drop(node.parent, node.name)
            self.inodes.detach(node)
            raise FsError(errno.ENOENT, f"{node.path} was removed from the store") from None
        assert node.parent is not None
        kind = kind_of(node.key, info.metadata)
        self._remember(kind, info)
        return self._child_from_object(node.parent, node.name, kind, info, complete=True)

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      mtime_ns: int | None = None) -> Node:
        self._check_writable()
        node = self.node(ino)
        if size is not None:
            if node.kind == DIR:
                raise FsError(errno.EISDIR, f"{node.path} is a directory")
            if node.kind == LINK:
                raise FsError(errno.EINVAL, "cannot truncate a symbolic link")
        async with node.lock:
            if size is not None:
                self._charge(node, size - node.attrs.size)
                try:
                    staging = await self._stage(node, load=size > 0)
                    os.ftruncate(staging.fd, size)
                except BaseException:
                    self._charge(node, node.attrs.size - size, check=False)
                    raise
                staging.dirty = True
                staging.generation += 1
                node.attrs.size = size
                node.attrs.mtime_ns = now_ns()
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
                await self._queue_marker(node)
            elif node.etag is not None:
                info = await self.backend.copy(node.key, node.key, metadata_of(node.attrs))
                node.etag = info.etag
            node.checked_at = trio.current_time()
        if node.opens == 0:
            await self._handover(node)  # a path truncate, or new attributes of a queued file
            self._drop_staging_if_clean(node)
        return node

    async def readlink(self, ino: int) -> str:
        node = self.node(ino)
        if node.kind != LINK:
            raise FsError(errno.EINVAL, f"{node.path} is not a symbolic link")
        if node.link_target is None:
            data = await self.backend.get_range(node.key, 0, max(node.attrs.size, 4096))
            node.link_target = os.fsdecode(data)
        return node.link_target

    def access(self, ino: int, mode: int, uid: int, gids: list[int]) -> bool:
        node = self.node(ino)
        if uid == 0:
            return not (mode & os.X_OK) or node.kind == DIR or bool(node.attrs.mode & 0o111)
        perms = stat.S_IMODE(node.attrs.mode)
        if uid == node.attrs.uid:
            bits = perms >> 6
        elif node.attrs.gid in gids:
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

    async def _fetch_listing(self, node: Node) -> Listing:
        """List a directory in the store; remember it in memory and on disk. A listing
        that raced with an own change of the directory is dropped: the cached one, which
        has the change, stays (stale, so the next access lists again)."""
        for _ in range(3):
            changes = node.changes
            objects, prefixes = await list_all(self.backend, node.key, "/")
            if node.changes == changes:
                break
            if node.listing is not None:
                return node.listing
        raced = node.changes != changes  # own changes kept landing: trust nothing absent
        entries: dict[str, tuple[str, ObjectInfo | None]] = {}
        for prefix in prefixes:
            name = prefix[len(node.key):-1]
            if valid_name(name):
                entries[name] = (DIR, None)
            else:
                self._warn_skip(prefix, "not a valid file name")
        for info in objects:
            if info.key == node.key:
                continue  # this directory's own marker
            name = info.key[len(node.key):]
            if not valid_name(name):
                self._warn_skip(info.key, "not a valid file name")
            elif name in entries:
                self._warn_skip(info.key, "a directory of the same name hides it")
            else:
                entries[name] = (kind_of(info.key, info.metadata), info)
        if raced:
            for name, child in node.children.items():
                if child.etag is not None and not child.unlinked and name not in entries:
                    entries[name] = (child.kind, None if child.kind == DIR else ObjectInfo(
                        key=child.key, size=child.attrs.size, mtime=child.attrs.mtime_ns / 1e9,
                        etag=child.etag, metadata=metadata_of(child.attrs)))
            listing = node.listing = Listing(entries=entries, at=-math.inf)  # list again
            return listing
        listing = node.listing = Listing(entries=entries, at=trio.current_time())
        if self.meta is not None:
            self.meta.put_listing(node.key, entries)
        for name, child in list(node.children.items()):
            if (name not in entries and child.etag is not None and child.staging is None
                    and not self._holds_queued(child)):
                self.inodes.detach(child)  # removed from the store by someone else
        return listing

    def _refresh_soon(self, node: Node) -> None:
        if node.refreshing or self.background is None:
            return
        node.refreshing = True

        async def refresh() -> None:
            try:
                await self._fetch_listing(node)
            except Transient as e:
                self._offline(f"the listing of /{node.path}", e)
            except Exception as e:  # a refresh is best effort; the next access retries
                log.warning("refreshing the listing of /%s failed: %s", node.path, e)
            finally:
                node.refreshing = False
        self.background.start_soon(refresh)

    async def _list_dir(self, node: Node) -> list[tuple[str, Node]]:
        listing = self._load_listing(node)
        if listing is None:
            self.metadata_misses += 1
            listing = await self._fetch_listing(node)
        elif not self._fresh(listing.at, self.cache.listing_ttl):
            if self.background is not None:
                self.metadata_hits += 1
                self._refresh_soon(node)  # serve the stale listing; the next access sees news
            else:
                self.metadata_misses += 1
                try:
                    listing = await self._fetch_listing(node)
                except Transient as e:
                    self._offline(f"the listing of /{node.path}", e)
        else:
            self.metadata_hits += 1
        result: dict[str, Node] = {}
        for name, (kind, listed) in listing.entries.items():
            known = node.children.get(name)
            if known is not None and known.kind == kind and (
                    known.staging is not None or listed is None or known.etag == listed.etag
                    or known.checked_at > listing.at):  # newer than the listing: keep it
                result[name] = known
            else:
                result[name] = self._child_from_object(
                    node, name, kind, listed or self._implied_dir(_join(node, name) + "/"),
                    complete=listed is not None and listed.metadata is not None)
        for name, known in node.children.items():
            if not known.unlinked and (known.etag is None or (
                    name not in result and self._holds_queued(known))):
                result.setdefault(name, known)  # created here, not in the store yet
        return sorted(result.items())

    async def opendir(self, ino: int) -> int:
        node = self._dir_of(self.node(ino))
        entries = await self._list_dir(node)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = DirHandle(node=node, entries=entries)
        return fh

    def readdir(self, fh: int, start: int) -> list[tuple[str, Node, int]]:
        """Entries from position `start`, each with the position after it."""
        try:
            handle = self._dirs[fh]
        except KeyError:
            raise FsError(errno.EBADF, f"unknown directory handle {fh}") from None
        # skip entries removed since opendir: the kernel must never learn a dead inode
        return [(name, node, i + 1) for i, (name, node) in enumerate(handle.entries)
                if i >= start and not node.unlinked and self.inodes.get(node.ino) is node]

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def _free_name(self, parent_ino: int, name: str) -> Node:
        """The parent directory, once `name` is known to be free in it."""
        self._check_writable()
        self._check_name(name)
        parent = self._dir_of(self.node(parent_ino))
        if await self._find(parent, name) is not None:
            raise FsError(errno.EEXIST, f"{_join(parent, name)} exists")
        return parent

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        parent = await self._free_name(parent_ino, name)
        now = now_ns()
        attrs = Attrs(mode=stat.S_IFDIR | stat.S_IMODE(mode), uid=uid, gid=gid, size=0,
                      mtime_ns=now, ctime_ns=now)
        node = self.inodes.add(parent, name, attrs)
        node.complete = True
        node.checked_at = trio.current_time()
        node.listing = Listing(entries={}, at=trio.current_time())  # new: known empty
        try:
            await self._queue_marker(node)
        except BaseException:
            self.inodes.detach(node)  # not journaled: it was never made
            raise
        self._listing_put(parent, name, DIR, None)
        node.lookups += 1
        return node

    async def fsyncdir(self, fh: int) -> None:
        """A directory whose marker is queued: journal it durably (and, with
        fsync=upload, wait for the store)."""
        try:
            node = self._dirs[fh].node
        except KeyError:
            raise FsError(errno.EBADF, f"unknown directory handle {fh}") from None
        up = self.writeback.get(node.key) if node.marker_queued else None
        if up is None:
            return
        self._journal(node.key, MARKER, None, metadata_of(node.attrs), durable=True)
        if self.fsync_upload:
            await self.writeback.wait_uploaded(node.key)

    async def _queue_marker(self, node: Node) -> None:
        """Journal a directory's marker (with its attributes) for upload: mkdir, chmod
        and utimes of a directory coalesce into one PUT after the debounce."""
        while (moving := self._moving_above(node)) is not None:
            await moving.wait()
        self._journal(node.key, MARKER, None, metadata_of(node.attrs))
        node.marker_queued = True

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
        queued = await self.writeback.discard(node.key)  # after an upload in flight
        node.marker_queued = False
        try:
            await self.backend.delete(node.key)
        except BaseException:
            if queued:  # rmdir failed: the directory stays, and so does its marker
                await self._queue_marker(node)
            raise
        for child in list(node.children.values()):
            self.inodes.detach(child)
        self._listing_drop(parent, name)
        self.inodes.detach(node)

    # --- files ----------------------------------------------------------------------

    def _open_handle(self, node: Node, writable: bool) -> int:
        node.opens += 1
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(node=node, writable=writable)
        return fh

    def keep_page_cache(self, node: Node) -> bool:
        """May the kernel keep cached pages of this file from an earlier open? Only if the
        object is the version they were read from (or written as) here."""
        keep = node.staging is not None or (
            node.etag is not None and node.etag == node.page_cache_etag)
        node.page_cache_etag = node.etag
        return keep

    async def open(self, ino: int, flags: int) -> int:
        node = self.node(ino)
        if node.kind == DIR:
            raise FsError(errno.EISDIR, f"{node.path} is a directory")
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self._check_writable()
        if writable and flags & os.O_TRUNC:
            async with node.lock:
                staging = await self._stage(node, load=False)
                self._charge(node, -node.attrs.size)
                os.ftruncate(staging.fd, 0)
                staging.dirty = True
                staging.generation += 1
                node.attrs.size = 0
                node.attrs.mtime_ns = node.attrs.ctime_ns = now_ns()
        return self._open_handle(node, writable)

    async def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int,
                     gid: int) -> tuple[int, Node]:
        self._check_writable()
        self._check_name(name)
        parent = self._dir_of(self.node(parent_ino))
        existing = await self._find(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise FsError(errno.EEXIST, f"{existing.path} exists")
            if existing.kind == DIR:
                raise FsError(errno.EISDIR, f"{existing.path} is a directory")
            existing.lookups += 1
            return await self.open(existing.ino, flags), existing  # O_CREAT alone keeps data
        self._charge(_join(parent, name), 0, 1)
        try:
            staging = self._new_staging()
        except BaseException:
            self._charge(_join(parent, name), 0, -1)
            raise
        now = now_ns()
        attrs = Attrs(mode=stat.S_IFREG | stat.S_IMODE(mode), uid=uid, gid=gid, size=0,
                      mtime_ns=now, ctime_ns=now)
        node = self.inodes.add(parent, name, attrs)
        node.complete = True
        node.staging = staging
        node.staging.dirty = True
        node.lookups += 1
        self._listing_put(parent, name, FILE, None)
        return self._open_handle(node, True), node

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        node = self.handle(fh).node
        staging = node.staging
        if staging is not None:
            return os.pread(staging.fd, size, offset)
        size = min(size, node.attrs.size - offset)
        if size <= 0:
            return b""
        try:
            if self.reader is not None and node.etag:
                return await self.reader.read(node.key, node.etag, node.attrs.size, offset, size,
                                              self.handle(fh).read_state)
            return await self.backend.get_range(node.key, offset, size, node.etag or None)
        except NotFound:
            raise FsError(errno.ESTALE, f"{node.path} was removed from the store") from None
        except Changed:
            node.checked_at = -math.inf  # the next stat or open looks it up again
            raise FsError(errno.ESTALE, f"{node.path} was replaced in the store") from None

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handle(fh)
        if not handle.writable:
            raise FsError(errno.EBADF, "file not open for writing")
        node = handle.node
        staging = node.staging
        if staging is None:
            async with node.lock:
                staging = await self._stage(node)
        growth = max(0, offset + len(data) - node.attrs.size)
        self._charge(node, growth)  # EDQUOT here writes nothing
        try:
            try:
                written = os.pwrite(staging.fd, data, offset)
            except OSError as e:
                if e.errno != errno.ENOSPC or not await trio.to_thread.run_sync(
                        self._make_room, max(len(data), 64 << 20)):
                    raise
                written = os.pwrite(staging.fd, data, offset)
        except BaseException:
            self._charge(node, -growth, check=False)
            raise
        if written < len(data):  # a short write grew less
            self._charge(node, max(0, offset + written - node.attrs.size) - growth,
                         check=False)
        staging.dirty = True
        staging.generation += 1
        node.attrs.size = max(node.attrs.size, offset + written)
        node.attrs.mtime_ns = node.attrs.ctime_ns = now_ns()
        return written

    async def flush(self, fh: int) -> None:
        handle = self.handle(fh)
        if handle.writable:
            await self._handover(handle.node)

    async def fsync(self, fh: int) -> None:
        node = self.handle(fh).node
        staging = node.staging
        if staging is None or not staging.dirty or node.unlinked:
            return
        await trio.to_thread.run_sync(os.fsync, staging.fd)
        await self._handover(node, durable=True)
        if self.fsync_upload:
            await self.writeback.wait_uploaded(node.key)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        node.opens -= 1
        if node.opens == 0:
            try:
                await self._handover(node)  # a writer that never flushed (or a failed flush)
            except OSError as e:  # nobody hears a release's error: say it in the log
                log.error("%s: closed with changes that cannot be queued for upload (kept "
                          "in %s until the next close or unmount): %s", node.path,
                          node.staging.path if node.staging else "?", e)
        self._drop_staging_if_clean(node)
        self.inodes.maybe_drop(node)

    async def unlink(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent, node = await self._existing(parent_ino, name)
        if node.kind == DIR:
            raise FsError(errno.EISDIR, f"{node.path} is a directory")
        async with node.lock:
            if node.opens > 0 and node.etag is not None:
                await self._stage(node)  # open files stay readable until closed
            await self.writeback.discard(node.key)  # after an upload in flight, if any
            if node.etag is not None:
                await self.backend.delete(node.key)
            self._charge(node, -node.attrs.size, -1)
            node.unlinked = True
        self._listing_drop(parent, name)
        self.inodes.detach(node)
        self._drop_staging_if_clean(node)

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int,
                      gid: int) -> Node:
        parent = await self._free_name(parent_ino, name)
        data = os.fsencode(target)
        now = now_ns()
        attrs = Attrs(mode=stat.S_IFLNK | 0o777, uid=uid, gid=gid, size=len(data),
                      mtime_ns=now, ctime_ns=now)
        self._charge(_join(parent, name), len(data), 1)
        try:
            info = await self.backend.put_bytes(_join(parent, name), data, metadata_of(attrs))
        except BaseException:
            self._charge(_join(parent, name), -len(data), -1)
            raise
        node = self._child_from_object(parent, name, LINK, info, complete=True)
        node.link_target = target
        self._listing_put(parent, name, LINK, info)
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
        if old_parent is new_parent and old_name == new_name:
            return
        while src in self._moving:  # one move of a node at a time
            await self._moving[src].wait()
        moved = self._moving[src] = trio.Event()  # closes below it wait for the new name
        try:
            await self._rename(old_parent, old_name, src, new_parent, new_name, flags)
        finally:
            del self._moving[src]
            moved.set()

    async def _rename(self, old_parent: Node, old_name: str, src: Node, new_parent: Node,
                      new_name: str, flags: int) -> None:
        dst = await self._find(new_parent, new_name)
        if dst is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, f"{dst.path} exists")
        new_path = _join(new_parent, new_name)
        # quotas first: a refused move must change nothing
        taken = await self._quota_rename(src, dst, new_path)
        try:
            await self._rename_objects(src, dst, new_path, new_parent)
        except BaseException:
            if taken is not None and self.quotas is not None:
                self.quotas.move(new_path, src.path, *taken, check=False)
                if dst is not None and dst.kind != DIR:
                    self.quotas.charge(new_path, dst.attrs.size, 1, check=False)
            raise
        if dst is not None:
            dst.unlinked = True
            self.inodes.detach(dst)
            if dst.kind != DIR and taken is None and self.quotas is not None:
                self.quotas.charge(new_path, -dst.attrs.size, -1, check=False)
        kind, etag = src.kind, src.etag
        self._listing_drop(old_parent, old_name)
        if old_parent.children.get(old_name) is src:
            del old_parent.children[old_name]
        src.name, src.parent = new_name, new_parent
        new_parent.children[new_name] = src
        info = None if kind == DIR or etag is None else ObjectInfo(
            key=new_path, size=src.attrs.size, mtime=src.attrs.mtime_ns / 1e9, etag=etag,
            metadata=metadata_of(src.attrs))
        self._listing_put(new_parent, new_name, kind, info)
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
                              new_parent: Node) -> None:
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
            moved = await self._move_tree(src.key, new_path + "/")
            for node in self._subtree(src):
                if node.kind != DIR and node.etag is not None:
                    info = moved.get(node.key)
                    node.etag = info.etag if info is not None else None
        else:
            if dst is not None and dst.kind == DIR:
                raise FsError(errno.EISDIR, f"{dst.path} is a directory")
            replaced: str | None = None
            if dst is not None:
                async with dst.lock:
                    if dst.opens > 0 and dst.etag is not None:
                        await self._stage(dst)  # it is about to be overwritten in the store
                    await self.writeback.discard(dst.key)  # its queued content is replaced
                    replaced = dst.etag
            await self._move_file(src, new_path, replaced)

    async def _move_file(self, src: Node, new_key: str, replaced: str | None) -> None:
        """Move a file's object; `replaced` is the version of the object it replaces at
        `new_key` (None: nothing is there)."""
        async with src.lock:
            old_key = src.key
            await self.writeback.settle(old_key)  # an upload in flight lands first
            stored = src.etag is not None
            if await self.writeback.rename(old_key, new_key, replaced):
                # its content is still to be uploaded: it will be, under the new name (the
                # journal says so first, so a crash now cannot bring the old name back)
                src.etag = replaced
                if stored:
                    try:
                        await self.backend.delete(old_key)
                    except BackendError as e:  # the move stands; the old copy stays
                        log.warning("renamed %s to %s, but its old object stays in the "
                                    "store: %s", old_key, new_key, e)
                return
            if not stored:
                src.etag = replaced  # created here, not flushed yet: nothing to move
                return
            info = await self.backend.copy(old_key, new_key)
            await self.backend.delete(old_key)
            src.etag = info.etag

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

    async def _move_tree(self, old_prefix: str, new_prefix: str) -> dict[str, ObjectInfo]:
        """Copy every key under a directory to its new name, then delete the old keys:
        a failure part-way leaves both copies, never neither. Returns the copies by the
        old keys."""
        objects, _ = await list_all(self.backend, old_prefix, "")
        limiter = trio.CapacityLimiter(COPY_PARALLEL)
        moved: dict[str, ObjectInfo] = {}

        async def _copy(key: str) -> None:
            async with limiter:
                moved[key] = await self.backend.copy(key, new_prefix + key[len(old_prefix):])

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
        path = path.strip("/")
        node: Node | None = self.inodes.root
        for name in path.split("/") if path else []:
            if node is None:
                break  # nothing of it in memory: the persistent caches are dropped below
            parent, node = node, node.children.get(name)
            parent.negative.pop(name, None)
            parent.changes += 1  # a listing in flight must not bring the old view back
            if parent.listing is not None and node is None:
                parent.listing.at = -math.inf  # it may not know the name yet
        if self.meta is not None:
            self.meta.forget_object(path)
            self.meta.forget_object(path + "/")
            if path:
                self.meta.forget_listing(path.rpartition("/")[0] + "/"
                                         if "/" in path else "")
            if recursive or not path:
                self.meta.forget_prefix(path + "/" if path else "")
            else:
                self.meta.forget_listing(path + "/")
        if self.reader is not None:
            blocks = self.reader.blocks
            blocks.drop(path)
            if recursive:
                blocks.drop_prefix(path + "/" if path else "")
        affected: list[Node] = []
        todo = [node] if node is not None else []
        while todo:
            current = todo.pop()
            affected.append(current)
            if current is not self.inodes.root:
                current.checked_at = -math.inf
                current.complete = False
            if current.listing is not None:
                current.listing.at = -math.inf
            current.changes += 1
            current.negative.clear()
            if current.parent is not None and current.parent.listing is not None:
                current.parent.listing.at = -math.inf
            if recursive:
                todo.extend(current.children.values())
        return affected

    def nearest(self, path: str) -> tuple[Node, str] | None:
        """For a path whose node is not in memory: the deepest directory on it that is,
        and the next name (the kernel may hold a "no such file" entry for it)."""
        parts = [p for p in path.strip("/").split("/") if p]
        node = self.inodes.root
        for name in parts:
            child = node.children.get(name)
            if child is None:
                return node, name
            node = child
        return None

    # --- lifecycle ------------------------------------------------------------------

    def restore(self) -> list[Upload]:
        """Put the files an earlier run left queued back in the tree (listed, readable,
        from their staging files) and queue their uploads again."""
        restored = []
        for up in self.writeback.restore():
            if up.staging == MARKER:
                node = self._restore_dirs(up.path.rstrip("/"))
                info = ObjectInfo(key=up.path, size=0, mtime=0.0, etag="", metadata=up.metadata)
                node.attrs = attrs_from_object(info, DIR, self.fuse)
                node.marker_queued = True
                restored.append(up)
                continue
            try:
                fd = os.open(up.staging, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                log.error("queued file %s lost its staging file %s (%s): dropped from the "
                          "queue", up.path, up.staging, e.strerror)
                self.writeback.forget(up.path)
                continue
            dirs, _, name = up.path.rpartition("/")
            parent = self._restore_dirs(dirs)
            size = os.fstat(fd).st_size
            info = ObjectInfo(key=up.path, size=size, mtime=0.0, etag=up.base or "",
                              metadata=up.metadata)
            old = parent.children.get(name)
            if old is not None:
                self.inodes.detach(old)
            node = self.inodes.add(parent, name, attrs_from_object(info, FILE, self.fuse))
            node.etag, node.complete, node.checked_at = up.base, True, trio.current_time()
            node.staging = Staging(path=up.staging, fd=fd, dirty=True,
                                   queued=(0, dict(up.metadata)))
            restored.append(up)
        if restored:
            log.info("%d file(s) from an earlier run are queued for upload", len(restored))
        return restored

    def _restore_dirs(self, path: str) -> Node:
        """The directory at `path`, with the nodes leading to it made where missing."""
        parent = self.inodes.root
        for part in path.split("/") if path else []:
            child = parent.children.get(part)
            if child is None or child.kind != DIR:
                child = self._child_from_object(
                    parent, part, DIR, self._implied_dir(_join(parent, part) + "/"),
                    complete=False)
                child.checked_at = -math.inf  # asked again; kept while it holds queued files
            parent = child
        return parent

    def _holds_queued(self, node: Node) -> bool:
        """A directory with queued uploads inside exists, whatever the store says yet."""
        return node.kind == DIR and bool(self.writeback.under(node.key))

    async def hand_over(self, path: str = "") -> list[Upload]:
        """Queue what is written under `path` (a file or a directory, "" for everything),
        files still open included; the queue entries under it, for the caller to upload
        now and wait on (`Writeback.flush`)."""
        prefix = path.strip("/")

        def under(p: str) -> bool:
            return not prefix or p == prefix or p.startswith(prefix + "/")

        for node in self.inodes.all():
            if node.staging is not None and under(node.path):
                await self._handover(node)
        return [up for up in self.writeback.pending() if under(up.path.rstrip("/"))]

    async def shutdown(self) -> list[str]:
        """Queue what is still open and changed, then upload the whole queue (the caller
        bounds the wait); the paths still pending."""
        for node in self.inodes.all():
            self._submit(node)
        await self.writeback.drain()
        return [up.path for up in self.writeback.pending()]
