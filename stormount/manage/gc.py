"""`stormount gc`: what crashes and failed uploads leave behind, found, and removed only
with --apply.

In the store (every tier, under the folder given):
- unfinished uploads: S3 multipart uploads never completed or aborted, Azure blobs with
  blocks never committed, a local tier's temporary files. They hold (and are billed
  for) storage nobody can read. Removed.
- probe objects under `.stormount/probe/` that a health probe could not delete. Removed.
- spilled copies already repaired: an object on a spill-over tier whose primary holds
  the same version (a copy up that finished but whose clean-up was lost). Removed. A
  spilled object the primary does not hold yet is reported and kept: a mount copies it
  up.

In a cache directory (`--cache-dir`, only while no mount uses it):
- staging files no journal row names (files still open when a daemon died): never
  acknowledged, never deleted: moved to `recovered/`, as the next mount would.
- journal rows whose staging file is gone: reported, and dropped with --apply (their
  data cannot be uploaded).
- journal rows under the reserved `.stormount/` (an earlier version took them in; they
  can never upload), whatever their age: dropped with --apply, their data moved to
  `recovered/`, by the code a mount runs at its start.
- `recovered/` folders: reported, never removed: their owner decides.

Only what is older than `--older-than` (a day by default) is touched, so an upload in
progress elsewhere is not cut. An unfinished upload a journal records as resumable (the
journals of the running mounts, and of `--cache-dir`) is reported and kept, however old:
its file is still queued, and its next attempt continues it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from functools import partial

from stormount import config
from stormount.backends.base import ObjectInfo, Unfinished
from stormount.chain.health import PROBE_PREFIX, reserved
from stormount.chain.repair import STAMP
from stormount.durable import lock
from stormount.errors import BackendError, NotFound, StormountError
from stormount.manage.store import Store, Tier, in_batches, objects
from stormount.writeback import (
    MARKER,
    Journal,
    read_multiparts,
    read_staged,
    recover_reserved,
    recovered_dir,
    reserved_rows,
    staged_size,
)

REMOVE, RECOVER, DROP, KEEP = "remove", "recover", "drop", "keep"


def parse_age(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' or plain seconds."""
    return config.parse_age(text, "--older-than")


@dataclass
class Finding:
    kind: str  # unfinished-upload, probe, repaired-spill, unrepaired-spill, ...
    where: str  # "tier N (URL)" or the cache directory
    what: str  # a key, an upload, a path
    size: int | None
    age: float  # seconds
    action: str  # remove, recover, drop or keep
    done: bool = False
    error: str | None = None
    to: str | None = None  # where recovered data went (relative to the cache directory)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Gc:
    def __init__(self, store: Store, prefix: str, older_than: float,
                 resumable: set[str] | None = None) -> None:
        self.store, self.prefix, self.older_than = store, prefix, older_than
        self.resumable = resumable or set()  # see resumable_uploads
        self.now = time.time()
        self.findings: list[Finding] = []
        self._undo: list[tuple[Finding, Tier, object]] = []  # what --apply does, per finding

    def _old(self, when: float) -> bool:
        return self.now - when >= self.older_than

    def _found(self, finding: Finding, tier: Tier | None = None, item: object = None) -> None:
        self.findings.append(finding)
        if tier is not None:
            self._undo.append((finding, tier, item))

    async def scan(self) -> None:
        for tier in self.store.tiers:
            where = f"tier {tier.index} ({tier.url})"
            for up in await self.store.call("list uploads",
                                            partial(tier.backend.unfinished, self.prefix)):
                if self._old(up.started):
                    # an upload id where the store has one (S3), else the name alone
                    named = up.ident.endswith(up.key) and bool(up.key)
                    what = up.key if named else (
                        f"{up.key} (upload {up.ident})" if up.key else up.ident)
                    if up.ident in self.resumable or (named and up.key in self.resumable):
                        self._found(Finding("resumable-upload", where, what, up.size,
                                            self.now - up.started, KEEP))
                        continue
                    self._found(Finding("unfinished-upload", where, what, up.size,
                                        self.now - up.started, REMOVE), tier, up)
            await self._probes(tier, where)
            if tier.index > 0 and not tier.cfg.mirror:
                await self._spills(tier, where)

    async def _probes(self, tier: Tier, where: str) -> None:
        async for info in objects(self.store, tier, PROBE_PREFIX, reserved_too=True):
            if self._old(info.mtime):
                self._found(Finding("probe", where, info.key, info.size,
                                    self.now - info.mtime, REMOVE), tier, info.key)

    async def _spills(self, tier: Tier, where: str) -> None:
        primary = self.store.primary

        async def judge(listed: ObjectInfo) -> None:
            if not self._old(listed.mtime):
                return
            try:
                copy = await self.store.call("head", partial(tier.backend.head, listed.key))
            except NotFound:
                return  # gone since the listing
            up: ObjectInfo | None
            try:
                up = await self.store.call("head", partial(primary.backend.head, listed.key))
            except NotFound:
                up = None
            if up is not None and _same_version(copy, up):
                self._found(Finding("repaired-spill", where, listed.key, listed.size,
                                    self.now - listed.mtime, REMOVE), tier, copy)
            elif up is None:
                self._found(Finding("unrepaired-spill", where, listed.key, listed.size,
                                    self.now - listed.mtime, KEEP))

        await in_batches(objects(self.store, tier, self.prefix), judge)

    async def apply(self) -> None:
        for finding, tier, item in self._undo:
            try:
                if isinstance(item, Unfinished):
                    await self.store.call("discard", partial(tier.backend.discard, item))
                elif isinstance(item, ObjectInfo):  # a spilled copy: only the one scanned
                    now = await self.store.call("head", partial(tier.backend.head, item.key))
                    if now.etag != item.etag:
                        finding.error = "written again since the scan: kept"
                        continue
                    await self.store.call("delete", partial(tier.backend.delete, item.key))
                else:
                    await self.store.call("delete", partial(tier.backend.delete, str(item)))
                finding.done = True
            except NotFound:
                finding.done = True  # gone meanwhile
            except BackendError as e:
                finding.error = str(e)


