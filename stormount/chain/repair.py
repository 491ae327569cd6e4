"""The repair queue: what the tiers still owe each other, durable across crashes.

A task says what one tier must do for one key:
- on the primary (tier 0), `copy` from `src`: the newest version was spilled to a lower
  tier while the primary was down, and must be copied up (a "spill");
- on the primary, `delete`: the key was deleted while the primary was down;
- on a mirror, `copy`: it must get the current version; `delete`: it must drop the key;
- on a spill-over tier, `delete`: a spilled copy that is no longer needed.

Rows that are the only record of acknowledged data (spills, deletes on the primary)
are synced to disk before the request that made them returns."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import trio

from stormount.backends.base import ObjectInfo
from stormount.chain.tier import Kind, Tier
from stormount.durable import SqliteJournal
from stormount.errors import Changed, Transient

COPY, DELETE = "copy", "delete"
ABSENT = "absent"  # the condition of a spill made with if_absent
STAMP = "stormount-copy-of"  # metadata: the version an object is a copy of
CHUNK = 8 * 1024 * 1024  # unit of a copy between tiers (memory stays constant)
SLICE = 1024 * 1024  # hashed and written between checkpoints

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT NOT NULL,
    tier INTEGER NOT NULL,       -- the tier that must act
    action TEXT NOT NULL,        -- 'copy' or 'delete'
    src INTEGER,                 -- copy to the primary: the tier holding the spilled copy
    cond TEXT,                   -- copy to the primary: 'absent', 'match:VERSION' or NULL
    size INTEGER, etag TEXT, mtime REAL,  -- copy: the version meanwhile shown in listings
    seq INTEGER NOT NULL,
    since REAL NOT NULL,         -- wall clock of the request that made the task
    PRIMARY KEY (key, tier)
);
CREATE TABLE IF NOT EXISTS tiers (
    idx INTEGER PRIMARY KEY,     -- the tier numbers the tasks use
    url TEXT NOT NULL
);
"""


@dataclass(eq=False)
class Task:
    key: str
    tier: int
    action: str
    src: int | None = None
    cond: str | None = None
    size: int = 0
    etag: str = ""
    mtime: float = 0.0
    seq: int = 0
    since: float = field(default_factory=time.time)
    attempts: int = 0  # in memory only
    last_error: str | None = None

    @property
    def ident(self) -> tuple[str, int]:
        return (self.key, self.tier)

    def info(self) -> ObjectInfo:
        return ObjectInfo(key=self.key, size=self.size, mtime=self.mtime, etag=self.etag)


