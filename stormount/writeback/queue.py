"""The upload queue: the files the filesystem hands over (submit, release, hold), what
it tells of them (rename, discard), when each falls due, and waiting for their uploads
(fsync, flush, unmount). Its uploader half is uploader.py."""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable

import trio

from stormount.backends.base import Backend, ObjectInfo
from stormount.backends.resume import Recorded
from stormount.config import WritebackConfig
from stormount.ranges import Delta
from stormount.stats import Rate
from stormount.writeback.journal import Journal
from stormount.writeback.upload import CLOSED, FAILING, FINAL, QUEUED, UPLOADING, WRITING, Upload
from stormount.writeback.uploader import HOT_MAX, Uploader, _failure

log = logging.getLogger("stormount.writeback")  # the package's name, as before the split


class Writeback(Uploader):
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
