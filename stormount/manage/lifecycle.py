"""Lifecycle rules: files of a folder older than an age (by the mtime the mount shows)
are deleted, moved to an archive (a lower tier, or any storage URL), or only reported.

The first rule (in the configuration's order) whose folder holds a file decides for it.
A file with changes not uploaded yet (in a journal) is never touched, nor one a mount
has open. A move copies the object to the archive, checks the copy's size, and only
then deletes it from the mount's tiers; a copy that fails leaves the file where it was.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial

import trio

from stormount.backends import open_backend
from stormount.backends.base import ObjectInfo, ObjectStore
from stormount.chain.tier import redact
from stormount.config import LifecycleRule, parse_tier_url
from stormount.errors import BackendError, Changed, NotFound, StormountError
from stormount.manage.store import Store, in_batches, objects
from stormount.vfs.attrs import attrs_from_object, kind_of

log = logging.getLogger(__name__)


@dataclass
class Decision:
    rule: int  # 1-based, in the configuration's order
    action: str  # delete, move, warn
    key: str
    size: int
    age: float  # seconds since the file's mtime
    to: str | None = None  # move: where to
    etag: str = ""  # the version planned for: a file changed since is left alone
    done: bool = False
    skipped: str | None = None  # why it was left alone (pending upload, open)
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


async def plan(store: Store, rules: Collection[LifecycleRule], prefix: str = "",
               busy: Collection[str] = (), now: float | None = None) -> list[Decision]:
    """What the rules would do to the files under `prefix`; `busy` are keys with
    changes not uploaded yet or open in a mount: reported as skipped."""
    now = time.time() if now is None else now
    claimed: set[str] = set()  # the first rule whose folder holds a file decides for it
    decided: list[Decision] = []
    for number, rule in enumerate(rules, 1):
        start = rule.prefix if rule.prefix.startswith(prefix) else prefix
        if not (start.startswith(rule.prefix) or rule.prefix.startswith(start)):
            continue  # the rule's folder is outside the one asked about
        await _plan_rule(store, number, rule, start, claimed, busy, now, decided)
    return sorted(decided, key=lambda d: d.key)


BUSY = "not uploaded yet, or open in a mount"


async def _plan_rule(store: Store, number: int, rule: LifecycleRule, start: str,
                     claimed: set[str], busy: Collection[str], now: float,
                     decided: list[Decision]) -> None:
    """The decisions of one rule, over the files under `start` no earlier rule claimed
    (their mtimes asked for many at once)."""
    async def candidates() -> AsyncIterator[ObjectInfo]:
        async for listed in objects(store, store.primary, start):
            key = listed.key
            if key.endswith("/") or key in claimed or not key.startswith(rule.prefix):
                continue
            claimed.add(key)  # also when it is too young: a later rule does not get it
            yield listed

    async def judge(listed: ObjectInfo) -> None:
        try:
            age = now - await _mtime(store, listed)
        except NotFound:
            return  # deleted since the listing
        if age < rule.older_than:
            return
        decision = Decision(number, rule.action, listed.key, listed.size, age,
                            _where(rule.to), etag=listed.etag)
        if listed.key in busy:
            decision.skipped = BUSY
        decided.append(decision)

    await in_batches(candidates(), judge)


def _where(to: str | None) -> str | None:
    return None if to is None else (f"tier {to}" if to.isdigit() else redact(to))


async def _mtime(store: Store, listed: ObjectInfo) -> float:
    """The file's mtime as the mount shows it: its metadata where it has one (a HEAD;
    listings of S3 carry none), else the store's."""
    info = listed if listed.metadata is not None else await store.call(
        "head", partial(store.primary.backend.head, listed.key))
    return attrs_from_object(info, kind_of(info.key, info.metadata),
                             store.cfg.fuse).mtime_ns / 1e9


