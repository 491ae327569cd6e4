"""The read path for stored objects: data comes through the on-disk block cache, served
inline on a hit (no thread hop), fetched one whole block per ranged GET on a miss, and
read ahead in the background once a handle reads sequentially.

A random read that misses fetches only the range asked for, the first time its block is
touched: reading 4 KiB of a large object transfers about 4 KiB. A block touched again is
worth having, so the second miss fetches and caches the whole block.

Read-ahead asks for `span` bytes (several blocks, in aligned spans) per GET: fewer,
larger requests cost less per byte than one per block, and half as many requests (a cold
sequential read of 512 MiB from moto went from 0.35-0.47x to 0.56-0.57x of boto3's
10-thread download in the same run). A reader that catches up with a span still waiting
for a slot fetches that span itself, not its one block.

Memory stays bounded whatever the file size: a block lives in memory only between its
GET and its write to the cache (the blocks of one GET are views of its bytes), and at
most IN_FLIGHT bytes of read-ahead GETs run at once (3 x 8 MiB; one 64 MiB block).
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from stormount.backends.base import Backend
from stormount.cache.blocks import BlockCache
from stormount.errors import FsError

log = logging.getLogger(__name__)
MiB = 1024 * 1024
Bytes = bytes | memoryview  # a block, or a block's view of a larger GET
TOUCHED_MAX = 4096  # blocks remembered as read once at random
SPAN = 8 * MiB  # bytes a read-ahead GET asks for (whole blocks, at least one)
# the kernel's read-ahead sends several reads of a stream at once (1 MiB each), and they
# reach us in any order: a read this close to where the stream's last one ended goes on
STREAM_SLACK = 4 * MiB
IN_FLIGHT = 24 * MiB  # read-ahead bytes in flight at most (whatever the block size)


@dataclass(eq=False)
class ReadState:
    """Per-handle access pattern: where a sequential reader will read next, and how far
    ahead it is worth fetching."""

    next_offset: int = -1
    window: int = 0


@dataclass(eq=False)
class _Fetch:
    done: trio.Event = field(default_factory=trio.Event)
    data: Bytes | None = None  # None when the fetch failed or was cancelled


class Reader:
    def __init__(self, backend: Backend, blocks: BlockCache, *, min_window: int = 4 * MiB,
                 max_window: int = 64 * MiB, prefetch_parallel: int | None = None,
                 span: int = SPAN) -> None:
        self.backend = backend
        self.blocks = blocks
        self.min_window = min_window
        self.max_window = max_window
        self._per_get = max(1, span // blocks.block_size)  # blocks per read-ahead GET
        # GETs of read-ahead at once: IN_FLIGHT bytes (3 spans of 8 MiB; one GET of a
        # 64 MiB block), so memory does not grow with the block size or the window
        parallel = prefetch_parallel or max(1, IN_FLIGHT // (self._per_get * blocks.block_size))
        self._prefetch_limiter = trio.CapacityLimiter(parallel)
        self._inflight: dict[tuple[str, str, int], _Fetch] = {}
        self._queued: set[tuple[str, str, int]] = set()  # prefetches waiting for a slot
        self._touched: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self.background: trio.Nursery | None = None  # set by the daemon; None: no prefetch
        # told of each whole block fetched: (key, version, index, data, object size)
        self.on_block: Callable[[str, str, int, Bytes, int], None] | None = None
        # told of each block a read found in the cache: (key, version, index, object size)
        self.on_hit: Callable[[str, str, int, int], None] | None = None

    async def read(self, key: str, version: str, object_size: int, offset: int, size: int,
                   state: ReadState) -> bytes:
        end = min(offset + size, object_size)
        if end <= offset:
            return b""
        bs = self.blocks.block_size
        # a stream goes on where the last read ended; once it is one (a window open),
        # its reads may come in a different order
        sequential = offset == state.next_offset or (
            state.window > 0 and abs(offset - state.next_offset) <= STREAM_SLACK)
        parts: list[Bytes] = []
        for index in range(offset // bs, (end - 1) // bs + 1):
            base = index * bs
            lo, hi = max(offset, base) - base, min(end, base + bs) - base
            data: Bytes | None = self.blocks.read(key, version, index, lo, hi - lo)
            # a sequential stream is served by the kernel's own read-ahead: giving it
            # blocks as well copied its bytes twice (1.8-2.4 against 2.7-4.7 CPU s/GiB)
            if (data is not None and len(data) == hi - lo and self.on_hit is not None
                    and not sequential):
                self.on_hit(key, version, index, object_size)
            if data is None or len(data) < hi - lo:
                if sequential or self._touched_before((key, version, index)):
                    block = await self.fetch_block(key, version, index, object_size,
                                                   offer=not sequential)
                    data = block[lo:hi]
                else:
                    data = await self.backend.get_range(key, base + lo, hi - lo, version)
                if len(data) < hi - lo:
                    # the object shrank under us: a short read would look like the end of
                    # the file to the kernel; the caller must look the file up again
                    raise FsError(errno.ESTALE, f"{key} changed while being read")
            parts.append(data)
        self._read_ahead(key, version, object_size, end, state, sequential)
        return b"".join(parts)

    def _touched_before(self, ident: tuple[str, str, int]) -> bool:
        if ident in self._touched:
            del self._touched[ident]
            return True
        self._touched[ident] = None
        if len(self._touched) > TOUCHED_MAX:
            self._touched.popitem(last=False)
        return False

    async def fetch_block(self, key: str, version: str, index: int, object_size: int, *,
                          offer: bool = True) -> Bytes:
        """One whole block from the store, shared by every reader that wants it at once,
        then written to the cache (a failed write only means "not cached"); `offer`: to
        `on_block` as well (not for a sequential stream)."""
        ident = (key, version, index)
        while (pending := self._inflight.get(ident)) is not None:
            await pending.done.wait()
            if pending.data is not None:
                return pending.data
            # that fetch failed (its caller got the error) or was cancelled: try ourselves
        count = 1
        if ident in self._queued:  # its read-ahead waits for a slot: the rest of its span
            end = min((index // self._per_get + 1) * self._per_get,
                      -(-object_size // self.blocks.block_size))
            while index + count < end and (key, version, index + count) in self._queued \
                    and (key, version, index + count) not in self._inflight \
                    and not self.blocks.has(key, version, index + count):
                count += 1
        return (await self._fetch_blocks(key, version, index, count, object_size, offer))[0]

    async def _fetch_blocks(self, key: str, version: str, first: int, count: int,
                            object_size: int, offer: bool) -> list[Bytes]:
        """Blocks first..first+count-1 (none in flight) in one GET; each is given to
        the readers waiting for it at once, then written to the cache."""
        bs = self.blocks.block_size
        fetches = []
        for index in range(first, first + count):  # (none is in flight: checked just now)
            fetch = self._inflight[(key, version, index)] = _Fetch()
            fetches.append(fetch)
        try:
            start = first * bs
            length = min(count * bs, object_size - start)
            # conditional on the version: bytes of another version never land under
            # this version's name (the store answers Changed instead)
            data = await self.backend.get_range(key, start, length, version)
            # views, not copies: one GET's bytes are in memory once
            pieces: list[Bytes] = [data] if count == 1 else [
                memoryview(data)[n * bs:(n + 1) * bs] for n in range(count)]
            for fetch, piece in zip(fetches, pieces, strict=True):
                fetch.data = piece
                fetch.done.set()  # readers waiting for it go on; the cache writes follow
            for n, piece in enumerate(pieces):
                index = first + n
                if len(piece) != min(bs, object_size - index * bs):
                    break  # shorter: the object changed under us; do not cache
                if offer and self.on_block is not None:
                    self.on_block(key, version, index, piece, object_size)
                try:
                    await trio.to_thread.run_sync(self.blocks.put, key, version, index, piece)
                except OSError as e:
                    log.debug("block %d of %s not cached: %s", index, key, e)
            return pieces
        finally:
            for index, fetch in enumerate(fetches, first):
                del self._inflight[(key, version, index)]
                fetch.done.set()

    def _read_ahead(self, key: str, version: str, object_size: int, end: int,
                    state: ReadState, sequential: bool) -> None:
        if sequential:
            state.window = min(max(2 * state.window, self.min_window), self.max_window)
            state.next_offset = max(state.next_offset, end)  # (a late read of the stream)
        else:
            state.window = 0  # random access: fetch only what is asked for
            state.next_offset = end
        if not state.window or self.background is None:
            return
        bs, per_get = self.blocks.block_size, self._per_get
        last = min(end + state.window, object_size) - 1
        blocks = -(-object_size // bs)
        # in aligned spans of `per_get` blocks, so that a window moving on by a block at
        # a time still asks for whole spans
        for span in range(end // bs // per_get, last // bs // per_get + 1):
            indexes = [i for i in range(span * per_get, min((span + 1) * per_get, blocks))
                       if (key, version, i) not in self._queued
                       and (key, version, i) not in self._inflight
                       and not self.blocks.has(key, version, i)]
            if indexes:
                self._queued.update((key, version, i) for i in indexes)
                self.background.start_soon(self._prefetch_span, key, version, indexes,
                                           object_size)

    async def _prefetch_span(self, key: str, version: str, indexes: list[int],
                             object_size: int) -> None:
        try:
            async with self._prefetch_limiter:
                # what another reader fetched or cached meanwhile is left out; what is
                # left is fetched in consecutive runs
                left = indexes
                while todo := [i for i in left if (key, version, i) not in self._inflight
                               and not self.blocks.has(key, version, i)]:
                    count = 1
                    while count < len(todo) and todo[count] == todo[0] + count:
                        count += 1
                    left = todo[count:]
                    await self._fetch_blocks(key, version, todo[0], count, object_size,
                                             offer=False)  # read-ahead: a stream
        except Exception as e:  # a prefetch is a guess: the reader will retry and see it
            log.debug("prefetch of blocks %s of %s failed: %s", indexes, key, e)
        finally:
            self._queued.difference_update((key, version, index) for index in indexes)

    def prefetch_object(self, key: str, version: str, size: int) -> None:
        """Fetch a small object whole (its first block) in the background."""
        ident = (key, version, 0)
        if (self.background is None or ident in self._queued or ident in self._inflight
                or self.blocks.has(*ident)):
            return
        self._queued.add(ident)
        self.background.start_soon(self._prefetch, ident, size)

    async def _prefetch(self, ident: tuple[str, str, int], object_size: int) -> None:
        try:
            async with self._prefetch_limiter:
                if ident in self._inflight or self.blocks.has(*ident):
                    return
                await self.fetch_block(*ident, object_size)
        except Exception as e:  # a prefetch is a guess: the reader will retry and see it
            log.debug("prefetch of block %d of %s failed: %s", ident[2], ident[0], e)
        finally:
            self._queued.discard(ident)
