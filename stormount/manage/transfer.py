"""`stormount pull` and `stormount push`: whole trees between the store and a local
directory, in parallel, resumable, verified.

pull: each file is fetched in blocks into `NAME.stormount-partial` beside its final
name, then renamed into place with the object's mtime and mode. A state file (in the
user's cache directory, one per local directory) records, for each key, the version
(ETag) the partial file or the finished file holds. Run again, the pull skips what is
finished at the version the store still has, continues partial files of an unchanged
object from where they stopped, and fetches the rest. Every read names the version it
expects, so an object replaced meanwhile is started over, never spliced; sizes are
checked, and S3's plain ETags (the MD5 of the content) are compared with the bytes.

push: each local file is uploaded unless the store has it already with the same size
and mtime (the metadata the mount writes), so a push run again sends only what is
missing or changed. Uploads use the tier's multipart threshold; an upload cut short is
sent again whole on the next run. Empty folders become directory markers and symlinks
link objects, as the mount writes them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from stormount.backends.base import ObjectInfo
from stormount.chain.health import reserved
from stormount.config import cache_base
from stormount.errors import BackendError, Changed, NotFound, StormountError
from stormount.manage.store import Store, Tier, objects
from stormount.vfs.attrs import LINK, Attrs, attrs_from_object, kind_of, metadata_of

log = logging.getLogger(__name__)
PARTIAL = ".stormount-partial"
PATH_MAX = 4096  # Linux: a longer path is refused whole (ENAMETOOLONG)
Progress = Callable[[int, int, int, int], None]  # done bytes, total bytes, files, of files


@dataclass
class Summary:
    verb: str
    files: int = 0  # files to transfer in all
    bytes: int = 0  # their bytes
    transferred: int = 0
    skipped: int = 0  # already there, at the same version
    resumed: int = 0  # partial files continued
    moved_bytes: int = 0  # bytes actually sent or received this run
    failed: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, object]:
        seconds = time.monotonic() - self.started
        return {"files": self.files, "bytes": self.bytes, self.verb: self.transferred,
                "skipped": self.skipped, "resumed": self.resumed,
                "transferred_bytes": self.moved_bytes, "failed": self.failed,
                "seconds": round(seconds, 3),
                "rate": round(self.moved_bytes / seconds) if seconds > 0 else 0}


def state_path(local_dir: str) -> str:
    """Where a pull into `local_dir` keeps what it has fetched (not in the tree itself)."""
    digest = hashlib.sha256(os.path.abspath(local_dir).encode()).hexdigest()[:16]
    return os.path.join(cache_base(), "pull", f"{digest}.sqlite3")


class PullState:
    """key -> (version, done) of what a pull into one directory holds."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a lost row only means a refetch
        self._db.execute("CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, "
                         "version TEXT NOT NULL, size INTEGER NOT NULL, done INTEGER NOT NULL)")

    def get(self, key: str) -> tuple[str, int, bool] | None:
        row = self._db.execute("SELECT version, size, done FROM files WHERE key = ?",
                               (key,)).fetchone()
        return None if row is None else (row[0], row[1], bool(row[2]))

    def put(self, key: str, version: str, size: int, done: bool) -> None:
        self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                         (key, version, size, int(done)))

    def close(self) -> None:
        self._db.close()


class Unpullable(StormountError):
    """A key that can never be a file in LOCAL_DIR: running the command again won't help."""


def _local_path(root: str, rel: str) -> str:
    """Where a key (`rel`, below the folder pulled; a folder's ends in "/") goes in
    `root`. A key the mount would not show is refused, never written elsewhere: with an
    empty, '.' or '..' segment (`a//b`, `/abs`, `a/../b` would land on another key's
    path, or outside), or a NUL."""
    if any(part in ("", ".", "..") for part in rel.removesuffix("/").split("/")):
        raise Unpullable("not a local path: an empty, '.' or '..' name in the key; "
                             "skipped")
    if "\0" in rel:
        raise Unpullable("not a local path: a NUL in the key; skipped")
    path = os.path.normpath(os.path.join(root, rel))
    if not (path + "/").startswith(root.rstrip("/") + "/") or rel.endswith(PARTIAL):
        raise Unpullable(f"refusing to write outside {root}: {rel!r}")
    if len(os.fsencode(path)) >= PATH_MAX:  # failed before any of its folders is made
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
    return path