class RepairJournal(SqliteJournal):
    what = "repair journal"

    def __init__(self, path: str) -> None:
        super().__init__(path, _SCHEMA)

    def tiers(self) -> list[str]:
        return [url for (url,) in self._db.execute("SELECT url FROM tiers ORDER BY idx")]

    def set_tiers(self, urls: list[str]) -> None:
        self._write(True, ("DELETE FROM tiers", ()), *(
            ("INSERT INTO tiers (idx, url) VALUES (?, ?)", (i, url))
            for i, url in enumerate(urls)))

    def load(self) -> list[Task]:
        rows = self._db.execute(
            "SELECT key, tier, action, src, cond, size, etag, mtime, seq, since FROM tasks"
            " ORDER BY seq").fetchall()
        return [Task(*row) for row in rows]

    def apply(self, puts: Iterable[Task], drops: Iterable[tuple[str, int]],
              durable: bool) -> None:
        statements: list[tuple[str, tuple[object, ...]]] = [
            ("DELETE FROM tasks WHERE key = ? AND tier = ?", ident) for ident in drops]
        statements += [(
            "INSERT OR REPLACE INTO tasks (key, tier, action, src, cond, size, etag, mtime,"
            " seq, since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (t.key, t.tier, t.action, t.src, t.cond, t.size, t.etag, t.mtime, t.seq, t.since))
            for t in puts]
        if statements:
            self._write(durable, *statements)


class Pending:
    """The tasks in memory (what routing and listings consult), written through to the
    journal, and the queue the repair worker takes them from."""

    def __init__(self, journal: RepairJournal) -> None:
        self.journal = journal
        self.tasks: dict[tuple[str, int], Task] = {}
        self._keys: list[str] = []  # sorted keys that have tasks, for listings
        self._count: dict[str, int] = {}
        loaded = journal.load()
        self._seq = itertools.count(max((t.seq for t in loaded), default=0) + 1)
        self.ready: deque[tuple[str, int]] = deque()
        self._queued: set[tuple[str, int]] = set()
        self.changed = trio.Event()
        for task in loaded:
            self._index(task)

    def get(self, key: str, tier: int) -> Task | None:
        return self.tasks.get((key, tier))

    def apply(self, puts: list[Task], drops: Iterable[tuple[str, int]] = (), *,
              durable: bool = False) -> None:
        """Record tasks (replacing those of the same key and tier) and drop others: in
        the journal first (OSError if it cannot take them), then here."""
        drops = [d for d in drops if d in self.tasks and d not in {t.ident for t in puts}]
        for task in puts:
            task.seq = next(self._seq)
        self.journal.apply(puts, drops, durable)
        for ident in drops:
            self._unindex(self.tasks.pop(ident))
        for task in puts:
            old = self.tasks.get(task.ident)
            if old is not None:
                self._unindex(old)
            self._index(task)
        self._wake()

    def finish(self, task: Task, *, durable: bool = False) -> None:
        """A task is done, unless a newer one replaced it meanwhile."""
        if self.tasks.get(task.ident) is task:
            self.apply([], [task.ident], durable=durable)

    def requeue(self, idents: Iterable[tuple[str, int]]) -> None:
        for ident in idents:
            if ident in self.tasks and ident not in self._queued:
                self._queued.add(ident)
                self.ready.append(ident)
        self._wake()

    def take(self) -> Task | None:
        while self.ready:
            ident = self.ready.popleft()
            self._queued.discard(ident)
            task = self.tasks.get(ident)
            if task is not None:
                return task
        return None

    def between(self, prefix: str, after: str | None, upto: str | None) -> Iterator[str]:
        """Keys with tasks under `prefix`, after `after` and up to `upto` (inclusive)."""
        lo = max(prefix, after or "")
        start = bisect.bisect_right(self._keys, lo) if after else bisect.bisect_left(
            self._keys, lo)
        for key in itertools.islice(self._keys, start, None):
            if not key.startswith(prefix) or (upto is not None and key > upto):
                return
            yield key

    def counts(self) -> dict[str, int]:
        out = {"spilled": 0, "deletes": 0, "mirror_copies": 0, "cleanups": 0}
        for t in self.tasks.values():
            if t.tier == 0:
                out["spilled" if t.action == COPY else "deletes"] += 1
            elif t.action == COPY:
                out["mirror_copies"] += 1
            else:
                out["cleanups"] += 1
        return out

    def _index(self, task: Task) -> None:
        self.tasks[task.ident] = task
        n = self._count.get(task.key, 0)
        if n == 0:
            bisect.insort(self._keys, task.key)
        self._count[task.key] = n + 1
        if task.ident not in self._queued:
            self._queued.add(task.ident)
            self.ready.append(task.ident)
        self._wake()

    def _unindex(self, task: Task) -> None:
        """Forget the key of a task already taken out of `tasks`."""
        n = self._count[task.key] - 1
        if n == 0:
            del self._count[task.key]
            i = bisect.bisect_left(self._keys, task.key)
            del self._keys[i]
        else:
            self._count[task.key] = n

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


def new_task(key: str, tier: int, action: str, **fields: object) -> Task:
    return Task(key=key, tier=tier, action=action, **fields)  # type: ignore[arg-type]


def cond_of(if_match: str | None, if_absent: bool) -> str | None:
    if if_match is not None:
        return f"match:{if_match}"
    return ABSENT if if_absent else None


def stamped(info: ObjectInfo) -> dict[str, str]:
    """The metadata a copy of this version carries: its own, and which version it is."""
    meta = dict(info.metadata or {})
    meta[STAMP] = meta.get(STAMP) or info.etag
    return meta


async def transfer(src: Tier, dst: Tier, key: str, spool: str, *, dst_key: str | None = None,
                   if_match: str | None = None, if_absent: bool = False,
                   verify: bool = False) -> ObjectInfo:
    """Copy the current version of `key` from `src` to `dst` (as `dst_key`) through a
    file in `spool`, in CHUNK pieces; with `verify`, read the copy back and compare
    size and SHA-256. Transient when the copy does not match."""
    dst_key = dst_key or key
    info = await src.call(Kind.LIST, src.backend.head, key)
    meta = stamped(info)
    if key.endswith("/"):  # a directory marker: metadata only
        return await dst.call(Kind.UPLOAD, dst.backend.put_bytes, dst_key, b"", meta)
    async with _spooled(spool) as (path, f):
        digest = await _fetch(src, key, info.size, info.etag, f)
        f.flush()
        stored = await dst.call(Kind.UPLOAD, dst.backend.put_file, dst_key, path, meta,
                                if_match=if_match, if_absent=if_absent)
    if stored.size != info.size:
        raise Transient(f"copy of {key} to {dst.url} has {stored.size} bytes, "
                        f"not {info.size}", key=key)
    if verify:
        with open(os.devnull, "wb") as sink:
            again = await _fetch(dst, dst_key, info.size, stored.etag, sink)
        if again != digest:
            raise Transient(f"copy of {key} to {dst.url} reads back different bytes", key=key)
    return stored


async def _fetch(tier: Tier, key: str, size: int, version: str, out: BinaryIO) -> str:
    """Read the whole object into `out` (a binary file), returning its SHA-256."""
    digest = hashlib.sha256()
    for offset in range(0, size, CHUNK):
        length = min(CHUNK, size - offset)
        data = await tier.call(Kind.DOWNLOAD, tier.backend.get_range, key, offset, length,
                               version)
        if len(data) != length:
            raise Changed(f"{key} on {tier.url} is shorter than it was", key=key)
        view = memoryview(data)
        for at in range(0, length, SLICE):  # a few ms at a time on the event loop
            digest.update(view[at:at + SLICE])
            out.write(view[at:at + SLICE])
            await trio.lowlevel.checkpoint()
    return digest.hexdigest()


@contextlib.asynccontextmanager
async def _spooled(spool: str) -> AsyncIterator[tuple[str, BinaryIO]]:
    os.makedirs(spool, exist_ok=True)
    path = os.path.join(spool, f"copy-{os.getpid()}-{next(_names)}")
    f = open(path, "wb")  # noqa: SIM115 - closed below, also when cancelled
    try:
        yield path, f
    finally:
        f.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


_names = itertools.count()
