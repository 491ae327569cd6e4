"""The read path through the block cache: hits need no store, a changed object never
serves old bytes, random reads transfer what they ask for, sequential reads are fetched
ahead with bounded memory."""

from __future__ import annotations

import os
import uuid

import pytest
import trio
import trio.testing

from stormount.backends import open_backend
from stormount.cache.blocks import BlockCache
from stormount.config import parse_tier_url
from stormount.errors import Changed, Transient
from stormount.vfs.reader import Reader, ReadState
from tests.helpers.faults import FaultyBackend

MiB = 1024 * 1024
BS = 256 * 1024


class Metered(FaultyBackend):
    """Counts the bytes the store sends and the most ranged GETs in flight at once."""

    def __init__(self, inner):
        super().__init__(inner)
        self.bytes_sent = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    async def get_range(self, key, offset, length, version=None):
        await self._fault("get_range", key)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await trio.sleep(0.001)
            data = await self.inner.get_range(key, offset, length, version)
        finally:
            self.in_flight -= 1
        self.bytes_sent += len(data)
        return data


@pytest.fixture
def setup(tmp_path):
    backend = Metered(open_backend(parse_tier_url(f"memory://rd-{uuid.uuid4().hex}")))
    blocks = BlockCache(str(tmp_path / "blocks"), block_size=BS, max_bytes=64 * MiB,
                        min_free_bytes=0)
    yield backend, blocks, Reader(backend, blocks, min_window=BS, max_window=4 * BS,
                                  prefetch_parallel=2)
    blocks.close()


async def put(backend, key, size):
    data = os.urandom(size)
    info = await backend.inner.put_bytes(key, data, {})
    return data, info.etag


async def sequential(reader, key, version, data, chunk=64 * 1024):
    state = ReadState()
    out = bytearray()
    while len(out) < len(data):
        out += await reader.read(key, version, len(data), len(out), chunk, state)
    return bytes(out)


async def test_cached_blocks_serve_without_the_store(setup):
    backend, _, reader = setup
    data, version = await put(backend, "f", 3 * BS + 100)
    assert await sequential(reader, "f", version, data) == data
    backend.fail("get_range", Transient("store unreachable"))
    assert await sequential(reader, "f", version, data) == data  # offline: from the cache


async def test_a_new_version_never_serves_old_bytes(setup):
    backend, _, reader = setup
    old, v1 = await put(backend, "f", 2 * BS)
    assert await sequential(reader, "f", v1, old) == old
    new, v2 = await put(backend, "f", 2 * BS)
    assert v1 != v2
    assert await sequential(reader, "f", v2, new) == new


async def test_random_read_transfers_about_the_range(setup):
    backend, _, reader = setup
    data, version = await put(backend, "big", 40 * BS)
    got = await reader.read("big", version, len(data), 17 * BS + 5, 4096, ReadState())
    assert got == data[17 * BS + 5: 17 * BS + 5 + 4096]
    assert backend.bytes_sent == 4096
    # the same block touched again is fetched whole and cached
    await reader.read("big", version, len(data), 17 * BS + 9000, 4096, ReadState())
    before = backend.bytes_sent
    await reader.read("big", version, len(data), 17 * BS + 20000, 4096, ReadState())
    assert backend.bytes_sent == before


async def test_sequential_reads_fetch_ahead_in_the_background(setup):
    backend, blocks, reader = setup
    data, version = await put(backend, "seq", 12 * BS)
    async with trio.open_nursery() as nursery:
        reader.background = nursery
        state = ReadState()
        await reader.read("seq", version, len(data), 0, 64 * 1024, state)
        await reader.read("seq", version, len(data), 64 * 1024, 64 * 1024, state)
        await trio.testing.wait_all_tasks_blocked()
        while reader._inflight or reader._queued:
            await trio.sleep(0.01)
    assert blocks.has("seq", version, 1)  # ahead of the reader, before it asked


async def test_memory_stays_bounded_on_a_large_sequential_read(setup):
    backend, _, reader = setup
    data, version = await put(backend, "huge", 64 * BS)
    async with trio.open_nursery() as nursery:
        reader.background = nursery
        assert await sequential(reader, "huge", version, data, chunk=128 * 1024) == data
    # at most the prefetch slots plus the reader's own block are in memory at once
    assert backend.peak_in_flight <= 3


async def test_an_object_replaced_during_reading_is_never_read_torn(setup):
    backend, blocks, reader = setup
    old, v1 = await put(backend, "f", 3 * BS)
    state = ReadState()
    assert await reader.read("f", v1, len(old), 0, 64 * 1024, state) == old[:64 * 1024]
    await put(backend, "f", 3 * BS)  # replaced by someone else, same size
    with pytest.raises(Changed):
        await reader.read("f", v1, len(old), 2 * BS, 4096, ReadState())
    assert not blocks.has("f", v1, 2)  # nothing of the new version under the old name


async def test_read_ahead_asks_for_several_blocks_per_request(tmp_path):
    """Fewer, larger requests (issue 20): read-ahead GETs span `span` bytes, and the
    blocks they bring are cached one by one."""
    backend = Metered(open_backend(parse_tier_url(f"memory://rd-{uuid.uuid4().hex}")))
    blocks = BlockCache(str(tmp_path / "blocks"), block_size=BS, max_bytes=64 * MiB,
                        min_free_bytes=0)
    reader = Reader(backend, blocks, min_window=4 * BS, max_window=16 * BS,
                    prefetch_parallel=2, span=4 * BS)
    data, version = await put(backend, "seq", 64 * BS)
    gets = []
    inner = backend.get_range

    async def counted(key, offset, length, version=None):
        gets.append(length)
        return await inner(key, offset, length, version)

    backend.get_range = counted
    try:
        async with trio.open_nursery() as nursery:
            reader.background = nursery
            assert await sequential(reader, "seq", version, data, chunk=128 * 1024) == data
    finally:
        blocks.close()
    assert max(gets) == 4 * BS
    assert len(gets) <= 64 // 4 + 4  # about one request per span, not one per block


async def test_read_ahead_bytes_in_flight_do_not_grow_with_the_block_size(tmp_path):
    """Memory in flight is bounded in bytes (issue 20): 24 MiB of read-ahead GETs at
    once, so with 16 MiB blocks (one per GET) a single read-ahead GET runs at a time,
    besides the block the reader itself waits for."""
    backend = Metered(open_backend(parse_tier_url(f"memory://rd-{uuid.uuid4().hex}")))
    blocks = BlockCache(str(tmp_path / "blocks"), block_size=16 * MiB, max_bytes=1024 * MiB,
                        min_free_bytes=0)
    reader = Reader(backend, blocks, max_window=256 * MiB)
    data, version = await put(backend, "big", 128 * MiB)
    try:
        async with trio.open_nursery() as nursery:
            reader.background = nursery
            assert await sequential(reader, "big", version, data, chunk=1 * MiB) == data
    finally:
        blocks.close()
    assert backend.peak_in_flight <= 2
