"""Directory operations: open, list, make, sync and remove directories."""

from __future__ import annotations

import errno
import logging
import stat

import trio

from stormount.errors import FsError, NotFound
from stormount.vfs.attrs import DIR, Attrs, metadata_of, now_ns
from stormount.vfs.core import RESERVED_NAME, Core
from stormount.vfs.nodes import Listing, Node
from stormount.writeback import MARKER

log = logging.getLogger(__name__)


class Dirs:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def opendir(self, ino: int) -> int:
        node = self.core.dir_of(self.core.node(ino))
        entries = await self.core.ns.list_dir(node)
        if node is self.core.inodes.root and any(name == RESERVED_NAME for name, _ in entries):
            # another client's object `.stormount`: its lookup says ENOENT, so it is not
            # listed either
            self.core.ns.warn_skip(RESERVED_NAME, "the name is reserved for stormount's own use")
            entries = [(name, child) for name, child in entries if name != RESERVED_NAME]
        return self.core.handles.opendir(node, entries)

    def readdir(self, fh: int, start: int) -> list[tuple[str, Node, int]]:
        """Entries from position `start`, each with the position after it."""
        handle = self.core.handles.dir(fh)
        out = []
        for i, (name, node) in enumerate(handle.entries):
            if i < start:
                continue
            if node.unlinked or self.core.inodes.get(node.ino) is not node:
                # replaced since opendir (the store said it is of another kind), or
                # removed: the kernel must never learn a dead inode
                replaced = handle.node.children.get(name)
                if replaced is None and not node.unlinked:
                    # only forgotten (stored, clean, unreferenced, e.g. its upload
                    # landed meanwhile): the entry stands
                    replaced = self.core.inodes.revive(node)
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
        self.core.handles.closedir(fh)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        parent = await self.core.free_name(parent_ino, name, offline=True)
        now = now_ns()
        attrs = Attrs(mode=stat.S_IFDIR | stat.S_IMODE(mode), uid=uid, gid=gid, size=0,
                      mtime_ns=now, ctime_ns=now)
        node = self.core.inodes.add(parent, name, attrs)
        node.complete = True
        node.checked_at = trio.current_time()
        node.listing = Listing(entries={}, at=trio.current_time())  # new: known empty
        try:
            await self.core.writer.queue_marker(node)
        except BaseException:
            self.core.inodes.detach(node)  # not journaled: it was never made
            raise
        self.core.ns.added(parent, name, DIR, None)
        await self.core.touch_dir(parent)
        node.lookups += 1
        return node

    async def fsyncdir(self, fh: int) -> None:
        """A directory whose marker is queued: journal it durably (and, with
        fsync=upload, wait for the store)."""
        node = self.core.handles.dir(fh).node
        up = self.core.writeback.get(node.key) if node.marker_queued else None
        if up is None:
            return
        self.core.writer.journal(node.key, MARKER, None, metadata_of(node.attrs), durable=True)
        if self.core.fsync_upload:
            await self.core.writeback.wait_uploaded(node.key)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self.core.check_writable()
        parent, node = await self.core.existing(parent_ino, name)
        self.core.dir_of(node)
        if not await self.core.is_empty(node):
            raise FsError(errno.ENOTEMPTY, f"{node.path} is not empty")
        if not node.marker_queued:
            await self._check_marker_empty(node)
        queued = await self.core.writeback.discard(node.key)  # after an upload in flight
        node.marker_queued = False
        try:
            await self.core.backend.delete(node.key)
        except BaseException:
            if queued:  # rmdir failed: the directory stays, and so does its marker
                await self.core.writer.queue_marker(node)
            raise
        for child in list(node.children.values()):
            self.core.inodes.detach(child)
        self.core.ns.removed(parent, name)
        self.core.inodes.detach(node)
        await self.core.touch_dir(parent)

    async def _check_marker_empty(self, node: Node) -> None:
        """A directory whose marker object holds data (another tool wrote some to
        `dir/`) is not removed: deleting the marker would delete that data unseen."""
        try:
            info = await self.core.backend.head(node.key)
        except NotFound:
            return
        if info.size:
            log.error("rmdir of /%s refused: its marker object %s holds %d bytes, which "
                      "removing the directory would delete", node.path, node.key, info.size)
            raise FsError(errno.ENOTEMPTY, f"the marker {node.key} of {node.path} holds "
                          f"{info.size} bytes")