async def apply(store: Store, rules: Collection[LifecycleRule], decisions: list[Decision],
                busy: Callable[[str], bool] = lambda key: False) -> None:
    """Carry the decisions out; `busy` is asked again right before each file (a mount
    may have begun changing it since the plan)."""
    by_number = dict(enumerate(rules, 1))
    async with _archives(store, rules) as archives:
        for decision in decisions:
            if not decision.skipped and busy(decision.key):
                decision.skipped = BUSY
            if decision.skipped:
                continue
            if decision.action == "warn":
                log.warning("lifecycle rule %d: %s is %.1f days old", decision.rule,
                            decision.key, decision.age / 86400,
                            extra={"event": "lifecycle_warn", "key": decision.key})
                continue
            archive = archives.get(str(by_number[decision.rule].to))
            try:
                if archive is not None:
                    await _copy(store, decision, archive)
                else:
                    await _unchanged(store, decision)
                await _delete(store, decision.key, keep=archive)
                decision.done = True
                log.info("lifecycle rule %d: %s %s", decision.rule,
                         "moved" if archive is not None else "deleted", decision.key,
                         extra={"event": "lifecycle", "key": decision.key})
            except (StormountError, OSError) as e:
                decision.error = str(e)
                log.warning("lifecycle rule %d: %s: %s", decision.rule, decision.key, e)


@asynccontextmanager
async def _archives(store: Store, rules: Collection[LifecycleRule]
                    ) -> AsyncIterator[dict[str, ObjectStore]]:
    """The move targets by their `to`: tiers of the store, or stores of their own."""
    found: dict[str, ObjectStore] = {}
    async with AsyncExitStack() as stack:
        for rule in rules:
            if rule.action != "move" or rule.to is None or rule.to in found:
                continue
            if rule.to.isdigit():
                found[rule.to] = store.tiers[int(rule.to)].backend
                continue
            backend = open_backend(parse_tier_url(rule.to))
            stack.push_async_callback(backend.aclose)
            await store.call("check", backend.check)
            found[rule.to] = backend
        yield found


async def _unchanged(store: Store, decision: Decision) -> ObjectInfo:
    """The file as it is now, if it is still the version planned for."""
    try:
        info = await store.call("head", partial(store.primary.backend.head, decision.key))
    except NotFound:
        raise StormountError("gone from the store meanwhile") from None
    if info.etag != decision.etag:
        raise StormountError("changed in the store since it was planned; left as it is")
    return info


async def _copy(store: Store, decision: Decision, target: ObjectStore) -> None:
    """The object, byte for byte with its metadata, onto the archive; checked."""
    source, key = store.primary, decision.key
    info = await _unchanged(store, decision)
    block = store.cfg.cache.block_size
    fd, tmp = tempfile.mkstemp(prefix="stormount-lifecycle-")
    try:
        with os.fdopen(fd, "wb") as f:
            offset = 0
            while offset < info.size:
                try:
                    data = await store.call("get", partial(
                        source.backend.get_range, key, offset, min(block, info.size - offset),
                        version=info.etag))
                except Changed:
                    raise StormountError(f"{key} changed while it was copied; left as it "
                                         "is") from None
                if not data:
                    break
                await trio.to_thread.run_sync(f.write, data)  # a daemon's loop runs this too
                offset += len(data)
        if offset != info.size:
            raise StormountError(f"{key}: read {offset} bytes, the store says {info.size}")
        stored = await store.call("put", partial(target.put_file, key, tmp,
                                                 dict(info.metadata or {})))
        if stored.size != info.size:
            raise StormountError(f"{key}: the archive holds {stored.size} bytes, not "
                                 f"{info.size}; left where it was")
    finally:
        os.unlink(tmp)


async def _delete(store: Store, key: str, keep: ObjectStore | None) -> None:
    """From the primary and the mirrors (copies of its version), not the archive. A
    spill-over tier's copy of the key is a write a mount still has to copy up (newer
    than what was planned for): it stays."""
    for tier in store.tiers:
        if tier.backend is keep or (tier.index > 0 and not tier.cfg.mirror):
            continue
        try:
            await store.call("delete", partial(tier.backend.delete, key))
        except NotFound:
            continue
        except BackendError as e:
            raise StormountError(f"tier {tier.index}: {e}") from None
