"""Health of the tiers: active probes and the stall watch, and the one object the rest
of the daemon reads the tiers' state from.

A probe writes, reads back and deletes a small object under `.stormount/probe/`, a
prefix the chain hides, every `probe_interval` while the tier is healthy and every
`probe_interval_down` while it is not; a successful probe closes the tier's breaker at
once, so a tier that comes back is used again within seconds. Passive health comes from
every request (see Tier.call). The stall watch catches an endpoint that accepts
connections and never answers: when requests have waited `stall_timeout` without any
answer from the tier, a quick HEAD must answer within `probe_timeout`, or the tier is
marked down and its requests in flight fail over. Uploads the store is seen to take
(Progress.answers) are answers too: a tier taking them is not marked down because a
probe or a check was slow (a busy store answers small requests late while it takes in
big ones)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import trio

from stormount.chain.tier import Tier, unavailable
from stormount.errors import BackendError, NotFound, PermissionDenied

log = logging.getLogger(__name__)
RESERVED = ".stormount/"
PROBE_PREFIX = RESERVED + "probe/"


def reserved(key: str) -> bool:
    """Under the top-level `.stormount/`: the chain's own objects (health probes, a local
    tier's staging), which no command lists, counts or copies and no upload may store."""
    return key.startswith(RESERVED)


class Health:
    """The tiers' health, for the daemon and the control socket."""

    def __init__(self, tiers: list[Tier], queue: Callable[[], dict[str, int]]) -> None:
        self.tiers = tiers
        self._queue = queue
        host = socket.gethostname().replace("/", "_")
        self.probe_key = f"{PROBE_PREFIX}{host}-{os.getpid()}"

    def healthy(self, index: int) -> bool:
        return self.tiers[index].healthy

    def snapshot(self) -> dict[str, object]:
        """Every tier's breaker, errors and probe results, and the repair queue."""
        return {"healthy": all(t.healthy for t in self.tiers),
                "tiers": [t.status() for t in self.tiers],
                "repair": self._queue()}

    async def watch(self, tier: Tier) -> None:
        """Probe `tier` on schedule and check it when its requests stall; forever."""
        last_probe = trio.current_time()
        was_up = tier.up
        while True:
            if was_up and not tier.up:
                # the first probe of a tier that just went down comes probe_interval_down
                # later, as its log line says, not at once (what failed just now would
                # often pass a moment later, and the tier would flap)
                last_probe = trio.current_time()
            was_up = tier.up
            interval = tier.cfg.probe_interval if tier.up else tier.cfg.probe_interval_down
            next_probe = last_probe + interval
            stall_at = tier.stall_deadline() if tier.up else None
            due = next_probe if stall_at is None else min(next_probe, stall_at)
            with trio.move_on_at(due):
                # a request started (its stall deadline counts), or the tier went down
                await tier.wake.wait()
                continue
            stall_at = tier.stall_deadline()
            if stall_at is not None and trio.current_time() >= stall_at and tier.up:
                await self._liveness(tier)
            if trio.current_time() >= next_probe:
                await self.probe(tier)
                last_probe = trio.current_time()

    async def _liveness(self, tier: Tier) -> None:
        """Requests wait without an answer: does the tier answer at all?"""
        started = trio.current_time()
        try:
            with trio.fail_after(tier.cfg.probe_timeout):
                await tier.backend.head(self.probe_key)
        except NotFound:
            pass
        except trio.TooSlowError:
            if tier.moving(started):
                log.info("tier %d (%s): a check got no answer within %g s, but its "
                         "transfers are moving: not marked down", tier.index, tier.url,
                         tier.cfg.probe_timeout)
                return
            tier.trip(BackendError(f"no answer within {tier.cfg.probe_timeout:g} s"))
            return
        except BackendError as e:
            if unavailable(e):
                tier.trip(e)
                return
        tier.last_answer = trio.current_time()

    async def probe(self, tier: Tier) -> bool:
        """One write/read/delete round trip (a listing where writes are refused)."""
        started = trio.current_time()
        try:
            with trio.fail_after(tier.cfg.probe_timeout):
                await self._round_trip(tier)
        except (trio.TooSlowError, BackendError) as e:
            tier.probe_ok, tier.probe_at = False, time.time()
            if isinstance(e, trio.TooSlowError):
                e = BackendError(f"probe got no answer within {tier.cfg.probe_timeout:g} s")
                if tier.moving(started - tier.cfg.stall_timeout):
                    log.info("tier %d (%s): %s, but its transfers are moving: not marked "
                             "down", tier.index, tier.url, e)
                    return False
            tier.trip(BackendError(f"probe failed: {e}"))  # logged there, once, if it went down
            return False
        tier.probe_ok, tier.probe_at = True, time.time()
        tier.probe_latency = trio.current_time() - started
        tier.answered(how=f"a probe succeeded in {tier.probe_latency:.1f} s")
        return True

    async def _round_trip(self, tier: Tier) -> None:
        backend = tier.backend
        if tier.writable and not tier.drained:  # a drained tier takes no writes, not even these
            body = f"stormount probe {time.time():.3f}\n".encode()
            try:
                await backend.put_bytes(self.probe_key, body, {})
            except PermissionDenied:
                log.info("tier %d (%s) refuses writes: its probe only lists",
                         tier.index, tier.url)
                tier.writable = False
            else:
                got = await backend.get_range(self.probe_key, 0, len(body))
                if got != body:
                    raise BackendError(f"probe read back {len(got)} bytes that differ from "
                                       f"the {len(body)} written")
                await backend.delete(self.probe_key)
                return
        await backend.list(PROBE_PREFIX, "/", None, 1)