def _make_parent(root: str, path: str) -> None:
    _make_folders(root, os.path.dirname(path))


LINK_ON_THE_WAY = ("a folder on its way is a symbolic link (a link object of the store, "
                   "say); not written through it")


def _make_folders(root: str, folder: str) -> None:
    """The folders from `root` down to `folder`, made one by one, none of them a symbolic
    link (one a pulled link object made, say): a write through it would land on another
    key's path, or outside `root`. A loop, not a recursion: a key thousands of folders
    deep fails as OSError (File name too long), never as RecursionError."""
    rel = os.path.relpath(folder, root)
    current = root
    for part in [] if rel == "." else rel.split("/"):
        current = os.path.join(current, part)
        try:
            os.mkdir(current)  # (never follows a link it finds there)
        except FileExistsError:
            mode = os.lstat(current).st_mode
            if stat.S_ISLNK(mode):
                raise Unpullable(LINK_ON_THE_WAY) from None
            if not stat.S_ISDIR(mode):
                raise


def _within(root: str, path: str) -> bool:
    """Are the folders from `root` to `path` real folders, no symbolic link among them?"""
    rel = os.path.relpath(os.path.dirname(path), root)
    current = root
    for part in [] if rel == "." else rel.split("/"):
        current = os.path.join(current, part)
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except OSError:
            return False
    return True


def _reason(e: BaseException) -> str:
    """One line for the summary: a local error without its (maybe very long) path."""
    if isinstance(e, UnicodeError):
        return "the name is not valid UTF-8"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, StormountError):
        return " ".join(str(e).split())
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]


class _Meter:
    """The summary and the progress callback, updated as bytes move."""

    def __init__(self, summary: Summary, progress: Progress) -> None:
        self.summary, self.progress, self.done_bytes, self.done_files = summary, progress, 0, 0

    def add(self, n: int, moved: bool = True) -> None:
        self.done_bytes += n
        if moved:
            self.summary.moved_bytes += n
        self.show()

    def file_done(self) -> None:
        self.done_files += 1
        self.show()

    def show(self) -> None:
        self.progress(self.done_bytes, self.summary.bytes, self.done_files, self.summary.files)


async def _tree(store: Store, prefix: str) -> dict[str, tuple[Tier, ObjectInfo]]:
    """Every key under `prefix`, from the highest tier that has it."""
    found: dict[str, tuple[Tier, ObjectInfo]] = {}
    for tier in store.tiers:
        async for info in objects(store, tier, prefix):
            found.setdefault(info.key, (tier, info))
    return found


async def pull(store: Store, prefix: str, local_dir: str, *, parallel: int,
               progress: Progress) -> Summary:
    root = os.path.abspath(local_dir)
    os.makedirs(root, exist_ok=True)
    summary = Summary("downloaded")
    tree = await _tree(store, prefix)
    files = {k: v for k, v in tree.items() if not k.endswith("/")}
    summary.files, summary.bytes = len(files), sum(i.size for _, i in files.values())
    for key in sorted(k for k in tree if k.endswith("/")):
        rel = key[len(prefix):]
        if rel:
            try:
                _make_folders(root, _local_path(root, rel))
            except Exception as e:  # one folder that cannot be made stops nothing else
                log.warning("%s: %s", rel, _reason(e))
                summary.failed.append(_failure(rel, e))
    meter = _Meter(summary, progress)
    state = PullState(state_path(root))
    try:
        await _in_parallel(parallel, meter, (
            (rel, functools.partial(_fetch, store, tier, info, rel, root, state, meter))
            for key, (tier, info) in sorted(files.items()) for rel in [key[len(prefix):]]))
    finally:
        state.close()
    return summary


