"""The scans of gc and lifecycle ask for many objects at once, a batch at a time."""

from __future__ import annotations

import trio

from stormount.backends.base import ObjectInfo
from stormount.manage.store import BATCH, HEADS_AT_ONCE, in_batches


async def test_every_item_once_and_never_more_than_the_limit_at_once(autojump_clock):
    seen: list[str] = []
    running = peak = 0

    async def items():
        for n in range(BATCH * 2 + 7):
            yield ObjectInfo(key=f"k{n:04d}", size=n, mtime=0.0, etag="e")

    async def each(item: ObjectInfo) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)  # a request's round trip, on the autojump clock
        seen.append(item.key)
        running -= 1

    started = trio.current_time()
    await in_batches(items(), each)
    assert sorted(seen) == [f"k{n:04d}" for n in range(BATCH * 2 + 7)]
    assert peak == HEADS_AT_ONCE
    # 16 at a time: each batch of 256 takes 16 round trips, the last 7 one more
    assert trio.current_time() - started == 2 * BATCH / HEADS_AT_ONCE + 1
