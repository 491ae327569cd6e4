"""The thin pyfuse3 adapter: converts between pyfuse3's types and the vfs layer's, and
translates every error into an errno in ONE place.

Any exception other than pyfuse3.FUSEError that escapes a handler stops pyfuse3's main
loop and kills the mount for every process, so `fuse_errors` turns known errors into
their errno and anything unexpected into a logged EIO. trio.Cancelled is never caught.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import pyfuse3
import trio

from stormount.config import FuseConfig
from stormount.errors import BackendError, StormountError, Transient, first_error
from stormount.fuse.intent import creating
from stormount.stats import Ops
from stormount.vfs.attrs import shown
from stormount.vfs.fs import RENAME_EXCHANGE, RENAME_NOREPLACE, Vfs
from stormount.vfs.nodes import Node

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
BLKSIZE = 128 * 1024  # tools such as cp size their buffers from st_blksize

assert pyfuse3.RENAME_EXCHANGE == RENAME_EXCHANGE and pyfuse3.RENAME_NOREPLACE == RENAME_NOREPLACE


def errno_of(exc: BaseException, op: str) -> int:
    exc = first_error(exc)
    if isinstance(exc, StormountError):
        if isinstance(exc, BackendError) and exc.errno != errno.ENOENT:
            log.warning("%s failed: %s", op, exc)
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        log.warning("%s failed on local disk: %s", op, exc)  # e.g. ENOSPC in the cache
        return exc.errno
    log.error("%s failed unexpectedly", op, exc_info=exc)
    return errno.EIO


def fuse_errors(fn: F) -> F:
    """Every handler's errors as errnos, and its count and latency for the stats."""
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError as e:
            self.ops[op].done(time.perf_counter() - started, _errname(e.errno))
            raise
        except Exception as e:
            code = errno_of(e, op)
            self.ops[op].done(time.perf_counter() - started, _errname(code))
            raise pyfuse3.FUSEError(code) from None
        self.ops[op].done(time.perf_counter() - started)
        return result
    return cast(F, wrapper)


