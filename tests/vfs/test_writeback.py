"""Write-back: a closed file is journaled at once and uploaded after the debounce, with
retries on a schedule, visible while failing, requeued when rewritten, following renames
and unlinks, never overwriting another writer's version, and surviving a restart; a full
disk gives the writer ENOSPC after clean cache blocks made what room they could."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from stormount.cache.blocks import BlockCache
from stormount.config import CacheConfig, WritebackConfig
from stormount.errors import PermissionDenied, Transient
from stormount.vfs.attrs import metadata_of
from stormount.vfs.nodes import ROOT_INO
from stormount.writeback import FAILING, FINAL, QUEUED, Journal, read_pending
from tests.helpers.vfs import GID, UID, at, keys, read, stored, write

SLOW = WritebackConfig(debounce=2.0)


# --- debounce and requeue ---------------------------------------------------------------


async def test_close_is_journaled_at_once_and_uploaded_after_the_debounce(
        factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    t0 = trio.current_time()
    await write(vfs, "f", b"data")
    journal = vfs.directory / "journal.sqlite3"
    assert [row["path"] for row in read_pending(str(journal))] == ["f"]  # as `unmount` sees it
    assert (await vfs.getattr(vfs.node(ROOT_INO).children["f"].ino)).attrs.size == 4
    await at(t0, 1.9)
    assert await stored(backend, "f") is None
    await at(t0, 2.5)
    assert await stored(backend, "f") == b"data"
    assert read_pending(str(journal)) == []
    assert vfs.writeback.pending() == []


async def test_rewrite_before_the_upload_restarts_the_debounce_and_sends_only_the_last(
        factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    t0 = trio.current_time()
    await write(vfs, "f", b"first")
    await at(t0, 1.5)
    await write(vfs, "f", b"second")
    await at(t0, 3.0)
    assert await stored(backend, "f") is None  # 1.5 s after the last close
    await at(t0, 4.0)
    assert await stored(backend, "f") == b"second"


async def test_file_rewritten_while_uploading_is_uploaded_again(
        factory, backend, autojump_clock):
    vfs = factory(backend, writeback=WritebackConfig(debounce=0))
    backend.fail("put_file", 5.0)  # a slow upload
    t0 = trio.current_time()
    await write(vfs, "f", b"old")
    await at(t0, 1.0)
    assert vfs.writeback.get("f").state == "uploading"
    await write(vfs, "f", b"new content")
    await at(t0, 12.0)  # the running upload finishes (5 s), then the new content goes
    assert await stored(backend, "f") == b"new content"
    assert vfs.writeback.pending() == []
    assert [k for k in await keys(backend) if "conflict" in k] == []  # based on our own


async def test_chmod_while_uploading_is_stored_too(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=WritebackConfig(debounce=0))
    backend.fail("put_file", 3.0)
    ino = await write(vfs, "f", b"script")
    await trio.sleep(1)  # uploading with the old mode
    await vfs.setattr(ino, mode=0o750)
    await trio.sleep(30)
    assert int((await backend.head("f")).metadata["mode"]) & 0o777 == 0o750
    assert await stored(backend, "f") == b"script"
    assert vfs.writeback.pending() == []


# --- retries and failures ---------------------------------------------------------------


async def test_transient_failures_retry_with_backoff_then_show_as_failing(
        factory, backend, autojump_clock):
    vfs = factory(backend, writeback=WritebackConfig(debounce=0))  # retries 4: 1, 2, 4 s
    backend.fail("put_file", Transient("connection reset"))
    t0 = trio.current_time()
    await write(vfs, "f", b"precious")

    def attempts() -> tuple[int, str]:
        up = vfs.writeback.get("f")
        return up.attempts, up.state

    # attempt n+1 comes 2**(n-1) s (+ up to 20% jitter) after attempt n
    for when, expected in ((0.9, (1, QUEUED)), (1.25, (2, QUEUED)), (2.9, (2, QUEUED)),
                           (3.7, (3, QUEUED)), (6.9, (3, QUEUED)), (8.5, (4, FAILING))):
        await at(t0, when)
        assert attempts() == expected, when
    (row,) = [up.describe() for up in vfs.writeback.pending()]
    assert row["state"] == FAILING and "connection reset" in str(row["last_error"])
    assert row["size"] == 8
    await at(t0, 66.9)  # failing: tried again every minute, not in a tight loop
    assert attempts() == (4, FAILING)
    backend.heal()
    await at(t0, 81.0)
    assert await stored(backend, "f") == b"precious"
    assert vfs.writeback.pending() == []


async def test_permanent_failure_is_failing_at_once_and_never_dropped(
        factory, backend, autojump_clock):
    vfs = factory(backend, writeback=WritebackConfig(debounce=0))
    backend.fail("put_file", PermissionDenied("access denied"))
    await write(vfs, "f", b"precious")
    await trio.sleep(1)
    (up,) = vfs.writeback.pending()
    assert (up.state, up.attempts) == (FAILING, 1)
    await trio.sleep(3600)
    assert [u.path for u in vfs.writeback.pending()] == ["f"]
    assert await read(vfs, "f") == b"precious"  # still readable from the mount


async def test_fsync_upload_waits_for_the_store_and_reports_failure(
        factory, backend, autojump_clock):
    vfs = factory(backend, writeback=WritebackConfig(debounce=30, fsync="upload"))
    fh, _ = await vfs.create(ROOT_INO, "f", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    await vfs.write(fh, 0, b"synced")
    t0 = trio.current_time()
    await vfs.fsync(fh)
    assert trio.current_time() - t0 < 1  # no debounce for a waiting writer
    assert await stored(backend, "f") == b"synced"
    await vfs.write(fh, 6, b"!")
    backend.fail("put_file", Transient("store down"))
    with pytest.raises(Exception) as info:
        await vfs.fsync(fh)
    assert getattr(info.value, "errno", None) == errno.EIO
    await vfs.release(fh)
    backend.heal()
    await trio.sleep(120)
    assert await stored(backend, "f") == b"synced!"  # kept queued, uploaded later


async def test_fsync_local_returns_without_the_store(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    backend.fail("put_file", "hang")
    fh, _ = await vfs.create(ROOT_INO, "f", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    await vfs.write(fh, 0, b"x")
    with trio.fail_after(1):
        await vfs.fsync(fh)
    assert [row["path"] for row in read_pending(str(vfs.directory / "journal.sqlite3"))] == ["f"]
    await vfs.release(fh)


# --- unlink and rename of queued files --------------------------------------------------


async def test_unlink_of_a_queued_file_uploads_nothing(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    await write(vfs, "f", b"data")
    await vfs.unlink(ROOT_INO, "f")
    await trio.sleep(30)
    assert await keys(backend) == []
    assert vfs.writeback.pending() == []
    assert read_pending(str(vfs.directory / "journal.sqlite3")) == []


async def test_unlink_of_a_queued_update_deletes_the_stored_version(
        factory, backend, autojump_clock):
    await backend.put_bytes("f", b"v1", {})
    vfs = factory(backend, writeback=SLOW)
    await write(vfs, "f", b"v2")
    await vfs.unlink(ROOT_INO, "f")
    await trio.sleep(30)
    assert await keys(backend) == []


async def test_rename_of_a_queued_file_uploads_under_the_new_name_only(
        factory, backend, autojump_clock):
    await backend.put_bytes("old", b"v1", {})
    await backend.put_bytes("target", b"replaced", {})
    vfs = factory(backend, writeback=SLOW)
    await write(vfs, "old", b"v2")
    await write(vfs, "new", b"fresh")
    await vfs.rename(ROOT_INO, "old", ROOT_INO, "target")
    await vfs.rename(ROOT_INO, "new", ROOT_INO, "newer")
    assert [up.path for up in vfs.writeback.pending()] == ["target", "newer"]
    await trio.sleep(30)
    assert await keys(backend) == ["newer", "target"]
    assert await stored(backend, "target") == b"v2"  # replaced the old target, no conflict
    assert await stored(backend, "newer") == b"fresh"


async def test_rename_while_the_upload_is_in_flight_moves_the_stored_object(
        factory, backend, autojump_clock):
    # rsync, editors and git write a temp file, close it and rename it at once
    vfs = factory(backend, writeback=WritebackConfig(debounce=0))
    backend.fail("put_file", 3.0)  # the upload of the temp file is still running
    await write(vfs, ".tmp", b"content")
    await trio.sleep(1)
    backend.heal()
    await vfs.rename(ROOT_INO, ".tmp", ROOT_INO, "final")
    await trio.sleep(30)
    assert await keys(backend) == ["final"]
    assert await read(vfs, "final") == b"content"


async def test_rename_of_a_directory_with_queued_files(factory, backend, autojump_clock):
    vfs = factory(backend, writeback=SLOW)
    d = await vfs.mkdir(ROOT_INO, "d", 0o755, UID, GID)
    await write(vfs, "f", b"inside", parent=d.ino)
    await vfs.rename(ROOT_INO, "d", ROOT_INO, "e")
    await trio.sleep(30)
    assert await keys(backend) == ["e/", "e/f"]
    assert await read(vfs, "e/f") == b"inside"


# --- conflicts --------------------------------------------------------------------------


async def test_object_changed_by_someone_else_keeps_both_versions(
        factory, backend, autojump_clock):
    await backend.put_bytes("f", b"v1", {})
    vfs = factory(backend, writeback=SLOW)
    assert await read(vfs, "f") == b"v1"
    await write(vfs, "f", b"mine")
    await backend.inner.put_bytes("f", b"theirs", {})  # another client, meanwhile
    await trio.sleep(30)
    names = await keys(backend)
    (conflict,) = [k for k in names if k != "f"]
    assert conflict.startswith(f"f.conflict-{vfs.writeback.host}-")
    assert conflict.endswith("Z")  # a UTC timestamp
    assert await stored(backend, "f") == b"theirs"
    assert await stored(backend, conflict) == b"mine"
    assert vfs.writeback.conflicts == 1
    assert vfs.writeback.pending() == []
    assert await read(vfs, "f") == b"theirs"  # the name shows the store's version again
    assert await read(vfs, conflict) == b"mine"


async def test_own_upload_that_landed_before_a_crash_is_not_a_conflict(
        factory, backend, autojump_clock, tmp_path):
    first = factory(backend, writeback=SLOW, run=False)
    await write(first, "f", b"data")
    node = first.node(ROOT_INO).children["f"]
    # the upload went through, then the daemon died before the journal heard of it
    await backend.put_file("f", node.staging.path, metadata_of(node.attrs))
    second = factory(backend, writeback=SLOW, directory=first.directory)
    second.restore()
    await trio.sleep(30)
    assert await keys(backend) == ["f"]
    assert second.writeback.conflicts == 0 and second.writeback.pending() == []


# --- restart ----------------------------------------------------------------------------


async def test_restart_restores_queued_files_and_uploads_them(
        factory, backend, autojump_clock):
    first = factory(backend, writeback=SLOW, run=False)  # never uploads: then "crashes"
    d = await first.mkdir(ROOT_INO, "d", 0o755, UID, GID)
    await write(first, "a", b"alpha")
    await write(first, "b", b"beta", parent=d.ino)
    backend.fail("put_file", Transient("store down"))
    backend.fail("put_bytes", Transient("store down"))
    second = factory(backend, writeback=SLOW, directory=first.directory)
    assert sorted(up.path for up in second.restore()) == ["a", "d/", "d/b"]
    # listed with their local size and readable at once, from the staging files
    assert (await second.lookup(ROOT_INO, "a")).attrs.size == 5
    assert await read(second, "d/b") == b"beta"
    assert stat.S_IMODE((await second.lookup(ROOT_INO, "d")).attrs.mode) == 0o755
    assert await keys(backend) == []
    backend.heal()
    await trio.sleep(30)
    assert await stored(backend, "a") == b"alpha"
    assert await stored(backend, "d/b") == b"beta"
    assert await keys(backend) == ["a", "d/", "d/b"]
    assert second.writeback.pending() == []


async def test_staging_file_missing_at_restart_is_reported_and_dropped(
        factory, backend, autojump_clock, caplog):
    first = factory(backend, writeback=SLOW, run=False)
    await write(first, "a", b"alpha")
    os.unlink(first.node(ROOT_INO).children["a"].staging.path)
    second = factory(backend, writeback=SLOW, directory=first.directory)
    assert second.restore() == []
    assert "lost its staging file" in caplog.text


async def test_a_file_closed_again_soon_after_its_upload_waits_twice_as_long(
        factory, backend, autojump_clock):
    vfs = factory(backend, writeback=WritebackConfig(debounce=2))
    t0 = trio.current_time()
    await write(vfs, "f", b"v1")
    await at(t0, 2.5)
    assert await stored(backend, "f") == b"v1"  # the debounce
    await write(vfs, "f", b"v2")  # closed again soon after: it is hot
    await at(t0, 5.0)
    assert await stored(backend, "f") == b"v1"  # 2 s would be up: it waits 4
    await at(t0, 7.0)
    assert await stored(backend, "f") == b"v2"
    await at(t0, 60.0)
    await write(vfs, "f", b"v3")  # long after: the plain debounce again
    await at(t0, 62.5)
    assert await stored(backend, "f") == b"v3"


async def test_a_file_closed_again_and_again_still_lands_within_30_s(
        factory, backend, autojump_clock):
    """Each close restarts the debounce, but not for ever."""
    vfs = factory(backend, writeback=WritebackConfig(debounce=2))
    t0 = trio.current_time()
    for i in range(40):  # closed every second, more often than the debounce
        await write(vfs, "f", b"v%d" % i)
        await at(t0, i + 1)
        if i == 31:
            assert await stored(backend, "f") is not None  # 30 s after the first close
    assert await stored(backend, "f") is not None


async def test_at_most_parallel_large_big_files_upload_at_once(factory, backend,
                                                               autojump_clock):
    """Big files (sent in parts held in memory) upload `parallel_large` at a time;
    small ones go beside them up to `parallel`."""
    backend.fail("put_file", 5.0)  # every upload takes a while
    vfs = factory(backend, writeback=WritebackConfig(debounce=0, parallel=16,
                                                     parallel_large=4))
    for i in range(8):
        await write(vfs, f"big{i}", b"x" * (9 << 20))
        await write(vfs, f"small{i}", b"x")
    await trio.sleep(1)
    uploading = [up.path for up in vfs.writeback.pending()
                 if up.describe()["state"] == "uploading"]  # as ctl queue shows them
    assert sum(p.startswith("big") for p in uploading) == 4
    assert sum(p.startswith("small") for p in uploading) == 8
    await trio.sleep(30)
    assert len(await keys(backend)) == 16


async def test_a_close_of_one_of_several_descriptors_uploads_nothing_yet(
        factory, backend, autojump_clock):
    """dd closes a dup of its descriptor, then writes on: the upload waits for the
    release of the last descriptor, and then sends the whole file once."""
    vfs = factory(backend, writeback=WritebackConfig(debounce=0))
    fh, _ = await vfs_create(vfs, "f")
    await vfs.flush(fh)  # close() of the dup
    for i in range(4):
        await vfs.write(fh, i * 3, b"abc")
        await trio.sleep(10)
        assert await keys(backend) == []
        assert [up["state"] for up in read_pending(vfs.writeback.journal.path)] == ["open"]
    await vfs.flush(fh)
    await trio.sleep(10)
    assert await keys(backend) == []  # closed, but not released yet
    await vfs.release(fh)
    await trio.sleep(10)
    assert await stored(backend, "f") == b"abc" * 4
    assert vfs.writeback.uploaded == 1


async def test_a_crash_between_the_close_and_the_release_uploads_the_closed_file(
        factory, backend, autojump_clock):
    first = factory(backend, writeback=SLOW, run=False)
    fh, _ = await vfs_create(first, "f")
    await first.write(fh, 0, b"closed")
    await first.flush(fh)  # close() returned: acknowledged; the release never came
    second = factory(backend, writeback=SLOW, directory=first.directory)
    assert [up.path for up in second.restore()] == ["f"]
    await trio.sleep(30)
    assert await stored(backend, "f") == b"closed"


async def test_a_crash_while_a_closed_file_is_written_again_uploads_nothing(
        factory, backend, autojump_clock):
    first = factory(backend, writeback=SLOW, run=False)
    fh, _ = await vfs_create(first, "f")
    await first.write(fh, 0, b"first part")
    await first.flush(fh)  # dd's early close
    await first.write(fh, 10, b", then more")  # and the daemon dies mid-file
    second = factory(backend, writeback=SLOW, directory=first.directory)
    assert second.restore() == []
    assert [up.path for up in second.writeback.journal.load()] == ["f"]  # for recovery
    await trio.sleep(30)
    assert await keys(backend) == []


async def test_fsync_of_an_open_file_uploads_it_and_a_later_write_holds_it_again(
        factory, backend, autojump_clock):
    vfs = factory(backend, writeback=WritebackConfig(debounce=0))
    fh, _ = await vfs_create(vfs, "f")
    await vfs.write(fh, 0, b"synced")
    await vfs.fsync(fh)
    await trio.sleep(10)
    assert await stored(backend, "f") == b"synced"
    await vfs.write(fh, 0, b"SYNCED")
    await vfs.flush(fh)
    await trio.sleep(10)
    assert await stored(backend, "f") == b"synced"  # still open: not yet
    await vfs.release(fh)
    await trio.sleep(10)
    assert await stored(backend, "f") == b"SYNCED"


def test_a_journal_of_the_first_version_is_upgraded(tmp_path):
    path = str(tmp_path / "journal.sqlite3")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE pending (path TEXT PRIMARY KEY, staging TEXT NOT NULL, base "
               "TEXT, metadata TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
               "last_error TEXT, state TEXT NOT NULL, queued_at REAL NOT NULL)")
    db.execute("INSERT INTO pending VALUES ('f', '/s', NULL, '{}', 0, NULL, 'queued', 1.0)")
    db.commit()
    db.close()
    journal = Journal(path)
    assert [(up.path, up.held) for up in journal.load()] == [("f", FINAL)]
    journal.close()


async def vfs_create(vfs, name: str) -> tuple[int, object]:
    return await vfs.create(ROOT_INO, name, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)


# --- a full disk ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> AsyncIterator[Path]:
    """A 8 MiB tmpfs: a cache disk that fills up."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path = tmp_path / "disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_full_disk_evicts_clean_blocks_then_gives_enospc(
        factory, backend, small_disk, autojump_clock):
    blocks = BlockCache(str(small_disk / "blocks"), block_size=1 << 20, min_free_bytes=0)
    try:
        for i in range(5):  # 5 MiB of clean cached data
            blocks.put(f"cached{i}", "v", 0, os.urandom(1 << 20))
        vfs = factory(backend, writeback=SLOW, blocks=blocks, directory=small_disk / "vfs",
                      cache=CacheConfig(block_size=1 << 20))
        await write(vfs, "kept", b"k" * 100_000)  # acknowledged before the disk fills
        fh, _ = await vfs.create(ROOT_INO, "big", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
        chunk = os.urandom(1 << 20)
        written = 0
        with pytest.raises(OSError) as info:
            for _ in range(16):
                await vfs.write(fh, written, chunk)
                written += len(chunk)
        assert info.value.errno == errno.ENOSPC
        assert written >= 5 << 20  # the cached blocks made room first
        await vfs.release(fh)
        await vfs.unlink(ROOT_INO, "big")  # what a writer does on ENOSPC: give up the file
        await write(vfs, "after", b"fits again")
        await trio.sleep(30)
        assert await stored(backend, "kept") == b"k" * 100_000  # untouched
        assert await stored(backend, "after") == b"fits again"
        assert await keys(backend) == ["after", "kept"]
    finally:
        blocks.close()
