"""rename: moving a file's object, or a directory's whole tree of keys, with the
quotas, the upload queue and the open handles following."""

from __future__ import annotations

import errno
import logging

import trio

from stormount.backends.base import ObjectInfo, list_all
from stormount.errors import BackendError, FsError
from stormount.vfs.attrs import DIR, carries_attrs, metadata_of, now_ns, with_ctime
from stormount.vfs.core import Core
from stormount.vfs.names import join
from stormount.vfs.nodes import Node

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
COPY_PARALLEL = 16


class Moves:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int,
                     new_name: str, flags: int = 0) -> None:
        self.core.check_writable()
        self.core.check_name(new_name)
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        old_parent, src = await self.core.existing(old_parent_ino, old_name)
        new_parent = self.core.dir_of(self.core.node(new_parent_ino))
        self.core.check_unreserved(new_parent, new_name)
        if old_parent is new_parent and old_name == new_name:
            return
        while src in self.core.writer.moving:  # one move of a node at a time
            await self.core.writer.moving[src].wait()
        moved = self.core.writer.moving[src] = trio.Event()  # closes below it wait for the new name
        try:
            await self._rename(old_parent, old_name, src, new_parent, new_name, flags)
        finally:
            del self.core.writer.moving[src]
            moved.set()
            # open files read their objects under the new names (a copy may be a new version)
            self.core.handles.follow(self.core.subtree(src))

    async def _rename(self, old_parent: Node, old_name: str, src: Node, new_parent: Node,
                      new_name: str, flags: int) -> None:
        dst = await self.core.ns.lookup(new_parent, new_name)
        if dst is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, f"{dst.path} exists")
        new_path = join(new_parent, new_name)
        # quotas first: a refused move must change nothing
        taken = await self._quota_rename(src, dst, new_path)
        ctime = src.attrs.ctime_ns
        src.attrs.ctime_ns = now_ns()  # a rename changes the entry: its copy carries that
        moving = (src.key, new_path + "/") if src.kind == DIR else None
        if moving is not None:
            self.core.ns.begin_move(*moving)  # no listing of either place is believed meanwhile
        try:
            info = await self._rename_objects(src, dst, new_path, new_parent)
        except BaseException:
            src.attrs.ctime_ns = ctime
            if taken is not None and self.core.quotas is not None:
                self.core.quotas.move(new_path, src.path, *taken, check=False)
                if dst is not None and dst.kind != DIR:
                    self.core.quotas.charge(new_path, dst.attrs.size, 1, check=False)
            raise
        finally:
            if moving is not None:
                self.core.ns.end_move(*moving)
        if dst is not None:
            dst.unlinked = True
            self.core.inodes.detach(dst)
            if dst.kind != DIR and taken is None and self.core.quotas is not None:
                self.core.quotas.charge(new_path, -dst.attrs.size, -1, check=False)
        self.core.ns.removed(old_parent, old_name)
        if old_parent.children.get(old_name) is src:
            del old_parent.children[old_name]
        src.name, src.parent = new_name, new_parent
        new_parent.children[new_name] = src
        self.core.ns.added(new_parent, new_name, src.kind, info)
        await self.core.touch_dir(old_parent)
        if new_parent is not old_parent:
            await self.core.touch_dir(new_parent)
        self.core.inodes.maybe_drop(old_parent)

    async def _quota_rename(self, src: Node, dst: Node | None,
                            new_path: str) -> tuple[int, int] | None:
        """Move the usage of what a rename moves; EDQUOT when the new place has no room.
        The (bytes, files) moved, or None when no quota is concerned."""
        quotas = self.core.quotas
        if quotas is None or set(quotas.folders(src.path)) == set(quotas.folders(new_path)):
            return None
        if src.kind == DIR:
            moved = await self._subtree_usage(src)
        else:
            moved = (src.attrs.size, 1)
        if dst is not None and dst.kind != DIR:  # the file it replaces frees its room
            quotas.charge(new_path, -dst.attrs.size, -1, check=False)
        try:
            quotas.move(src.path, new_path, *moved)
        except FsError:
            if dst is not None and dst.kind != DIR:
                quotas.charge(new_path, dst.attrs.size, 1, check=False)
            raise
        return moved

    async def _subtree_usage(self, top: Node) -> tuple[int, int]:
        nbytes = nfiles = 0
        async for _, size in self.core.sizes_under([top.key], self.core.subtree(top)):
            nbytes, nfiles = nbytes + size, nfiles + 1
        return nbytes, nfiles

    async def _rename_objects(self, src: Node, dst: Node | None, new_path: str,
                              new_parent: Node) -> ObjectInfo | None:
        """Move what the store holds of `src` to `new_path`; the object a file is now,
        or None (a directory, or a file not stored yet)."""
        if src.kind == DIR:
            if new_parent.is_under(src):
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            if dst is not None:
                if dst.kind != DIR:
                    raise FsError(errno.ENOTDIR, f"{dst.path} is not a directory")
                if not await self.core.is_empty(dst):
                    raise FsError(errno.ENOTEMPTY, f"{dst.path} is not empty")
                await self.core.writeback.discard(dst.key)  # its queued marker is replaced too
                dst.marker_queued = False
                await self.core.backend.delete(dst.key)  # before the move brings src's marker
            await self._upload_now(src.key)  # queued files move as stored objects
            # its own marker, where it has one with attributes, carries its new ctime
            marker = {} if src.stored is None or not carries_attrs(src.stored) else {
                src.key: with_ctime(src.stored, src.attrs.ctime_ns)}
            moved = await self._move_tree(src.key, new_path + "/", marker)
            for node in self.core.subtree(src):
                if node.etag is not None and (node.kind != DIR or node is src):
                    info = moved.get(node.key)
                    if info is None:
                        node.etag = None if node.kind != DIR else ""
                    else:
                        self.core.ns.set_version(node, info)
                if node.kind == DIR:
                    node.listing = None  # (its entries name the old keys) listed anew
            return None
        else:
            if dst is not None and dst.kind == DIR:
                raise FsError(errno.EISDIR, f"{dst.path} is a directory")
            replaced: str | None = None
            if dst is not None:
                async with dst.lock:
                    if dst.opens > 0 and dst.etag is not None:
                        # it is about to be overwritten in the store
                        await self.core.writer.stage(dst)
                    await self.core.writeback.discard(dst.key)  # its queued content is replaced
                    replaced = dst.etag
            return await self._move_file(src, new_path, replaced)

    async def _move_file(self, src: Node, new_key: str, replaced: str | None
                         ) -> ObjectInfo | None:
        """Move a file's object; `replaced` is the version of the object it replaces at
        `new_key` (None: nothing is there). The object it is now, if stored."""
        async with src.lock:
            old_key = src.key
            await self.core.writeback.settle(old_key)  # an upload in flight lands first
            stored = src.etag is not None
            if await self.core.writeback.rename(old_key, new_key, replaced,
                                           metadata_of(src.attrs)):  # with the new ctime
                staging = src.staging
                if staging is not None and staging.queued is not None:
                    staging.queued = (staging.queued[0], metadata_of(src.attrs))
                # its content is still to be uploaded: it will be, under the new name (the
                # journal says so first, so a crash now cannot bring the old name back)
                src.etag = replaced
                if stored:
                    try:
                        await self.core.backend.delete(old_key)
                    except BackendError as e:  # the move stands; the old copy stays
                        log.warning("renamed %s to %s, but its old object stays in the "
                                    "store: %s", old_key, new_key, e)
                return None
            if not stored:
                src.etag = replaced  # created here, not flushed yet: nothing to move
                return None
            # the copy carries the new ctime where the object carries attributes; one
            # written by another tool keeps its metadata, and its Last-Modified, the
            # time of the copy, is its ctime
            metadata = None if src.stored is None or not carries_attrs(src.stored) else \
                with_ctime(src.stored, src.attrs.ctime_ns)
            info = await self.core.backend.copy(old_key, new_key, metadata)
            await self.core.backend.delete(old_key)
            self.core.ns.set_version(src, info)
            return info

    async def _upload_now(self, prefix: str) -> None:
        """Upload the queued files under a directory and wait (before it moves)."""
        writeback = self.core.writeback
        failing = await writeback.flush(up.path for up in writeback.under(prefix))
        if failing:
            raise FsError(errno.EIO, f"{len(failing)} file(s) under /{prefix} cannot be "
                          f"uploaded yet ({failing[0].path}: {failing[0].last_error})")

    async def _move_tree(self, old_prefix: str, new_prefix: str,
                         metadata: dict[str, dict[str, str]]) -> dict[str, ObjectInfo]:
        """Copy every key under a directory to its new name (those in `metadata` with
        that metadata), then delete the old keys: a failure part-way leaves both copies,
        never neither. Returns the copies by the old keys."""
        objects, _ = await list_all(self.core.backend, old_prefix, "")
        limiter = trio.CapacityLimiter(COPY_PARALLEL)
        moved: dict[str, ObjectInfo] = {}

        async def _copy(key: str) -> None:
            async with limiter:
                moved[key] = await self.core.backend.copy(key, new_prefix + key[len(old_prefix):],
                                                     metadata.get(key))

        async def _delete(key: str) -> None:
            async with limiter:
                await self.core.backend.delete(key)

        async with trio.open_nursery() as nursery:
            for info in objects:
                nursery.start_soon(_copy, info.key)
        async with trio.open_nursery() as nursery:
            for info in objects:
                nursery.start_soon(_delete, info.key)
        return moved
