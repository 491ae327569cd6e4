"""A local directory as a storage tier: key `a/b` is the file DIR/a/b, byte for byte.

Directory markers (`a/`) are directories flagged with an extended attribute, so that
directories that exist only because files are below them vanish with their last file,
as they do in an object store. Object metadata lives in `user.stormount.*` extended
attributes. Writes go to a temporary file under DIR/.stormount/ and are renamed into
place, so a reader never sees a half-written object.

Symbolic links someone put in DIR are not followed (as rclone's local backend without
-L): they are not listed, a key through one is absent, and nothing is read or written
outside DIR through them.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import trio

from stormount.backends.base import ListPage, ObjectInfo, Progress, Unfinished, run_blocking
from stormount.backends.resume import Recorded, Resume
from stormount.config import TierConfig
from stormount.errors import (
    BackendError,
    Changed,
    Conflict,
    ContainerMissing,
    NotFound,
    PermissionDenied,
    Transient,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
XATTR = "user.stormount."
MARKER = XATTR + "dir"
RESERVED = ".stormount"  # top-level name holding temporary files; never listed
PROBES = "probe"  # ...and, under it, the chain's health probes (.stormount/probe/...)


def _make_dirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True) in a loop, not a recursion: a key may be
    thousands of folders deep."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        up = os.path.dirname(path)
        if up == path:
            break
        path = up
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise


class LocalBackend:
    def __init__(self, tier: TierConfig) -> None:
        self.url = tier.url
        self.root = tier.container
        self._limiter = trio.CapacityLimiter(tier.max_connections)
        self._xattr_ok = True
        self._install_lock = threading.Lock()  # a condition's check and its rename as one

    # --- plumbing -------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object, key: str = "") -> T:
        try:
            return await run_blocking(self._limiter, fn, *args)
        except BackendError:
            raise
        except OSError as e:
            raise self._map(e, key) from e

    def _map(self, e: OSError, key: str) -> BackendError:
        msg = f"{self.url}: {key}: {e.strerror or e}"
        if e.errno in (errno.ENOENT,):
            return NotFound(msg, backend=self.url, key=key)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDenied(msg, backend=self.url, key=key)
        if e.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
            return Conflict(msg, backend=self.url, key=key)
        err = Transient(msg, backend=self.url, key=key)
        err.errno = e.errno or errno.EIO  # ENOSPC, EIO, ... reach the caller as they are
        return err

    def _path(self, key: str, *, link_ok: bool = False) -> str:
        """The key's path in DIR; NotFound if it cannot be one or a folder on its way
        is a symbolic link (the key itself may be one with `link_ok`: a write replaces
        the link, never its target)."""
        parts = key.rstrip("/").split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts) or (
                parts[0] == RESERVED and parts[1:2] != [PROBES]):
            raise NotFound(f"{self.url}: key {key!r} cannot be stored in a directory",
                           backend=self.url, key=key)
        at = self.root
        for n, part in enumerate(parts, 1):
            at = os.path.join(at, part)
            try:
                mode = os.lstat(at).st_mode
            except (FileNotFoundError, NotADirectoryError):
                break  # the rest is not there (yet): no link on the way
            if stat.S_ISLNK(mode) and not (link_ok and n == len(parts)):
                raise NotFound(f"{self.url}: {at} is a symbolic link, which a local tier "
                               f"does not follow", backend=self.url, key=key)
        return os.path.join(self.root, *parts)

    def _read_meta(self, path: str) -> dict[str, str]:
        if not self._xattr_ok:
            return {}
        try:
            names = os.listxattr(path)
            return {n[len(XATTR):]: os.getxattr(path, n).decode("utf-8", "replace")
                    for n in names if n.startswith(XATTR) and n != MARKER}
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise

    def _write_meta(self, path: str, metadata: Mapping[str, str], marker: bool = False) -> None:
        if not self._xattr_ok:
            return
        try:
            for name in os.listxattr(path):
                if name.startswith(XATTR) and name != MARKER:
                    os.removexattr(path, name)
            for k, v in metadata.items():
                os.setxattr(path, XATTR + k.lower(), str(v).encode())
            if marker:
                os.setxattr(path, MARKER, b"1")
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            self._xattr_ok = False
            log.warning("%s: extended attributes not supported; file modes and owners "
                        "will not be kept", self.root)

    def _is_marker(self, path: str) -> bool:
        try:
            return os.getxattr(path, MARKER) == b"1"
        except OSError:
            return False

    @staticmethod
    def _etag(st: os.stat_result, size: int | None = None) -> str:
        size = st.st_size if size is None else size
        return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{size:x}"

    def _info(self, key: str, path: str, st: os.stat_result | None = None) -> ObjectInfo:
        st = st or os.stat(path)
        size = 0 if key.endswith("/") else st.st_size
        return ObjectInfo(key=key, size=size, mtime=st.st_mtime, etag=self._etag(st, size),
                          metadata=self._read_meta(path))

    # --- protocol -------------------------------------------------------------------

    async def check(self) -> None:
        def _check() -> None:
            if not os.path.isdir(self.root):
                raise ContainerMissing(f"{self.url}: directory {self.root} does not exist",
                                       backend=self.url)
            if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionDenied(f"{self.url}: directory {self.root} is not writable",
                                       backend=self.url)
        await self._run(_check)

    async def head(self, key: str) -> ObjectInfo:
        def _head() -> ObjectInfo:
            path = self._path(key)
            st = os.stat(path)
            is_dir = os.path.isdir(path)
            if key.endswith("/") != is_dir or (is_dir and not self._is_marker(path)):
                raise NotFound(f"no such object: {key}", backend=self.url, key=key)
            return self._info(key, path, st)
        return await self._run(_head, key=key)

    async def get_range(self, key: str, offset: int, length: int,
                        version: str | None = None) -> bytes:
        def _get() -> bytes:
            path = self._path(key)
            try:
                fd = os.open(path, os.O_RDONLY)
            except IsADirectoryError:
                raise NotFound(f"no such object: {key}", backend=self.url, key=key) from None
            try:
                # objects are replaced by rename, never rewritten: the open file is one
                # version throughout, so checking it once is enough
                if version is not None and self._etag(os.fstat(fd)) != version:
                    raise Changed(f"{key} is no longer version {version}", backend=self.url,
                                  key=key)
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)
        return await self._run(_get, key=key)

    def _tmpdir(self) -> str:
        tmp = os.path.join(self.root, RESERVED, "tmp")
        os.makedirs(tmp, exist_ok=True)
        return tmp

    def _install(self, key: str, fill: Callable[[int], None], metadata: Mapping[str, str],
                 if_match: str | None = None, if_absent: bool = False) -> ObjectInfo:
        """Write a temp file with `fill(fd)`, then rename it over the key's path (if the
        condition holds at that moment: the check and the rename happen under one lock,
        which excludes other writers through this backend, not other processes)."""
        path = self._path(key, link_ok=not key.endswith("/"))
        if key.endswith("/"):
            with self._install_lock:  # (a prune must not take the directory meanwhile)
                _make_dirs(path)
                self._write_meta(path, metadata, marker=True)
            return self._info(key, path)
        parent = os.path.dirname(path)
        if os.path.isdir(path):
            raise Conflict(f"{self.url}: {key} is a directory", backend=self.url, key=key)
        fd, tmp = tempfile.mkstemp(dir=self._tmpdir())
        try:
            try:
                fill(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._write_meta(tmp, metadata)
            # plain files for anyone browsing the directory: the object's own permission
            # bits where it carries them, always readable by the daemon
            try:
                perms = int(metadata.get("mode", "")) & 0o7777 | 0o600
            except ValueError:
                perms = 0o644
            os.chmod(tmp, perms)
            with self._install_lock:
                # under the lock: a delete's prune of the empty parent must not come
                # between the directory made and the file renamed into it
                _make_dirs(parent)
                if if_absent or if_match is not None:
                    try:  # (a link someone put there is not our object: never a match)
                        current: str | None = self._etag(os.lstat(path))
                    except FileNotFoundError:
                        current = None
                    if (if_absent and current is not None) or (
                            if_match is not None and current != if_match):
                        raise Changed(f"{self.url}: {key} is not the version expected",
                                      backend=self.url, key=key)
                os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return self._info(key, path)

    async def put_file(self, key: str, path: str, metadata: Mapping[str, str], *,
                       if_match: str | None = None, if_absent: bool = False,
                       progress: Progress | None = None,
                       resume: Resume | None = None) -> ObjectInfo:
        # one request (or a local file) per upload: nothing to resume
        def _fill(fd: int) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    os.write(fd, chunk)
                    if progress is not None:
                        progress.add(len(chunk), taken=True)
        return await self._run(self._install, key, _fill, metadata, if_match, if_absent,
                               key=key)

    async def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        def _fill(fd: int) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        return await self._run(self._install, key, _fill, metadata, key=key)

    def _prune(self, path: str) -> None:
        """Remove empty, unmarked directories from `path` up towards the root."""
        root = os.path.abspath(self.root)
        with self._install_lock:  # (see _install)
            while os.path.abspath(path) != root and not self._is_marker(path):
                try:
                    os.rmdir(path)
                except OSError:
                    return
                path = os.path.dirname(path)

    async def abandon(self, recorded: Recorded) -> None:
        await trio.lowlevel.checkpoint()  # never records an upload

    async def delete(self, key: str) -> None:
        def _delete() -> None:
            try:
                path = self._path(key)
            except NotFound:
                return
            try:
                if key.endswith("/"):
                    if not os.path.isdir(path):
                        return
                    with contextlib.suppress(OSError):
                        os.removexattr(path, MARKER)
                    self._prune(path)
                    return
                if os.path.isdir(path):
                    return
                os.unlink(path)
            except FileNotFoundError:
                return
            self._prune(os.path.dirname(path))
        await self._run(_delete, key=key)

    def _entries(self, prefix: str, delimiter: str) -> Iterator[tuple[str, bool]]:
        """(key, is_common_prefix) under `prefix`, unsorted. Without a delimiter, the
        folders below are walked in a loop (a tree may be thousands of folders deep)."""
        dir_part, _, name_part = prefix.rpartition("/")
        base = self._path(dir_part + "/") if dir_part else self.root
        if not os.path.isdir(base):
            return
        if not name_part and dir_part and self._is_marker(base):
            yield dir_part + "/", False
        todo = [(base, dir_part, name_part)]
        while todo:
            path, dir_key, start = todo.pop()
            with os.scandir(path) as it:
                for entry in it:
                    if not dir_key and entry.name == RESERVED:
                        continue
                    if not entry.name.startswith(start):
                        continue
                    key = f"{dir_key}/{entry.name}" if dir_key else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if delimiter:
                            yield key + "/", True
                            continue
                        if self._is_marker(entry.path):
                            yield key + "/", False
                        todo.append((entry.path, key, ""))
                    elif entry.is_file(follow_symlinks=False):
                        yield key, False

    async def list(self, prefix: str, delimiter: str = "/", token: str | None = None,
                   limit: int = 1000) -> ListPage:
        def _list() -> ListPage:
            try:
                entries = sorted(self._entries(prefix, delimiter))
            except NotFound:
                return ListPage()
            if token is not None:
                entries = [e for e in entries if e[0] > token]
            page, rest = entries[:limit], entries[limit:]
            objects, prefixes = [], []
            for key, is_prefix in page:
                if is_prefix:
                    prefixes.append(key)
                    continue
                try:
                    objects.append(self._info(key, self._path(key)))
                except FileNotFoundError:
                    continue  # removed while we listed
            return ListPage(objects, prefixes, page[-1][0] if rest else None)
        return await self._run(_list, key=prefix)

    async def copy(self, src: str, dst: str,
                   metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        def _copy() -> ObjectInfo:
            src_path = self._path(src)
            if src.endswith("/") != os.path.isdir(src_path):
                raise NotFound(f"no such object: {src}", backend=self.url, key=src)
            meta = self._read_meta(src_path) if metadata is None else metadata
            if src == dst:
                self._write_meta(src_path, meta, marker=src.endswith("/"))
                return self._info(src, src_path)

            def _fill(fd: int) -> None:
                with open(src_path, "rb") as f, os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
            return self._install(dst, _fill, meta)
        return await self._run(_copy, key=src)

    async def unfinished(self, prefix: str) -> builtins.list[Unfinished]:
        """Temporary files of writes that never reached their rename (a crash)."""
        def _list() -> builtins.list[Unfinished]:
            tmp = os.path.join(self.root, RESERVED, "tmp")
            out = []
            with contextlib.suppress(FileNotFoundError), os.scandir(tmp) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat(follow_symlinks=False)
                        out.append(Unfinished(key="", ident=entry.name, started=st.st_mtime,
                                              size=st.st_size))
            return out
        return await self._run(_list, key=prefix)

    async def discard(self, item: Unfinished) -> None:
        path = os.path.join(self.root, RESERVED, "tmp", os.path.basename(item.ident))

        def _discard() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        await self._run(_discard)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

