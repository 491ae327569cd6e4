"""Open files: open, read, write, flush, fsync and release, the kernel's page cache
across opens, and fetching ahead the small files of a directory read one by one."""

from __future__ import annotations

import errno
import logging
import math
import os
from collections import OrderedDict

from stormount.errors import Changed, FsError, NotFound
from stormount.vfs.attrs import DIR, FILE, SPECIAL
from stormount.vfs.core import Core
from stormount.vfs.names import join
from stormount.vfs.nodes import Node
from stormount.writeback import CLOSED

log = logging.getLogger(__name__)

# files read whole one after another in a directory (cp -r, tar c, rsync): the next
# ones are fetched ahead, this many, of at most SIBLING_MAX bytes, AHEAD_MAX in all
SIBLINGS_AHEAD = 16
SIBLING_MAX = 1024 * 1024
AHEAD_MAX = 8 * 1024 * 1024
WALKS_MAX = 1024  # directories whose order of reading is followed


class Files:
    def __init__(self, core: Core) -> None:
        self.core = core
        # per directory: the last file opened for reading there, and how many were
        # opened in the order of their names
        self._walks: OrderedDict[int, tuple[str, int]] = OrderedDict()

    async def keep_page_cache(self, node: Node, flags: int) -> bool:
        """May the kernel keep cached pages of this file from an earlier open? Only if the
        object is the version they were read from (or written as) here. (Called as a
        file is opened: blocks stored in its pages for another version, or before a
        writer came, never land after.)"""
        keep = node.staging is not None or (
            node.etag is not None and node.etag == node.page_cache_etag)
        node.page_cache_etag = node.etag
        if not keep or (flags & os.O_ACCMODE) != os.O_RDONLY:
            await self.core.settle_pages(node)
        return keep

    async def open(self, ino: int, flags: int) -> int:
        node = await self.core.known(ino)
        if node.kind == DIR:
            raise FsError(errno.EISDIR, f"{node.path} is a directory")
        if node.kind == SPECIAL:  # (the kernel opens fifos and devices itself)
            raise FsError(errno.ENXIO, f"{node.path} is a fifo, socket or device")
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self.core.check_writable()
        if writable and flags & os.O_TRUNC:
            async with node.lock:
                await self.core.writer.truncate(node, 0, writing=True)
        return self.core.handles.open(node, writable)

    def _walked(self, node: Node) -> None:
        """A stored file was read whole: when the files of its directory are being read
        so, one after another in the order of their names, fetch the next small ones
        ahead, so that a cp -r, tar or rsync of many small files waits for one GET at a
        time no more."""
        parent = node.parent
        if parent is None or self.core.reader is None or parent.listing is None:
            return
        last = self._walks.pop(parent.ino, None)
        count = last[1] + 1 if last is not None and last[0] < node.name else 1
        self._walks[parent.ino] = (node.name, count)
        if len(self._walks) > WALKS_MAX:
            self._walks.popitem(last=False)
        if count < 2:
            return  # one file read is no walk yet
        listing = parent.listing
        limit = min(self.core.reader.blocks.block_size, SIBLING_MAX)
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
                self.core.reader.prefetch_object(join(parent, name), etag, size)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        node = self.core.handle(fh).node
        staging = node.staging
        if staging is not None:
            return os.pread(staging.fd, size, offset)
        handle = self.core.handle(fh)
        version, total = (handle.version, handle.size) if handle.version else (
            node.etag or None, node.attrs.size)
        size = min(size, total - offset)
        if size <= 0:
            return b""
        handle.read_to = max(handle.read_to, offset + size)
        try:
            if self.core.reader is not None and version:
                return await self.core.reader.read(node.key, version, total, offset, size,
                                              handle.read_state)
            return await self.core.backend.get_range(node.key, offset, size, version)
        except NotFound:
            raise FsError(errno.ESTALE, f"{node.path} was removed from the store") from None
        except Changed:
            node.checked_at = -math.inf  # the next stat or open looks it up again
            raise FsError(errno.ESTALE, f"{node.path} was replaced in the store") from None

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.core.handle(fh)
        if not handle.writable:
            raise FsError(errno.EBADF, "file not open for writing")
        return await self.core.writer.write(handle.node, offset, data)

    async def flush(self, fh: int) -> None:
        """A close of a descriptor (of possibly several: dup, fork): what is written is
        journaled, so close() reports a journal that cannot take it, and held: another
        descriptor may still write, and the upload waits for the release of the last.
        A crash before that release uploads this content at the next start, unless a
        write came after it."""
        handle = self.core.handle(fh)
        if handle.writable:
            await self.core.writer.handover(handle.node, held=CLOSED)

    async def fsync(self, fh: int) -> None:
        await self.core.writer.fsync(self.core.handle(fh).node, self.core.fsync_upload)

    async def release(self, fh: int) -> None:
        handle = self.core.handles.close(fh)
        if handle is None:
            return
        node = handle.node
        if (not handle.writable and node.staging is None and node.etag
                and 0 < node.attrs.size <= handle.read_to):
            self._walked(node)
        if handle.writable and node.writers == 0:
            try:
                await self.core.writer.handover(node)  # its last writer is done: upload it
            except OSError as e:  # nobody hears a release's error: say it in the log
                log.error("%s: closed with changes that cannot be queued for upload (kept "
                          "in %s until the next close or unmount): %s", node.path,
                          node.staging.path if node.staging else "?", e)
        self.core.writer.drop_staging_if_clean(node)
        self.core.inodes.maybe_drop(node)