def resumable_uploads(cache_dirs: list[str]) -> set[str]:
    """What the journals in these cache directories record as resumable uploads: S3
    upload ids, and the keys of Azure blobs with staged blocks (a store that names an
    unfinished upload by its blob, not by an id)."""
    out: set[str] = set()
    for cache_dir in cache_dirs:
        for rec in read_multiparts(os.path.join(cache_dir, "journal.sqlite3")):
            out.add(rec.key if rec.url.startswith("az://") else rec.ident)
    return out


def _same_version(copy: ObjectInfo, primary: ObjectInfo) -> bool:
    """The primary holds the version of this spilled copy: its copy up finished."""
    versions = {copy.etag, (copy.metadata or {}).get(STAMP)} - {None, ""}
    return copy.size == primary.size and bool(
        versions & {primary.etag, (primary.metadata or {}).get(STAMP)})


# --- a cache directory ----------------------------------------------------------------


def scan_cache(cache_dir: str, older_than: float, apply: bool) -> list[Finding]:
    """Leftovers in a mount's cache directory; with `apply`, staging files no journal
    row names are moved to recovered/, rows whose staging is gone are dropped, and rows
    under the reserved `.stormount/` are dropped with their data moved to recovered/."""
    cache_dir = os.path.abspath(cache_dir)
    journal = os.path.join(cache_dir, "journal.sqlite3")
    staging = os.path.join(cache_dir, "staging")
    if not os.path.isdir(cache_dir):
        raise StormountError(f"cache directory {cache_dir} does not exist")
    now = time.time()
    findings: list[Finding] = []
    with _unused(cache_dir):
        try:
            rows = read_staged(journal)
        except sqlite3.Error as e:
            raise _unreadable(journal, e) from None
        named = {os.path.realpath(path) for _, path, _ in rows if path != MARKER}
        for key, path, queued_at in rows:
            if reserved(key):  # never uploaded, however young
                findings.append(Finding("reserved-row", cache_dir, key, staged_size(path),
                                        now - queued_at, RECOVER))
                continue
            # a directory marker's row has no staging file
            if path != MARKER and not os.path.exists(path) and now - queued_at >= older_than:
                findings.append(Finding("lost-staging", cache_dir, key, None,
                                        now - queued_at, DROP))
        recovered = recovered_dir(cache_dir)
        for name in sorted(os.listdir(staging)) if os.path.isdir(staging) else []:
            path = os.path.join(staging, name)
            st = os.stat(path)
            if os.path.realpath(path) not in named and now - st.st_mtime >= older_than:
                findings.append(Finding("unqueued-staging", cache_dir, path, st.st_size,
                                        now - st.st_mtime, RECOVER))
        kept = os.path.join(cache_dir, "recovered")
        for name in sorted(os.listdir(kept)) if os.path.isdir(kept) else []:
            path = os.path.join(kept, name)
            findings.append(Finding("recovered", cache_dir, path, _bytes_in(path),
                                    now - os.stat(path).st_mtime, KEEP))
        if apply:
            _apply_cache(findings, journal, recovered)
            _recover_reserved(findings, cache_dir, journal, recovered)
    return findings


def _open_journal(path: str) -> Journal:
    try:
        return Journal(path)
    except sqlite3.Error as e:
        raise _unreadable(path, e) from None


def _unreadable(path: str, e: sqlite3.Error) -> StormountError:
    return StormountError(f"cannot read the journal {path}: {e}")


def _recover_reserved(findings: list[Finding], cache_dir: str, path: str,
                      recovered: str) -> None:
    """What a mount does at its start (stormount.writeback.recover_reserved)."""
    todo = [f for f in findings if f.kind == "reserved-row"]
    if not todo:
        return
    journal = _open_journal(path)
    try:
        rows = {up.path: up for up in reserved_rows(journal)}
        for finding in todo:
            try:
                dest = recover_reserved(journal, rows[finding.what], recovered)
            except (OSError, KeyError) as e:
                finding.error = str(e)
                continue
            finding.done = True
            finding.to = None if dest is None else os.path.relpath(dest, cache_dir)
    finally:
        journal.close()


def _apply_cache(findings: list[Finding], journal: str, recovered: str) -> None:
    for finding in findings:
        if finding.kind == "reserved-row":
            continue  # _recover_reserved
        try:
            if finding.action == RECOVER:
                os.makedirs(recovered, exist_ok=True)
                os.rename(finding.what, os.path.join(recovered, os.path.basename(finding.what)))
                finding.done = True
            elif finding.action == DROP:
                db = Journal(journal)
                try:
                    db.remove(finding.what)  # its recorded upload can never resume
                finally:
                    db.close()
                finding.done = True
        except (OSError, sqlite3.Error) as e:
            finding.error = str(e)


class _unused:
    """Holds the cache directory's lock, as a mount would: refused while one runs."""

    def __init__(self, cache_dir: str) -> None:
        self.path = os.path.join(cache_dir, "lock")

    def __enter__(self) -> None:
        try:
            self.fd = lock(self.path, StormountError(
                f"cache directory {os.path.dirname(self.path)} is in use by a running "
                "mount: its leftovers are checked with the mount stopped"))
        except OSError as e:
            raise StormountError(f"cannot use {self.path}: {e.strerror}") from None

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _bytes_in(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total
