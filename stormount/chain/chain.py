"""The chain of tiers, itself a Backend: the rest of the daemon does not know how many
tiers there are.

Writes go to the highest tier that takes them: the primary while it is healthy, else
the next one, and so on (a lower tier takes writes only while every tier above it is
down). A write that lands below the primary is a spill: it is recorded in the repair
queue (synced to disk) before the call returns, and copied up once the primary is
healthy again. Mirror tiers (`mirror = true`) get a background copy of every write.

Reads go to the highest healthy tier holding the object: where it was spilled if it
was, else the primary, else a mirror that is up to date for that key. An object the
primary does not have is not looked for elsewhere: only the repair queue knows what
lower tiers hold. Listings come from the primary (a mirror while it is down), with the
spilled and deleted keys laid over them.

A copy made by the chain carries, in its metadata, the version it is a copy of; the
chain reports that version for it, so a file keeps its version whichever tier serves it.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import trio

from stormount.backends.base import ListPage, ObjectInfo, Progress
from stormount.backends.resume import Recorded, Resume
from stormount.chain.health import Health, reserved
from stormount.chain.repair import (
    ABSENT,
    COPY,
    DELETE,
    STAMP,
    Pending,
    RepairJournal,
    Task,
    cond_of,
    new_task,
    transfer,
)
from stormount.chain.retry import AllDown, backoff, retrying
from stormount.chain.tier import Kind, Tier, reserved_error, unavailable
from stormount.config import ChainConfig
from stormount.errors import BackendError, Changed, NotFound, StartupError, Transient

log = logging.getLogger(__name__)
T = TypeVar("T")
Tasks = list[Task]
Idents = list[tuple[str, int]]
FAILING_DELAY = 60.0  # how often a repair that keeps failing for another reason is retried
CHECK_TIMEOUT = 10.0  # at start, a tier that does not answer by then is started without


def conflict_name(path: str, host: str, when: float, n: int = 0) -> str:
    """Where a version goes when the store holds another one it must not replace."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    return f"{path}.conflict-{host}-{stamp}" + (f"-{n}" if n else "")


async def put_aside(key: str, host: str, put: Callable[[str], Awaitable[T]]
                    ) -> tuple[T, str]:
    """Store a version beside `key` under the first free conflict name: `put(name)`
    writes it if nothing is there, and raises Changed if something is."""
    when = time.time()
    for n in range(100):
        name = conflict_name(key, host, when, n)
        try:
            return await put(name), name
        except Changed:
            continue
    raise Changed(f"no free conflict name for {key}", key=key)


def _up(info: ObjectInfo) -> ObjectInfo:
    """What the layers above see: the version a copy stands for, metadata without ours."""
    if info.metadata is None or STAMP not in info.metadata:
        return info
    meta = {k: v for k, v in info.metadata.items() if k != STAMP}
    # its Last-Modified is the copy's, not that of the version it stands for
    return ObjectInfo(key=info.key, size=info.size, mtime=info.mtime,
                      etag=info.metadata[STAMP] or info.etag, metadata=meta,
                      mtime_exact=False)


