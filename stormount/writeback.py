"""Write-back: the durable journal of files waiting for their upload, and the uploader.

`close` returns once the file's row is committed to the journal (sqlite in WAL mode,
beside the staging files): a crash of the daemon, even `kill -9`, loses nothing that was
acknowledged, because the kernel keeps both the staging file's pages and the journal's
log. `fsync` also forces both to the disk, so they survive a power cut.

A file is uploaded once its last writable descriptor is released, or when it is synced:
never while a writer may still be changing it. Until then its row is held. The kernel
says `close()` (a FUSE flush) before it says which close was the last (the release),
and `dd` closes a dup of its descriptor before it writes: a close journals the file
`CLOSED` (uploaded at the next start if the daemon dies before the release), and the
first write after it makes it `WRITING`. A `WRITING` row found at start is a file that
was still being written when the daemon died: its content goes to `recovered/`, never to
the store under its name half-written.

The uploader sends each file once it has been left alone for `debounce` seconds, at most
`parallel` at a time, conditional on the version the content was based on. Transient
failures are retried with exponential backoff and jitter (1, 2, 4, 8 s, capped at
`retry_max_delay`); after `retries` attempts, and after any other failure, the upload
stays queued as `failing` with its last error and is retried every
`failing_retry_delay` seconds: never dropped, never retried in a tight loop.

An object that changed in the store since the version a file was based on is not
overwritten: the local content is uploaded beside it as
`NAME.conflict-<host>-<UTC timestamp>`. A conditional upload that fails because our own
earlier attempt landed (a crash between the upload and the journal update) is recognised
by the object's size and metadata, which carry the file's mtime in nanoseconds.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import random
import socket
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from stormount.backends.base import Backend, ObjectInfo, Progress
from stormount.backends.resume import Part, Recorded, Resume
from stormount.chain.chain import conflict_name
from stormount.chain.health import RESERVED
from stormount.config import WritebackConfig
from stormount.durable import SqliteJournal
from stormount.errors import BackendError, Changed, NotFound, Transient
from stormount.ranges import Delta
from stormount.stats import Rate, human_size

log = logging.getLogger(__name__)

QUEUED, UPLOADING, FAILING = "queued", "uploading", "failing"
OPEN = "open"  # how a held upload is shown: written, waiting for its writer's last close
FINAL, CLOSED, WRITING = 0, 1, 2  # an upload's `held`
MARKER = ""  # the staging of a directory marker: it has no content
# a file above this goes in parts, several at once, each held in memory while it is
# sent: at most `parallel_large` of them upload at once, beside the small ones
LARGE = 8 * 1024 * 1024
HOT_MAX = 30.0  # the longest wait of a file closed again and again (seconds)
HOT_PATHS = 4096  # files whose last upload is remembered for that

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    path TEXT PRIMARY KEY,      -- the object key the file uploads to
    staging TEXT NOT NULL,      -- the local file holding its content
    base TEXT,                  -- version it was based on; NULL: a new object
    metadata TEXT NOT NULL,     -- JSON: the object's metadata (mode, uid, gid, mtime)
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    state TEXT NOT NULL,
    queued_at REAL NOT NULL,    -- wall-clock time of the close that queued it
    held INTEGER NOT NULL DEFAULT 0, -- 0: final; open for writing: 1 closed since its
                                     -- last write (CLOSED), 2 written since (WRITING)
    delta TEXT                  -- JSON: what differs from `base` (NULL: all of it)
);
"""
# a resumable multipart upload of a pending row (see backends/resume.py), and each of its
# parts as it lands: a row per part is cheaper to commit than a rewritten list. Created
# in older journals at their next open.
_SCHEMA += """
CREATE TABLE IF NOT EXISTS multipart (
    path TEXT PRIMARY KEY,      -- the pending row it uploads
    url TEXT NOT NULL,          -- the tier it was begun on
    key TEXT NOT NULL,          -- the object key it was begun for
    ident TEXT NOT NULL,        -- S3 upload id, Azure block-id prefix
    part_size INTEGER NOT NULL,
    signature TEXT NOT NULL,    -- of the staging file, base and metadata it uploads
    started REAL NOT NULL       -- seconds since the epoch
);
CREATE TABLE IF NOT EXISTS parts (
    path TEXT NOT NULL,
    part INTEGER NOT NULL,      -- 1-based
    etag TEXT NOT NULL,         -- S3 ETag, Azure block id
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,          -- of the bytes sent
    PRIMARY KEY (path, part)
);
"""
# columns added since the first version, for older journals: their rows were final, and
# describe no delta (they upload whole)
_ADDED = {"held": "ALTER TABLE pending ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
          "delta": "ALTER TABLE pending ADD COLUMN delta TEXT"}


