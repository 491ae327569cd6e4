"""Pinned files and folders: kept whole in the block cache, exempt from eviction, and
their listings and attributes in the metadata cache, so they read with the store
unreachable.

A pin is recorded in the block cache's pin table (it outlives restarts). Each pin is
fetched in the background: its tree walked as a reader would walk it (listings and
attributes land in the metadata cache), every block of every file fetched at the
version the store has. The walk is done again every `listing_ttl` and at each start,
so that new files and new versions are fetched too.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, field

import trio

from stormount.cache.blocks import BlockCache
from stormount.errors import FsError, StormountError
from stormount.vfs.attrs import DIR, FILE
from stormount.vfs.fs import Vfs
from stormount.vfs.nodes import Node

log = logging.getLogger(__name__)


@dataclass
class PinState:
    path: str  # "" for the whole mount, else "a/b"
    files: int = 0
    bytes: int = 0
    cached_bytes: int = 0
    done: bool = False  # the last walk fetched everything
    walked_at: float | None = None  # wall clock
    error: str | None = None
    wake: trio.Event = field(default_factory=trio.Event)

    def describe(self) -> dict[str, object]:
        return {"path": "/" + self.path, "files": self.files, "bytes": self.bytes,
                "cached_bytes": self.cached_bytes, "done": self.done,
                "walked_at": self.walked_at, "error": self.error}


def _ident(path: str, kind: str) -> str:
    """The block cache's pin of a path: a file's key, or a folder's prefix."""
    return path if kind == FILE else (f"{path}/" if path else "")


class Pins:
    def __init__(self, vfs: Vfs, blocks: BlockCache, interval: float) -> None:
        # listing_ttl may be 0 ("always ask"): a walk a minute at most, not a busy loop
        self.vfs, self.blocks, self.interval = vfs, blocks, max(interval, 60.0)
        self.states: dict[str, PinState] = {}
        self._changed = trio.Event()
        for ident in blocks.pinned():  # pins of earlier runs
            path = ident.rstrip("/")
            self.states[path] = PinState(path)

    async def pin(self, path: str) -> PinState:
        node = await self.vfs.ns.resolve(path)  # ENOENT for a path that is not there
        if node.kind not in (FILE, DIR):
            raise FsError(errno.EINVAL, f"/{path} is a symbolic link: pin what it points to")
        await trio.to_thread.run_sync(self.blocks.pin, _ident(path, node.kind))
        state = self.states.setdefault(path, PinState(path))
        state.done = False
        self._changed.set()
        return state

    async def unpin(self, path: str) -> bool:
        if path not in self.states:
            return False
        state = self.states.pop(path)
        for ident in (path, f"{path}/" if path else ""):
            await trio.to_thread.run_sync(self.blocks.unpin, ident)
        state.wake.set()
        return True

    async def run(self) -> None:
        """Walk every pin now, then whenever one is added, and every `interval`."""
        while True:
            self._changed = trio.Event()
            for path, state in list(self.states.items()):
                if self.states.get(path) is state:
                    await self._walk(state)
            with trio.move_on_after(self.interval):
                await self._changed.wait()

    async def _walk(self, state: PinState) -> None:
        state.files = state.bytes = state.cached_bytes = 0
        state.error = None
        try:
            await self._fetch(await self.vfs.ns.resolve(state.path), state)
        except StormountError as e:  # the store is away, say: tried again next round
            state.error = str(e)
            log.warning("pin /%s: not all of it is cached yet: %s", state.path, e)
        else:
            state.done = True
            log.info("pin /%s: %d file(s), %d bytes cached", state.path, state.files,
                     state.bytes)
        state.walked_at = time.time()

    async def _fetch(self, node: Node, state: PinState) -> None:
        if self.states.get(state.path) is not state:
            return  # unpinned meanwhile
        if node.kind == DIR:
            for _, child in await self.vfs.ns.list_dir(node):
                # its attributes as facts, persisted: it lists and stats offline too
                try:
                    child = await self.vfs.ns.known(child)
                except FsError as e:
                    if e.errno != errno.ENOENT:
                        raise
                    continue  # removed since the listing
                await self._fetch(child, state)
            return
        if node.kind != FILE:
            return
        node = await self.vfs.getattr(node.ino)  # attributes of the current version
        state.files += 1
        state.bytes += node.attrs.size
        reader, etag = self.vfs.reader, node.etag
        if reader is None or not etag or node.staging is not None:
            state.cached_bytes += node.attrs.size  # local (not uploaded yet): nothing to fetch
            return
        size, bs = node.attrs.size, self.blocks.block_size
        for index in range(-(-size // bs)):
            if not self.blocks.has(node.key, etag, index):
                await reader.fetch_block(node.key, etag, index, size, offer=False)
                if not self.blocks.has(node.key, etag, index):
                    raise StormountError(f"/{node.path}: the block cache has no room to keep "
                                         "it (raise [cache] max_size, or unpin something)")
            state.cached_bytes += min(bs, size - index * bs)

    def describe(self) -> list[dict[str, object]]:
        return [state.describe() for _, state in sorted(self.states.items())]
