"""The tiers of a configuration, opened for a management command."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import trio

from stormount.backends import open_backend
from stormount.backends.base import ObjectInfo, ObjectStore, list_pages
from stormount.chain.health import reserved
from stormount.chain.retry import retrying
from stormount.chain.tier import redact
from stormount.config import ChainConfig, MountConfig, TierConfig, folder_path
from stormount.errors import BackendError, StormountError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Tier:
    index: int
    cfg: TierConfig
    backend: ObjectStore

    @property
    def url(self) -> str:
        return redact(self.cfg.url)


@dataclass(frozen=True)
class Store:
    cfg: MountConfig
    tiers: list[Tier]

    @property
    def primary(self) -> Tier:
        return self.tiers[0]

    async def call(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """One request, retried on transient errors as the mount would retry it."""
        return await retried(self.cfg.chain, what, attempt)


async def retried(cfg: ChainConfig, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    async for try_ in retrying(cfg):
        with try_:
            return await attempt()
    raise AssertionError("unreachable")  # tenacity re-raises the last error


@asynccontextmanager
async def open_store(cfg: MountConfig, *, check: bool = True) -> AsyncIterator[Store]:
    """Every tier of `cfg`, checked (the bucket exists, the credentials work) unless told
    not to, and closed on the way out."""
    tiers: list[Tier] = []
    try:
        for index, tier_cfg in enumerate(cfg.tiers):
            tiers.append(Tier(index, tier_cfg, open_backend(tier_cfg)))
        store = Store(cfg, tiers)
        if check:
            for tier in tiers:
                try:
                    await store.call("check", tier.backend.check)
                except BackendError as e:
                    raise StormountError(f"tier {tier.index} ({tier.url}): {e}") from None
        yield store
    finally:
        with trio.CancelScope(shield=True):
            for tier in tiers:
                await tier.backend.aclose()


def lifecycle_store(cfg: MountConfig, backends: list[ObjectStore]) -> Store:
    """A Store over backends a running mount has open already (its own tiers)."""
    return Store(cfg, [Tier(i, t, b) for i, (t, b) in
                       enumerate(zip(cfg.tiers, backends, strict=True))])


def folder_prefix(path: str) -> str:
    """A folder of the mount as a key prefix: '' for the root, else 'a/b/'."""
    path = folder_path(path, "PATH")
    return f"{path}/" if path else ""


async def objects(store: Store, tier: Tier, prefix: str, *,
                  reserved_too: bool = False) -> AsyncIterator[ObjectInfo]:
    """Every object under `prefix` on one tier, in key order, page by page (a flat
    listing: no delimiter), each page retried; directory markers included, the chain's
    own objects only with `reserved_too`."""
    async for page in list_pages(tier.backend, prefix,
                                 call=lambda ask: store.call("list", ask)):
        for info in page.objects:
            if reserved_too or not reserved(info.key):
                yield info


HEADS_AT_ONCE = 16  # per-object requests of a scan (HEADs) in flight at once
BATCH = 256  # objects of a listing handled per round of such requests


async def in_batches(items: AsyncIterator[ObjectInfo],
                     each: Callable[[ObjectInfo], Awaitable[None]]) -> None:
    """`each` for every item, HEADS_AT_ONCE at a time, a batch of listing at a time (a
    scan of a million objects holds one batch, and waits on 16 requests, not one)."""
    limiter = trio.CapacityLimiter(HEADS_AT_ONCE)

    async def one(item: ObjectInfo) -> None:
        async with limiter:
            await each(item)

    batch: list[ObjectInfo] = []
    async for item in items:
        batch.append(item)
        if len(batch) < BATCH:
            continue
        async with trio.open_nursery() as nursery:
            for queued in batch:
                nursery.start_soon(one, queued)
        batch = []
    async with trio.open_nursery() as nursery:
        for queued in batch:
            nursery.start_soon(one, queued)
