"""Writing files: the staging copy a file is written in, and its hand-over to the
write-back queue; what the queue reports back (stored, conflict); and the queue's state
at start and at unmount.

A file is written in a local staging file (`CACHE_DIR/staging/`), a whole copy of it,
downloaded first when an existing file is changed. Its content is handed to the queue
held while a writer may still change it (a close of one of its descriptors), final on
the release of its last writable descriptor or on fsync (see stormount/writeback/).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import tempfile
from collections.abc import Callable

import trio

from stormount.backends.base import Backend, ObjectInfo
from stormount.cache.blocks import BlockCache
from stormount.config import FuseConfig
from stormount.errors import FsError, first_error
from stormount.ranges import Delta
from stormount.vfs.attrs import DIR, FILE, attrs_from_object, metadata_of, now_ns
from stormount.vfs.namespace import Namespace
from stormount.vfs.nodes import Node, Staging
from stormount.writeback import CLOSED, FINAL, MARKER, WRITING, Upload, Writeback

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK = 8 * 1024 * 1024  # ranges a staging copy is fetched in, without a cache
STAGE_PARALLEL = 8  # of them at once


class Writer:
    """Staging copies and their hand-over to the write-back queue, for the Vfs."""

    def __init__(self, backend: Backend, writeback: Writeback, ns: Namespace,
                 staging_dir: str, blocks: BlockCache | None,
                 charge: Callable[..., None]) -> None:
        self.backend = backend
        self.writeback = writeback  # the upload queue; it reports back to us
        writeback.on_uploaded = self.uploaded
        writeback.on_conflict = self.conflicted
        self.ns = ns
        self.inodes = ns.inodes
        self.staging_dir = staging_dir
        self.blocks = blocks  # clean cached blocks make room on a full disk
        self._charge = charge  # the quotas' count of a change (EDQUOT when it does not fit)
        self.moving: dict[Node, trio.Event] = {}  # nodes a rename is moving

    @property
    def fuse(self) -> FuseConfig:
        return self.ns.fuse  # the configuration in force (SIGHUP changes it)

    # --- changing a file's content -----------------------------------------------------

    async def write(self, node: Node, offset: int, data: bytes) -> int:
        """Write through a handle open for writing; the bytes written."""
        staging = node.staging
        if staging is None:
            async with node.lock:
                staging = await self.stage(node)
        growth = max(0, offset + len(data) - node.attrs.size)
        self._charge(node, growth)  # EDQUOT here writes nothing
        try:
            try:
                written = os.pwrite(staging.fd, data, offset)
            except OSError as e:
                if e.errno != errno.ENOSPC or not await trio.to_thread.run_sync(
                        self.make_room, max(len(data), 64 << 20)):
                    raise
                written = os.pwrite(staging.fd, data, offset)
        except BaseException:
            self._charge(node, -growth, check=False)
            raise
        if written < len(data):  # a short write grew less
            self._charge(node, max(0, offset + written - node.attrs.size) - growth,
                         check=False)
        if staging.delta is not None:  # (a write past the end fills the gap with zeros)
            staging.delta.ranges.add(min(offset, node.attrs.size), offset + written)
        self.changing(node, staging)
        node.attrs.size = max(node.attrs.size, offset + written)
        node.attrs.mtime_ns = node.attrs.ctime_ns = now_ns()
        return written

    async def truncate(self, node: Node, size: int, *, writing: bool = False) -> None:
        """Cut or extend a file to `size` (caller holds node.lock); `writing`: through
        a handle about to be opened for writing (O_TRUNC)."""
        self._charge(node, size - node.attrs.size)
        try:
            staging = await self.stage(node, load=size > 0)
            os.ftruncate(staging.fd, size)
        except BaseException:
            self._charge(node, node.attrs.size - size, check=False)
            raise
        if staging.delta is not None and size > node.attrs.size:  # zeros
            staging.delta.ranges.add(node.attrs.size, size)
        self.changing(node, staging, writing)
        node.attrs.size = size
        node.attrs.mtime_ns = node.attrs.ctime_ns = now_ns()

    async def fsync(self, node: Node, upload: bool) -> None:
        """Make what is written durable on local disk and queue it as final; with
        `upload` (fsync=upload), wait until the store has it."""
        staging = node.staging
        if staging is None or not staging.dirty or node.unlinked:
            return
        await trio.to_thread.run_sync(os.fsync, staging.fd)
        await self.handover(node, durable=True)
        if upload:
            await self.writeback.wait_uploaded(node.key)

    # --- staging and hand-over ----------------------------------------------------------
    def new_staging(self) -> Staging:
        fd, path = tempfile.mkstemp(dir=self.staging_dir, prefix="stage-")
        return Staging(path=path, fd=fd)

    async def stage(self, node: Node, *, load: bool = True) -> Staging:
        """Give a file its staging copy (caller holds node.lock), downloading the
        current content unless `load` is false (the caller truncates it anyway)."""
        if node.staging is not None:
            return node.staging
        staging = self.new_staging()
        try:
            if load and node.etag is not None:
                await self._download(node, staging)
                if node.etag:
                    staging.delta = Delta(node.etag, node.attrs.size)
        except BaseException:
            staging.close()
            raise
        node.staging = staging
        return staging

    async def _download(self, node: Node, staging: Staging) -> None:
        """The stored version's bytes into a new staging file: the blocks the cache
        holds of it from there, the rest from the store, STAGE_PARALLEL ranges at once,
        each conditional on the version (Changed, never a copy torn across two)."""
        key, version, size = node.key, node.etag or None, node.attrs.size
        chunk = self.blocks.block_size if self.blocks is not None else DOWNLOAD_CHUNK
        limiter = trio.CapacityLimiter(STAGE_PARALLEL)

        async def fetch(index: int) -> None:
            start = index * chunk
            length = min(chunk, size - start)
            async with limiter:
                data = None
                if self.blocks is not None and version:
                    data = self.blocks.read(key, version, index, 0, length)
                if data is None or len(data) != length:
                    data = await self.backend.get_range(key, start, length, version)
                if len(data) != length:  # the object is not what its attributes say
                    raise FsError(errno.ESTALE, f"/{key} changed while it was staged")
                os.pwrite(staging.fd, data, start)

        try:
            async with trio.open_nursery() as nursery:
                for index in range(-(-size // chunk)):
                    nursery.start_soon(fetch, index)
        except BaseExceptionGroup as group:  # the caller hears one error, as from a GET
            error = first_error(group)
            if isinstance(error, trio.Cancelled):
                raise
            raise error from None

    def changing(self, node: Node, staging: Staging, writing: bool = False) -> None:
        """A file's content changes: if a writer holds it open (`writing`: the change
        comes through a handle about to be made) and it was queued as final (synced, or
        flushed by request), its upload waits for the last writer's close again, so
        that a crash meanwhile never uploads it half-written."""
        staging.dirty = True
        staging.generation += 1
        if ((writing or node.writers > 0) and staging.held != WRITING
                and staging.queued is not None and not node.unlinked):
            self.writeback.hold(node.key, staging.path)
            staging.held = WRITING

    def make_room(self, nbytes: int) -> bool:
        """A full cache disk: evict clean cached blocks (they can be fetched again,
        written data cannot). False if there were none."""
        return self.blocks is not None and self.blocks.release_space(nbytes) > 0

    async def handover(self, node: Node, *, durable: bool = False,
                        held: int = FINAL) -> None:
        """`submit` once no rename is moving the file or a directory above it (the
        queue entry would get the old name)."""
        while (moving := self.moving_above(node)) is not None:
            await moving.wait()
        self.submit(node, durable=durable, held=held)

    def moving_above(self, node: Node) -> trio.Event | None:
        """The event of a rename moving this node or a directory above it."""
        if not self.moving:
            return None
        above: Node | None = node
        while above is not None:
            event = self.moving.get(above)
            if event is not None:
                return event
            above = above.parent
        return None

    def submit(self, node: Node, *, durable: bool = False, held: int = FINAL) -> None:
        """Hand a file's staged content to the write-back queue: journaled when this
        returns (durably with `durable`); uploaded in the background unless `held` (a
        writer may still change it: it waits for the last writer's close)."""
        staging = node.staging
        if staging is None or not staging.dirty or node.unlinked:
            return
        metadata = metadata_of(node.attrs)
        state = (staging.generation, metadata)
        if staging.queued == state and not durable:
            if staging.held == held:
                return  # journaled as it is
            if staging.held == CLOSED and held == FINAL:
                # the release after the last close: the row as the close journaled it
                # is uploaded after a crash too, so only the queue needs telling
                self.writeback.release(node.key, staging.path)
                staging.held = FINAL
                return
        delta = staging.delta
        if delta is not None and delta.etag != node.etag:
            delta = None  # staged from another version than the one it replaces
        self.journal(node.key, staging.path, node.etag, metadata, durable, held,
                     None if delta is None else delta.copy())
        staging.queued, staging.held = state, held

    def journal(self, key: str, staging: str, base: str | None, metadata: dict[str, str],
                 durable: bool = False, held: int = FINAL, delta: Delta | None = None
                 ) -> None:
        """Hand an upload to the write-back queue; on a full cache disk, clean cached
        blocks make room first (they can be fetched again, written data cannot)."""
        try:
            self.writeback.submit(key, staging, base, metadata, durable=durable, held=held,
                                  delta=delta)
        except OSError as e:
            if e.errno != errno.ENOSPC or not self.make_room(1 << 20):
                raise
            self.writeback.submit(key, staging, base, metadata, durable=durable, held=held,
                                  delta=delta)

    async def queue_marker(self, node: Node) -> None:
        """Journal a directory's marker (with its attributes) for upload: mkdir, chmod
        and utimes of a directory coalesce into one PUT after the debounce."""
        while (moving := self.moving_above(node)) is not None:
            await moving.wait()
        self.journal(node.key, MARKER, None, metadata_of(node.attrs))
        node.marker_queued = True

    def uploaded(self, path: str, info: ObjectInfo, done: bool) -> None:
        """The write-back queue stored a file (`done`: nothing newer is queued)."""
        node = self.ns.inodes.at(path.rstrip("/"))
        if node is None:
            return
        if node.kind == DIR:
            if path.endswith("/") and self.writeback.get(path) is None:
                node.marker_queued = False
                self.ns.set_version(node, info)
                node.checked_at = trio.current_time()
                if node.parent is not None:
                    self.ns.stored(node.parent, node.name, DIR, info)
                self.inodes.maybe_drop(node)
            return
        if node.staging is None:
            return
        self.stored_as(node, info)

    def stored_as(self, node: Node, info: ObjectInfo) -> None:
        self.ns.set_version(node, info)
        node.page_cache_etag = info.etag
        node.checked_at = trio.current_time()
        node.complete = True
        staging = node.staging
        if staging is not None and self.writeback.get(node.key) is None and (
                staging.queued == (staging.generation, metadata_of(node.attrs))):
            staging.dirty = False  # unless changed since its last hand-over
            staging.queued, staging.held = None, FINAL
            # the staged content is the stored version now: later changes differ from it
            staging.delta = Delta(info.etag, info.size) if info.etag else None
        if node.parent is not None:
            self.ns.stored(node.parent, node.name, node.kind, info)
        self.drop_staging_if_clean(node)
        self.inodes.maybe_drop(node)

    def conflicted(self, path: str, conflict: str, info: ObjectInfo) -> None:
        """Someone else changed the object while our version waited: ours went to
        `conflict` (beside it), and the file as this mount has it, open descriptors
        included, lives on under that name; the old name shows the store's version."""
        node = self.ns.inodes.at(path)
        if node is None or node.parent is None or node.kind == DIR:
            return
        parent = node.parent
        if parent.children.get(node.name) is node:
            del parent.children[node.name]
        self.ns.list_again(parent)  # the old name is theirs now
        node.name = conflict.rpartition("/")[2]
        old = parent.children.get(node.name)
        if old is not None:
            self.inodes.detach(old)
        parent.children[node.name] = node
        self.stored_as(node, info)

    def drop_staging_if_clean(self, node: Node) -> None:
        if node.opens == 0 and node.staging is not None and (
                not node.staging.dirty or node.unlinked):
            node.staging.close()
            node.staging = None

    def restore(self) -> list[Upload]:
        """Put the files an earlier run left queued back in the tree (listed, readable,
        from their staging files) and queue their uploads again."""
        restored = []
        for up in self.writeback.restore():
            if up.staging == MARKER:
                node = self._restore_dirs(up.path.rstrip("/"))
                info = ObjectInfo(key=up.path, size=0, mtime=0.0, etag="", metadata=up.metadata)
                node.attrs = attrs_from_object(info, DIR, self.fuse)
                node.complete = True  # as this mount made it
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
                child = self.ns.dir_from_prefix(parent, part)
                child.checked_at = -math.inf  # asked again; kept while it holds queued files
            parent = child
        return parent

    async def hand_over(self, path: str = "") -> list[Upload]:
        """Queue what is written under `path` (a file or a directory, "" for everything),
        files still open included; the queue entries under it, for the caller to upload
        now and wait on (`Writeback.flush`)."""
        prefix = path.strip("/")

        def under(p: str) -> bool:
            return not prefix or p == prefix or p.startswith(prefix + "/")

        for node in self.inodes.all():
            if node.staging is not None and under(node.path):
                await self.handover(node)
        return [up for up in self.writeback.pending() if under(up.path.rstrip("/"))]

    async def shutdown(self) -> list[str]:
        """Queue what is still open and changed, then upload the whole queue (the caller
        bounds the wait); the paths still pending."""
        for node in self.inodes.all():
            self.submit(node)
        await self.writeback.drain()
        return [up.path for up in self.writeback.pending()]