def _errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: Vfs, fuse: FuseConfig) -> None:
        super().__init__()
        self.vfs = vfs
        self.fuse = fuse
        self.ops = Ops()  # FUSE requests by operation, for the stats
        self.bytes_read = 0
        self.bytes_written = 0

    def reconfigure(self, fuse: FuseConfig) -> None:
        """New kernel timeouts and attribute options (SIGHUP), here and in the vfs."""
        self.fuse = fuse

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        a = shown(node.attrs, self.fuse)
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.st_size = a.size
        e.st_blksize = BLKSIZE
        e.st_blocks = (a.size + 511) // 512
        e.st_nlink = self.vfs.nlink(node)
        if not node.complete:
            # provisional (listed without metadata; only READDIRPLUS sends these): the
            # kernel gets no attributes to keep (zero timeouts: it asks again before it
            # relies on any) and the kind only where it is certain. Without a file type
            # the kernel lists the name as DT_UNKNOWN and forgets the inode at once, so
            # find -type and ls ask, and the lookup completes the entry first.
            e.entry_timeout = e.attr_timeout = 0
            e.st_mode = stat.S_IFMT(a.mode) if node.kind_known else 0
            return e
        e.entry_timeout = self.fuse.entry_timeout
        e.attr_timeout = self.fuse.attr_timeout
        e.st_mode = a.mode
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_atime_ns = a.mtime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    def _negative(self) -> pyfuse3.EntryAttributes:
        # st_ino 0 with a timeout makes the kernel cache "no such file"
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = min(self.vfs.cache.negative_ttl, self.fuse.entry_timeout)
        return e

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            return self._entry(await self.vfs.lookup(parent_inode, _name(name)))
        except StormountError as e:
            if e.errno == errno.ENOENT:
                return self._negative()
            if isinstance(e, Transient) and not self.fuse.read_only and creating(ctx.pid):
                # the store cannot say, and the caller is about to create the name: not
                # known to be taken lets the create go ahead (see fuse/intent.py); not
                # cached, so nothing else hears this answer
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            raise

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:  # type: ignore[override]
        for ino, count in inode_list:
            try:
                self.vfs.forget(ino, count)
            except Exception:  # forget must never raise: it would stop the main loop
                log.exception("forget(%d) failed", ino)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.vfs.getattr(inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        mtime_ns = None
        if fields.update_mtime:
            mtime_ns = attr.st_mtime_ns
        node = await self.vfs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            mtime_ns=mtime_ns)
        return self._entry(node)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return (await self.vfs.readlink(inode)).encode("utf-8", "surrogateescape")

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        groups = [ctx.gid]
        with contextlib.suppress(OSError):  # the process may be gone already
            groups.extend(pyfuse3.get_sup_groups(ctx.pid))
        return await self.vfs.access(inode, mode, ctx.uid, groups)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = self.vfs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = s.block_size
        out.f_blocks = s.blocks
        out.f_bfree = out.f_bavail = s.blocks_free
        out.f_files = s.files
        out.f_ffree = out.f_favail = s.files_free
        out.f_namemax = s.name_max
        return out

    # --- directories ----------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.vfs.opendir(inode)

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for name, node, next_id in self.vfs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"),
                                         self._entry(node), next_id):
                break
            self.vfs.count_lookup(node)  # readdirplus: every entry sent is a lookup

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.vfs.releasedir(fh)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsyncdir(fh)

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.vfs.mkdir(parent_inode, _name(name), mode, ctx.uid, ctx.gid)
        return self._entry(node)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.rmdir(parent_inode, _name(name))

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.unlink(parent_inode, _name(name))

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        await self.vfs.rename(parent_inode_old, _name(name_old), parent_inode_new,
                              _name(name_new), flags)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.vfs.symlink(parent_inode, _name(name), _name(target), ctx.uid,
                                      ctx.gid)
        return self._entry(node)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.vfs.link(inode, new_parent_inode, _name(new_name)))

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.vfs.mknod(parent_inode, _name(name), mode, rdev, ctx.uid,
                                                ctx.gid))

    async def invalidate(self, path: str, recursive: bool = False) -> int:
        """Drop the daemon's caches of a path (or subtree) and the kernel's: the next
        access sees the store as it is now. Returns how many known inodes were touched.
        (Used by the control socket.)"""
        nodes = self.vfs.invalidate(path, recursive)
        for node in nodes:  # no block stored after the kernel's pages are dropped below
            await self.vfs.settle_pages(node)
        entries = [(node.parent.ino, node.name) for node in nodes if node.parent is not None]
        unknown = self.vfs.nearest(path) if not nodes else None
        if unknown is not None:  # the kernel may remember it as absent
            entries.append((unknown[0].ino, unknown[1]))
        for parent, name in entries:
            pyfuse3.invalidate_entry_async(parent, name.encode("utf-8", "surrogateescape"),
                                           ignore_enoent=True)

        def drop_inodes() -> None:
            for node in nodes:
                try:
                    pyfuse3.invalidate_inode(node.ino)
                except OSError as e:
                    if e.errno != errno.ENOENT:  # the kernel does not know it: nothing to do
                        log.warning("kernel cache of %s not invalidated: %s", node.path, e)

        # synchronous in the kernel: never on the event-loop thread; one hop for them all
        await trio.to_thread.run_sync(drop_inodes)
        return len(nodes)

    # --- files ----------------------------------------------------------------------

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh = await self.vfs.open(inode, flags)
        keep = await self.vfs.keep_page_cache(self.vfs.node(inode), flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, node = await self.vfs.create(parent_inode, _name(name), mode, flags, ctx.uid,
                                         ctx.gid)
        keep = await self.vfs.keep_page_cache(node, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep), self._entry(node)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = await self.vfs.read(fh, off, size)
        self.bytes_read += len(data)
        return data

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        written = await self.vfs.write(fh, off, buf)
        self.bytes_written += written
        return written

    @fuse_errors
    async def flush(self, fh: int) -> None:
        await self.vfs.flush(fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsync(fh)

    @fuse_errors
    async def release(self, fh: int) -> None:
        await self.vfs.release(fh)
