"""The sqlite journals behind acknowledged work (the upload queue, the repair queue):
every change is one transaction committed before the call returns."""

from __future__ import annotations

import contextlib
import errno
import sqlite3


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
