"""The uploader half of the queue: uploads started as they fall due, each sent
(resumable, never over someone else's change), and the outcome recorded; retries with
backoff."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from stormount.backends.base import Backend, ObjectInfo, Progress
from stormount.backends.resume import Part, Recorded, Resume
from stormount.chain.chain import put_aside
from stormount.chain.retry import backoff
from stormount.config import WritebackConfig
from stormount.errors import BackendError, Changed, NotFound, Transient
from stormount.stats import Rate, human_size
from stormount.writeback.journal import Journal
from stormount.writeback.upload import FAILING, MARKER, QUEUED, UPLOADING, Upload, staged_size

log = logging.getLogger("stormount.writeback")  # the package's name, as before the split

# a file above this goes in parts, several at once, each held in memory while it is
# sent: at most `parallel_large` of them upload at once, beside the small ones
LARGE = 8 * 1024 * 1024
HOT_MAX = 30.0  # the longest wait of a file closed again and again (seconds)
HOT_PATHS = 4096  # files whose last upload is remembered for that
JITTER = 0.2  # up to 20% more on each retry delay (docs: [writeback] retry_delay)


class Uploader:
    """`Writeback.run` and what it does with each upload: the half of Writeback (queue.py)
    that talks to the store."""

    # Writeback's state (set in its __init__) and methods that this half uses
    backend: Backend
    journal: Journal
    cfg: WritebackConfig
    on_uploaded: Callable[[str, ObjectInfo, bool], None]
    on_conflict: Callable[[str, str, ObjectInfo], None]
    host: str
    _uploads: dict[str, Upload]
    _due: list[tuple[float, int, Upload]]
    _seq: itertools.count[int]
    _active: int
    _active_large: int
    _hot: OrderedDict[str, tuple[float, float]]
    _wake: trio.Event
    _rng: random.Random
    _abandoned: list[Recorded]
    uploaded: int
    failures: int
    conflicts: int
    bytes_uploaded: int
    throughput: Rate

    if TYPE_CHECKING:
        def _schedule(self, up: Upload, due: float) -> None: ...
        def _notify(self) -> None: ...
        def _abandon(self, up: Upload) -> None: ...

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
        return await put_aside(up.path, self.host, lambda name: self.backend.put_file(
            name, up.staging, up.metadata, if_absent=True, progress=progress))

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
            # a flat delay, jittered like the others
            delay = backoff(1, self.cfg.failing_retry_delay, self.cfg.failing_retry_delay,
                            jitter=JITTER, rng=self._rng)
        else:
            up.state = QUEUED
            delay = backoff(up.attempts, self.cfg.retry_delay, self.cfg.retry_max_delay,
                            jitter=JITTER, rng=self._rng)
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
