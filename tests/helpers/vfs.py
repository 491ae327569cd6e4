"""Building a Vfs for kernel-free tests the way the daemon composes one: its write-back
queue journals in a directory of its own and uploads in the test's nursery."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from stormount.backends import Backend, ListPage, list_all
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig, FuseConfig, WritebackConfig
from stormount.errors import FsError, NotFound
from stormount.vfs.fs import Vfs
from stormount.vfs.nodes import ROOT_INO
from stormount.writeback import Journal, Writeback
from tests.helpers.faults import OPERATIONS

# uploads start as soon as a file is handed over, so tests observe the store promptly
QUICK = WritebackConfig(debounce=0)


class VfsFactory:
    """Makes Vfs instances under `root`; their uploaders run in `nursery` (None: nobody
    uploads, the queue only journals). `close()` closes every journal."""

    def __init__(self, root: Path, nursery: trio.Nursery | None) -> None:
        self.root = root
        self.nursery = nursery
        self.made: list[Vfs] = []

    def __call__(self, backend: Backend, *, fuse: FuseConfig | None = None,
                 cache: CacheConfig | None = None, writeback: WritebackConfig | None = None,
                 blocks: BlockCache | None = None, meta: MetaStore | None = None,
                 directory: Path | None = None, run: bool = True) -> Vfs:
        """A Vfs over `backend`; give `directory` to reuse an earlier one's journal and
        staging files (a restart)."""
        directory = directory or self.root / f"vfs-{uuid.uuid4().hex[:8]}"
        (directory / "staging").mkdir(parents=True, exist_ok=True)
        wb = Writeback(backend, Journal(str(directory / "journal.sqlite3")),
                       writeback or QUICK)
        vfs = Vfs(backend, fuse or FuseConfig(), cache or CacheConfig(),
                  str(directory / "staging"), wb, blocks, meta)
        vfs.directory = directory  # type: ignore[attr-defined]
        if run and self.nursery is not None:
            self.nursery.start_soon(wb.run)
        self.made.append(vfs)
        return vfs

    async def settle(self) -> None:
        """Until every Vfs made here has stored what it queued."""
        for vfs in self.made:
            failing = await vfs.writeback.flush()
            assert not failing, [(up.path, up.last_error) for up in failing]

    def close(self) -> None:
        for vfs in self.made:
            vfs.writeback.journal.close()


# --- what a user does and sees ---------------------------------------------------------

UID, GID = 1000, 1000


async def write(vfs: Vfs, name: str, data: bytes, parent: int = ROOT_INO) -> int:
    """Create or overwrite `name` and close it; its inode."""
    try:
        node = await vfs.lookup(parent, name)
        fh = await vfs.open(node.ino, os.O_WRONLY | os.O_TRUNC)
    except FsError:
        fh, node = await vfs.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    await vfs.write(fh, 0, data)
    await vfs.flush(fh)
    await vfs.release(fh)
    return node.ino


async def stored(backend: Backend, key: str) -> bytes | None:
    try:
        info = await backend.head(key)
    except NotFound:
        return None
    return await backend.get_range(key, 0, info.size) if info.size else b""


async def keys(backend: Backend) -> list[str]:
    objects, _ = await list_all(backend, "", "")
    return sorted(o.key for o in objects)


async def read(vfs: Vfs, path: str) -> bytes:
    node = vfs.node(ROOT_INO)
    for part in path.split("/"):
        node = await vfs.lookup(node.ino, part)
    fh = await vfs.open(node.ino, os.O_RDONLY)
    try:
        return await vfs.read(fh, 0, 1 << 20)
    finally:
        await vfs.release(fh)


async def at(t0: float, seconds: float) -> None:
    await trio.sleep_until(t0 + seconds)


class S3LikeListings:
    """A store whose listings carry no metadata, as S3's ListObjectsV2 does; it counts
    the requests that reach the store, by operation (what crosses the wire), logs them,
    and can make each take `rtt` seconds (with trio's clock) and run `hooks[op](*args)`
    first."""

    def __init__(self, backend: Backend, rtt: float = 0.0) -> None:
        self._backend = backend
        self.url = backend.url
        self.rtt = rtt
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[object, ...]] = []
        self.hooks: dict[str, Callable[..., Awaitable[None]]] = {}

    async def _before(self, op: str, *args: Any) -> None:
        self.requests[op] += 1
        self.log.append((op, *args))
        if op in self.hooks:
            await self.hooks[op](*args)
        if self.rtt:
            await trio.sleep(self.rtt)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._backend, name)
        if name not in OPERATIONS:
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self._before(name, *args)
            return await target(*args, **kwargs)
        return call

    async def list(self, prefix: str, delimiter: str = "/", token: str | None = None,
                   limit: int = 1000) -> ListPage:
        await self._before("list", prefix, delimiter, token, limit)
        page = await self._backend.list(prefix, delimiter, token, limit)
        return ListPage([replace(o, metadata=None) for o in page.objects], page.prefixes,
                        page.token)