@dataclass(eq=False)
class Upload:
    """One file waiting for its upload (a row of the journal)."""

    path: str
    staging: str
    base: str | None
    metadata: dict[str, str]
    revision: int = 0  # bumped by every hand-over (content or metadata)
    tries: int = 0  # failed attempts ever (attempts restarts with each hand-over)
    attempts: int = 0
    last_error: str | None = None
    state: str = QUEUED
    queued_at: float = field(default_factory=time.time)
    held: int = FINAL  # else a writer may still change it: not uploaded until released
    due: float = 0.0  # trio time of the next attempt
    finished: trio.Event = field(default_factory=trio.Event)  # the attempt in flight ended
    uploaded: trio.Event = field(default_factory=trio.Event)  # this content is stored
    progress: Progress | None = None  # of the attempt in flight, or the last one
    multipart: Recorded | None = None  # the resumable upload an attempt began
    resume: Resume | None = None  # of the attempt in flight, or the last one
    delta: Delta | None = None  # what differs from `base`; None: all of it
    wait: float = 0.0  # the debounce its last hand-over got (see Writeback._settle_after)
    since: float | None = None  # trio time of its first final hand-over not uploaded yet

    def describe(self) -> dict[str, object]:
        state = OPEN if self.held and self.state != UPLOADING else self.state
        size = staged_size(self.staging)
        moving = self.progress if self.state == UPLOADING else None
        return {"path": self.path, "state": state, "attempts": self.attempts,
                "last_error": self.last_error, "queued_at": self.queued_at,
                "size": size,
                # the attempt in flight (1 for the first), and how far it has got
                "attempt": self.attempts + 1 if moving is not None else None,
                "bytes_sent": None if moving is None else moving.sent,
                "bytes_total": None if moving is None else (
                    moving.total if moving.total is not None else size),
                "rate": None if moving is None else round(moving.rate.per_second(), 1),
                "eta": None if moving is None or (eta := moving.eta()) is None
                else round(eta, 1),
                "finishing": moving is not None and moving.finishing}


def staged_size(path: str) -> int | None:
    """The size of a row's staging file: 0 for a directory marker, None if it is gone."""
    if path == MARKER:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return None


