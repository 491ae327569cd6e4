"""One storage tier of the chain: its backend, its role, its breaker, and the one way a
request reaches it (`call`): behind the tier's limit for that kind of request, under
that kind's timeout, watched for stalls, and counted for the tier's health."""

from __future__ import annotations

import contextvars
import errno
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypedDict, TypeVar

import trio

from stormount.backends.base import Backend, ListPage, ObjectInfo, Progress
from stormount.backends.resume import Recorded, Resume
from stormount.chain.breaker import Breaker, State
from stormount.config import TierConfig
from stormount.errors import (
    BackendError,
    Changed,
    Conflict,
    ContainerMissing,
    NotFound,
    PermissionDenied,
    Throttled,
    Transient,
)
from stormount.stats import Histogram, Ops

log = logging.getLogger(__name__)
T = TypeVar("T")


class Kind(StrEnum):
    UPLOAD = "upload"
    DOWNLOAD = "download"
    DELETE = "delete"
    LIST = "list"  # listings, HEADs, checks


class Stalled(Transient):
    """The tier stopped answering; its requests were given up to fail over."""


def unavailable(exc: BaseException) -> bool:
    """Errors that say the tier cannot serve now (so another tier should), as opposed
    to answers (not found, changed, refused)."""
    return isinstance(exc, Transient | ContainerMissing)


def redact(url: str) -> str:
    """A URL without its query, which may hold credentials."""
    return url.split("?", 1)[0]


ANSWERS = (NotFound, Changed, Conflict)  # the store answered: not a failure of the request
# the requests one attempt made (operation, start), so a timeout is counted on the right one
_RUNNING: contextvars.ContextVar[list[tuple[str, float]] | None] = contextvars.ContextVar(
    "stormount_running", default=None)
# the uploads one attempt made, each with its counts of moves and answers when it began,
# so the attempt is judged by their progress
Watched = list[tuple[Progress, int, int]]
_WATCHED: contextvars.ContextVar[Watched | None] = contextvars.ContextVar(
    "stormount_watched", default=None)
RECENT = 200  # requests the health report's latency covers
TICK = 1.0  # at most this long between two looks at a transfer's progress


@dataclass(eq=False)
class Flight:
    """One request in flight on the tier."""

    start: float  # trio time
    scope: trio.CancelScope
    watched: Watched = field(default_factory=list)
    finishing_at: float | None = None  # the store assembles the upload: its own deadline


