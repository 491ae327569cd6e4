"""Blocks fetched from the store go to the kernel's page cache of the open file, so the
kernel answers the following reads itself (issue 20); what it holds is dropped when the
object's version changes, on `ctl invalidate`, and on a write or truncate through the
mount: a reader never sees stale bytes."""

from __future__ import annotations

import os

import pytest

from tests.helpers.mounts import wait_for

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
SIZE = 24 * MiB


def fuse_stats(m) -> dict:
    return m.ask("stats")["fuse"]


@pytest.mark.parametrize("store", ["s3", "az"], indirect=True)
def test_blocks_fetched_are_served_by_the_kernel(store, make_mount):
    data = os.urandom(SIZE)
    store.put("big.bin", data)
    m = make_mount(store.url, env=store.env)
    block = 4 * MiB  # the default block_size
    fd = os.open(m.path / "big.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel read-ahead
        assert os.pread(fd, 4096, 2 * block) == data[2 * block:2 * block + 4096]
        # touched again: the block is fetched whole, and given to the kernel
        assert os.pread(fd, 4096, 2 * block + 8192) == data[2 * block + 8192:2 * block + 12288]
        wait_for(lambda: fuse_stats(m)["bytes_to_page_cache"] >= block, timeout=30,
                 what="the block to be given to the kernel")
        before = fuse_stats(m)["bytes_read"]
        assert os.pread(fd, block, 2 * block) == data[2 * block:3 * block]
        assert fuse_stats(m)["bytes_read"] == before  # the kernel answered it all
    finally:
        os.close(fd)
    assert (m.path / "big.bin").read_bytes() == data


@pytest.mark.parametrize("store", ["s3", "az"], indirect=True)
def test_a_new_version_is_read_whole_after_the_old_one_was_in_the_pages(store, make_mount):
    old = os.urandom(SIZE)
    new = bytes(b ^ 0x5A for b in old)
    store.put("big.bin", old)
    m = make_mount(store.url, env=store.env, args=("-o", "metadata_ttl=0"))
    path = m.path / "big.bin"
    assert path.read_bytes() == old
    store.put("big.bin", new)
    assert m.ask("invalidate", "big.bin")
    assert path.read_bytes() == new
    store.put("big.bin", old)  # and back, seen by the next stat (metadata_ttl=0)
    os.stat(path)
    assert path.read_bytes() == old


@pytest.mark.parametrize("store", ["s3", "az"], indirect=True)
def test_writes_and_truncates_through_the_mount_are_read_back(store, make_mount):
    data = bytearray(os.urandom(SIZE))
    store.put("big.bin", bytes(data))
    m = make_mount(store.url, env=store.env)
    path = m.path / "big.bin"
    reader = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(reader, SIZE, 0) == data  # its pages given the blocks
        fd = os.open(path, os.O_RDWR)
        try:
            os.pwrite(fd, b"W" * 5000, 9 * MiB + 3)
            data[9 * MiB + 3:9 * MiB + 5003] = b"W" * 5000
            os.ftruncate(fd, 10 * MiB)
            del data[10 * MiB:]
        finally:
            os.close(fd)
        assert os.pread(reader, SIZE, 0) == data
    finally:
        os.close(reader)
    assert path.read_bytes() == data
    os.truncate(path, 3 * MiB + 1)
    assert path.read_bytes() == data[:3 * MiB + 1]
    m.settle()
    assert store.get("big.bin") == data[:3 * MiB + 1]


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_sequential_stream_is_left_to_the_kernels_read_ahead(store, make_mount):
    """The kernel reads a stream ahead itself and keeps what it read: giving it the
    stream's blocks as well copied every byte twice (a 512 MiB cold read: 2.7-4.7 CPU
    s/GiB and 242-420 MiB/s, against 1.8-2.4 s/GiB and 443-588 MiB/s without)."""
    data = os.urandom(SIZE)
    store.put("big.bin", data)
    m = make_mount(store.url, env=store.env)
    assert (m.path / "big.bin").read_bytes() == data
    # (the kernel's reads of a stream arrive in any order, as they do under load)
    assert fuse_stats(m)["bytes_to_page_cache"] < SIZE // 4
