"""How a mount ends: what the daemon does when asked to stop, by a signal or by
`stormount unmount` through the control socket, and after the FUSE loop returns.

Phases, one way only except where an unmount is refused:

    SERVING --(signal, or unmount [--force])--> DRAINING --> ENDED
       ^                                           |
       +---------- a plain unmount found it busy --+
    SERVING or DRAINING --(unmount --lazy)--> DETACHED --(last user gone)--> ENDED

- DRAINING uploads the queue while the mount still serves, then unmounts: at once
  (signal, --force: pyfuse3.terminate, holders get ENOTCONN), or plainly (a plain
  `unmount`: the kernel refuses while anything holds the mount, and then the mount
  goes on serving as if nothing was asked). A plain unmount never detaches lazily,
  so nothing can slip in between a check for holders and the unmount.
- DETACHED: the mount left its mountpoint (a lazy unmount) but the kernel keeps the
  connection while processes hold files or directories in it, and the daemon serves
  them; the FUSE loop returns once the last reference is gone (measured: pyfuse3.main
  returns right after the last release, not at the detach).
- ENDED: the FUSE loop returned (also after `fusermount3 -u` from outside). What was
  open and changed is queued, and the queue is uploaded before the daemon exits.

Each signal moves one step closer to the exit: the first starts the drain (or, when
DETACHED, ends the service of the remaining holders); another stops waiting for the
uploads, which stay journaled for the next start.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from stormount import notify, unmounting
from stormount.vfs.fs import Vfs

log = logging.getLogger(__name__)

SERVING, DRAINING, DETACHED, ENDED = "serving", "draining", "detached", "ended"
UNMOUNTED, BUSY = "unmounted", "busy"
PROGRESS_EVERY = 0.5  # seconds between progress lines to a waiting `unmount`
STATUS_EVERY = 1.0  # seconds between systemd STATUS= updates while uploading
CUT_GRACE = 30.0  # seconds to upload what the processes cut off at a timeout wrote

Reply = dict[str, Any]
Progress = Callable[[Reply], Awaitable[None]]


class Attempt:
    """One drain followed by an unmount, and the requests waiting for its outcome."""

    def __init__(self, force: bool) -> None:
        self.force = force  # unmount at once at the end, even if busy
        self.outcome: str | None = None  # UNMOUNTED, BUSY, or an error message
        self.done = trio.Event()

    def finish(self, outcome: str) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()


class Stopper:
    """The end of one mount. `serve_in` gives it the daemon's nursery; `signalled` and
    `request` start the end; `finish` runs once the FUSE loop has returned."""

    def __init__(self, mountpoint: str, vfs: Vfs, status: Callable[[], str]) -> None:
        self.mountpoint = mountpoint
        self.vfs = vfs
        self.status = status  # systemd's STATUS= while the mount serves
        self.phase = SERVING
        self.attempt: Attempt | None = None
        self.deadline = math.inf  # (trio clock) no upload is waited for after this
        self.waiting: trio.CancelScope | None = None  # the wait for uploads, if any
        # the mount is still at its mountpoint: only then may pyfuse3.close unmount it
        # (after a lazy detach that path may hold someone else's mount)
        self.attached = True
        self.cut = False  # the remaining holders of a detached mount were cut off
        self._nursery: trio.Nursery | None = None

    def serve_in(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def pending(self) -> int:
        return len(self.vfs.writeback.pending())

    def open_files(self) -> int:
        return sum(node.opens > 0 for node in self.vfs.inodes.all())

    # --- what starts the end ------------------------------------------------------------

    def signalled(self, name: str) -> None:
        """SIGINT or SIGTERM: one step closer to the exit."""
        if self.phase == SERVING:
            log.info("%s: uploading %d queued file(s), then unmounting (signal again to "
                     "unmount at once: they stay queued)", name, self.pending())
            self._start(force=True, timeout=math.inf)
        elif self.phase == DETACHED and not self.cut:
            self.cut = True
            log.info("%s: ending the mount for the processes still using it (they get "
                     "ENOTCONN), then uploading what they wrote", name)
            pyfuse3.terminate()
        else:
            log.info("%s: %s now; what is queued stays for the next start", name,
                     "unmounting" if self.phase == DRAINING else "exiting")
            if self.attempt is not None:
                self.attempt.force = True
            self._stop_waiting()

    async def request(self, *, lazy: bool, force: bool, timeout: float,
                      progress: Progress | None) -> Reply:
        """`stormount unmount` through the control socket: upload the queue (for at most
        `timeout` seconds), then unmount; plainly unless `force`; `lazy`: detach now."""
        if lazy:
            return await self._detach(cut_after=timeout if force else None)
        if self.phase == SERVING:
            self._start(force=force, timeout=timeout)
        elif self.phase == DRAINING and self.attempt is not None:
            # joins the drain under way; whoever asks for less waiting is heard
            self.attempt.force |= force
            self._set_deadline(min(self.deadline, trio.current_time() + timeout))
        else:  # detached or ended already: on its way out
            return {"unmounted": True, "pending": self.pending()}
        attempt = self.attempt
        assert attempt is not None
        while not attempt.done.is_set():
            with trio.move_on_after(PROGRESS_EVERY):
                await attempt.done.wait()
            if not attempt.done.is_set() and progress is not None:
                await progress({"event": "progress", "pending": self.pending()})
        if attempt.outcome == BUSY:
            return {"ok": False, "busy": True, "pending": self.pending(),
                    "error": f"{self.mountpoint} is in use: not unmounted, the mount goes "
                             "on serving"}
        if attempt.outcome != UNMOUNTED:
            return {"ok": False, "error": str(attempt.outcome)}
        return {"unmounted": True, "pending": self.pending()}

    # --- the steps ----------------------------------------------------------------------

    def _start(self, *, force: bool, timeout: float) -> None:
        assert self._nursery is not None
        self.phase = DRAINING
        self.deadline = trio.current_time() + timeout
        self.attempt = Attempt(force)
        self._nursery.start_soon(self._drain_then_unmount, self.attempt)

    def _set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        if self.waiting is not None:
            self.waiting.deadline = deadline

    def _stop_waiting(self) -> None:
        self._set_deadline(-math.inf)

    async def _upload(self, stopping: bool) -> None:
        """Queue what is open and changed, then upload the whole queue, until the
        deadline or a signal; systemd's STATUS= follows the queue meanwhile."""
        draining = (f"uploading {self.pending()} queued file(s), then unmounting (stop "
                    "again to unmount at once: they stay queued)")
        if stopping:  # (not for a plain unmount, which may yet find the mount busy)
            notify.notify(STOPPING=1, STATUS=draining)
        else:
            notify.notify(STATUS=draining)
        with trio.CancelScope(deadline=self.deadline) as scope:
            self.waiting = scope
            async with trio.open_nursery() as nursery:

                async def report() -> None:
                    while True:
                        await trio.sleep(STATUS_EVERY)
                        notify.notify(STATUS=f"uploading {self.pending()} queued file(s), "
                                      "then unmounting")

                nursery.start_soon(report)
                await self.vfs.shutdown()
                nursery.cancel_scope.cancel()
        self.waiting = None

    async def _drain_then_unmount(self, attempt: Attempt) -> None:
        try:
            await self._upload(stopping=attempt.force)
            if self.phase != DRAINING:  # detached lazily, or unmounted from outside
                attempt.finish(UNMOUNTED)
                return
            if attempt.force:
                pyfuse3.terminate()  # pyfuse3.close unmounts, lazily
                attempt.finish(UNMOUNTED)
                return
            try:
                await trio.to_thread.run_sync(functools.partial(
                    unmounting.unmount, self.mountpoint, lazy=False))
            except unmounting.NotMounted:
                pass  # gone from outside meanwhile: the FUSE loop returns by itself
            except unmounting.UnmountError as e:
                if attempt.force or self.phase != DRAINING:  # a signal came meanwhile
                    if self.phase == DRAINING:
                        pyfuse3.terminate()
                    attempt.finish(UNMOUNTED)
                    return
                self._refused(e)
                attempt.finish(BUSY if isinstance(e, unmounting.Busy) else str(e))
                return
            # the kernel ended the connection: the FUSE loop returns by itself
            self.attached = False
            notify.notify(STOPPING=1)
            attempt.finish(UNMOUNTED)
        finally:
            attempt.finish(UNMOUNTED if self.phase != SERVING else BUSY)

    def _refused(self, error: unmounting.UnmountError) -> None:
        """A plain unmount failed: back to serving, as if it had not been asked."""
        log.warning("not unmounted: %s; the mount goes on serving", error)
        self.phase = SERVING
        self.deadline = math.inf
        self.vfs.writeback.hurry(False)
        notify.notify(STATUS=self.status())

    async def _detach(self, cut_after: float | None) -> Reply:
        """Lazily: the mountpoint is free at once; the processes that still hold
        something in the mount are served until they let go, or for `cut_after` seconds
        at most, which then also bound the uploads (what is left stays journaled), but
        for CUT_GRACE more for what the processes cut off wrote."""
        if self.attached and self.phase in (SERVING, DRAINING):
            try:
                await trio.to_thread.run_sync(functools.partial(
                    unmounting.unmount, self.mountpoint, lazy=True))
            except unmounting.NotMounted:
                pass  # gone from outside meanwhile
            except unmounting.UnmountError as e:
                return {"ok": False, "error": str(e)}
            self.attached = False
            if self.phase != ENDED:  # (with nothing holding it, the loop may end at once)
                self.phase = DETACHED
            if self.attempt is not None:
                self.attempt.finish(UNMOUNTED)
            self.vfs.writeback.hurry()
            log.info("detached %s lazily; serving the processes still using it until "
                     "they let go (%d file(s) open), then uploading; %d queued",
                     self.mountpoint, self.open_files(), self.pending())
            notify.notify(STOPPING=1, STATUS="detached; serving the processes still using "
                          "it until they let go, then uploading")
        if cut_after is not None and self.phase == DETACHED and self._nursery is not None:
            deadline = trio.current_time() + cut_after
            self._set_deadline(min(self.deadline, deadline))
            self._nursery.start_soon(self._cut_at, deadline)
        return {"detached": True, "pending": self.pending(), "open": self.open_files()}

    async def _cut_at(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        if self.phase == DETACHED and not self.cut:
            self.cut = True
            log.info("time is up: ending the mount for the processes still using it (they "
                     "get ENOTCONN); uploading what they wrote for at most %g s", CUT_GRACE)
            # what they wrote is queued as the loop ends, and deserves its own moment
            self._set_deadline(trio.current_time() + CUT_GRACE)
            pyfuse3.terminate()

    # --- after the FUSE loop ------------------------------------------------------------

    async def finish(self) -> list[str]:
        """The FUSE loop returned: nothing can reach the mount any more. Upload what was
        open and what is queued (a drain under way goes on), until the deadline or a
        signal; the paths still pending."""
        if self.phase == SERVING:
            log.info("%s was unmounted; uploading %d queued file(s) before exiting",
                     self.mountpoint, self.pending())
        self.phase = ENDED
        if self.attempt is not None and not self.attempt.done.is_set():
            await self.attempt.done.wait()
        await self._upload(stopping=True)
        return [up.path for up in self.vfs.writeback.pending()]