class Metered:
    """A tier's backend with every request timed and counted by operation, for the
    stats: whoever makes the request (reads, writes, probes, repairs)."""

    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self.url = backend.url
        self.ops = Ops()
        self.recent: deque[float] = deque(maxlen=RECENT)  # latencies of the last requests

    async def _timed(self, op: str, request: Awaitable[T]) -> T:
        started = time.perf_counter()
        running = _RUNNING.get()
        if running is not None:
            running.append((op, started))
        error: str | None = None
        try:
            return await request
        except ANSWERS:
            raise
        except trio.Cancelled:
            # given up: a timeout or a stall is counted by the tier, which knows which
            # it was (`lost`); a caller that went away is no failure of the store
            started = -1.0
            raise
        except BaseException as e:
            error = type(e).__name__
            raise
        finally:
            if started >= 0:
                self.done(op, started, error)

    def done(self, op: str, started: float, error: str | None) -> None:
        seconds = time.perf_counter() - started
        self.ops[op].done(seconds, error)
        self.recent.append(seconds)

    def lost(self, running: list[tuple[str, float]], reason: str) -> None:
        """The request in flight was given up (`Timeout`, `Stalled`): count it so."""
        for op, started in running[-1:]:
            self.done(op, started, reason)

    def recent_latency(self) -> dict[str, float | None]:
        """p50/p95/p99 (ms) of the last requests."""
        hist = Histogram()
        for seconds in self.recent:
            hist.observe(seconds)
        return hist.summary()

    async def check(self) -> None:
        await self._timed("check", self.inner.check())

    async def head(self, key: str) -> ObjectInfo:
        return await self._timed("head", self.inner.head(key))

    async def get_range(self, key: str, offset: int, length: int,
                        version: str | None = None) -> bytes:
        return await self._timed("get", self.inner.get_range(key, offset, length, version))

    async def put_file(self, key: str, path: str, metadata: Mapping[str, str], *,
                       if_match: str | None = None, if_absent: bool = False,
                       progress: Progress | None = None,
                       resume: Resume | None = None) -> ObjectInfo:
        progress = progress if progress is not None else Progress()
        try:
            size: int | None = os.stat(path).st_size  # a local stat: no thread hop
        except OSError:
            size = None  # the backend reports it
        progress.begin(size)
        watched = _WATCHED.get()
        if watched is not None:  # the tier's attempt judges this upload by its progress
            watched.append((progress, progress.moves, progress.answers))
        return await self._timed("put", self.inner.put_file(
            key, path, metadata, if_match=if_match, if_absent=if_absent, progress=progress,
            resume=resume))

    async def abandon(self, recorded: Recorded) -> None:
        await self._timed("abort upload", self.inner.abandon(recorded))

    async def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        return await self._timed("put", self.inner.put_bytes(key, data, metadata))

    async def delete(self, key: str) -> None:
        await self._timed("delete", self.inner.delete(key))

    async def list(self, prefix: str, delimiter: str = "/", token: str | None = None,
                   limit: int = 1000) -> ListPage:
        return await self._timed("list", self.inner.list(prefix, delimiter, token, limit))

    async def copy(self, src: str, dst: str,
                   metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        return await self._timed("copy", self.inner.copy(src, dst, metadata))

    async def aclose(self) -> None:
        await self.inner.aclose()


class TierStatus(TypedDict):
    """A tier as `stormount ctl` shows it (docs/CONTROL.md)."""

    index: int
    url: str
    role: str  # primary, mirror or spill-over
    healthy: bool
    drained: bool
    breaker: str  # closed, open or half-open
    consecutive_failures: int
    opened: int
    retry_in: float | None
    requests: int
    failures: int
    in_flight: int
    last_answer_ago: float | None
    last_error: str | None
    last_error_at: float | None
    probe_ok: bool | None
    probe_at: float | None
    probe_latency: float | None
    recent_latency: dict[str, float | None]


class Tier:
    def __init__(self, index: int, backend: Backend, cfg: TierConfig) -> None:
        self.index = index
        self.backend = self.metered = Metered(backend)
        self.cfg = cfg
        self.url = redact(cfg.url)
        self.mirror = cfg.mirror
        self.role = "primary" if index == 0 else "mirror" if cfg.mirror else "spill-over"
        self.breaker = Breaker(cfg.breaker_failures, cfg.breaker_open)
        self.drained = False  # taken out of service by the operator (`ctl drain`)
        self._limits = {Kind.UPLOAD: trio.CapacityLimiter(cfg.uploads),
                        Kind.DOWNLOAD: trio.CapacityLimiter(cfg.downloads),
                        Kind.DELETE: trio.CapacityLimiter(cfg.deletes)}
        self._timeouts = {Kind.UPLOAD: cfg.upload_timeout, Kind.DOWNLOAD: cfg.download_timeout,
                          Kind.DELETE: cfg.delete_timeout, Kind.LIST: cfg.list_timeout}
        self._ids = itertools.count()
        self.inflight: dict[int, Flight] = {}
        self.wake = trio.Event()  # set (and replaced) when the health watch must look again
        self.on_state: Callable[[Tier], None] = lambda tier: None  # the breaker moved
        # what the health report shows
        self.last_answer: float | None = None  # trio time the tier last answered
        self.moved_at: float | None = None  # trio time a transfer of it last moved bytes
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall clock
        self.requests = 0
        self.failures = 0
        self.probe_ok: bool | None = None
        self.probe_at: float | None = None  # wall clock
        self.probe_latency: float | None = None
        self.writable = True  # the probe may write (credentials can be read-only)
        self.worked: set[Kind] = set()  # kinds of request the tier has answered with success

    @property
    def up(self) -> bool:
        """Its breaker is closed: it answers requests (if drained, reads only)."""
        return self.breaker.state == State.CLOSED

    @property
    def healthy(self) -> bool:
        """Up and in service: it takes writes and repairs."""
        return self.up and not self.drained

    def allow(self, kind: Kind) -> bool:
        """May a request go to the tier now (see Breaker.allow)? No writes while drained."""
        if self.drained and kind in (Kind.UPLOAD, Kind.DELETE):
            return False
        return self.breaker.allow()

    def drain(self, drained: bool) -> bool:
        """Take the tier out of service for maintenance, or put it back. A drained tier
        takes no writes (they spill to the next tier, as in an outage) and no repairs;
        it still answers reads while it can, so lookups and listings keep working, and
        when it does go offline its breaker opens as in any outage. True if that changed
        anything."""
        if drained == self.drained:
            return False
        self.drained = drained
        log.warning("tier %d (%s) %s", self.index, self.url,
                    "drained by the operator: its writes go to the next tier" if drained
                    else "undrained by the operator: back in service",
                    extra={"event": "tier_drained" if drained else "tier_undrained",
                           "tier": self.index})
        self._wake()
        self.on_state(self)
        return True

    async def call(self, kind: Kind, fn: Callable[..., Awaitable[T]], *args: object,
                   **kwargs: object) -> T:
        """One attempt of one request. The timeout starts once the request has its turn:
        requests queued behind the limit are not failures."""
        limiter = self._limits.get(kind)
        if limiter is None:
            return await self._attempt(kind, fn, args, kwargs)
        try:
            await limiter.acquire()
        except BaseException:  # cancelled while waiting: a half-open trial is not used up
            self.breaker.release()
            raise
        try:
            return await self._attempt(kind, fn, args, kwargs)
        finally:
            limiter.release()

    async def _attempt(self, kind: Kind, fn: Callable[..., Awaitable[T]],
                       args: tuple[object, ...], kwargs: dict[str, object]) -> T:
        ident = next(self._ids)
        scope = trio.CancelScope()
        flight = self.inflight[ident] = Flight(trio.current_time(), scope)
        if len(self.inflight) == 1:
            self._wake()
        self.requests += 1
        timeout = self._timeouts[kind]
        verdict = False
        running: list[tuple[str, float]] = []
        reset = _RUNNING.set(running)
        watching = _WATCHED.set(flight.watched)
        try:
            with scope:
                try:
                    if kind == Kind.UPLOAD:
                        result = await self._watched(flight, fn, args, kwargs)
                    else:
                        with trio.fail_after(timeout):
                            result = await fn(*args, **kwargs)
                except trio.TooSlowError as e:
                    self.metered.lost(running, "Timeout")
                    why = str(e) or f"{kind} timed out after {timeout:g} s"
                    error = Transient(f"{self.url}: {why}", backend=self.url)
                    self.failed(error)
                    verdict = True
                    raise error from None
                except BackendError as e:
                    verdict = True
                    if self.gone(kind, e):
                        # the bucket deleted, or credentials revoked: down at once, not
                        # at the next probe; back once a probe succeeds
                        self.trip(e)
                    elif unavailable(e) and not isinstance(e, Throttled):
                        self.failed(e)
                    else:  # an answer: the tier works
                        self.answered(success=not isinstance(e, Throttled))
                    raise
                verdict = True
                self.answered()
                self.worked.add(kind)
                return result
            # cancelled by the stall watch: the tier was marked down meanwhile
            verdict = True
            self.metered.lost(running, "Stalled")
            error = Stalled(f"{self.url}: stopped answering", backend=self.url)
            self._note(error)
            raise error
        finally:
            _WATCHED.reset(watching)
            _RUNNING.reset(reset)
            del self.inflight[ident]
            if not verdict:  # cancelled by the caller, or a bug: no verdict on the tier
                self.breaker.release()

    async def _watched(self, flight: Flight, fn: Callable[..., Awaitable[T]],
                       args: tuple[object, ...], kwargs: dict[str, object]) -> T:
        """An upload, given up (TooSlowError) only when it stalls: an upload of a file
        once it moved nothing for transfer_stall_timeout, however long it has run, or
        once the store took complete_timeout to assemble it; a request that reports no
        progress (a copy, a small object) after upload_timeout."""
        done: list[T] = []
        errors: list[Exception] = []
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                try:
                    done.append(await fn(*args, **kwargs))
                except Exception as e:  # raised below, outside the nursery's group
                    errors.append(e)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            why = await self._stall_of(flight)
            nursery.cancel_scope.cancel()
        if errors:
            raise errors[0]
        if done:
            return done[0]
        raise trio.TooSlowError(why)

    async def _stall_of(self, flight: Flight) -> str:
        """Watch the progress of an upload in flight; return why it stalled, if it does.
        What the store is seen to take (Progress.answers) is also an answer of the
        tier, for its stall watch."""
        cfg = self.cfg
        tick = min(TICK, cfg.stall_timeout / 2, cfg.transfer_stall_timeout / 4)
        moved_at, seen, answers = flight.start, 0, 0
        while True:
            now = trio.current_time()
            moves = sum(p.moves - base for p, base, _ in flight.watched)
            if moves != seen:
                seen, moved_at = moves, now
            taken = sum(p.answers - base for p, _, base in flight.watched)
            if taken != answers:  # the store takes the bytes: the tier is alive
                answers = taken
                self.moved_at = self.last_answer = now
            if flight.finishing_at is None and any(p.finishing for p, _, _ in flight.watched):
                flight.finishing_at = now
            if flight.finishing_at is not None:
                deadline = flight.finishing_at + cfg.complete_timeout
                why = (f"the store did not complete the upload within "
                       f"{cfg.complete_timeout:g} s")
            elif flight.watched:
                deadline = moved_at + cfg.transfer_stall_timeout
                why = f"upload moved no bytes for {cfg.transfer_stall_timeout:g} s"
            else:
                deadline = flight.start + cfg.upload_timeout
                why = f"upload timed out after {cfg.upload_timeout:g} s"
            if now >= deadline:
                return why
            await trio.sleep_until(min(deadline, now + tick))

    def gone(self, kind: Kind, error: BackendError) -> bool:
        """Whether `error` says the tier as a whole is gone: its bucket or container does
        not exist, or it refuses (PermissionDenied) a kind of request it has answered
        before (credentials revoked; credentials that never allowed it, say read-only
        ones refused an upload, are not news)."""
        return isinstance(error, ContainerMissing) or (
            isinstance(error, PermissionDenied) and kind in self.worked)

    def moving(self, since: float) -> bool:
        """Whether a transfer of the tier moved bytes at or after trio time `since`:
        evidence that the tier works, whatever a probe says."""
        return self.moved_at is not None and self.moved_at >= since

    def answered(self, success: bool = True, how: str = "a request succeeded") -> None:
        self.last_answer = trio.current_time()
        before = self.breaker.state
        if success:
            self.breaker.success()
        else:
            self.breaker.release()
        if self.breaker.state != before:
            log.warning("tier %d (%s) is back: %s, %s after it went down", self.index,
                        self.url, how, _since(self.breaker.opened_at),
                        extra={"event": "tier_up", "tier": self.index})
            self.on_state(self)

    def failed(self, error: BaseException) -> None:
        self._note(error)
        before = self.breaker.state
        self.breaker.failure()
        if self.breaker.state != before:
            self._opened()

    def trip(self, error: BaseException) -> None:
        """Mark the tier down now, and give up on what is in flight so it fails over."""
        self._note(error)
        before = self.breaker.state
        self.breaker.trip()
        if before != self.breaker.state:
            self._opened()
        for flight in list(self.inflight.values()):
            if flight.finishing_at is None:  # an upload being assembled has its own deadline
                flight.scope.cancel()

    def _wake(self) -> None:
        self.wake.set()
        self.wake = trio.Event()

    def _opened(self) -> None:
        log.warning("tier %d (%s) is down: %s; its requests go to the next tier; it is "
                    "probed every %g s and used again once a probe succeeds (or a trial "
                    "request, allowed after %g s)", self.index, self.url, self.last_error,
                    self.cfg.probe_interval_down, self.cfg.breaker_open,
                    extra={"event": "tier_down", "tier": self.index, "error": self.last_error})
        self._wake()  # probes now come every probe_interval_down
        self.on_state(self)

    def _note(self, error: BaseException) -> None:
        self.failures += 1
        self.last_error = str(error) or type(error).__name__
        self.last_error_at = time.time()

    def stall_deadline(self) -> float | None:
        """When the oldest request in flight, unanswered, calls for a check of the tier.
        An upload the store is assembling is left out (it has complete_timeout); bytes
        the store is seen to take of a transfer count as answers."""
        starts = [f.start for f in self.inflight.values() if f.finishing_at is None]
        if not starts:
            return None
        answered = -math.inf if self.last_answer is None else self.last_answer
        return max(min(starts), answered) + self.cfg.stall_timeout

    def status(self) -> TierStatus:
        retry_at = self.breaker.retry_at
        return {
            "index": self.index, "url": self.url, "role": self.role,
            "healthy": self.healthy, "drained": self.drained,
            "breaker": str(self.breaker.state),
            "consecutive_failures": self.breaker.consecutive,
            "opened": self.breaker.opened,
            "retry_in": None if retry_at is None else max(0.0, retry_at - trio.current_time()),
            "requests": self.requests, "failures": self.failures,
            "in_flight": len(self.inflight),
            "last_answer_ago": None if self.last_answer is None
            else round(trio.current_time() - self.last_answer, 3),
            "last_error": self.last_error, "last_error_at": self.last_error_at,
            "probe_ok": self.probe_ok, "probe_at": self.probe_at,
            "probe_latency": self.probe_latency,
            "recent_latency": self.metered.recent_latency(),
        }


def _since(then: float) -> str:
    return f"{max(0.0, trio.current_time() - then):.1f} s"


def reserved_error(key: str) -> BackendError:
    err = BackendError(f"{key}: names under .stormount/ are reserved", key=key)
    err.errno = errno.EACCES
    return err
