"""Building a Vfs for kernel-free tests the way the daemon composes one: its write-back
queue journals in a directory of its own and uploads in the test's nursery."""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from stormount.backends import Backend
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig, FuseConfig, WritebackConfig
from stormount.vfs.fs import Vfs
from stormount.writeback import Journal, Writeback

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
