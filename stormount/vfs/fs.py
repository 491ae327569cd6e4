"""Filesystem semantics over an object store, without FUSE.

Every method takes and returns plain values (inode numbers, str names, Node objects)
and raises StormountError subclasses carrying the errno the caller should see, so the
whole layer is testable without the kernel and fuse/ops.py stays a thin adapter.

`Vfs` is the one interface fuse/ops.py, the control socket and the daemon use: the
shared state and checks (core.py), lookups and attributes (here), and the operations of
directories (dirs.py), open files (files.py), other entries (entries.py) and rename
(moves.py), each in the module that owns it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import trio

from stormount.backends.base import Backend
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig, FuseConfig
from stormount.errors import FsError, NotFound, Transient
from stormount.vfs.attrs import DIR, LINK, SPECIAL, kind_of, now_ns, shown, with_attrs
from stormount.vfs.core import RESERVED_NAME, Core
from stormount.vfs.dirs import Dirs
from stormount.vfs.entries import Entries
from stormount.vfs.files import Files
from stormount.vfs.moves import RENAME_EXCHANGE, RENAME_NOREPLACE, Moves
from stormount.vfs.names import NAME_MAX
from stormount.vfs.nodes import Node
from stormount.vfs.quota import Quotas
from stormount.writeback import Upload, Writeback

__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "RESERVED_NAME", "StatFs", "Vfs"]


@dataclass(frozen=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int


class Vfs(Core):
    def __init__(self, backend: Backend, fuse: FuseConfig, cache: CacheConfig,
                 staging_dir: str, writeback: Writeback, blocks: BlockCache | None = None,
                 meta: MetaStore | None = None, quotas: Quotas | None = None) -> None:
        super().__init__(backend, fuse, cache, staging_dir, writeback, blocks, meta, quotas)
        self.dirs = Dirs(self)
        self.files = Files(self)
        self.entries = Entries(self, self.files)
        self.moves = Moves(self)

    # --- lookups and attributes -----------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Node:
        """Resolve a name and count a kernel reference; FsError(ENOENT) when absent."""
        _, node = await self.existing(parent_ino, name)
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
        self.check_writable()
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

    async def recount_quotas(self) -> None:
        """Count quota usage anew: the files in the store under the quota folders, page
        by page, with files not uploaded yet (or being written) at their local size."""
        if self.quotas is None:
            return
        prefixes = [f"{top}/" if top else "" for top in self.quotas.outermost()]
        await self.quotas.recount(self.sizes_under(prefixes, self.inodes.all()))

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
        return self.inodes.nearest(path)

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

    # --- directories (dirs.py) ---------------------------------------------

    async def opendir(self, ino: int) -> int:
        return await self.dirs.opendir(ino)

    def readdir(self, fh: int, start: int) -> list[tuple[str, Node, int]]:
        return self.dirs.readdir(fh, start)

    def nlink(self, node: Node) -> int:
        return self.dirs.nlink(node)

    def releasedir(self, fh: int) -> None:
        return self.dirs.releasedir(fh)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        return await self.dirs.mkdir(parent_ino, name, mode, uid, gid)

    async def fsyncdir(self, fh: int) -> None:
        return await self.dirs.fsyncdir(fh)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        return await self.dirs.rmdir(parent_ino, name)


    # --- open files (files.py) ---------------------------------------------

    async def keep_page_cache(self, node: Node, flags: int) -> bool:
        return await self.files.keep_page_cache(node, flags)

    async def open(self, ino: int, flags: int) -> int:
        return await self.files.open(ino, flags)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return await self.files.read(fh, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        return await self.files.write(fh, offset, data)

    async def flush(self, fh: int) -> None:
        return await self.files.flush(fh)

    async def fsync(self, fh: int) -> None:
        return await self.files.fsync(fh)

    async def release(self, fh: int) -> None:
        return await self.files.release(fh)


    # --- files, links and special files (entries.py) -----------------------

    async def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int,
                     gid: int) -> tuple[int, Node]:
        return await self.entries.create(parent_ino, name, mode, flags, uid, gid)

    async def unlink(self, parent_ino: int, name: str) -> None:
        return await self.entries.unlink(parent_ino, name)

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int,
                      gid: int) -> Node:
        return await self.entries.symlink(parent_ino, name, target, uid, gid)

    async def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int,
                    gid: int) -> Node:
        return await self.entries.mknod(parent_ino, name, mode, rdev, uid, gid)

    async def link(self, ino: int, parent_ino: int, name: str) -> Node:
        return await self.entries.link(ino, parent_ino, name)


    # --- rename (moves.py) -------------------------------------------------

    async def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int,
                     new_name: str, flags: int = 0) -> None:
        return await self.moves.rename(old_parent_ino, old_name, new_parent_ino, new_name,
                                       flags)