class Journal(SqliteJournal):
    """The rows behind the upload queue. Every change is committed before the call
    returns; `durable=True` also syncs the log to the disk."""

    what = "write-back journal"

    def __init__(self, path: str) -> None:
        super().__init__(path, _SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(pending)")}
        for column, alter in _ADDED.items():
            if column not in columns:
                self._db.execute(alter)

    def load(self) -> list[Upload]:
        rows = self._db.execute(
            "SELECT path, staging, base, metadata, attempts, last_error, state, queued_at,"
            " held, delta FROM pending ORDER BY queued_at").fetchall()
        recorded = self.multiparts()
        return [Upload(path=p, staging=s, base=b, metadata=json.loads(m), attempts=a,
                       last_error=e, state=FAILING if st == FAILING else QUEUED, queued_at=q,
                       held=h, multipart=recorded.get(p), delta=Delta.loads(d))
                for p, s, b, m, a, e, st, q, h, d in rows]

    def multiparts(self) -> dict[str, Recorded]:
        """The resumable uploads recorded, by the path of their row, with their parts."""
        return _multiparts(self._db)

    def begin_multipart(self, path: str, rec: Recorded) -> None:
        self._write(False, ("DELETE FROM parts WHERE path = ?", (path,)), (
            "INSERT OR REPLACE INTO multipart (path, url, key, ident, part_size, signature,"
            " started) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (path, rec.url, rec.key, rec.ident, rec.part_size, rec.signature, rec.started)))

    def add_part(self, path: str, part: Part) -> None:
        self._write(False, (
            "INSERT OR REPLACE INTO parts (path, part, etag, size, md5) VALUES (?, ?, ?, ?, ?)",
            (path, part.number, part.etag, part.size, part.md5)))

    def drop_multipart(self, path: str) -> None:
        self._write(False, *_dropping(path))

    def put(self, up: Upload, *, durable: bool = False) -> None:
        self._write(durable, (
            "INSERT OR REPLACE INTO pending (path, staging, base, metadata, attempts,"
            " last_error, state, queued_at, held, delta)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (up.path, up.staging, up.base, json.dumps(up.metadata, sort_keys=True),
             up.attempts, up.last_error, up.state, up.queued_at, up.held,
             None if up.delta is None else up.delta.dumps())))

    def remove(self, path: str) -> None:
        self._write(False, ("DELETE FROM pending WHERE path = ?", (path,)), *_dropping(path))

    def rename(self, old: str, new: str, base: str | None) -> None:
        # the recorded upload moves with its row: begun for the old key, the next
        # attempt finds it stale and aborts it
        self._write(False, ("DELETE FROM pending WHERE path = ?", (new,)), *_dropping(new),
                    # (a delta describes the object under the old name: uploaded whole)
                    ("UPDATE pending SET path = ?, base = ?, delta = NULL WHERE path = ?",
                     (new, base, old)),
                    ("UPDATE multipart SET path = ? WHERE path = ?", (new, old)),
                    ("UPDATE parts SET path = ? WHERE path = ?", (new, old)))


def _dropping(path: str) -> tuple[tuple[str, tuple[object, ...]], ...]:
    return (("DELETE FROM multipart WHERE path = ?", (path,)),
            ("DELETE FROM parts WHERE path = ?", (path,)))


def _multiparts(db: sqlite3.Connection) -> dict[str, Recorded]:
    out = {p: Recorded(url=u, key=k, ident=i, part_size=z, signature=s, started=t)
           for p, u, k, i, z, s, t in db.execute(
               "SELECT path, url, key, ident, part_size, signature, started FROM multipart")}
    for p, n, etag, size, md5 in db.execute("SELECT path, part, etag, size, md5 FROM parts"):
        if p in out:
            out[p].parts[n] = Part(n, etag, size, md5)
    return out


def recovered_dir(cache: str) -> str:
    """Where data that is kept but not uploaded goes, in a cache directory: one folder
    per time it happened."""
    return os.path.join(cache, "recovered", time.strftime("%Y%m%dT%H%M%S"))


def reserved(path: str) -> bool:
    """Is this row under the reserved `.stormount/`? An earlier version took such rows
    in: their uploads can never be stored, and would keep the queue from draining for
    ever."""
    return path.startswith(RESERVED)


def reserved_rows(journal: Journal) -> list[Upload]:
    return [up for up in journal.load() if reserved(up.path)]


def recover_reserved(journal: Journal, up: Upload, keep: str) -> str | None:
    """Drop such a row (the daemon at its start, `gc --cache-dir --apply`), its data
    first moved to `keep`/<its path>, beside whatever is there already; where the data
    went, or None when it has none (a directory marker, a staging file gone)."""
    dest = None
    if up.staging != MARKER and os.path.lexists(up.staging):
        dest = os.path.join(keep, up.path)
        while os.path.lexists(dest):
            dest += "~"
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(up.staging, dest)
    journal.remove(up.path)
    return dest


def read_multiparts(path: str) -> list[Recorded]:
    """The resumable uploads a journal records (for `stormount gc`, which must not take
    them for orphans), read-only; none from a journal older than them."""
    if not os.path.exists(path):
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return list(_multiparts(db).values())
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def read_pending(path: str) -> list[dict[str, object]]:
    """The queue as another process (the CLI waiting for an unmount) sees it."""
    if not os.path.exists(path):
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT path, state, attempts, last_error, held FROM pending"
                          " ORDER BY queued_at").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    # (a CLOSED row may have been released since: only the running daemon knows)
    return [{"path": p, "state": OPEN if h == WRITING and s != UPLOADING else s,
             "attempts": a, "last_error": e} for p, s, a, e, h in rows]


def backoff(attempt: int, cfg: WritebackConfig, rng: random.Random) -> float:
    """Delay before retry number `attempt` (1-based): 1, 2, 4, 8 ... s, capped, with up
    to 20% jitter so many failed uploads do not retry in step."""
    if attempt > cfg.retries:
        base = cfg.failing_retry_delay
    else:
        base = min(cfg.retry_delay * 2 ** (attempt - 1), cfg.retry_max_delay)
    return base * (1 + 0.2 * rng.random())


class Writeback:
    """The upload queue. The filesystem hands files over with `submit` and tells it of
    renames and unlinks; `run` uploads in the background."""

    def __init__(self, backend: Backend, journal: Journal, cfg: WritebackConfig, *,
                 on_uploaded: Callable[[str, ObjectInfo, bool], None] = lambda *a: None,
                 on_conflict: Callable[[str, str, ObjectInfo], None] = lambda *a: None,
                 host: str | None = None, seed: int | None = None) -> None:
        self.backend = backend
        self.journal = journal
        self.cfg = cfg
        self.on_uploaded = on_uploaded
        self.on_conflict = on_conflict
        self.host = (host or socket.gethostname()).split(".")[0] or "host"
        self._uploads: dict[str, Upload] = {}
        # (due, n, upload): the next attempts in time order; an entry whose due time is
        # no longer its upload's is stale and skipped
        self._due: list[tuple[float, int, Upload]] = []
        self._seq = itertools.count()
        self._active = 0
        self._active_large = 0  # of them, files above LARGE
        # path -> (trio time its last upload started, the wait it had): files closed
        # again soon after an upload wait longer (see _settle_after)
        self._hot: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._draining = False
        self._rng = random.Random(seed)
        self._abandoned: list[Recorded] = []  # resumable uploads to abort (run does)
        self.uploaded = 0  # counters for stats
        self.failures = 0
        self.conflicts = 0
        self.bytes_uploaded = 0  # sizes of the uploads done
        self.throughput = Rate()  # bytes sent, as they go out (re-sent ones too)

    # --- what the filesystem tells us ---------------------------------------------

    def restore(self) -> list[Upload]:
        """The journal's rows from an earlier run, queued again (due at once): the
        content of a file closed then is final now. `WRITING` rows (files being written
        then) are the caller's to recover first."""
        for up in self.journal.load():
            if up.held == WRITING:
                continue
            up.held = FINAL
            self._uploads[up.path] = up
            self._schedule(up, trio.current_time())
        return list(self._uploads.values())

    def submit(self, path: str, staging: str, base: str | None, metadata: dict[str, str],
               *, durable: bool = False, held: int = FINAL,
               delta: Delta | None = None) -> Upload:
        """Journal a file's content: `held` (CLOSED) while a writer may still change it
        (a close of one of its descriptors), else final for now (its last writer closed,
        or it was synced) and uploaded after the debounce. A file already queued keeps its
        place in the journal and the version it was based on; an upload in flight
        finishes first. `delta`: what of the content differs from the stored version
        `base` (an upload then copies the rest in the store)."""
        up = self._uploads.get(path)
        if up is None:
            up = self._uploads[path] = Upload(path=path, staging=staging, base=base,
                                              metadata=metadata)
        else:
            up.staging, up.metadata = staging, metadata
            if up.uploaded.is_set():
                up.uploaded = trio.Event()
            if up.state != UPLOADING:
                up.state, up.attempts, up.last_error = QUEUED, 0, None
        up.held = FINAL if self._draining else held
        up.delta = delta if delta is not None and delta.etag == up.base else None
        up.revision += 1
        log.debug("queued %s (revision %d, %s%s)", path, up.revision, up.state,
                  ", held" if up.held else "")
        self.journal.put(up, durable=durable)
        if not up.held:
            self._settle_after(up)
        return up

    def release(self, path: str, staging: str) -> None:
        """The last writer of a file journaled `CLOSED` is done, and nothing changed
        since: it uploads after the debounce. (Its row stays as it is: a `CLOSED` row is
        uploaded at the next start as well.)"""
        up = self._uploads.get(path)
        if up is None or up.held != CLOSED or up.staging != staging:
            return  # (another file of that name is queued now)
        up.held = FINAL
        self._settle_after(up)

    def _settle_after(self, up: Upload) -> None:
        """A file's content is final for now: its upload is due once it has been left
        alone for `debounce`. A file uploaded lately and closed again waits twice as
        long as it did then (up to HOT_MAX), so one rewritten again and again is sent
        less and less often; and no file waits more than HOT_MAX since its first close
        still waiting, however often it is closed again."""
        now = trio.current_time()
        if self._draining:
            self._schedule(up, now)
            return
        wait = self.cfg.debounce
        hot = self._hot.get(up.path)
        if hot is not None and wait > 0 and now - hot[0] < HOT_MAX:
            wait = min(max(hot[1] * 2, wait), HOT_MAX)
        up.wait = wait
        if up.since is None:
            up.since = now
        self._schedule(up, max(now, min(now + wait, up.since + HOT_MAX)))

    def hold(self, path: str, staging: str) -> None:
        """A writer changes a queued file (closed or synced before): it is `WRITING`,
        and waits for its writer's last close (or next sync) once more. While draining
        for an unmount, the change is uploaded instead (nothing would release it)."""
        up = self._uploads.get(path)
        if up is None or up.held == WRITING or up.staging != staging:
            return  # (another file of that name, made after this one was unlinked)
        if self._draining:
            up.revision += 1  # an upload in flight is followed by one of this content
            self._schedule(up, trio.current_time())
            return
        before, up.held = up.held, WRITING
        try:
            self.journal.put(up)
        except OSError:
            up.held = before
            raise

    def reconfigure(self, cfg: WritebackConfig) -> None:
        """New settings while running (SIGHUP). A shorter debounce brings the uploads
        waiting for theirs forward; a failing upload keeps its retry time."""
        old, self.cfg = self.cfg, cfg
        now = trio.current_time()
        for up in list(self._uploads.values()):
            if up.state == QUEUED and up.attempts == 0:
                due = max(now, up.due - old.debounce + cfg.debounce)
                if due < up.due:
                    self._schedule(up, due)
        self._wake.set()  # a higher `parallel` may start more at once

    def _schedule(self, up: Upload, due: float) -> None:
        up.due = due
        heapq.heappush(self._due, (due, next(self._seq), up))
        self._wake.set()

    def get(self, path: str) -> Upload | None:
        return self._uploads.get(path)

    async def settle(self, path: str) -> Upload | None:
        """Wait until no upload of `path` is in flight; its queue entry, if any."""
        while (up := self._uploads.get(path)) is not None and up.state == UPLOADING:
            await up.finished.wait()
        return up

    async def discard(self, path: str) -> bool:
        """The file is gone (unlinked or replaced): nothing uploads under its name any
        more. True if something was queued."""
        if await self.settle(path) is None:
            return False
        self.forget(path)
        return True

    def forget(self, path: str) -> None:
        """Drop a queue entry at once (the caller knows no upload of it is in flight)."""
        up = self._uploads.pop(path, None)
        self.journal.remove(path)
        if up is not None:
            self._abandon(up)
            up.uploaded.set()  # nobody waits for it any more
            self._notify()

    def _abandon(self, up: Upload) -> None:
        """Nothing will upload this any more: its recorded multipart upload, if any, is
        aborted in the background (best effort: one left behind is found by gc)."""
        if up.multipart is not None:
            self._abandoned.append(up.multipart)
            up.multipart = None
            self._wake.set()

    async def rename(self, old: str, new: str, base: str | None,
                     metadata: dict[str, str] | None = None) -> bool:
        """A queued file moved: it uploads under its new name, replacing the version
        `base` there (None: nothing is there), with `metadata` when given. True if
        something was queued."""
        up = await self.settle(old)
        if up is None:
            return False
        replaced = self._uploads.pop(new, None)
        if replaced is not None:
            self._abandon(replaced)
            replaced.uploaded.set()
            self._notify()
        del self._uploads[old]
        up.path, up.base, up.delta = new, base, None
        self._uploads[new] = up
        self.journal.rename(old, new, base)
        if metadata is not None and metadata != up.metadata:
            up.metadata = metadata
            self.journal.put(up)
        return True

    def under(self, prefix: str) -> list[Upload]:
        return [up for path, up in self._uploads.items() if path.startswith(prefix)]

    def pending(self) -> list[Upload]:
        return sorted(self._uploads.values(), key=lambda up: up.queued_at)

    # --- waiting ------------------------------------------------------------------

    async def _progress(self) -> None:
        """Until the queue changes: an attempt ends or an entry goes."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _release(self, ups: Iterable[Upload]) -> None:
        """Asked to upload now (a flush, an unmount): what is written so far goes, files
        still open included; a later write holds them again."""
        for up in list(ups):
            if up.held:
                up.held = FINAL
                try:
                    self.journal.put(up)
                except OSError as e:  # uploaded anyway; a crash now recovers it whole
                    log.warning("cannot record %s as released: %s", up.path, e)
                self._schedule(up, trio.current_time())

    def retry_now(self) -> None:
        """A tier came back: uploads waiting for their next attempt (after failures)
        go now rather than after their backoff, which may be a minute."""
        self._hurry(up for up in self._uploads.values() if up.attempts and not up.held)

    def _hurry(self, ups: Iterable[Upload]) -> None:
        now = trio.current_time()
        for up in list(ups):
            if up.due > now:
                self._schedule(up, now)

    async def wait_uploaded(self, path: str) -> None:
        """Until the content queued for `path` is in the store (fsync=upload); raises the
        error once the upload is failing. No debounce for a waiting writer."""
        up = self._uploads.get(path)
        if up is None:
            return
        self._hurry([up])
        tries = up.tries
        while not up.uploaded.is_set():
            if up.state == FAILING and up.tries > tries:
                raise _failure(up)
            await self._progress()

    async def flush(self, paths: Iterable[str] | None = None) -> list[Upload]:
        """Upload now (no debounce) and wait: everything, or the given paths. Returns
        what is still pending because it is failing."""
        wanted = None if paths is None else set(paths)
        chosen = [(up, up.tries) for up in self._uploads.values()
                  if wanted is None or up.path in wanted]
        self._release(up for up, _ in chosen)
        self._hurry(up for up, _ in chosen)
        while any(not up.uploaded.is_set() and not (up.state == FAILING and up.tries > n)
                  for up, n in chosen):
            await self._progress()
        return [up for up, _ in chosen if not up.uploaded.is_set()]

    def hurry(self, on: bool = True) -> None:
        """The mount is ending: upload everything now and what comes later at once (no
        debounce). Off again when an unmount was refused and the mount goes on."""
        self._draining = on
        if on:
            self._hurry(self._uploads.values())

    async def drain(self) -> None:
        """Upload everything now and keep retrying until the queue is empty (shutdown);
        the caller bounds the wait."""
        self.hurry()
        self._release(self._uploads.values())  # files still open too: nothing will close them
        while self._uploads:
            await self._progress()

    # --- the uploader -------------------------------------------------------------

    async def run(self) -> None:
        """Start uploads as they fall due, at most `parallel` at once; runs until
        cancelled. Uploads in flight at cancellation are abandoned (they stay queued)."""
        async with trio.open_nursery() as nursery:
            while True:
                self._wake = trio.Event()
                while self._abandoned:
                    nursery.start_soon(self._abort, self._abandoned.pop())
                now = trio.current_time()
                next_due = math.inf
                waiting: list[Upload] = []  # large, due, and no room for one more
                while self._due and self._active < self.cfg.parallel:
                    due, _, up = self._due[0]
                    if (self._uploads.get(up.path) is not up or up.state == UPLOADING
                            or due != up.due or up.held):
                        heapq.heappop(self._due)  # stale: rescheduled, running, gone, held
                    elif due > now:
                        next_due = due
                        break
                    else:
                        heapq.heappop(self._due)
                        large = (staged_size(up.staging) or 0) > LARGE
                        if large and self._active_large >= self.cfg.parallel_large:
                            waiting.append(up)  # until a large one ends (it wakes us)
                        else:
                            self._start(nursery, up, large)
                for up in waiting:
                    heapq.heappush(self._due, (up.due, next(self._seq), up))
                with trio.move_on_at(next_due):
                    await self._wake.wait()

    async def _abort(self, rec: Recorded) -> None:
        try:
            with trio.move_on_after(60):
                await self.backend.abandon(rec)
        except (BackendError, OSError) as e:
            log.warning("cannot abort the upload of %s begun on %s: %s", rec.key, rec.url, e)

    def _start(self, nursery: trio.Nursery, up: Upload, large: bool) -> None:
        log.debug("uploading %s (revision %d)", up.path, up.revision)
        self._hot[up.path] = (trio.current_time(), up.wait)  # see _settle_after
        self._hot.move_to_end(up.path)
        if len(self._hot) > HOT_PATHS:
            self._hot.popitem(last=False)
        up.since = None  # what is closed from now on waits anew
        up.state = UPLOADING
        up.finished = trio.Event()
        self._active += 1
        self._active_large += large
        nursery.start_soon(self._upload, up, large)

    async def _upload(self, up: Upload, large: bool = False) -> None:
        revision, path = up.revision, up.path
        try:
            try:
                info, conflict = await self._send(up)
            except (BackendError, OSError) as e:
                self._failed(up, e)
                return
            except Exception as e:  # a bug must not stop the uploader: keep the file queued
                log.exception("upload of %s failed unexpectedly", up.path)
                self._failed(up, e)
                return
            self.bytes_uploaded += info.size
            self._succeeded(up, path, revision, info, conflict)
        finally:
            self._active -= 1
            self._active_large -= large
            if up.state == UPLOADING:
                up.state = QUEUED  # cancelled: it stays queued for the next run
            if self._uploads.get(up.path) is up:
                # handed over again while uploading, or failed: its next attempt
                self._schedule(up, max(up.due, trio.current_time()))
            up.finished.set()
            self._notify()
            self._wake.set()

    async def _send(self, up: Upload) -> tuple[ObjectInfo, str | None]:
        up.progress = progress = Progress(self.throughput)
        if up.staging == MARKER:
            # a directory marker holds only metadata: the last one written wins
            return await self.backend.put_bytes(up.path, b"", up.metadata), None
        up.resume = self._resume(up)
        try:
            return await self.backend.put_file(up.path, up.staging, up.metadata,
                                               if_match=up.base,
                                               if_absent=up.base is None,
                                               progress=progress, resume=up.resume), None
        except Changed:
            mine = await self._landed(up)
            if mine is not None:
                return mine, None
        # someone else changed the object: keep theirs, put ours beside it
        when = time.time()
        for n in range(100):
            name = conflict_name(up.path, self.host, when, n)
            try:
                info = await self.backend.put_file(name, up.staging, up.metadata,
                                                   if_absent=True, progress=progress)
            except Changed:
                continue
            return info, name
        raise Changed(f"no free conflict name for {up.path}", key=up.path)

    def _resume(self, up: Upload) -> Resume | None:
        """What the backend needs to continue (and record) a multipart upload of this
        content: its signature, and the upload an earlier attempt recorded, if any."""
        try:
            st = os.stat(up.staging)
        except OSError:
            return None  # the upload fails on the missing file anyway
        meta = hashlib.sha256(json.dumps(up.metadata, sort_keys=True).encode()).hexdigest()
        # size, mtime and inode of the staging file: any write changes them (the part MD5s
        # catch one within a clock tick); the base version: the completion's condition;
        # the metadata: S3 fixes it when the upload begins
        signature = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}|{up.base or ''}|{meta[:16]}"
        path = up.path

        def started(rec: Recorded) -> None:
            if up.multipart is not None and up.multipart.url != rec.url:
                # begun on another tier (a failover): the earlier one is not continued
                self._abandoned.append(up.multipart)
                self._wake.set()
            up.multipart = rec
            self._record(path, self.journal.begin_multipart, path, rec)

        def landed(rec: Recorded, part: Part) -> None:
            if up.multipart is rec:
                self._record(path, self.journal.add_part, path, part)

        def dropped(rec: Recorded) -> None:
            if up.multipart is rec:
                up.multipart = None
                self._record(path, self.journal.drop_multipart, path)

        delta = up.delta if up.delta is not None and up.delta.etag == up.base else None
        return Resume(signature, up.multipart, on_started=started, on_landed=landed,
                      on_dropped=dropped, delta=delta)

    def _record(self, path: str, write: Callable[..., None], *args: object) -> None:
        if self._uploads.get(path) is None:
            return  # dropped from the queue meanwhile: its rows are gone
        try:
            write(*args)
        except OSError as e:  # the upload goes on; a later attempt may redo more parts
            log.warning("cannot record the multipart upload of %s: %s", path, e)

    async def _landed(self, up: Upload) -> ObjectInfo | None:
        """The object, if it is this very content (our own earlier attempt landed)."""
        try:
            info = await self.backend.head(up.path)
        except NotFound:
            return None
        size = staged_size(up.staging)
        if info.metadata is not None and dict(info.metadata) == up.metadata and (
                info.size == size):
            return info
        return None

    def _succeeded(self, up: Upload, path: str, revision: int, info: ObjectInfo,
                   conflict: str | None) -> None:
        current = self._uploads.get(up.path)
        if conflict is not None:
            self.conflicts += 1
            log.warning("%s changed in the store since it was opened here: kept the store's "
                        "version, uploaded this one as %s", path, conflict,
                        extra={"event": "conflict", "key": path, "conflict": conflict})
            if current is up and up.revision != revision:
                # handed over again while the copy went up: the newer content follows it
                # to the conflict name, based on the copy just stored
                del self._uploads[up.path]
                up.path, up.base, up.state, up.attempts = conflict, info.etag, QUEUED, 0
                self._uploads[conflict] = up
                try:
                    self.journal.rename(path, conflict, info.etag)
                except OSError as e:  # the old row stands: a restart sends it again
                    log.warning("cannot record %s as following %s: %s", path, conflict, e)
            elif current is up:
                del self._uploads[up.path]
                self._unjournal(up.path)
                self._abandon(up)  # one begun on a tier it did not land on
                up.state = QUEUED
                up.uploaded.set()
            self.on_conflict(path, conflict, info)
            return
        self.uploaded += 1
        self._log_uploaded(up, path, info)
        if current is up and up.path == path and up.revision == revision:
            del self._uploads[up.path]
            self._unjournal(up.path)
            self._abandon(up)  # one begun on a tier it did not land on
            up.state = QUEUED
            up.uploaded.set()
        elif current is up:
            # changed (or renamed) while uploading: upload again, based on what we just
            # stored (under the old name, a rename deletes it)
            up.state, up.attempts, up.last_error = QUEUED, 0, None
            if up.path == path:
                up.base, up.delta = info.etag, None
            try:
                self.journal.put(up)
            except OSError as e:  # the old row stands; a restart re-sends, harmlessly
                log.warning("cannot record the new base version of %s: %s", up.path, e)
        self.on_uploaded(path, info, self._uploads.get(path) is None)

    def _log_uploaded(self, up: Upload, path: str, info: ObjectInfo) -> None:
        """One line per upload done: the last word on the file, even after failures."""
        progress = up.progress
        seconds = 0.0 if progress is None else time.monotonic() - progress.started
        if progress is not None:
            progress.done(info.size)  # what the backend did not report still counts
        rate = info.size / seconds if seconds > 0 else 0.0
        after = f" after {up.attempts + 1} attempts" if up.attempts else ""
        resume = up.resume
        if resume is not None and resume.reused:
            after += (f"; resumed: {resume.reused} of {resume.parts} parts were already "
                      "stored")
        log.info("uploaded %s: %s in %.1f s (%s/s)%s", path, human_size(info.size),
                seconds, human_size(rate), after,
                extra={"event": "uploaded", "key": path, "size": info.size,
                       "seconds": round(seconds, 3), "attempts": up.attempts + 1})

    def _unjournal(self, path: str) -> None:
        try:
            self.journal.remove(path)
        except OSError as e:
            # the upload is done; a restart would send it again and see it is ours
            log.warning("cannot remove %s from the journal: %s", path, e)

    def _failed(self, up: Upload, error: Exception) -> None:
        self.failures += 1
        up.attempts += 1
        up.tries += 1
        up.last_error = str(error) or type(error).__name__
        retryable = isinstance(error, Transient)
        if not retryable or up.attempts >= self.cfg.retries:
            if up.state != FAILING:
                log.error("upload of %s is failing (attempt %d), kept queued: %s",
                          up.path, up.attempts, up.last_error,
                          extra={"event": "upload_failing", "key": up.path,
                                 "error": up.last_error})
            up.state = FAILING
            delay = backoff(self.cfg.retries + 1, self.cfg, self._rng)
        else:
            up.state = QUEUED
            delay = backoff(up.attempts, self.cfg, self._rng)
            log.info("upload of %s failed (attempt %d), retrying in %.1f s: %s",
                     up.path, up.attempts, delay, up.last_error,
                     extra={"event": "upload_retry", "key": up.path, "error": up.last_error})
        up.due = trio.current_time() + delay  # scheduled when the attempt has ended
        if self._uploads.get(up.path) is up:
            try:
                self.journal.put(up)
            except OSError as e:
                log.warning("cannot record the failure of %s: %s", up.path, e)


def _failure(up: Upload) -> BackendError:
    return BackendError(f"upload of {up.path} is failing: {up.last_error}", key=up.path)
