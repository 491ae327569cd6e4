"""Making and removing entries other than directories: files, symbolic links,
fifos, sockets and devices (hard links are refused)."""

from __future__ import annotations

import errno
import logging
import os
import stat

from stormount.errors import FsError
from stormount.vfs.attrs import DIR, FILE, Attrs, metadata_of, now_ns
from stormount.vfs.core import Core
from stormount.vfs.files import Files
from stormount.vfs.names import join
from stormount.vfs.nodes import Node

log = logging.getLogger(__name__)


class Entries:
    def __init__(self, core: Core, files: Files) -> None:
        self.core = core
        self.files = files

    async def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int,
                     gid: int) -> tuple[int, Node]:
        self.core.check_writable()
        self.core.check_name(name)
        parent = self.core.dir_of(self.core.node(parent_ino))
        self.core.check_unreserved(parent, name)
        existing = await self.core.to_make(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise FsError(errno.EEXIST, f"{existing.path} exists")
            if existing.kind == DIR:
                raise FsError(errno.EISDIR, f"{existing.path} is a directory")
            fh = await self.files.open(existing.ino, flags)  # O_CREAT alone keeps data
            existing.lookups += 1
            return fh, existing
        self.core.charge(join(parent, name), 0, 1)
        try:
            staging = self.core.writer.new_staging()
        except BaseException:
            self.core.charge(join(parent, name), 0, -1)
            raise
        now = now_ns()
        attrs = Attrs(mode=stat.S_IFREG | stat.S_IMODE(mode), uid=uid, gid=gid, size=0,
                      mtime_ns=now, ctime_ns=now)
        node = self.core.inodes.add(parent, name, attrs)
        node.complete = True
        node.staging = staging
        node.staging.dirty = True
        node.lookups += 1
        self.core.ns.added(parent, name, FILE, None)
        fh = self.core.handles.open(node, True)
        await self.core.touch_dir(parent)
        return fh, node

    async def unlink(self, parent_ino: int, name: str) -> None:
        self.core.check_writable()
        parent, node = await self.core.existing(parent_ino, name)
        if node.kind == DIR:
            raise FsError(errno.EISDIR, f"{node.path} is a directory")
        async with node.lock:
            if node.opens > 0 and node.etag is not None:
                await self.core.writer.stage(node)  # open files stay readable until closed
            await self.core.writeback.discard(node.key)  # after an upload in flight, if any
            if node.etag is not None:
                await self.core.backend.delete(node.key)
            self.core.charge(node, -node.attrs.size, -1)
            node.unlinked = True
        self.core.ns.removed(parent, name)
        self.core.inodes.detach(node)
        self.core.writer.drop_staging_if_clean(node)
        await self.core.touch_dir(parent)

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
            await self.files.flush(fh)
            await self.files.release(fh)
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
        parent = await self.core.free_name(parent_ino, name)
        now = now_ns()
        attrs = Attrs(mode=mode, uid=uid, gid=gid, size=len(data), mtime_ns=now, ctime_ns=now,
                      rdev=rdev)
        path = join(parent, name)
        self.core.charge(path, len(data), 1)
        try:
            info = await self.core.backend.put_bytes(path, data, metadata_of(attrs))
        except BaseException:
            self.core.charge(path, -len(data), -1)
            raise
        node = self.core.ns.child_from_object(parent, name, attrs.kind, info, complete=True)
        node.attrs = attrs  # as asked (the store's clock may differ from ours)
        node.link_target = target
        self.core.ns.added(parent, name, attrs.kind, info)
        await self.core.touch_dir(parent)
        node.lookups += 1
        return node

    async def link(self, ino: int, parent_ino: int, name: str) -> Node:
        raise FsError(errno.EPERM, "hard links cannot be stored as objects")
