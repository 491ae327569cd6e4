"""The block cache: exact bytes or a miss, never stale or corrupt bytes; LRU eviction
under the byte cap and the free-space floor, pins honoured; warm restarts, also after
the process was killed; hits never write to disk."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from stormount.cache import blocks
from stormount.cache.blocks import BlockCache
from stormount.errors import StartupError

BS = 4096
REPO = Path(__file__).resolve().parents[2]


def payload(ident: str, version: str, index: int, size: int = BS) -> bytes:
    return random.Random(f"{ident}|{version}|{index}").randbytes(size)


@pytest.fixture
def make(tmp_path):
    """Open caches on tmp_path/cache (small blocks, no free-space floor unless asked);
    every cache still open is closed at teardown."""
    caches: list[BlockCache] = []

    def _make(**kw) -> BlockCache:
        kw.setdefault("block_size", BS)
        kw.setdefault("min_free_bytes", 0)
        cache = BlockCache(str(tmp_path / "cache"), **kw)
        caches.append(cache)
        return cache

    yield _make
    for cache in caches:
        cache.close()


def block_files(cache: BlockCache) -> list[Path]:
    return sorted(p for p in Path(cache.directory, "data").rglob("*") if p.is_file())


def only_file(cache: BlockCache) -> Path:
    (path,) = block_files(cache)
    return path


def test_round_trip_partial_reads_and_clipping(make):
    cache = make()
    full, tail = payload("a", "v", 0), payload("a", "v", 1, 100)  # last block is shorter
    cache.put("a", "v", 0, full)
    cache.put("a", "v", 1, tail)
    assert cache.has("a", "v", 0) and cache.has("a", "v", 1)
    assert cache.read("a", "v", 0, 0, BS) == full
    assert cache.read("a", "v", 0, 1000, 10) == full[1000:1010]
    assert cache.read("a", "v", 1, 0, BS) == tail  # clipped to the block's length
    assert cache.read("a", "v", 1, 90, 50) == tail[90:]
    assert cache.read("a", "v", 1, 100, 10) == b""  # at or past the end: empty, still a hit
    assert cache.read("a", "v", 0, 5, 0) == b""
    stats = cache.stats()
    assert (stats["blocks"], stats["bytes"], stats["hits"], stats["misses"]) == (2, BS + 100, 6, 0)
    with pytest.raises(ValueError):
        cache.put("a", "v", 2, b"x" * (BS + 1))


def test_miss(make):
    cache = make()
    cache.put("a", "v", 0, payload("a", "v", 0))
    assert cache.read("a", "v", 1, 0, 10) is None
    assert cache.read("b", "v", 0, 0, 10) is None
    assert not cache.has("a", "v", 1)
    assert cache.stats()["misses"] == 2


def test_file_names_do_not_embed_keys(make):
    cache = make()
    ident = "dir/" * 100 + "f\udcff.txt"  # long, slashes, a surrogate-escaped byte
    cache.put(ident, "v/1", 0, b"data")
    assert cache.read(ident, "v/1", 0, 0, 4) == b"data"
    name = only_file(cache).name
    assert "dir" not in name and len(name) < 64


def test_new_version_never_serves_old_bytes(make):
    cache = make()
    old, new = payload("a", "v1", 0), payload("a", "v2", 0)
    cache.put("a", "v1", 0, old)
    assert cache.read("a", "v2", 0, 0, BS) is None  # the caller asks by the current version
    cache.put("a", "v2", 0, new)
    assert cache.read("a", "v2", 0, 0, BS) == new
    assert cache.read("a", "v1", 0, 0, BS) is None  # older versions go with the new put
    assert cache.stats()["blocks"] == 1 and len(block_files(cache)) == 1


def test_eviction_under_the_byte_cap_in_lru_order(make):
    cache = make(max_bytes=4 * BS)
    for i in range(4):
        cache.put("a", "v", i, payload("a", "v", i))
    assert cache.read("a", "v", 0, 0, 1) is not None  # block 0 becomes the most recent
    cache.put("a", "v", 4, payload("a", "v", 4))
    assert [cache.has("a", "v", i) for i in range(5)] == [True, False, True, True, True]
    cache.put("b", "v", 0, payload("b", "v", 0))
    assert not cache.has("a", "v", 2)
    stats = cache.stats()
    assert stats["bytes"] == 4 * BS and stats["evictions"] == 2
    assert sum(p.stat().st_size for p in block_files(cache)) == 4 * BS
    cache.close()
    cache = make(max_bytes=BS - 1)  # (reopening under a smaller cap evicts at start)
    assert cache.stats()["blocks"] == 0
    with pytest.raises(OSError) as exc:  # a block larger than the whole cache
        cache.put("c", "v", 0, payload("c", "v", 0))
    assert exc.value.errno == errno.ENOSPC


def test_pinned_blocks_are_never_evicted(make):
    pressure: list[bool] = []
    cache = make(max_bytes=3 * BS, on_pressure=lambda: pressure.append(True))
    cache.pin("dirty")
    for i in range(3):
        cache.put("dirty", "v", i, payload("dirty", "v", i))
    with pytest.raises(OSError) as exc:  # only pinned data could make room
        cache.put("b", "v", 0, payload("b", "v", 0))
    assert exc.value.errno == errno.ENOSPC and pressure == [True]
    assert all(cache.read("dirty", "v", i, 0, BS) == payload("dirty", "v", i) for i in range(3))
    assert cache.stats()["evictions"] == 0 and len(block_files(cache)) == 3
    assert os.listdir(Path(cache.directory, "tmp")) == []  # the refused block left nothing
    cache.unpin("dirty")
    cache.put("b", "v", 0, payload("b", "v", 0))
    assert not cache.has("dirty", "v", 0) and cache.has("dirty", "v", 1)


def test_pins_and_a_mix_of_pinned_and_unpinned(make):
    cache = make(max_bytes=3 * BS)
    cache.put("old", "v", 0, payload("old", "v", 0))  # least recent, but pinned below
    cache.put("x", "v", 0, payload("x", "v", 0))
    cache.pin("old")
    cache.put("y", "v", 0, payload("y", "v", 0))
    cache.put("z", "v", 0, payload("z", "v", 0))  # evicts x, skipping the pinned one
    assert cache.has("old", "v", 0) and not cache.has("x", "v", 0)


def test_min_free_bytes_is_honoured(make, tmp_path):
    disk = 10 * BS  # a fake disk that holds only this cache's block files

    def free_bytes() -> int:
        used = sum(p.stat().st_size for sub in ("data", "tmp")
                   for p in (tmp_path / "cache" / sub).rglob("*") if p.is_file())
        return disk - used

    cache = make(max_bytes=100 * BS, min_free_bytes=6 * BS, free_bytes=free_bytes)
    for i in range(10):
        cache.put("a", "v", i, payload("a", "v", i))
        assert free_bytes() >= 6 * BS
    stats = cache.stats()
    assert (stats["blocks"], stats["evictions"]) == (4, 6) and cache.has("a", "v", 9)
    cache.close()

    # even evicting everything would leave too little: refuse, and evict nothing
    cache = make(max_bytes=100 * BS, min_free_bytes=6 * BS, free_bytes=lambda: 0)
    with pytest.raises(OSError) as exc:
        cache.put("b", "v", 0, b"x")
    assert exc.value.errno == errno.ENOSPC
    assert cache.stats()["blocks"] == 4 and cache.stats()["evictions"] == 0


@pytest.mark.parametrize("read_first", [False, True], ids=["cold", "verified"])
def test_truncated_block_file_is_a_miss_and_removed(make, read_first):
    cache = make()
    cache.put("a", "v", 0, payload("a", "v", 0))
    path = only_file(cache)
    if read_first:
        assert cache.read("a", "v", 0, 0, 10) == payload("a", "v", 0)[:10]
    os.truncate(path, BS // 2)
    assert cache.read("a", "v", 0, 0, 10) is None  # the bytes asked for are still there
    assert not path.exists() and not cache.has("a", "v", 0)
    assert cache.stats()["corrupt"] == 1 and cache.stats()["bytes"] == 0


@pytest.mark.parametrize("read_first", [False, True], ids=["cold", "verified"])
def test_flipped_byte_is_a_miss_and_removed(make, read_first):
    cache = make()
    cache.put("a", "v", 0, payload("a", "v", 0))
    path = only_file(cache)
    if read_first:
        assert cache.read("a", "v", 0, 0, 10) == payload("a", "v", 0)[:10]
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(BS - 1)
        byte = f.read(1)
        f.seek(BS - 1)
        f.write(bytes([byte[0] ^ 1]))
    # a write moves mtime, but within one coarse clock tick it may not: move it explicitly
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert cache.read("a", "v", 0, 0, 10) is None  # the damage is outside the range read
    assert not path.exists() and cache.stats()["corrupt"] == 1


def test_deleted_block_file_is_a_miss(make):
    cache = make()
    cache.put("a", "v", 0, payload("a", "v", 0))
    only_file(cache).unlink()
    assert cache.read("a", "v", 0, 0, 1) is None and not cache.has("a", "v", 0)


def test_restart_reuses_blocks_and_recency(make):
    cache = make(max_bytes=4 * BS)
    for i in range(4):
        cache.put("a", "v", i, payload("a", "v", i))
    cache.read("a", "v", 0, 0, 1)
    cache.close()
    cache = make(max_bytes=4 * BS)
    assert cache.stats()["blocks"] == 4
    cache.put("b", "v", 0, payload("b", "v", 0))  # evicts by the recency of the last run
    assert not cache.has("a", "v", 1)
    assert all(cache.read("a", "v", i, 0, BS) == payload("a", "v", i) for i in (0, 2, 3))


def test_restart_after_the_process_was_killed(tmp_path, make):
    directory = tmp_path / "cache"
    code = textwrap.dedent(f"""
        import os, signal
        from stormount.cache.blocks import BlockCache
        cache = BlockCache({str(directory)!r}, block_size={BS}, min_free_bytes=0)
        cache.put("a/x", "v1", 0, bytes(range(256)) * {BS // 256})
        cache.put("a/x", "v1", 1, b"tail")
        cache.pin("a/x")
        cache.read("a/x", "v1", 0, 0, 10)
        open({str(directory / "tmp" / "half-written")!r}, "wb").write(b"partial")
        open({str(directory / "data" / "00" / "renamed-not-indexed")!r}, "wb").write(b"x")
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no cleanup
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    cache = make(max_bytes=2 * BS)
    assert cache.read("a/x", "v1", 0, 0, BS) == bytes(range(256)) * (BS // 256)
    assert cache.read("a/x", "v1", 1, 0, BS) == b"tail"
    assert os.listdir(directory / "tmp") == []  # leftovers of the killed process are gone
    assert not (directory / "data" / "00" / "renamed-not-indexed").exists()
    with pytest.raises(OSError):  # the pin survived the kill
        cache.put("b", "v", 0, payload("b", "v", 0))


def test_drop_and_drop_prefix_also_after_restart(make):
    cache = make()
    for ident in ("d/a", "d/b", "d/sub/c", "e/a", "dx"):
        for version in ("v1", "v2") if ident == "d/a" else ("v1",):
            cache.put(ident, version, 0, payload(ident, version, 0))
    cache.put("d/a", "v2", 1, b"more")
    assert cache.drop("d/a", "v1") == 0  # the put of v2 already dropped v1
    cache.close()
    cache = make()
    assert cache.drop("d/a") == 2
    assert cache.drop_prefix("d/") == 2  # d/b and d/sub/c, not dx
    assert cache.drop("nothing") == 0
    assert cache.has("dx", "v1", 0) and cache.has("e/a", "v1", 0)
    assert len(block_files(cache)) == 2
    cache.close()
    cache = make()  # the drops were persisted
    assert cache.stats()["blocks"] == 2
    assert cache.drop_prefix("") == 2 and block_files(cache) == []


def test_concurrent_puts_and_reads_keep_the_cap_and_the_bytes(make, monkeypatch):
    monkeypatch.setattr(blocks, "MAX_OPEN_FILES", 4)  # also churn the fd cache
    cap = 8 * BS
    cache = make(max_bytes=cap)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(t: int) -> None:
        try:
            for i in range(60):
                ident = f"w{t}/{i % 12}"
                version = f"v{i // 12}"
                cache.put(ident, version, i % 3, payload(ident, version, i % 3))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        rng = random.Random(1)
        try:
            while not done.is_set():
                ident, version, index = f"w{rng.randrange(4)}/{rng.randrange(12)}", \
                    f"v{rng.randrange(5)}", rng.randrange(3)
                offset = rng.randrange(BS)
                data = cache.read(ident, version, index, offset, 700)
                if data is not None:
                    assert data == payload(ident, version, index)[offset:offset + 700]
                assert cache.stats()["bytes"] <= cap
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads + readers:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()
    assert errors == []
    stats = cache.stats()
    assert stats["bytes"] <= cap and stats["corrupt"] == 0 and stats["hits"] > 0
    files = block_files(cache)
    assert len(files) == stats["blocks"] and sum(p.stat().st_size for p in files) == stats["bytes"]
    cache.close()
    cache = make(max_bytes=cap)  # the index on disk agrees with what was in memory
    assert cache.stats()["blocks"] == stats["blocks"]


def test_hits_do_not_write_to_disk(make, tmp_path):
    cache = make()
    for i in range(8):
        cache.put("a", "v", i, payload("a", "v", i))

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in (tmp_path / "cache").rglob("*")}

    before = snapshot()
    assert any(name.endswith("index.sqlite3") for name in before)
    for n in range(2000):
        assert cache.read("a", "v", n % 8, (n * 512) % BS, 512) is not None
    assert snapshot() == before
    assert cache.stats()["hits"] == 2000


def test_block_size_change_empties_the_cache(make):
    cache = make()
    cache.put("a", "v", 1, payload("a", "v", 1))
    cache.close()
    cache = make(block_size=2 * BS)  # block 1 now means other bytes of the object
    assert not cache.has("a", "v", 1) and block_files(cache) == []


def test_one_process_per_directory(make):
    make()
    with pytest.raises(StartupError):
        make()


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_blocks_of_any_length_on_disk_and_tmpfs(where, tmp_path):
    """Whatever the length and the file system, a block file holds exactly the block."""
    if where == "tmpfs":
        if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
            pytest.skip("no writable /dev/shm")
        root = Path(tempfile.mkdtemp(dir="/dev/shm"))
    else:
        root = tmp_path
    cache = BlockCache(str(root / "cache"), block_size=4 * BS, min_free_bytes=0)
    try:
        sizes = [4 * BS, 1, BS - 1, BS + 1, 3 * BS + 17]
        for i, size in enumerate(sizes):
            cache.put("k", "v", i, payload("k", "v", i, size))
        for i, size in enumerate(sizes):
            assert cache.read("k", "v", i, 0, 4 * BS) == payload("k", "v", i, size)
        assert sorted(p.stat().st_size for p in block_files(cache)) == sorted(sizes)
    finally:
        cache.close()
        if where == "tmpfs":
            shutil.rmtree(root)
