"""Directory markers in the write-back queue: sequences of mkdir, rmdir, rename, chmod,
fsyncdir and restarts found in review, each once losing or misplacing a marker."""
from __future__ import annotations

import errno
import os
import stat

import pytest
import trio

from stormount.config import FuseConfig, WritebackConfig
from stormount.errors import FsError, Transient
from stormount.fuse.ops import Operations
from stormount.vfs.nodes import ROOT_INO
from tests.helpers.vfs import GID, UID, keys, stored, write

SLOW = WritebackConfig(debounce=2.0)


async def mode_in_store(backend, key):
    return stat.S_IMODE(int((await backend.head(key)).metadata["mode"]))


# --- 1. rename over an empty directory whose marker is still queued --------------------

async def test_rename_over_a_queued_directory_drops_its_marker(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    await vfs.mkdir(ROOT_INO, "e", 0o700, UID, GID)
    d = await vfs.mkdir(ROOT_INO, "d", 0o755, UID, GID)
    await vfs.rename(ROOT_INO, "d", ROOT_INO, "e")
    assert stat.S_IMODE(d.attrs.mode) == 0o755          # the mount says 755
    await trio.sleep(30)
    assert vfs.writeback.pending() == []
    # the replaced directory's queued marker must not land on e/ afterwards
    assert await mode_in_store(backend, "e/") == 0o755


# --- 2. rmdir whose DELETE fails --------------------------------------------------------

async def failed_rmdir(vfs):
    """mkdir d, then an rmdir d whose DELETE fails; the directory's node."""
    d = await vfs.mkdir(ROOT_INO, "d", 0o755, UID, GID)
    vfs.backend.fail("delete", Transient("503"))
    with pytest.raises(Transient):
        await vfs.rmdir(ROOT_INO, "d")
    vfs.backend.heal()
    return d


async def test_rmdir_whose_delete_fails_keeps_the_marker_queued(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    d = await failed_rmdir(vfs)
    # rmdir failed: d is still there for the user ...
    assert (await vfs.lookup(ROOT_INO, "d")).ino == d.ino
    await trio.sleep(30)
    # ... and its marker still reaches the store
    assert "d/" in await keys(backend)


async def test_rmdir_whose_delete_fails_keeps_the_directory(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    d = await failed_rmdir(vfs)
    vfs.forget(d.ino, d.lookups)  # the kernel drops its entry
    await trio.sleep(30)
    # the directory that rmdir failed to remove is still there
    assert (await vfs.lookup(ROOT_INO, "d")).kind == "dir"


# --- 3. mkdir whose journal write fails ------------------------------------------------

async def test_mkdir_that_cannot_be_journaled_leaves_nothing(factory, backend, autojump_clock,
                                                         monkeypatch):
    vfs = factory(backend, writeback=SLOW)

    def broken(*a, **k):
        raise OSError(errno.EIO, "journal broken")
    monkeypatch.setattr(vfs.writeback.journal, "put", broken)
    with pytest.raises(OSError):
        await vfs.mkdir(ROOT_INO, "d", 0o755, UID, GID)
    monkeypatch.undo()
    # mkdir failed: d does not exist in the mount either
    with pytest.raises(FsError) as info:
        await vfs.lookup(ROOT_INO, "d")
    assert info.value.errno == errno.ENOENT


# --- 4. fsyncdir (fsync=upload) -----------------------------------------------------------

class Ctx:
    uid = os.getuid()
    gid = os.getgid()
    pid = os.getpid()
    umask = 0o022


async def test_fsyncdir_with_fsync_upload_waits_for_the_marker(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=WritebackConfig(debounce=30, fsync="upload"))
    ops = Operations(vfs, FuseConfig())
    entry = await ops.mkdir(ROOT_INO, b"d", 0o755, Ctx())
    fh = await ops.opendir(entry.st_ino, Ctx())
    await ops.fsyncdir(fh, False)
    # with fsync=upload, a synced directory is in the store
    assert await stored(backend, "d/") == b""


# --- 5. restart: intermediate directories are checked again -----------------------------

async def test_restored_directories_are_revalidated_after_their_uploads(
        factory, backend, autojump_clock):
    first = factory(backend, writeback=SLOW)
    await first.mkdir(ROOT_INO, "a", 0o755, UID, GID)
    await trio.sleep(10)  # a/ stored
    first_run = factory(backend, writeback=SLOW, run=False, directory=first.directory)
    first.writeback.journal.close()
    await write(first_run, "f", b"x", parent=(await first_run.lookup(ROOT_INO, "a")).ino)
    second = factory(backend, writeback=SLOW, directory=first.directory)
    second.restore()
    await second.lookup(ROOT_INO, "a")  # the kernel holds it (a shell's cwd)
    await trio.sleep(10)
    assert await keys(backend) == ["a/", "a/f"]
    await backend.delete("a/f")  # another client removes the directory
    await backend.delete("a/")
    await trio.sleep(3600)  # every TTL expires
    # checked again once its uploads are done: no ghost
    with pytest.raises(FsError):
        await second.lookup(ROOT_INO, "a")


# --- sequences that always worked -------------------------------------------------------

async def test_mkdir_rmdir_and_rename_before_the_upload(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    await vfs.mkdir(ROOT_INO, "d", 0o755, UID, GID)
    await vfs.rmdir(ROOT_INO, "d")
    await vfs.mkdir(ROOT_INO, "d", 0o711, UID, GID)
    await vfs.mkdir(ROOT_INO, "m", 0o755, UID, GID)
    await vfs.rename(ROOT_INO, "m", ROOT_INO, "n")
    await trio.sleep(30)
    assert await keys(backend) == ["d/", "n/"]
    assert await mode_in_store(backend, "d/") == 0o711


async def test_nested_directories_come_back_after_a_crash(factory, backend, autojump_clock):
    first = factory(backend, writeback=SLOW, run=False)
    a = await first.mkdir(ROOT_INO, "a", 0o755, UID, GID)
    b = await first.mkdir(a.ino, "b", 0o750, UID, GID)
    await first.mkdir(b.ino, "c", 0o700, UID, GID)
    second = factory(backend, writeback=SLOW, directory=first.directory)
    second.restore()
    a2 = await second.lookup(ROOT_INO, "a")
    b2 = await second.lookup(a2.ino, "b")
    c2 = await second.lookup(b2.ino, "c")
    assert stat.S_IMODE(c2.attrs.mode) == 0o700
    with pytest.raises(FsError) as info:
        await second.rmdir(ROOT_INO, "a")
    assert info.value.errno == errno.ENOTEMPTY
    assert [n for n, _ in await second.ns.list_dir(b2)] == ["c"]
    await trio.sleep(30)
    assert await keys(backend) == ["a/", "a/b/", "a/b/c/"]
