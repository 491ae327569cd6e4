"""Persistent metadata: directory listings and object attributes learnt from the store,
kept in sqlite in the cache directory so a restarted mount lists and stats its tree
without asking the store while the entries are fresh, and from its last knowledge while
the store is unreachable.

Times stored here are wall-clock seconds (they must mean something after a restart);
callers turn them into ages. One connection, used from the event-loop thread only;
WAL with synchronous=NORMAL (measured: docs/ARCHITECTURE.md, "Design choices").
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from stormount.backends.base import ObjectInfo

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
SCHEMA = 2
Entries = dict[str, tuple[str, ObjectInfo | None]]  # name -> (kind, object or None)


def _info_to_json(info: ObjectInfo | None) -> Any:
    if info is None:
        return None
    return [info.key, info.size, info.mtime, info.etag,
            None if info.metadata is None else dict(info.metadata), info.mtime_exact]


def _info_from_json(raw: Any) -> ObjectInfo | None:
    if raw is None:
        return None
    key, size, mtime, etag, metadata, *rest = raw  # rows of earlier versions have 5 fields
    return ObjectInfo(key=key, size=size, mtime=mtime, etag=etag, metadata=metadata,
                      mtime_exact=bool(rest[0]) if rest else True)


def _best_effort(fn: F) -> F:
    """A failing metadata cache (full or broken disk) must never fail a filesystem
    operation: log it and behave as if nothing were cached."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as e:
            log.warning("metadata cache: %s failed: %s", fn.__name__, e)
            return None
    return wrapper  # type: ignore[return-value]


class MetaStore:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 1:
            # rows of version 1 read as they are (a missing mtime_exact is True); the
            # number tells an older release that it cannot read the new rows
            self._db.execute(f"PRAGMA user_version={SCHEMA}")
        elif version != SCHEMA:
            self._db.executescript("""
                DROP TABLE IF EXISTS listings;
                DROP TABLE IF EXISTS objects;
                CREATE TABLE listings (dir TEXT PRIMARY KEY, entries TEXT NOT NULL,
                                       at REAL NOT NULL);
                CREATE TABLE objects (key TEXT PRIMARY KEY, kind TEXT NOT NULL,
                                      info TEXT NOT NULL, at REAL NOT NULL);
            """)
            self._db.execute(f"PRAGMA user_version={SCHEMA}")

    def close(self) -> None:
        self._db.close()

    def is_empty(self) -> bool:
        row = self._db.execute("SELECT EXISTS (SELECT 1 FROM listings) OR "
                               "EXISTS (SELECT 1 FROM objects)").fetchone()
        return not row[0]

    # --- listings: dir key -> {name: (kind, ObjectInfo | None)} ---------------------

    @_best_effort
    def listing(self, dir_key: str) -> tuple[float, Entries] | None:
        """(age in seconds, entries) of the last listing of a directory, if any."""
        row = self._db.execute("SELECT entries, at FROM listings WHERE dir = ?",
                               (dir_key,)).fetchone()
        if row is None:
            return None
        entries = {name: (kind, _info_from_json(info))
                   for name, kind, info in json.loads(row[0])}
        return max(0.0, time.time() - row[1]), entries

    @_best_effort
    def put_listing(self, dir_key: str, entries: Entries, age: float = 0.0) -> None:
        data = json.dumps([[name, kind, _info_to_json(info)]
                           for name, (kind, info) in entries.items()])
        self._db.execute("INSERT OR REPLACE INTO listings VALUES (?, ?, ?)",
                         (dir_key, data, time.time() - age))

    @_best_effort
    def put_listings(self, listings: list[tuple[str, Entries]]) -> None:
        """Many listings in one transaction (a flat listing's page derives hundreds)."""
        now = time.time()
        rows = [(key, json.dumps([[name, kind, _info_to_json(info)]
                                  for name, (kind, info) in entries.items()]), now)
                for key, entries in listings]
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO listings VALUES (?, ?, ?)", rows)

    @_best_effort
    def forget_listing(self, dir_key: str) -> None:
        self._db.execute("DELETE FROM listings WHERE dir = ?", (dir_key,))

    # --- objects: key -> (kind, ObjectInfo) from a HEAD or an own write ---------------

    @_best_effort
    def object(self, key: str) -> tuple[float, str, ObjectInfo] | None:
        row = self._db.execute("SELECT kind, info, at FROM objects WHERE key = ?",
                               (key,)).fetchone()
        if row is None:
            return None
        info = _info_from_json(json.loads(row[1]))
        assert info is not None
        return max(0.0, time.time() - row[2]), row[0], info

    @_best_effort
    def objects(self, keys: list[str]) -> dict[str, tuple[float, str, ObjectInfo]]:
        """`object` of many keys at once (those with a row): key -> (age, kind, info)."""
        out: dict[str, tuple[float, str, ObjectInfo]] = {}
        now = time.time()
        for start in range(0, len(keys), 500):
            batch = keys[start:start + 500]
            rows = self._db.execute(
                f"SELECT key, kind, info, at FROM objects WHERE key IN "
                f"({','.join('?' * len(batch))})", batch).fetchall()
            for key, kind, raw, at in rows:
                info = _info_from_json(json.loads(raw))
                assert info is not None
                out[key] = (max(0.0, now - at), kind, info)
        return out

    @_best_effort
    def put_object(self, key: str, kind: str, info: ObjectInfo) -> None:
        self._db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)",
                         (key, kind, json.dumps(_info_to_json(info)), time.time()))

    @_best_effort
    def forget_object(self, key: str) -> None:
        self._db.execute("DELETE FROM objects WHERE key = ?", (key,))

    def forget_path(self, path: str, recursive: bool) -> None:
        """What is kept of a path ("" the root): its object and marker rows, the listing
        that names it, and its own listing, or (recursive, or the root) everything
        below it."""
        self.forget_object(path)
        self.forget_object(path + "/")
        if path:
            self.forget_listing(path.rpartition("/")[0] + "/" if "/" in path else "")
        if recursive or not path:
            self.forget_prefix(path + "/" if path else "")
        else:
            self.forget_listing(path + "/")

    def removed(self, key: str) -> None:
        """An entry removed here (a directory with what was below it)."""
        self.forget_prefix(key + "/")
        self.forget_object(key)

    @_best_effort
    def forget_prefix(self, prefix: str) -> None:
        """Everything at or below a path: invalidation of a subtree. A key range, so the
        primary-key index serves it (LIKE would scan, and ignore case)."""
        if not prefix:
            self._db.execute("DELETE FROM listings")
            self._db.execute("DELETE FROM objects")
            return
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        self._db.execute("DELETE FROM listings WHERE dir >= ? AND dir < ?", (prefix, end))
        self._db.execute("DELETE FROM objects WHERE key >= ? AND key < ?", (prefix, end))
