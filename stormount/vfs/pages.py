"""Blocks fetched from the store, handed to the kernel's page cache of the file.

A block the reader fetches (read-ahead, or a block read whole) is stored in the pages
of the file's inode (FUSE notify_store), so the kernel answers the following reads of
that range itself, without a FUSE request each.

What may be stored is what the kernel would have cached had it read the pages itself:
the version its cached pages hold (`Node.page_cache_etag`, set at open), of a file
nobody writes through this mount, never past its end (a store there would grow the
file in the kernel). Every change that breaks this (an open for writing, a version
change at open, a truncate, an invalidate) first calls `settle(node)`, which makes the
stores still queued for the node void and waits until one in progress is done: a store
cannot land after the change.

The kernel calls block while a page they touch is locked by a read the daemon has not
answered yet, so they run in one worker thread, never on the event loop and never in a
request's own path."""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

import trio

from stormount.vfs.attrs import FILE
from stormount.vfs.nodes import Node
from stormount.vfs.reader import Bytes, Reader

log = logging.getLogger(__name__)

QUEUED_MAX = 8 * 1024 * 1024  # bytes waiting for the kernel (memory); beyond, not offered
# a range given again only after this long: a read of it through the daemon since then
# means the kernel dropped those pages (memory, fadvise, an invalidation) and wants them
AGAIN_AFTER = 1.0
RECENT_MAX = 4096


class KernelPages:
    def __init__(self, store: Callable[[int, int, Bytes], None], reader: Reader | None = None,
                 node_at: Callable[[str], Node | None] = lambda key: None) -> None:
        self._store = store  # (inode, offset, data): blocking, the kernel's notify_store
        self._node_at = node_at  # the node of an object key, if in memory
        self._block_size = 0 if reader is None else reader.blocks.block_size
        self._reader_blocks = None if reader is None else reader.blocks
        if reader is not None:  # told of the blocks it fetches and the ones it finds
            reader.on_block = self._fetched
            reader.on_hit = self._hit
        self._lock = threading.Lock()  # a store's last check and the store, as one
        self._limiter = trio.CapacityLimiter(1)  # one kernel call at a time
        self._busy: dict[int, int] = {}  # inode -> its stores in the worker thread
        self._recent: OrderedDict[tuple[str, int], float] = OrderedDict()  # (key, offset)
        self.queued = 0  # bytes offered, not yet stored or dropped
        self.stored_bytes = 0
        self.enabled = True  # off when the kernel says it cannot (ENOSYS)
        self.background: trio.Nursery | None = None  # set by the daemon

    def _fetched(self, key: str, version: str, index: int, data: Bytes, size: int) -> None:
        """A block came from the store: the kernel's pages of its file may take it."""
        node = self._node_at(key)
        if node is not None and node.kind == FILE:
            self.offer(node, version, index * self._block_size, data, len(data), size)

    def _hit(self, key: str, version: str, index: int, size: int) -> None:
        """A read was answered from a cached block: the kernel lacks those pages (never
        had them, or dropped them), so it is given the whole block, read in the worker.
        (On every cache hit: what was given just now is skipped before any lookup.)"""
        offset = index * self._block_size
        if not self.enabled or trio.current_time() - self._recent.get(
                (key, offset), -AGAIN_AFTER) < AGAIN_AFTER:
            return
        node = self._node_at(key)
        if node is not None and node.kind == FILE and self._reader_blocks is not None:
            blocks, bs = self._reader_blocks, self._block_size
            self.offer(node, version, offset,
                       lambda: blocks.read(key, version, index, 0, bs), bs, size)

    @staticmethod
    def _may_hold(node: Node, version: str) -> bool:
        return (node.page_cache_etag == version and node.staging is None
                and node.writers == 0 and node.opens > 0 and not node.unlinked)

    def offer(self, node: Node, version: str, offset: int,
              data: Bytes | Callable[[], bytes | None], length: int, size: int) -> None:
        """Store `length` bytes of `version` at `offset` (the object has `size` bytes) in
        the node's pages, in the background, if they may hold them. `data` is the bytes,
        or what reads them (from the block cache, in the worker thread)."""
        end = min(offset + length, size)
        if (not self.enabled or self.background is None or end <= offset
                or not self._may_hold(node, version) or self.queued >= QUEUED_MAX):
            return
        now = trio.current_time()
        where = (node.key, offset)
        if now - self._recent.get(where, -AGAIN_AFTER) < AGAIN_AFTER:
            return  # given just now (or under way): those pages are the kernel's
        self._recent[where] = now
        self._recent.move_to_end(where)
        if len(self._recent) > RECENT_MAX:
            self._recent.popitem(last=False)
        self.queued += end - offset
        self.background.start_soon(self._push, node, version, node.page_epoch, offset, data,
                                   end - offset)

    async def _push(self, node: Node, version: str, epoch: int, offset: int,
                    data: Bytes | Callable[[], bytes | None], length: int) -> None:
        ino = node.ino
        try:
            async with self._limiter:
                if node.page_epoch != epoch or not self._may_hold(node, version):
                    return
                self._busy[ino] = self._busy.get(ino, 0) + 1
                try:
                    await trio.to_thread.run_sync(self._push_now, node, version, epoch,
                                                  offset, data, length,
                                                  abandon_on_cancel=False)
                finally:
                    self._busy[ino] -= 1
                    if not self._busy[ino]:
                        del self._busy[ino]
        finally:
            self.queued -= length

    def _push_now(self, node: Node, version: str, epoch: int, offset: int,
                  data: Bytes | Callable[[], bytes | None], length: int) -> None:
        if callable(data):
            loaded = data()
            if loaded is None:
                return  # no longer cached
            data = loaded
        data = data[:length]  # never past the end of the object
        with self._lock:
            # settle() may have run since the check on the event loop
            if node.page_epoch != epoch or not self._may_hold(node, version):
                return
            try:
                self._store(node.ino, offset, data)
            except OSError as e:
                if e.errno == errno.ENOSYS:
                    self.enabled = False
                    log.info("the kernel does not take stored pages (%s): reads go "
                             "through the daemon", e)
                elif e.errno != errno.ENOENT:  # ENOENT: the kernel forgot the inode
                    log.debug("pages of %s not stored: %s", node.path, e)
                return
            self.stored_bytes += len(data)

    async def settle(self, node: Node) -> None:
        """Stores offered for the node until now never land; returns once one under way
        is done. Call before anything that changes what its pages may hold."""
        node.page_epoch += 1
        if self._busy.get(node.ino):
            await trio.to_thread.run_sync(self._wait_for_store)
        else:
            await trio.lowlevel.checkpoint()

    def _wait_for_store(self) -> None:
        with self._lock:
            pass
