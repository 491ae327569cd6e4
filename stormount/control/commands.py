"""The control commands (docs/CONTROL.md): what `stormount ctl` can ask a running mount.

Every command reads or steers the parts the daemon composed; none blocks the event
loop for long (figures are in memory, the kernel's cache drops run in threads).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from stormount import __version__
from stormount.cache.blocks import BlockCache
from stormount.chain import Chain, Tier
from stormount.config import MountConfig
from stormount.control.figures import Counters, Health, Snapshot, TierState, WritebackQueue
from stormount.control.server import Progress, Reply, RequestError
from stormount.errors import FsError
from stormount.fuse.ops import Operations
from stormount.stats import Ops
from stormount.vfs.fs import Vfs
from stormount.vfs.names import utf8
from stormount.vfs.pins import Pins
from stormount.writeback import FAILING, UPLOADING

PROGRESS_EVERY = 0.5  # seconds between progress lines of a flush
COMMANDS = ("health", "stats", "invalidate", "flush", "queue", "tiers", "drain", "undrain",
            "metrics", "pin", "unpin", "pins", "unmount")
# how the mount is asked to end (stormount.stopping): lazy, force, timeout, progress
Unmount = Callable[..., Awaitable[Reply]]


def ratio(hits: int, misses: int) -> float | None:
    return None if hits + misses <= 0 else round(hits / (hits + misses), 4)


class Control:
    """The command handler of the control server, over the daemon's parts."""

    def __init__(self, cfg: MountConfig, vfs: Vfs, ops: Operations, chain: Chain, *,
                 invalidate: Callable[[str, bool], Awaitable[int]] | None = None,
                 pins: Pins | None = None, unmount: Unmount | None = None) -> None:
        self.cfg = cfg
        self.unmount = unmount  # None: a mount without a daemon around it (tests)
        self.pins = pins  # None: the mount has no block cache to keep pinned data in
        self.vfs = vfs
        self.ops = ops
        self.chain = chain
        self.invalidate = invalidate or ops.invalidate
        self.started = time.time()
        self.baseline = self.counters()
        self.commands: dict[str, Callable[[dict[str, Any], Progress], Awaitable[Reply]]] = {
            name: getattr(self, f"_{name}") for name in COMMANDS}

    async def handle(self, request: dict[str, Any], progress: Progress) -> Reply:
        command = request.get("command")
        if not isinstance(command, str) or command not in self.commands:
            known = ", ".join(self.commands)
            what = "no command given" if command is None else f"unknown command {command!r}"
            raise RequestError(f'{what} (send {{"command": NAME}}; known: {known})')
        return {"ok": True, **await self.commands[command](request, progress)}

    # --- the figures ------------------------------------------------------------------

    @property
    def blocks(self) -> BlockCache | None:
        return None if self.vfs.reader is None else self.vfs.reader.blocks

    def counters(self) -> Counters:
        blocks = self.blocks.stats() if self.blocks is not None else {}
        wb = self.vfs.writeback
        return Counters(
            fuse=self.ops.ops.copy(), bytes_read=self.ops.bytes_read,
            bytes_written=self.ops.bytes_written,
            tiers=[t.metered.ops.copy() for t in self.chain.tiers],
            metadata={"hits": self.vfs.metadata_hits, "misses": self.vfs.metadata_misses},
            blocks={k: blocks.get(k, 0) for k in ("hits", "misses", "evictions", "corrupt")},
            uploads={"uploaded": wb.uploaded, "failures": wb.failures,
                     "conflicts": wb.conflicts, "bytes": wb.bytes_uploaded},
            repaired=self.chain.repaired,
            bytes_to_pages=0 if self.vfs.pages is None else self.vfs.pages.stored_bytes)

    def tier_status(self, tier: Tier) -> TierState:
        state = "drained" if tier.drained else "up" if tier.healthy else "down"
        return {"state": state, **tier.status()}

    def queue_state(self) -> WritebackQueue:
        pending = self.vfs.writeback.pending()
        failing = [up for up in pending if up.state == FAILING]
        return {
            "pending": len(pending),
            "uploading": sum(up.state == UPLOADING for up in pending),
            "open": sum(bool(up.held) and up.state != UPLOADING for up in pending),
            "failing": len(failing),
            "oldest_queued_at": pending[0].queued_at if pending else None,
            "first_failure": None if not failing else {
                "path": failing[0].path, "error": failing[0].last_error},
        }

    def health(self) -> Health:
        tiers = [self.tier_status(t) for t in self.chain.tiers]
        reasons = []
        for t in self.chain.tiers:
            if t.drained:
                reasons.append(f"tier {t.index} ({t.url}) is drained")
            elif not t.healthy:
                reasons.append(f"tier {t.index} ({t.url}) is down: {t.last_error}")
        queue = self.queue_state()
        if (first := queue["first_failure"]) is not None:
            reasons.append(f"{queue['failing']} upload(s) failing, e.g. {first['path']}: "
                           f"{first['error']}")
        if not any(t.healthy for t in self.chain.tiers):
            state = "down"
        else:
            state = "degraded" if reasons else "ok"
        return {"state": state, "reasons": reasons, "mountpoint": self.cfg.mountpoint,
                "pid": os.getpid(), "version": __version__,
                "uptime": round(time.time() - self.started, 3), "tiers": tiers,
                "writeback": queue, "repair": self.chain.pending.counts(),
                "quotas": [] if self.vfs.quotas is None else self.vfs.quotas.report()}

    def snapshot(self) -> Snapshot:
        """The figures `metrics` exposes: totals since the start."""
        blocks = self.blocks
        return Snapshot(counters=self.counters(), health=self.health(),
                        inodes=len(self.vfs.inodes),
                        block_bytes=None if blocks is None else blocks.stats()["bytes"],
                        block_max_bytes=None if blocks is None else blocks.max_bytes)

    # --- commands ---------------------------------------------------------------------

    async def _health(self, request: dict[str, Any], progress: Progress) -> Reply:
        return {**self.health()}

    async def _stats(self, request: dict[str, Any], progress: Progress) -> Reply:
        reset = _flag(request, "reset")
        now = self.counters()
        since = self.baseline.at
        shown = now.minus(self.baseline)
        if reset:  # what was counted up to now is shown; counting starts again
            self.baseline = now
        return {"reset": reset, **self.stats_of(shown, since)}

    def stats_of(self, c: Counters, since: float) -> Reply:
        blocks = self.blocks
        wb = self.vfs.writeback
        try:
            meta_bytes = os.stat(os.path.join(self.cfg.cache.dir, "meta.sqlite3")).st_size
        except OSError:
            meta_bytes = None
        block_now = blocks.stats() if blocks is not None else {}
        return {
            "since": since,
            "seconds": round(c.at - since, 3),
            "fuse": {"ops": _summaries(c.fuse),
                     "bytes_read": c.bytes_read, "bytes_written": c.bytes_written,
                     "bytes_to_page_cache": c.bytes_to_pages},
            "backend": {"tiers": [
                {"index": t.index, "url": t.url, "role": t.role,
                 "ops": _summaries(ops)}
                for t, ops in zip(self.chain.tiers, c.tiers, strict=True)]},
            "cache": {
                "metadata": {**c.metadata,
                             "hit_ratio": ratio(c.metadata["hits"], c.metadata["misses"]),
                             "nodes": len(self.vfs.inodes), "db_bytes": meta_bytes},
                "blocks": {**c.blocks, "hit_ratio": ratio(c.blocks["hits"], c.blocks["misses"]),
                           "bytes": block_now.get("bytes", 0),
                           "blocks": block_now.get("blocks", 0),
                           "max_bytes": None if blocks is None else blocks.max_bytes,
                           "enabled": blocks is not None},
            },
            "writeback": {"queue_depth": len(wb.pending()), **c.uploads,
                          "upload_bytes_per_second": round(wb.throughput.per_second(), 1)},
            "repair": {"pending": self.chain.pending.counts(), "repaired": c.repaired},
        }

    async def _invalidate(self, request: dict[str, Any], progress: Progress) -> Reply:
        path = self.mount_path(request.get("path"))
        recursive = _flag(request, "recursive")
        nodes = await self.invalidate(path, recursive)
        return {"path": "/" + path, "recursive": recursive, "nodes": nodes}

    async def _flush(self, request: dict[str, Any], progress: Progress) -> Reply:
        path = self.mount_path(request.get("path", ""))
        raw = request.get("timeout")
        timeout = None if raw is None else _seconds(raw, "timeout", positive=True)
        show_progress = _flag(request, "progress")  # (in the nursery it would be a group)
        chosen = await self.vfs.hand_over(path)
        total = len(chosen)

        async def report() -> None:
            while True:
                await trio.sleep(PROGRESS_EVERY)
                await progress({"event": "progress", "total": total,
                                "remaining": sum(not up.uploaded.is_set() for up in chosen)})

        async with trio.open_nursery() as nursery:
            if show_progress:
                nursery.start_soon(report)
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self.vfs.writeback.flush(up.path for up in chosen)
            nursery.cancel_scope.cancel()
        left = [up for up in chosen if not up.uploaded.is_set()]
        reply: Reply = {"path": "/" + path, "total": total, "uploaded": total - len(left),
                        "remaining": [up.describe() for up in left]}
        if left:
            failing = [up for up in left if up.last_error]
            why = (f"; {failing[0].path}: {failing[0].last_error}" if failing
                   else f" within {timeout:g} s" if timeout is not None else "")
            reply.update(ok=False, error=f"{len(left)} of {total} file(s) not uploaded{why}")
        return reply

    async def _queue(self, request: dict[str, Any], progress: Progress) -> Reply:
        return {"uploads": [up.describe() for up in self.vfs.writeback.pending()],
                "repairs": self.chain.queue()}

    async def _tiers(self, request: dict[str, Any], progress: Progress) -> Reply:
        return {"tiers": [self.tier_status(t) for t in self.chain.tiers]}

    async def _drain(self, request: dict[str, Any], progress: Progress) -> Reply:
        tier = self.tier_named(request.get("tier"))
        others = [t for t in self.chain.tiers if t is not tier and t.healthy]
        if not tier.drained and not others:
            raise RequestError(f"tier {tier.index} ({tier.url}) is the last tier in service "
                               "(the others are drained or down): draining it would leave "
                               "nothing to write to")
        changed = tier.drain(True)
        return {"tier": self.tier_status(tier), "changed": changed}

    async def _undrain(self, request: dict[str, Any], progress: Progress) -> Reply:
        tier = self.tier_named(request.get("tier"))
        changed = tier.drain(False)
        return {"tier": self.tier_status(tier), "changed": changed}

    async def _unmount(self, request: dict[str, Any], progress: Progress) -> Reply:
        lazy, force = _flag(request, "lazy"), _flag(request, "force")
        timeout = _seconds(request.get("timeout", 300.0), "timeout", positive=False)
        if self.unmount is None:
            raise RequestError("this mount cannot be unmounted through its socket")
        return await self.unmount(lazy=lazy, force=force, timeout=timeout,
                                  progress=progress if _flag(request, "progress") else None)

    async def _metrics(self, request: dict[str, Any], progress: Progress) -> Reply:
        from stormount.control.metrics import exposition  # prometheus_client: on demand

        return {"content_type": "text/plain; version=0.0.4; charset=utf-8",
                "text": exposition(self.snapshot())}

    # --- arguments --------------------------------------------------------------------

    def _pinning(self) -> Pins:
        if self.pins is None:
            raise RequestError("this mount has no block cache ([cache] max_size = 0): "
                               "nothing can be pinned")
        return self.pins

    async def _pin(self, request: dict[str, Any], progress: Progress) -> Reply:
        path = self.mount_path(request.get("path"))
        try:
            state = await self._pinning().pin(path)
        except FsError as e:
            raise RequestError(f"cannot pin /{path}: {e}") from None
        return {"pin": state.describe(), "fetching": "in the background (see `ctl pins`)"}

    async def _unpin(self, request: dict[str, Any], progress: Progress) -> Reply:
        path = self.mount_path(request.get("path"))
        pins = self._pinning()
        if not await pins.unpin(path):
            known = ", ".join(str(p["path"]) for p in pins.describe()) or "none"
            raise RequestError(f"/{path} is not pinned (pins: {known})")
        return {"path": "/" + path, "unpinned": True}

    async def _pins(self, request: dict[str, Any], progress: Progress) -> Reply:
        return {"pins": self._pinning().describe()}

    def mount_path(self, raw: object) -> str:
        """A path inside the mount (relative to its root) from what a client sent: that,
        or an absolute path under the mountpoint."""
        if raw is None:
            raise RequestError("no path given")
        if not isinstance(raw, str):
            raise RequestError("path must be a string")
        if "\0" in raw:
            raise RequestError("path must not contain NUL")
        path = raw
        mp = self.cfg.mountpoint
        if path.startswith("/"):
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                path = path[len(mp):]
            elif path.strip("/") and os.path.lexists(path):
                # a path of this host outside the mount; one that names nothing here is
                # taken as relative to the mount's root (`/photos/2024`: see CONTROL.md)
                raise RequestError(f"{raw} is not under the mountpoint {mp} (give a path "
                                   "inside the mount, relative to its root, like "
                                   f"{raw.lstrip('/') or '.'})")
        parts: list[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise RequestError(f"{raw} leads out of the mount")
                parts.pop()
            else:
                parts.append(part)
        inside = "/".join(parts)
        if not utf8(inside):  # a name of the store is UTF-8: this one names nothing
            raise RequestError(f"path {inside!r} is not valid UTF-8 (names in the mount "
                               "are)")
        return inside

    def tier_named(self, raw: object) -> Tier:
        """A tier by its number (0 is the primary) or its URL."""
        tiers = self.chain.tiers
        # a number: an int, or ASCII digits ("²" and "٣" are digits to str.isdigit, which
        # int() refuses or reads; 5000 of them are more than int() converts)
        if isinstance(raw, int) and not isinstance(raw, bool):
            if 0 <= raw < len(tiers):
                return tiers[raw]
        elif isinstance(raw, str) and raw.isascii() and raw.isdigit():
            digits = raw.lstrip("0") or "0"
            if len(digits) <= 6 and int(digits) < len(tiers):
                return tiers[int(digits)]
        elif isinstance(raw, str):
            for t in tiers:
                if raw in (t.url, t.url.rstrip("/")):
                    return t
        known = ", ".join(f"{t.index} ({t.url})" for t in tiers)
        raise RequestError(f"no tier {raw!r} (tiers: {known})")


def _summaries(ops: Ops) -> dict[str, Any]:
    return {name: op.summary() for name, op in sorted(ops.items()) if op.count}


def _flag(request: dict[str, Any], name: str) -> bool:
    value = request.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false")
    return value


def _seconds(value: object, name: str, *, positive: bool) -> float:
    """A duration from a request: a number of seconds, more than 0 if `positive`, else 0
    or more. NaN is refused: it passes every bound (a NaN compares false) and then ends
    whatever it is a deadline of (trio refuses it); a number too large for a float, and
    Infinity, mean no limit."""
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            seconds = math.inf if value > 0 else -math.inf
    if not (seconds > 0 if positive else seconds >= 0):  # NaN fails both
        raise RequestError(f"{name} must be a {'positive ' if positive else ''}number of "
                           f"seconds{'' if positive else ', 0 or more'}")
    return seconds
