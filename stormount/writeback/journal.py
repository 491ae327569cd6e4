"""The write-back journal: the rows behind the upload queue and the resumable uploads
they began; read-only readers for other processes (the CLI, gc), and the recovery of rows
that can never be uploaded."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator

from stormount.backends.resume import Part, Recorded
from stormount.chain.health import reserved
from stormount.durable import SqliteJournal
from stormount.ranges import Delta
from stormount.writeback.upload import FAILING, MARKER, OPEN, QUEUED, UPLOADING, WRITING, Upload

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
        """The row and the multipart upload it recorded: once no row names it, nothing
        resumes that upload, and `gc` may abort it in the store."""
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


def reserved_rows(journal: Journal) -> list[Upload]:
    # an earlier version took such rows in: their uploads can never be stored, and
    # would keep the queue from draining for ever
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


@contextlib.contextmanager
def _reading(path: str) -> Iterator[sqlite3.Connection | None]:
    """The journal opened read-only, as another process reads it (a running daemon's,
    or one gc checks): never created nor changed; None when there is none."""
    if not os.path.exists(path):
        yield None
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield db
    finally:
        db.close()


def read_multiparts(path: str) -> list[Recorded]:
    """The resumable uploads a journal records (for `stormount gc`, which must not take
    them for orphans), read-only; none from a journal older than them."""
    with _reading(path) as db:
        try:
            return [] if db is None else list(_multiparts(db).values())
        except sqlite3.OperationalError:
            return []


def read_staged(path: str) -> list[tuple[str, str, float]]:
    """(path, staging file, queued_at) of each row, read-only (for `gc --cache-dir`);
    sqlite3.Error when the journal cannot be read."""
    with _reading(path) as db:
        return [] if db is None else [
            (str(k), str(s), float(q))
            for k, s, q in db.execute("SELECT path, staging, queued_at FROM pending")]


def read_pending(path: str) -> list[dict[str, object]]:
    """The queue as another process (the CLI waiting for an unmount) sees it."""
    with _reading(path) as db:
        try:
            rows = [] if db is None else db.execute(
                "SELECT path, state, attempts, last_error, held FROM pending"
                " ORDER BY queued_at").fetchall()
        except sqlite3.OperationalError:
            return []
    # (a CLOSED row may have been released since: only the running daemon knows)
    return [{"path": p, "state": OPEN if h == WRITING and s != UPLOADING else s,
             "attempts": a, "last_error": e} for p, s, a, e, h in rows]
