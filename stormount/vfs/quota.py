"""Quotas: limits on the bytes and files a folder of the mount holds, enforced as the
mount's own operations change them.

Usage is counted once from the store (a flat listing, at start and every
`quota_interval`), with files not uploaded yet at their local size, and between counts
every write, truncate, create, unlink and rename moves it by what it changes. A change
that would take a folder past a limit fails with EDQUOT before anything is written, so
nothing acknowledged is lost: what was written before stays, and uploads.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from stormount.config import QuotaConfig
from stormount.errors import FsError

log = logging.getLogger(__name__)


@dataclass
class Usage:
    bytes: int = 0
    files: int = 0


def _inside(path: str, folder: str) -> bool:
    return not folder or path == folder or path.startswith(folder + "/")


class Quotas:
    def __init__(self, limits: Iterable[QuotaConfig], before: Quotas | None = None) -> None:
        """`before`: the quotas these replace (a SIGHUP). A folder kept keeps its usage,
        which does not depend on its limits; a new one counts this mount's changes only
        until the next recount."""
        self.limits = {q.path: q for q in limits}
        kept: dict[str, Usage] = {} if before is None else before.usage
        self.usage: dict[str, Usage] = {path: Usage(**vars(kept[path])) if path in kept else Usage()
                      for path in self.limits}
        # usage has been counted from the store at least once, for every folder
        self.counted: bool = (before is not None and before.counted
                              and self.limits.keys() <= kept.keys())

    def folders(self, path: str) -> list[str]:
        """The quota folders `path` is in."""
        return [folder for folder in self.limits if _inside(path, folder)]

    def charge(self, path: str, nbytes: int, nfiles: int = 0, *, check: bool = True) -> None:
        """Count a change of `path` (a file, or something inside folder `path`); growth
        past a limit of a folder it is in fails with EDQUOT and counts nothing.
        `check=False` counts without refusing (to give back what a failed change took)."""
        self.move(None, path, nbytes, nfiles, check=check)

    def move(self, old: str | None, new: str, nbytes: int, nfiles: int, *,
             check: bool = True) -> None:
        """Move usage from the folders of `old` to those of `new` (`old` None: a change
        in place at `new`); only the folders that gain are checked."""
        losing = set(self.folders(old)) if old is not None else set()
        gaining = set(self.folders(new))
        both = losing & gaining
        changes: dict[str, tuple[int, int]] = {}
        for folder in losing - both:
            changes[folder] = (-nbytes, -nfiles)
        for folder in gaining - both:
            changes[folder] = (nbytes, nfiles)
        for folder, (db, df) in changes.items() if check else ():
            limit, used = self.limits[folder], self.usage[folder]
            if db > 0 and limit.max_bytes is not None and used.bytes + db > limit.max_bytes:
                raise FsError(errno.EDQUOT, f"the quota of /{folder} ({limit.max_bytes} bytes)"
                              f" leaves room for {max(0, limit.max_bytes - used.bytes)} more")
            if df > 0 and limit.max_files is not None and used.files + df > limit.max_files:
                raise FsError(errno.EDQUOT, f"the quota of /{folder} ({limit.max_files} "
                              "files) is full")
        for folder, (db, df) in changes.items():
            used = self.usage[folder]
            used.bytes = max(0, used.bytes + db)
            used.files = max(0, used.files + df)

    def outermost(self) -> list[str]:
        """The quota folders inside no other: what a recount lists."""
        return [folder for folder in self.limits if self.folders(folder) == [folder]]

    async def recount(self, files: AsyncIterator[tuple[str, int]]) -> None:
        """Usage counted anew from every file (path, size), as they arrive page by page:
        nothing is held but the totals, and a count cut short changes nothing."""
        fresh = {path: Usage() for path in self.limits}
        async for path, size in files:
            for folder in self.folders(path):
                fresh[folder].bytes += size
                fresh[folder].files += 1
        self.usage, self.counted = fresh, True

    def whole(self) -> tuple[QuotaConfig, Usage] | None:
        """The quota of the whole mount, if there is one (what df shows)."""
        if "" not in self.limits:
            return None
        return self.limits[""], self.usage[""]

    def report(self) -> list[dict[str, object]]:
        return [{"path": "/" + folder, "max_bytes": q.max_bytes, "max_files": q.max_files,
                 "bytes": self.usage[folder].bytes, "files": self.usage[folder].files}
                for folder, q in sorted(self.limits.items())]