class KeyLocks:
    """One lock per key in use: a write, a delete and a repair of one key never overlap."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, *keys: str) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):  # one order, so two holders never deadlock
                lock, users = self._locks.get(key, (trio.Lock(), 0))
                self._locks[key] = (lock, users + 1)
                stack.callback(self._release, key)
                await stack.enter_async_context(lock)
            yield

    def _release(self, key: str) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)


class Chain:
    def __init__(self, tiers: builtins.list[Tier], journal: RepairJournal, cfg: ChainConfig,
                 spool: str, *, host: str | None = None) -> None:
        self.tiers = tiers
        self.primary = tiers[0]
        self.mirrors = [t for t in tiers[1:] if t.mirror]
        self.cfg = cfg
        self.url = self.primary.cfg.url
        self.spool = spool
        self.host = host or socket.gethostname().split(".")[0] or "host"
        self.pending = Pending(journal)
        urls = [t.url for t in tiers]
        owed = journal.tiers()
        if owed != urls:
            if self.pending.tasks:  # task rows name tiers by number
                raise StartupError(
                    f"the repair queue {journal.path} still owes work to the tiers "
                    f"{', '.join(owed)}: mount with those tiers, in that order, until it is "
                    "done (or move the file away to give that work up; spilled objects "
                    "stay where they are)")
            journal.set_tiers(urls)
        self.health = Health(tiers, self.pending.counts)
        self._locks = KeyLocks()
        self._parked: dict[int, Idents] = {}  # tasks waiting for a tier
        self._running: set[tuple[str, int]] = set()  # tasks being repaired
        self._again: set[tuple[str, int]] = set()  # ...and queued again meanwhile
        self._natives: OrderedDict[tuple[int, str, str], str] = OrderedDict()
        self.repaired = 0
        self.on_tier_up: Callable[[], None] = lambda: None  # set by the daemon
        for tier in tiers:
            tier.on_state = self._tier_changed

    # --- the Backend protocol ---------------------------------------------------------

    async def check(self) -> None:
        """Every tier answers, or the mount starts without the ones that cannot be
        reached (not without one that refuses us: that needs fixing)."""
        errors: dict[int, BackendError] = {}

        async def one(tier: Tier) -> None:
            try:
                with trio.fail_after(min(tier.cfg.list_timeout, CHECK_TIMEOUT)):
                    await tier.call(Kind.LIST, tier.backend.check)
            except trio.TooSlowError:
                errors[tier.index] = Transient(f"no answer within {CHECK_TIMEOUT:g} s")
                tier.trip(errors[tier.index])
            except BackendError as e:
                errors[tier.index] = e
                if unavailable(e):
                    tier.trip(e)

        async with trio.open_nursery() as nursery:
            for tier in self.tiers:
                nursery.start_soon(one, tier)
        for _, e in sorted(errors.items()):
            if not unavailable(e):
                raise e
        if len(errors) == len(self.tiers):
            raise Transient("no tier is reachable: " + "; ".join(
                f"{self.tiers[i].url}: {e}" for i, e in sorted(errors.items())))
        for index, e in sorted(errors.items()):
            log.warning("tier %d (%s) is unreachable, starting without it: %s", index,
                        self.tiers[index].url, e)

    async def head(self, key: str) -> ObjectInfo:
        if reserved(key):
            raise NotFound(f"{key}: reserved", key=key)
        return _up(await self._read(key, "head", Kind.LIST, lambda t: t.backend.head(key)))

    async def get_range(self, key: str, offset: int, length: int,
                        version: str | None = None) -> bytes:
        if reserved(key):
            raise NotFound(f"{key}: reserved", key=key)

        async def fetch(tier: Tier) -> bytes:
            cached = (tier.index, key, version or "")
            tried = self._natives.get(cached, version)
            try:
                return await tier.backend.get_range(key, offset, length, tried)
            except Changed:
                if version is None:
                    raise
            # the version may be this tier's copy of another tier's version (or the
            # remembered translation went stale)
            self._natives.pop(cached, None)
            native = await self._native(tier, key, version)
            if native == tried:
                raise Changed(f"{key} is no longer the version {version}", key=key)
            return await tier.backend.get_range(key, offset, length, native)

        return await self._read(key, "get", Kind.DOWNLOAD, fetch)

    async def put_file(self, key: str, path: str, metadata: Mapping[str, str], *,
                       if_match: str | None = None, if_absent: bool = False,
                       progress: Progress | None = None,
                       resume: Resume | None = None) -> ObjectInfo:
        async def send(tier: Tier, if_match: str | None, if_absent: bool) -> ObjectInfo:
            # each tier's backend continues only an upload recorded under its own URL,
            # and records the one it begins under it (a failover starts fresh)
            return await tier.backend.put_file(key, path, metadata, if_match=if_match,
                                               if_absent=if_absent, progress=progress,
                                               resume=resume)
        return await self._store(key, send, if_match, if_absent)

    async def abandon(self, recorded: Recorded) -> None:
        """Abort a recorded upload on the tier it was begun on (each ignores others')."""
        for tier in self.tiers:
            try:
                await tier.backend.abandon(recorded)
            except BackendError as e:  # left in the store: gc finds it
                log.warning("tier %d: cannot abort the upload of %s: %s", tier.index,
                            recorded.key, e)

    async def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        async def send(tier: Tier, if_match: str | None, if_absent: bool) -> ObjectInfo:
            return await tier.backend.put_bytes(key, data, metadata)
        return await self._store(key, send, None, False)

    async def delete(self, key: str) -> None:
        if reserved(key):
            raise reserved_error(key)
        async with self._locks.hold(key):
            before = self.pending.get(key, 0)
            deleted = False
            try:
                await self._retried("delete", lambda: self._first(
                    [self.primary], Kind.DELETE, lambda t: t.backend.delete(key)))
                deleted = True
            except BackendError as e:
                if not unavailable(e):
                    raise
            puts, drops = self._replacing(key, before, landed=None)
            if deleted:
                drops.append((key, 0))
            else:  # the primary deletes it once it is back; meanwhile it is gone here
                puts.append(new_task(key, 0, DELETE))
                log.info("delete of %s recorded for when the primary is back", key)
            puts += [new_task(key, m.index, DELETE) for m in self.mirrors]
            self.pending.apply(puts, drops, durable=not deleted or before is not None)

    async def list(self, prefix: str, delimiter: str = "/", token: str | None = None,
                   limit: int = 1000) -> ListPage:
        if reserved(prefix):
            return ListPage()
        after: str | None = None
        inner: str | None = None
        if token is None:
            sources = [self.primary, *self.mirrors]
        else:
            state = json.loads(token)
            sources, inner, after = [self.tiers[state["t"]]], state["k"], state["a"]
        while True:
            page, index = await self._retried("list", functools.partial(
                self._page, sources, prefix, delimiter, inner, limit))
            out = self._overlay(index, prefix, delimiter, after, page)
            if out.objects or out.prefixes or out.token is None:
                return out
            # everything on this page was deleted meanwhile: callers that look at one
            # page (is the directory empty?) must see what follows
            sources, inner, after = [self.tiers[index]], page.token, json.loads(out.token)["a"]

    async def _page(self, sources: builtins.list[Tier], prefix: str, delimiter: str,
                    token: str | None, limit: int) -> tuple[ListPage, int]:
        answered: builtins.list[Tier] = []

        async def page_of(tier: Tier) -> ListPage:
            page = await tier.backend.list(prefix, delimiter, token, limit)
            answered.append(tier)
            return page

        page = await self._first(sources, Kind.LIST, page_of)
        return page, answered[-1].index

    async def copy(self, src: str, dst: str,
                   metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        if reserved(dst):
            raise reserved_error(dst)
        async with self._locks.hold(src, dst):
            sources = self._holders(src)
            landed: builtins.list[Tier] = []

            async def copy_on(tier: Tier) -> ObjectInfo:
                info = await tier.backend.copy(src, dst, metadata)
                landed.append(tier)
                return info

            info = await self._retried("copy", lambda: self._first(sources, Kind.UPLOAD, copy_on))
            self._record(dst, landed[-1], info, self.pending.get(dst, 0), None)
            return _up(info)

    async def aclose(self) -> None:
        for tier in self.tiers:
            with contextlib.suppress(Exception):
                await tier.backend.aclose()
        self.pending.journal.close()

    # --- background work ----------------------------------------------------------------

    async def run(self) -> None:
        """Health watches and the repair worker, until cancelled."""
        async with trio.open_nursery() as nursery:
            for tier in self.tiers:
                nursery.start_soon(self.health.watch, tier)
            nursery.start_soon(self._repair_worker)

    def reconfigure(self, cfg: ChainConfig) -> None:
        """New retry, timeout and repair settings (SIGHUP): for the requests that follow."""
        self.cfg = cfg

    def queue(self) -> builtins.list[dict[str, object]]:
        """The repair tasks, oldest first, as the control socket shows them."""
        parked = {ident: index for index, idents in self._parked.items() for ident in idents}
        out: builtins.list[dict[str, object]] = []
        for task in sorted(self.pending.tasks.values(), key=lambda t: t.seq):
            if task.ident in self._running:
                state = "running"
            elif task.ident in parked:
                state = f"waiting for tier {parked[task.ident]}"
            else:
                state = "queued"
            out.append({"key": task.key, "tier": task.tier, "action": task.action,
                        "from_tier": task.src, "state": state, "attempts": task.attempts,
                        "last_error": task.last_error, "since": task.since})
        return out

    async def settle(self) -> None:
        """Wait until the repair queue is empty (tests, unmount)."""
        while self.pending.tasks:
            await self.pending.changed.wait()

    # --- writes -------------------------------------------------------------------------

    async def _store(self, key: str,
                     send: Callable[[Tier, str | None, bool], Awaitable[ObjectInfo]],
                     if_match: str | None, if_absent: bool) -> ObjectInfo:
        if reserved(key):
            raise reserved_error(key)
        async with self._locks.hold(key):
            before = self.pending.get(key, 0)
            spilled = before if before is not None and before.action == COPY else None
            if spilled is not None and (if_absent or (
                    if_match is not None and if_match != spilled.etag)):
                raise Changed(f"{key} is not the version the write was based on", key=key)
            if before is not None and before.action == DELETE and if_match is not None:
                raise Changed(f"{key} was deleted", key=key)
            errors: builtins.list[BaseException] = []
            for tier in self.tiers:
                if not tier.allow(Kind.UPLOAD):
                    continue
                match, absent = if_match, if_absent
                if tier.index == 0 and before is not None:
                    # the write replaces what the queue holds; the primary still has the
                    # version from before the spill (or before the delete)
                    match, absent = _parse_cond(spilled.cond) if spilled else (None, False)
                elif tier.index > 0:
                    # a lower tier cannot judge a condition on the primary's version:
                    # the repair does, when it copies this up
                    match, absent = None, False
                try:
                    info = await self._conditional(tier, key, send, match, absent)
                except BackendError as e:
                    if not unavailable(e):
                        raise
                    errors.append(e)
                    continue
                if tier.index > 0:
                    why = errors[-1] if errors else "out of service"
                    log.info("%s went to tier %d (%s): the tiers above failed (%s)", key,
                             tier.index, tier.url, why,
                             extra={"event": "failover_write", "tier": tier.index, "key": key,
                                    "error": str(why)})
                self._record(key, tier, info, before, cond_of(if_match, if_absent))
                return _up(info)
            raise self._none_left(errors)

    async def _conditional(self, tier: Tier, key: str,
                           send: Callable[[Tier, str | None, bool], Awaitable[ObjectInfo]],
                           if_match: str | None, if_absent: bool) -> ObjectInfo:
        try:
            return await tier.call(Kind.UPLOAD, send, tier, if_match, if_absent)
        except Changed:
            if if_match is None:
                raise
        native = await self._native(tier, key, if_match)  # a copy's version: its own etag
        if native == if_match:
            raise Changed(f"{key} changed in the store", key=key)
        return await tier.call(Kind.UPLOAD, send, tier, native, False)

    def _record(self, key: str, tier: Tier, info: ObjectInfo, before: Task | None,
                cond: str | None) -> None:
        """A new version of `key` landed on `tier` (written on condition `cond` on the
        primary's version): queue what the other tiers owe."""
        puts, drops = self._replacing(key, before, landed=tier)
        up = _up(info)
        shown = {"size": info.size, "etag": up.etag, "mtime": info.mtime}
        if tier.index == 0:
            if before is not None:
                drops.append((key, 0))
        else:
            if before is not None:
                # spilled again: copied up on the condition of the first spill
                cond = before.cond if before.action == COPY else None
            puts.append(new_task(key, 0, COPY, src=tier.index, cond=cond, **shown))
        puts += [new_task(key, m.index, COPY, **shown) for m in self.mirrors
                 if m is not tier]
        self.pending.apply(puts, drops, durable=tier.index > 0 or before is not None)

    def _replacing(self, key: str, before: Task | None,
                   landed: Tier | None) -> tuple[Tasks, Idents]:
        """Tasks for a change of `key`: the spilled copy it supersedes goes, and the tier
        it landed on owes nothing more for it."""
        puts: builtins.list[Task] = []
        drops: builtins.list[tuple[str, int]] = []
        if before is not None and before.action == COPY and before.src is not None:
            old = self.tiers[before.src]
            if not old.mirror and old is not landed:
                puts.append(new_task(key, old.index, DELETE))
        if landed is not None and landed.index > 0:
            drops.append((key, landed.index))
        return puts, drops

    # --- reads --------------------------------------------------------------------------

    def _holders(self, key: str) -> builtins.list[Tier]:
        """The tiers that hold the current version of `key`, best first."""
        task = self.pending.get(key, 0)
        if task is not None and task.action == DELETE:
            raise NotFound(f"{key} was deleted", key=key)
        first = self.primary if task is None else self.tiers[task.src or 0]
        return [first, *(m for m in self.mirrors
                         if m is not first and self.pending.get(key, m.index) is None)]

    async def _read(self, key: str, op: str, kind: Kind,
                    fn: Callable[[Tier], Awaitable[T]]) -> T:
        return await self._retried(op, lambda: self._first(self._holders(key), kind, fn))

    async def _first(self, tiers: builtins.list[Tier], kind: Kind,
                     fn: Callable[[Tier], Awaitable[T]]) -> T:
        """The answer of the first tier that gives one; an error that is an answer (not
        found, changed, refused) is final."""
        errors: builtins.list[BaseException] = []
        for tier in tiers:
            if not tier.allow(kind):
                continue
            try:
                answer = await tier.call(kind, fn, tier)
            except NotFound:
                if errors:  # a lower tier may lack what the one that failed holds
                    raise errors[-1] from None
                raise
            except BackendError as e:
                if not unavailable(e):
                    raise
                errors.append(e)
                continue
            if errors:
                log.info("tier %d answered a %s that the tier above failed: %s", tier.index,
                         kind, errors[-1], extra={"event": "failover_read", "tier": tier.index,
                                                  "error": str(errors[-1])})
            return answer
        raise self._none_left(errors)

    async def _retried(self, op: str, attempt: Callable[[], Awaitable[T]]) -> T:
        failed: BaseException | None = None
        async for retry in retrying(self.cfg):
            if failed is not None:  # counted on the tier that failed, for the stats
                tier = self._tier_of(failed)
                tier.metered.ops[op].retries += 1
                log.info("%s failed on tier %d, retrying (attempt %d): %s", op, tier.index,
                         retry.retry_state.attempt_number, failed,
                         extra={"event": "retry", "tier": tier.index, "error": str(failed)})
            with retry:
                try:
                    return await attempt()
                except Transient as e:
                    failed = e
                    raise
        raise AssertionError("unreachable: tenacity re-raises")  # pragma: no cover

    def _tier_of(self, error: BaseException) -> Tier:
        url = getattr(error, "backend", "")
        return next((t for t in self.tiers if url in (t.url, t.backend.url)), self.primary)

    def _none_left(self, errors: builtins.list[BaseException]) -> BaseException:
        if not errors:
            down = ", ".join(t.url for t in self.tiers)
            return AllDown(f"every tier that could serve this is down ({down})")
        last = errors[-1]
        return last

    async def _native(self, tier: Tier, key: str, version: str | None) -> str | None:
        """This tier's own version of the object that `version` names: `version` itself,
        or the etag of this tier's copy of it (its metadata says what it is a copy of)."""
        try:
            info = await tier.call(Kind.LIST, tier.backend.head, key)
        except NotFound:
            raise Changed(f"{key} is gone", key=key) from None
        if version not in (info.etag, (info.metadata or {}).get(STAMP)):
            raise Changed(f"{key} is no longer the version {version}", key=key)
        self._natives[(tier.index, key, version or "")] = info.etag
        while len(self._natives) > 4096:
            self._natives.popitem(last=False)
        return info.etag

    def _overlay(self, index: int, prefix: str, delimiter: str, after: str | None,
                 page: ListPage) -> ListPage:
        """A page of tier `index` with what the repair queue knows laid over it."""
        last = max([*(o.key for o in page.objects[-1:]), *page.prefixes[-1:]], default=None)
        upto = None
        if page.token is not None and last is not None:
            # a page that ends with a prefix covers every key under it
            upto = last + "\U0010ffff" if last in page.prefixes else last
        objects = {o.key: _up(o) for o in page.objects if not reserved(o.key)}
        prefixes = {p for p in page.prefixes if not reserved(p)}
        for key in self.pending.between(prefix, after, upto):
            task = self.pending.get(key, 0)
            if task is None and index > 0:
                task = self.pending.get(key, index)
            if task is None:
                continue
            if task.action == DELETE:
                objects.pop(key, None)
                continue
            rest = key[len(prefix):]
            cut = rest.find(delimiter) if delimiter else -1
            if cut >= 0:
                prefixes.add(prefix + rest[:cut + len(delimiter)])
            else:
                objects[key] = task.info()
        token = None if page.token is None else json.dumps(
            {"t": index, "k": page.token, "a": upto})
        return ListPage(objects=[objects[k] for k in sorted(objects)],
                        prefixes=sorted(prefixes), token=token)

    # --- repair -------------------------------------------------------------------------

    def _tier_changed(self, tier: Tier) -> None:
        if tier.up:  # what waits for it looks again (and waits again if still blocked)
            self.pending.requeue(self._parked.pop(tier.index, []))
            self.on_tier_up()

    def _blocked_on(self, task: Task) -> Tier | None:
        """A tier the task needs that cannot serve it now, if any: the tier it writes to
        must be in service, the one a copy reads from only up (drained is fine)."""
        target = self.tiers[task.tier]
        if not target.healthy:
            return target
        if task.action == COPY:
            source = self.tiers[task.src or 0] if task.tier == 0 else (
                self._holders_of(task.key)[0])
            if not source.up:
                return source
        return None

    def _holders_of(self, key: str) -> builtins.list[Tier]:
        try:
            return self._holders(key)
        except NotFound:
            return [self.primary]

    async def _repair_worker(self) -> None:
        limiter = trio.CapacityLimiter(self.cfg.repair_parallel)
        async with trio.open_nursery() as nursery:
            while True:
                task = self.pending.take()
                if task is None:
                    await self.pending.changed.wait()
                    continue
                if task.ident in self._running:
                    self._again.add(task.ident)  # it runs again once this run ends
                    continue
                blocked = self._blocked_on(task)
                if blocked is not None:
                    self._park(task)
                    continue
                await limiter.acquire_on_behalf_of(task)
                self._running.add(task.ident)
                nursery.start_soon(self._repair_one, task, limiter, nursery)

    def _park(self, task: Task) -> None:
        """Until the tier it waits for can serve it (at once, if none blocks it now)."""
        blocked = self._blocked_on(task)
        if blocked is None:
            self.pending.requeue([task.ident])
        else:
            self._parked.setdefault(blocked.index, []).append(task.ident)

    async def _repair_one(self, task: Task, limiter: trio.CapacityLimiter,
                          nursery: trio.Nursery) -> None:
        try:
            async with self._locks.hold(task.key):
                if self.pending.get(task.key, task.tier) is not task:
                    return  # replaced meanwhile: the newer task is queued
                await self._repair(task)
        except Exception as e:  # never let one repair stop the worker (and the mount)
            if not isinstance(e, BackendError | OSError):
                log.exception("repair of %s on tier %d failed unexpectedly", task.key,
                              task.tier)
            task.attempts += 1
            task.last_error = str(e) or type(e).__name__
            log.info("repair of %s on tier %d failed (attempt %d): %s", task.key, task.tier,
                     task.attempts, task.last_error,
                     extra={"event": "repair_failed", "tier": task.tier, "key": task.key,
                            "error": task.last_error})
            blocked = self._blocked_on(task) if isinstance(e, BackendError) else None
            if blocked is not None and unavailable(e):
                self._park(task)
            else:
                # 2, 4, 8 ... times retry_delay after the 1st, 2nd, 3rd failure, up to a minute
                delay = backoff(task.attempts + 1, self.cfg.retry_delay, FAILING_DELAY)
                nursery.start_soon(self._later, task.ident, delay)
        finally:
            limiter.release_on_behalf_of(task)
            self._running.discard(task.ident)
            if task.ident in self._again:
                self._again.discard(task.ident)
                self.pending.requeue([task.ident])

    async def _later(self, ident: tuple[str, int], delay: float) -> None:
        await trio.sleep(delay)
        self.pending.requeue([ident])

    async def _repair(self, task: Task) -> None:
        tier = self.tiers[task.tier]
        if task.action == DELETE:
            await tier.call(Kind.DELETE, tier.backend.delete, task.key)
            self.pending.finish(task, durable=task.tier == 0)
        elif task.tier == 0:
            await self._copy_up(task)
        else:
            source = self._holders_of(task.key)[0]
            if source is not tier:
                # gone from the source: a delete of it is queued, or was done
                with contextlib.suppress(NotFound):
                    await transfer(source, tier, task.key, self.spool)
            self.pending.finish(task)

    async def _copy_up(self, task: Task) -> None:
        """Copy a spilled object up to the primary, verified, then drop the spilled copy
        (mirrors keep theirs). A primary changed since the spill keeps its version: the
        spilled one goes beside it under a conflict name."""
        src = self.tiers[task.src or 0]
        key = task.key
        puts = [] if src.mirror else [new_task(key, src.index, DELETE)]
        try:
            match, absent = await self._base_on_primary(task)
            await transfer(src, self.primary, key, self.spool, if_match=match,
                           if_absent=absent, verify=True)
        except NotFound:  # the source: nothing of ours was lost, someone removed it
            log.warning("the spilled copy of %s on tier %d is gone; nothing to repair",
                        key, src.index)
            self.pending.finish(task, durable=True)
            return
        except Changed:
            aside = await self._copy_aside(task, src)
            # the mirrors follow the primary: its version under the name, ours beside it
            puts += [new_task(name, m.index, COPY) for m in self.mirrors
                     for name in (key, aside)]
        self.pending.apply(puts, [task.ident], durable=True)
        self.repaired += 1
        log.info("repaired %s: copied up from tier %d (%s)", key, src.index, src.url,
                 extra={"event": "repaired", "tier": src.index, "key": key})

    async def _base_on_primary(self, task: Task) -> tuple[str | None, bool]:
        """The condition of the copy up, on the primary's own etag. A copy up that got
        there before (and was cut short, or failed its check) is replaced, not judged
        as someone else's change."""
        match, absent = _parse_cond(task.cond)
        if match is None and not absent:
            return None, False
        try:
            info = await self.primary.call(Kind.LIST, self.primary.backend.head, task.key)
        except NotFound:
            if absent:
                return None, True
            raise Changed(f"{task.key} is gone from the primary", key=task.key) from None
        stamp = (info.metadata or {}).get(STAMP)
        if stamp == task.etag or (match is not None and match in (info.etag, stamp)):
            return info.etag, False
        raise Changed(f"{task.key} changed on the primary", key=task.key)

    async def _copy_aside(self, task: Task, src: Tier) -> str:
        _, name = await put_aside(task.key, self.host, lambda name: transfer(
            src, self.primary, task.key, self.spool, dst_key=name, if_absent=True,
            verify=True))
        log.warning("%s changed on the primary while it was down; kept its version, "
                    "and the version written meanwhile as %s", task.key, name,
                    extra={"event": "conflict", "key": task.key, "conflict": name})
        return name


def _parse_cond(cond: str | None) -> tuple[str | None, bool]:
    if cond is None:
        return None, False
    if cond == ABSENT:
        return None, True
    return cond.removeprefix("match:"), False


def spool_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, "spool")