def _failure(rel: str, e: Exception) -> dict[str, Any]:
    """A failed file for the summary; `retry`: whether running the command again may
    bring it (false for a key that can never be a local file)."""
    return {"path": rel, "error": _reason(e), "retry": not isinstance(e, Unpullable)}


async def _in_parallel(parallel: int, meter: _Meter,
                       jobs: Iterable[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
    """Run the jobs, `parallel` at once; one that fails is recorded in the summary and
    the others go on."""
    todo = iter(jobs)

    async def worker() -> None:
        for rel, job in todo:  # shared: each job is taken by one worker
            try:
                await job()
            except Exception as e:  # one file that fails stops no other (never an
                # ExceptionGroup out of the nursery)
                why = _reason(e)
                if not isinstance(e, (StormountError, OSError, UnicodeError)):
                    log.debug("%s failed", rel, exc_info=True)
                log.warning("%s: %s", rel, why)
                meter.summary.failed.append(_failure(rel, e))
            meter.file_done()

    async with trio.open_nursery() as nursery:
        for _ in range(parallel):
            nursery.start_soon(worker)


async def _fetch(store: Store, tier: Tier, listed: ObjectInfo, rel: str, root: str,
                 state: PullState, meter: _Meter) -> None:
    """Fetch one file. If it fails, its partial file goes, unless the store failed it
    (unreachable, say): then the next run continues it."""
    try:
        await _fetch_one(store, tier, listed, rel, root, state, meter)
    except Exception as e:
        if not isinstance(e, BackendError):
            with contextlib.suppress(OSError, ValueError, StormountError):
                partial = _local_path(root, rel) + PARTIAL
                if _within(root, partial):  # never through a link, to elsewhere
                    os.unlink(partial)
        raise


async def _fetch_one(store: Store, tier: Tier, listed: ObjectInfo, rel: str, root: str,
                     state: PullState, meter: _Meter) -> None:
    key, summary = listed.key, meter.summary
    path = _local_path(root, rel)
    known = state.get(key)
    # finished at the version the listing shows: no request needed (etags of listings
    # and HEADs agree on S3, Azure and local tiers)
    if known is not None and known[2] and known[0] == listed.etag and known[1] == listed.size \
            and os.path.lexists(path):
        summary.skipped += 1
        meter.add(listed.size, moved=False)
        return
    info = await store.call("head", lambda: tier.backend.head(key))
    kind = kind_of(key, info.metadata)
    attrs = attrs_from_object(info, kind, store.cfg.fuse)
    if known is not None and known[2] and known[0] == info.etag and _has(path, info, kind):
        summary.skipped += 1
        meter.add(listed.size, moved=False)
        return
    _make_parent(root, path)
    if kind == LINK:
        target = await store.call("get", lambda: tier.backend.get_range(key, 0, info.size))
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target.decode(errors="surrogateescape"), path)
        os.utime(path, ns=(attrs.mtime_ns, attrs.mtime_ns), follow_symlinks=False)
        state.put(key, info.etag, info.size, True)
        summary.transferred += 1
        meter.add(listed.size)
        return
    partial = path + PARTIAL
    offset = 0
    if known is not None and not known[2] and known[0] == info.etag \
            and os.path.exists(partial):
        offset = min(os.path.getsize(partial), info.size)
        summary.resumed += offset > 0
    state.put(key, info.etag, info.size, False)
    block = store.cfg.cache.block_size
    digest = hashlib.md5(usedforsecurity=False)
    with open(partial, "r+b" if offset else "wb") as f:
        f.truncate(offset)
        if offset:  # the part fetched before, for the checksum
            for _ in range(0, offset, block):
                digest.update(f.read(block))
            meter.add(offset, moved=False)
        while offset < info.size:
            want = min(block, info.size - offset)
            try:
                data = await store.call("get", functools.partial(
                    tier.backend.get_range, key, offset, want, version=info.etag))
            except Changed:
                raise StormountError(f"{rel} changed in the store while it was fetched; "
                                     "run pull again") from None
            if not data:
                break
            f.write(data)
            digest.update(data)
            offset += len(data)
            meter.add(len(data))
        f.flush()
        os.fsync(f.fileno())
    if offset != info.size:
        raise StormountError(f"{rel}: got {offset} bytes, the store says {info.size}")
    if info.content_md5 is not None and digest.hexdigest() != info.content_md5:
        os.unlink(partial)
        state.put(key, info.etag, info.size, False)
        raise StormountError(f"{rel}: content does not match its checksum (MD5 "
                             f"{digest.hexdigest()}, the store says {info.content_md5})")
    os.chmod(partial, stat.S_IMODE(attrs.mode) & 0o777)  # never set-id bits from a store
    os.utime(partial, ns=(attrs.mtime_ns, attrs.mtime_ns))
    os.replace(partial, path)
    state.put(key, info.etag, info.size, True)
    summary.transferred += 1


def _has(path: str, info: ObjectInfo, kind: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if kind == LINK:
        return stat.S_ISLNK(st.st_mode)
    return stat.S_ISREG(st.st_mode) and st.st_size == info.size


# --- push ----------------------------------------------------------------------------


def _attrs_of(st: os.stat_result) -> Attrs:
    return Attrs(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, size=st.st_size,
                 mtime_ns=st.st_mtime_ns, ctime_ns=st.st_mtime_ns)


def _local_tree(root: str) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
    """(files and symlinks with their stat, empty folders), relative to root."""
    entries: list[tuple[str, os.stat_result]] = []
    empty: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                entries.append((rel_dir + name, os.lstat(full)))
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                entries.append((rel_dir + name, st))
        if not dirnames and not filenames and rel_dir:
            empty.append(rel_dir)
    return entries, empty


async def push(store: Store, local_dir: str, prefix: str, *, parallel: int,
               progress: Progress) -> Summary:
    root = os.path.abspath(local_dir)
    if not os.path.isdir(root):
        raise StormountError(f"{local_dir} is not a directory")
    entries, empty = await trio.to_thread.run_sync(_local_tree, root)
    # not stormount's own objects, nor what an unfinished pull left in the tree
    entries = [(rel, st) for rel, st in entries
               if not reserved(prefix + rel) and not rel.endswith(PARTIAL)]
    summary = Summary("uploaded")
    summary.files, summary.bytes = len(entries), sum(st.st_size for _, st in entries)
    meter = _Meter(summary, progress)
    tier = store.primary
    await _in_parallel(parallel, meter, (
        (rel, functools.partial(_send, store, tier, root, rel, st, prefix, meter))
        for rel, st in sorted(entries)))
    for rel in empty:  # folders with nothing in them: a directory marker each
        meta = metadata_of(_attrs_of(os.stat(os.path.join(root, rel))))
        await store.call("put", functools.partial(tier.backend.put_bytes, prefix + rel, b"",
                                                  meta))
    return summary


async def _send(store: Store, tier: Tier, root: str, rel: str, st: os.stat_result,
                prefix: str, meter: _Meter) -> None:
    key, path = prefix + rel, os.path.join(root, rel)
    meta = metadata_of(_attrs_of(st))
    try:
        there: ObjectInfo | None = await store.call("head", lambda: tier.backend.head(key))
    except NotFound:
        there = None
    if there is not None and there.size == st.st_size and \
            (there.metadata or {}).get("mtime") == meta["mtime"]:
        meter.summary.skipped += 1
        meter.add(st.st_size, moved=False)
        return
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path).encode(errors="surrogateescape")
        await store.call("put", lambda: tier.backend.put_bytes(key, target, meta))
    else:
        stored = await store.call("put", lambda: tier.backend.put_file(key, path, meta))
        if stored.size != st.st_size or os.stat(path).st_mtime_ns != st.st_mtime_ns:
            raise StormountError(f"{rel} changed while it was uploaded; run push again")
    meter.summary.transferred += 1
    meter.add(st.st_size)
