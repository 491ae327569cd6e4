"""Disk-backed cache of object data in fixed-size blocks, least-recently-used by bytes.

A block is keyed by (ident, version, index): `ident` is the object's key and `version`
the object's version as the chain reports it (docs/ARCHITECTURE.md, "Design choices"),
so a new version never sees the bytes of an old one. Layout of the cache directory:

    lock                          flock: one process per cache directory
    index.sqlite3                 table blocks: ident, version, idx -> name, size, crc32, used
                                  table pins: idents whose blocks are never evicted
                                  table meta: block_size (a change empties the cache)
    tmp/                          blocks being written; emptied at start
    data/XX/H.INDEX.TOKEN         complete blocks: H = blake2b(ident, version), XX = H[:2],
                                  TOKEN random, so no name is ever reused

Integrity does not rely on fsync (cached data can be fetched again): a block file is
renamed into data/ only once complete, is served only while the index names it, and
its crc32 is checked over the whole block the first time it is read in a process (and
again whenever its inode, size or mtime changes). At start, rows without a file and
files without a row (a crash between rename and commit) are removed.

Threads: reads come inline from the event-loop thread, puts from worker threads. One
lock guards the in-memory index; block writes, checksums, preads and unlinks happen
outside it. sqlite is written by one thread at a time, in the order decisions were made
under the lock (`_pending`), and never by a hit: recency lives in memory and is written
lazily (piggybacked on puts at most once a minute, and at close).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable

from stormount.durable import lock
from stormount.errors import StartupError

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30

SCHEMA = 1
MAX_OPEN_FILES = 128  # block fds kept open: a hit is then one fstat + one pread
RECENCY_FLUSH_SECONDS = 60.0
_VERIFY_CHUNK = 1 * MiB  # checksum a block in chunks: bounded memory on the event loop

Key = tuple[str, str, int]
_SUBDIRS = [f"{i:02x}" for i in range(256)]


def _enc(text: str) -> bytes:
    # surrogatepass: names from FUSE arrive surrogate-escaped; every str must round-trip
    return text.encode("utf-8", "surrogatepass")


def _dec(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


class _Block:
    __slots__ = ("closing", "crc", "fd", "name", "size", "used", "users", "verified")

    def __init__(self, name: str, size: int, crc: int, used: int) -> None:
        self.name = name  # relative to data/
        self.size = size
        self.crc = crc
        self.used = used  # recency tick; only the order matters
        self.fd: int | None = None
        self.users = 0  # reads between taking the fd and finishing with it
        self.closing = False  # close the fd when the last user is done
        self.verified: tuple[int, int, int] | None = None  # (ino, size, mtime_ns) checked


class BlockCache:
    """Synchronous and thread-safe. `read` and `has` never write to disk and are cheap
    enough to call inline on the event loop (the first read of a block in a process
    checksums the whole block once). `put`, `drop`, `drop_prefix`, `pin`, `unpin` and
    `close` write files and sqlite: call them from worker threads when they may be big."""

    def __init__(self, directory: str, *, block_size: int = 4 * MiB, max_bytes: int = 10 * GiB,
                 min_free_bytes: int = 1 * GiB, free_bytes: Callable[[], int] | None = None,
                 on_pressure: Callable[[], None] | None = None) -> None:
        """`free_bytes` reports free disk space (default: os.statvfs of `directory`); it is
        called under the index lock, so it must not call back into this cache.
        `on_pressure` is called, from the putting thread, when a put finds no room (e.g.
        to make the uploader hurry, so pinned blocks can be unpinned)."""
        if block_size <= 0 or max_bytes < 0 or min_free_bytes < 0:
            raise ValueError("block_size must be positive, limits non-negative")
        self.directory = directory
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._free_bytes = free_bytes or self._statvfs_free
        self._on_pressure = on_pressure
        self._data = os.path.join(directory, "data")
        self._tmp = os.path.join(directory, "tmp")

        self._lock = threading.Lock()  # the in-memory state below
        self._db_lock = threading.Lock()  # one sqlite writer; taken before _lock, never inside
        self._entries: OrderedDict[Key, _Block] = OrderedDict()  # least recently used first
        self._by_ident: dict[str, set[Key]] = {}
        self._pinned: set[str] = set()
        self._open: OrderedDict[Key, _Block] = OrderedDict()  # blocks holding an fd
        self._pending: list[tuple[str, tuple[object, ...]]] = []  # sql to apply, in order
        self._touched: set[Key] = set()  # recency not yet written
        self._last_recency_flush = time.monotonic()
        self._bytes = self._unlinking = self._tick = 0
        self._hits = self._misses = self._evictions = self._corrupt = 0
        self._closed = False

        os.makedirs(self._tmp, exist_ok=True)
        for sub in _SUBDIRS:  # 256 directories: none grows huge
            os.makedirs(os.path.join(self._data, sub), exist_ok=True)
        # two daemons on one directory would delete each other's blocks as orphans
        self._lockfd = lock(os.path.join(directory, "lock"), StartupError(
            f"block cache {directory} is in use by another process"))
        try:
            self._db: sqlite3.Connection | None = self._open_db()
            self._load()
        except BaseException:
            os.close(self._lockfd)
            raise

    # --- public API -------------------------------------------------------------------

    def read(self, ident: str, version: str, index: int, offset: int, size: int) -> bytes | None:
        """Bytes [offset, offset+size) of the block, clipped to its length; None on a miss.
        A block that fails its checksum is deleted and reported as a miss."""
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        key = (ident, version, index)
        with self._lock:
            blk = self._entries.get(key)
            if blk is None or self._closed:
                self._misses += 1
                return None
            fd = self._take_fd_locked(key, blk)
            if fd is None:  # the file vanished behind our back
                self._misses += 1
                self._corrupt += 1
                gone = [self._remove_locked(key)]
            else:
                self._entries.move_to_end(key)
                self._tick += 1
                blk.used = self._tick
                self._touched.add(key)
        if fd is None:
            self._finish(gone, write_index=False)
            return None

        try:
            data = _read_verified(fd, blk, offset, size)
        except BaseException:
            with self._lock:
                self._done_with_fd_locked(blk)
            raise
        with self._lock:
            self._done_with_fd_locked(blk)
            if data is not None:
                self._hits += 1
                return data
            self._misses += 1
            self._corrupt += 1
            gone = [self._remove_locked(key)] if self._entries.get(key) is blk else []
        log.warning("block cache: dropped corrupt block %d of %r", index, ident)
        # no sqlite write on the read path: the row goes with the next put or close,
        # and a row without its file is removed at start anyway
        self._finish(gone, write_index=False)
        return None

    def reconfigure(self, max_bytes: int, min_free_bytes: int) -> None:
        """New limits (SIGHUP): a smaller cache evicts at the next block stored."""
        self.max_bytes, self.min_free_bytes = max_bytes, min_free_bytes

    def has(self, ident: str, version: str, index: int) -> bool:
        with self._lock:
            return not self._closed and (ident, version, index) in self._entries

    def put(self, ident: str, version: str, index: int, data: bytes | memoryview) -> None:
        """Store a whole block (the last one of an object may be shorter). Drops other
        versions of `ident`, evicts least-recently-used unpinned blocks to stay within
        max_bytes and above min_free_bytes, or raises OSError(ENOSPC)."""
        size = len(data)
        if size > self.block_size or index < 0:
            raise ValueError(f"block {index} of {size} bytes (block size {self.block_size})")
        key = (ident, version, index)
        h = hashlib.blake2b(_enc(ident) + b"\0" + _enc(version), digest_size=16).hexdigest()
        base = f"{h}.{index}.{secrets.token_hex(4)}"
        name = f"{h[:2]}/{base}"
        tmp, final = os.path.join(self._tmp, base), os.path.join(self._data, name)
        crc = zlib.crc32(data)
        _write_file(tmp, data)  # outside the lock: the slow part
        try:
            # complete, but served only once the index names it (an orphan if we crash now)
            os.rename(tmp, final)
            st = os.stat(final)
        except BaseException:
            _unlink(tmp)
            raise
        try:
            with self._lock:
                if self._closed:
                    raise OSError(errno.EBADF, "block cache is closed")
                gone = self._make_room_locked(key, size)  # all or nothing
                self._tick += 1
                block = self._entries[key] = _Block(name, size, crc, self._tick)
                # written from bytes whose crc we just took: no need to read it back to
                # check it in this process (after a restart it is checked on first read)
                block.verified = (st.st_ino, st.st_size, st.st_mtime_ns)
                self._by_ident.setdefault(ident, set()).add(key)
                self._bytes += size
                self._pending.append((
                    "INSERT OR REPLACE INTO blocks (ident, version, idx, name, size, crc, used)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (_enc(ident), _enc(version), index, name, size, crc, self._tick)))
                if time.monotonic() - self._last_recency_flush > RECENCY_FLUSH_SECONDS:
                    self._queue_recency_locked()
        except BaseException as exc:
            _unlink(final)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and self._on_pressure:
                self._on_pressure()
            raise
        self._finish(gone)

    def drop(self, ident: str, version: str | None = None) -> int:
        """Drop the blocks of `ident` (of one version, or all); pins do not protect them."""
        with self._lock:
            keys = [k for k in self._by_ident.get(ident, ()) if version is None or k[1] == version]
            gone = [self._remove_locked(k) for k in keys]
        self._finish(gone)
        return len(gone)

    def drop_prefix(self, ident_prefix: str) -> int:
        """Drop the blocks of every ident starting with `ident_prefix` (a subtree)."""
        with self._lock:
            keys = [k for ident, ks in self._by_ident.items() if ident.startswith(ident_prefix)
                    for k in ks]
            gone = [self._remove_locked(k) for k in keys]
        self._finish(gone)
        return len(gone)

    def pin(self, ident: str) -> None:
        """Exempt the blocks of `ident` (all versions) from eviction, also after a restart;
        an ident ending in "/" (or "") pins every ident under it."""
        with self._lock:
            if ident in self._pinned:
                return
            self._pinned.add(ident)
            self._pending.append(("INSERT OR IGNORE INTO pins (ident) VALUES (?)", (_enc(ident),)))
        self._drain()

    def pinned(self) -> list[str]:
        with self._lock:
            return sorted(self._pinned)

    def _held(self, ident: str) -> bool:
        """Pinned itself, or under a pinned prefix (a pin ending in "/": a folder)."""
        if ident in self._pinned:
            return True
        for end in range(len(ident) - 1, -1, -1):  # "a/b/c": "a/b/", then "a/"
            if ident[end] == "/" and ident[:end + 1] in self._pinned:
                return True
        return "" in self._pinned  # the whole mount

    def unpin(self, ident: str) -> None:
        with self._lock:
            if ident not in self._pinned:
                return
            self._pinned.discard(ident)
            self._pending.append(("DELETE FROM pins WHERE ident = ?", (_enc(ident),)))
        self._drain()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"bytes": self._bytes, "blocks": len(self._entries), "hits": self._hits,
                    "misses": self._misses, "evictions": self._evictions,
                    "corrupt": self._corrupt}

    def close(self) -> None:
        """Write recency and pending index changes, release fds and the directory lock."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue_recency_locked()
            for blk in self._open.values():
                self._release_fd_locked(blk)
            self._open.clear()
        self._drain()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        os.close(self._lockfd)

    # --- index ------------------------------------------------------------------------

    def release_space(self, nbytes: int) -> int:
        """Evict least-recently-used unpinned blocks worth at least `nbytes` (the disk is
        full and something that cannot be refetched needs the room); the bytes freed."""
        with self._lock:
            victims: list[Key] = []
            freed = 0
            for k, blk in self._entries.items():
                if freed >= nbytes:
                    break
                if not self._held(k[0]):
                    victims.append(k)
                    freed += blk.size
            self._evictions += len(victims)
            gone = [self._remove_locked(k) for k in victims]
        self._finish(gone)
        if freed:
            log.warning("block cache: evicted %d block(s) (%d bytes) to make room on a full "
                        "disk", len(gone), freed)
        return freed

    def _make_room_locked(self, key: Key, size: int) -> list[tuple[str, int]]:
        """Remove the block being replaced, other versions of its ident, and as many
        least-recently-used unpinned blocks as the limits require; all or nothing."""
        ident, version, _ = key
        doomed = [k for k in self._by_ident.get(ident, ()) if k[1] != version or k == key]
        freed = sum(self._entries[k].size for k in doomed)
        # the new block is already written to tmp/, so free space already counts it
        need = max(self._bytes - freed + size - self.max_bytes,
                   self.min_free_bytes - (self._free_bytes() + self._unlinking + freed))
        victims: list[Key] = []
        if need > 0:
            skip, pinned = set(doomed), []
            for k, blk in self._entries.items():
                if need <= 0:
                    break
                if k in skip:
                    continue
                if self._held(k[0]):
                    pinned.append(k)
                    continue
                victims.append(k)
                need -= blk.size
            # pinned blocks go to the recent end so later scans do not walk past them again
            for k in pinned:
                self._entries.move_to_end(k)
            if need > 0:
                raise OSError(errno.ENOSPC, "block cache cannot make room (pinned data or disk)")
        self._evictions += len(victims)
        return [self._remove_locked(k) for k in doomed + victims]

    def _remove_locked(self, key: Key) -> tuple[str, int]:
        """Forget a block; returns its path and size for `_finish` to unlink outside the
        lock. Its name is never reused, so a late unlink cannot hit a newer block."""
        blk = self._entries.pop(key)
        keys = self._by_ident[key[0]]
        keys.discard(key)
        if not keys:
            del self._by_ident[key[0]]
        self._bytes -= blk.size
        self._unlinking += blk.size
        self._touched.discard(key)
        self._open.pop(key, None)
        self._release_fd_locked(blk)
        self._pending.append((
            "DELETE FROM blocks WHERE ident = ? AND version = ? AND idx = ? AND name = ?",
            (_enc(key[0]), _enc(key[1]), key[2], blk.name)))
        return os.path.join(self._data, blk.name), blk.size

    def _finish(self, gone: Iterable[tuple[str, int]], write_index: bool = True) -> None:
        freed = 0
        for path, size in gone:
            _unlink(path)  # ~0.2 ms for 4 MiB on ext4: never under the lock
            freed += size
        if freed:
            with self._lock:
                self._unlinking -= freed
        if write_index:
            self._drain()

    def _queue_recency_locked(self) -> None:
        for k in self._touched:
            self._pending.append(("UPDATE blocks SET used = ? WHERE ident = ? AND version = ?"
                                  " AND idx = ?",
                                  (self._entries[k].used, _enc(k[0]), _enc(k[1]), k[2])))
        self._touched.clear()
        self._last_recency_flush = time.monotonic()

    def _drain(self) -> None:
        """Apply queued sql in one transaction. Whoever holds _db_lock takes everything
        queued so far, so statements reach sqlite in the order they were decided."""
        with self._db_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch or self._db is None:
                return
            try:
                self._db.execute("BEGIN")
                for sql, args in batch:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                # the in-memory index stays right; retry later, in order. A row lost for
                # good only costs a block (its file is removed as an orphan at start).
                log.warning("block cache: index write failed, will retry: %s", exc)
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                with self._lock:
                    self._pending[:0] = batch

    # --- file descriptors -------------------------------------------------------------

    def _take_fd_locked(self, key: Key, blk: _Block) -> int | None:
        if blk.fd is None:
            try:
                blk.fd = os.open(os.path.join(self._data, blk.name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        blk.closing = False  # reachable, so live: keep its fd after all
        self._open[key] = blk
        self._open.move_to_end(key)
        while len(self._open) > MAX_OPEN_FILES:
            self._release_fd_locked(self._open.popitem(last=False)[1])
        blk.users += 1
        return blk.fd

    def _release_fd_locked(self, blk: _Block) -> None:
        # a reader may be in pread on this fd: closing it now could let the number be
        # reused for another file under its feet, so the last user closes it
        if blk.users:
            blk.closing = True
        else:
            self._close_fd_locked(blk)

    def _done_with_fd_locked(self, blk: _Block) -> None:
        blk.users -= 1
        if blk.closing and blk.users == 0:
            self._close_fd_locked(blk)

    def _close_fd_locked(self, blk: _Block) -> None:
        if blk.fd is not None:
            os.close(blk.fd)
            blk.fd = None
        blk.closing = False

    # --- start ------------------------------------------------------------------------

    def _statvfs_free(self) -> int:
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def _open_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(os.path.join(self.directory, "index.sqlite3"),
                             isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a lost commit costs blocks, not integrity
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA:
            db.executescript("DROP TABLE IF EXISTS blocks; DROP TABLE IF EXISTS pins;"
                             " DROP TABLE IF EXISTS meta;")
        db.executescript(f"""
            CREATE TABLE IF NOT EXISTS blocks (
                ident BLOB NOT NULL, version BLOB NOT NULL, idx INTEGER NOT NULL,
                name TEXT NOT NULL, size INTEGER NOT NULL, crc INTEGER NOT NULL,
                used INTEGER NOT NULL, PRIMARY KEY (ident, version, idx)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS pins (ident BLOB PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
            PRAGMA user_version = {SCHEMA};
        """)
        row = db.execute("SELECT value FROM meta WHERE key = 'block_size'").fetchone()
        if row is None or row[0] != self.block_size:
            # index i means other bytes under another block size: start empty
            db.execute("DELETE FROM blocks")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('block_size', ?)", (self.block_size,))
        return db

    def _load(self) -> None:
        assert self._db is not None
        for name in os.listdir(self._tmp):  # half-written by a previous process
            _unlink(os.path.join(self._tmp, name))
        on_disk = {f"{sub}/{name}" for sub in _SUBDIRS
                   for name in os.listdir(os.path.join(self._data, sub))}
        missing = []
        rows = self._db.execute(
            "SELECT ident, version, idx, name, size, crc, used FROM blocks ORDER BY used")
        for ident_b, version_b, idx, name, size, crc, used in rows:
            if name not in on_disk:
                missing.append((ident_b, version_b, idx))
                continue
            on_disk.discard(name)
            key = (_dec(ident_b), _dec(version_b), idx)
            self._entries[key] = _Block(name, size, crc, used)
            self._by_ident.setdefault(key[0], set()).add(key)
            self._bytes += size
            self._tick = max(self._tick, used)
        for name in on_disk:  # renamed in, but the row never committed
            _unlink(os.path.join(self._data, name))
        if missing:
            self._db.executemany(
                "DELETE FROM blocks WHERE ident = ? AND version = ? AND idx = ?", missing)
        self._pinned = {_dec(r[0]) for r in self._db.execute("SELECT ident FROM pins")}
        # the limits may have shrunk since the last run
        while self._bytes > self.max_bytes:
            victim = next((k for k in self._entries if not self._held(k[0])), None)
            if victim is None:
                break
            self._evictions += 1
            self._finish([self._remove_locked(victim)], write_index=False)
        self._drain()


def _read_verified(fd: int, blk: _Block, offset: int, size: int) -> bytes | None:
    """The requested bytes, checking the whole block first unless this very file
    (inode, size, mtime) was checked before in this process; None if it is corrupt."""
    try:
        st = os.fstat(fd)
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if blk.verified != sig:
            if st.st_size != blk.size or _crc(fd, blk.size) != blk.crc:
                return None
            blk.verified = sig  # races here are benign: every thread sets the same value
        want = max(0, min(offset + size, blk.size) - offset)
        data = os.pread(fd, want, offset) if want else b""
    except OSError:
        return None  # an unreadable cache file is a miss, never an error for the reader
    return data if len(data) == want else None  # shorter: truncated after the fstat


def _crc(fd: int, size: int) -> int:
    crc = pos = 0
    while pos < size:
        chunk = os.pread(fd, min(_VERIFY_CHUNK, size - pos), pos)
        if not chunk:
            return -1  # shorter than recorded
        crc = zlib.crc32(chunk, crc)
        pos += len(chunk)
    return crc


def _write_file(path: str, data: bytes | memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
