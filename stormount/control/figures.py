"""The mount's figures as data: commands.py reads them from the daemon's parts, the
control socket sends them as JSON, metrics.py turns a Snapshot into Prometheus families.
The TypedDicts are the JSON of docs/CONTROL.md, key for key: a change here is a change
of the protocol."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TypedDict

from stormount.chain.tier import TierStatus
from stormount.stats import Ops


@dataclass
class Counters:
    """Every counter of the mount at one moment; `stats` shows the difference from the
    last reset, `metrics` the totals."""

    fuse: Ops
    bytes_read: int
    bytes_written: int
    tiers: list[Ops]
    metadata: dict[str, int]
    blocks: dict[str, int]
    uploads: dict[str, int]
    repaired: int
    bytes_to_pages: int = 0  # blocks given to the kernel's page cache
    at: float = field(default_factory=time.time)

    def minus(self, base: Counters) -> Counters:
        def sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: v - b.get(k, 0) for k, v in a.items()}

        return Counters(
            fuse=self.fuse.minus(base.fuse), bytes_read=self.bytes_read - base.bytes_read,
            bytes_written=self.bytes_written - base.bytes_written,
            tiers=[ops.minus(old) for ops, old in zip(self.tiers, base.tiers, strict=True)],
            metadata=sub(self.metadata, base.metadata), blocks=sub(self.blocks, base.blocks),
            uploads=sub(self.uploads, base.uploads), repaired=self.repaired - base.repaired,
            bytes_to_pages=self.bytes_to_pages - base.bytes_to_pages, at=self.at)


class TierState(TierStatus):
    """A tier in `health`, `tiers`, `drain` and `undrain`."""

    state: str  # up, down or drained


class FirstFailure(TypedDict):
    path: str
    error: str | None


class WritebackQueue(TypedDict):
    pending: int
    uploading: int
    open: int  # waiting for their writers' last close
    failing: int
    oldest_queued_at: float | None
    first_failure: FirstFailure | None


class Health(TypedDict):
    """The `health` reply, without "ok"."""

    state: str  # ok, degraded or down
    reasons: list[str]
    mountpoint: str
    pid: int
    version: str
    uptime: float
    tiers: list[TierState]
    writeback: WritebackQueue
    repair: dict[str, int]  # repair tasks pending, by kind
    quotas: list[dict[str, object]]


@dataclass(frozen=True)
class Snapshot:
    """What `metrics` exposes, read at one moment on the event loop's thread: a copy,
    so the families can be built on any thread."""

    counters: Counters  # totals since the start: Prometheus's counters stay monotonic
    health: Health
    inodes: int
    block_bytes: int | None  # None: the mount has no block cache
    block_max_bytes: int | None
