"""The errno a process sees for each backend fault, through the FUSE adapter's single
error translation (kernel-free: the adapter's handlers are called directly)."""

from __future__ import annotations

import errno
import os
import uuid

import pyfuse3
import pytest

from stormount.backends import open_backend
from stormount.config import CacheConfig, FuseConfig, parse_tier_url
from stormount.errors import Conflict, Permanent, PermissionDenied, Throttled, Transient
from stormount.fuse.ops import Operations
from stormount.vfs.nodes import ROOT_INO
from tests.helpers.faults import FaultyBackend
from tests.helpers.vfs import VfsFactory


class Ctx:
    uid = os.getuid()
    gid = os.getgid()
    pid = os.getpid()
    umask = 0o022


@pytest.fixture
def factory(tmp_path, nursery):
    made = VfsFactory(tmp_path, nursery)
    yield made
    made.close()


@pytest.fixture
def setup(factory):
    backend = FaultyBackend(open_backend(parse_tier_url(f"memory://err-{uuid.uuid4().hex}")))
    return backend, Operations(factory(backend), FuseConfig())


async def fuse_errno(coro) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro
    return info.value.errno


@pytest.mark.parametrize(("fault", "expected"), [
    (Throttled("SlowDown"), errno.EAGAIN),
    (Transient("503 after retries"), errno.EIO),
    (PermissionDenied("AccessDenied"), errno.EACCES),
    (Permanent("InvalidObjectState"), errno.EIO),
    (RuntimeError("a bug"), errno.EIO),
])
async def test_backend_faults_on_lookup_are_never_enoent(setup, fault, expected):
    backend, ops = setup
    backend.fail("head", fault)
    backend.fail("list", fault)
    assert await fuse_errno(ops.lookup(ROOT_INO, b"file.txt", Ctx())) == expected


async def test_throttled_read_is_eagain_not_enoent(setup):
    backend, ops = setup
    await backend.put_bytes("f", b"data", {})
    entry = await ops.lookup(ROOT_INO, b"f", Ctx())
    info = await ops.open(entry.st_ino, os.O_RDONLY, Ctx())
    backend.fail("get_range", Throttled("SlowDown"))
    assert await fuse_errno(ops.read(info.fh, 0, 4)) == errno.EAGAIN
    backend.heal()
    assert await ops.read(info.fh, 0, 4) == b"data"


async def test_object_removed_by_someone_else_while_open_is_estale(setup):
    backend, ops = setup
    await backend.put_bytes("f", b"data", {})
    entry = await ops.lookup(ROOT_INO, b"f", Ctx())
    info = await ops.open(entry.st_ino, os.O_RDONLY, Ctx())
    await backend.inner.delete("f")
    assert await fuse_errno(ops.read(info.fh, 0, 4)) == errno.ESTALE


async def test_conflict_is_eexist(setup):
    backend, ops = setup
    backend.fail("put_bytes", Conflict("name clash"))
    assert await fuse_errno(ops.symlink(ROOT_INO, b"ln", b"target", Ctx())) == errno.EEXIST


async def test_missing_object_is_negative_entry(setup):
    _, ops = setup
    entry = await ops.lookup(ROOT_INO, b"absent", Ctx())
    assert entry.st_ino == 0  # the kernel caches "no such file" for the entry timeout


async def test_forget_never_raises(setup):
    _, ops = setup
    ops.forget([(999_999, 1), (ROOT_INO, 1)])



async def test_failed_directory_rename_leaves_both_copies_never_neither(setup):
    backend, ops = setup
    await backend.put_bytes("src/a", b"1", {})
    await backend.put_bytes("src/b", b"2", {})
    backend.fail("delete", Transient("network down"))
    with pytest.raises(pyfuse3.FUSEError):
        await ops.rename(ROOT_INO, b"src", ROOT_INO, b"dst", 0, Ctx())
    backend.heal()
    for key in ("src/a", "src/b", "dst/a", "dst/b"):
        assert (await backend.head(key)).size == 1


async def test_kernel_page_cache_kept_only_while_the_version_is_unchanged(factory):
    backend = FaultyBackend(open_backend(parse_tier_url(f"memory://pc-{uuid.uuid4().hex}")))
    vfs = factory(backend, cache=CacheConfig(metadata_ttl=0))
    ops = Operations(vfs, FuseConfig())
    await backend.put_bytes("f", b"v1", {})
    entry = await ops.lookup(ROOT_INO, b"f", Ctx())
    first = await ops.open(entry.st_ino, os.O_RDONLY, Ctx())
    assert not first.keep_cache  # nothing cached yet
    again = await ops.open(entry.st_ino, os.O_RDONLY, Ctx())
    assert again.keep_cache  # same version: cached pages stay valid
    await backend.inner.put_bytes("f", b"v2", {})  # someone else changes it
    await ops.getattr(entry.st_ino, Ctx())
    changed = await ops.open(entry.st_ino, os.O_RDONLY, Ctx())
    assert not changed.keep_cache
    assert await ops.read(changed.fh, 0, 10) == b"v2"
