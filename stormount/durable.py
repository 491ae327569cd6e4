"""The sqlite journals behind acknowledged work (the upload queue, the repair queue):
every change is one transaction committed before the call returns; and the lock files
that keep a second process off a directory holding them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3


def lock(path: str, busy: Exception) -> int:
    """Open `path` (made if missing, private) and take its exclusive flock without
    waiting; the returned fd holds it until closed. Raises `busy` when another process
    holds it, OSError when the file cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise busy from None
    return fd


class SqliteJournal:
    """A sqlite file in WAL mode. Commits are `synchronous=NORMAL` (safe against a crash
    of the daemon); `durable=True` also syncs the log to the disk (safe against a power
    loss), for rows that are the only record of acknowledged data."""

    what = "journal"  # for messages

    def __init__(self, path: str, schema: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(schema)

    def _write(self, durable: bool, *statements: tuple[str, tuple[object, ...]]) -> None:
        """Commit the statements as one transaction; OSError (ENOSPC on a full disk,
        else EIO) when the journal cannot take them."""
        try:
            self._commit(durable, statements)
        except sqlite3.Error as e:
            full = isinstance(e, sqlite3.OperationalError) and "full" in str(e).lower()
            raise OSError(errno.ENOSPC if full else errno.EIO,
                          f"{self.what} {self.path}: {e}") from None

    def _commit(self, durable: bool,
                statements: tuple[tuple[str, tuple[object, ...]], ...]) -> None:
        if durable:
            self._db.execute("PRAGMA synchronous=FULL")  # WAL: sync the log at commit
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # sqlite may have rolled back
                    self._db.execute("ROLLBACK")
                raise
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        self._db.close()
