"""Claims of docs/SEMANTICS.md checked on a real mount of a local-directory tier."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from stormount.registry import mounted_fuse
from tests.helpers.journal import journal_with_reserved_rows
from tests.helpers.mounts import wait_for
from tests.stores import FileStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def local(tmp_path, make_mount):
    store = tmp_path / "store"
    store.mkdir()
    m = make_mount(f"file://{store}")
    m.store_dir = store  # type: ignore[attr-defined]
    return m


def test_statfs_and_times(local):
    st = os.statvfs(local.path)
    assert st.f_namemax == 255 and st.f_bsize == 4096 and st.f_bavail > 0
    (local.path / "t").write_text("x")
    t = os.stat(local.path / "t")
    assert t.st_atime_ns == t.st_mtime_ns  # atime is not kept (noatime)


def test_fsync_upload_puts_the_data_in_the_store_before_close(tmp_path, make_mount):
    store = tmp_path / "store"
    store.mkdir()
    m = make_mount(f"file://{store}", args=("-o", "fsync=upload"))
    fd = os.open(m.path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"synced")
        assert not (store / "f").exists()  # not before fsync or close
        os.fsync(fd)
        assert (store / "f").read_bytes() == b"synced"
    finally:
        os.close(fd)


def test_close_journals_and_the_upload_follows(tmp_path, make_mount):
    store = tmp_path / "store"
    store.mkdir()
    m = make_mount(f"file://{store}", args=("-o", "debounce=5"))
    with open(m.path / "c", "wb") as f:
        f.write(b"closed")
    assert [p["path"] for p in m.pending()] == ["c"]  # journaled; the upload follows
    assert not (store / "c").exists()
    m.settle()
    assert (store / "c").read_bytes() == b"closed"


def test_mknod_makes_an_empty_file(local):
    os.mknod(local.path / "node", 0o600 | stat.S_IFREG)
    local.settle()
    assert (local.store_dir / "node").read_bytes() == b""


def test_xattrs_not_supported(local):
    (local.path / "x").write_text("x")
    with pytest.raises(OSError) as info:
        os.setxattr(local.path / "x", "user.k", b"v")
    assert info.value.errno == errno.EOPNOTSUPP


def test_rename_exchange_is_einval(local):
    (local.path / "a").write_text("a")
    (local.path / "b").write_text("b")
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    rc = libc.renameat2(at_fdcwd, os.fsencode(local.path / "a"), at_fdcwd,
                        os.fsencode(local.path / "b"), rename_exchange)
    assert rc == -1 and ctypes.get_errno() == errno.EINVAL
    assert (local.path / "a").read_text() == "a"


def test_non_utf8_names(local):
    bad = os.fsencode(local.path) + b"/\xff\xfe.txt"
    with pytest.raises(OSError) as info:
        os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644)
    assert info.value.errno == errno.EILSEQ
    with pytest.raises(FileNotFoundError):
        os.stat(bad)


def test_truncate_of_symlink_follows_it(local):
    (local.path / "t").write_text("target")
    os.symlink("t", local.path / "l")
    os.truncate(local.path / "l", 2)  # truncate(2) follows the link, as everywhere
    assert (local.path / "t").read_text() == "ta"


def test_changes_by_other_clients_appear_within_the_ttls(tmp_path, make_mount):
    store = tmp_path / "store"
    store.mkdir()
    m = make_mount(f"file://{store}",
                   args=("-o", "listing_ttl=0.3,metadata_ttl=0.3,negative_ttl=0.3,"
                         "entry_timeout=0,attr_timeout=0"))
    assert os.listdir(m.path) == []
    (store / "from-elsewhere.txt").write_text("hi")  # another client writes the store
    wait_for(lambda: os.listdir(m.path) == ["from-elsewhere.txt"], timeout=10,
             what="the new object to be listed")
    assert (m.path / "from-elsewhere.txt").read_text() == "hi"
    (store / "from-elsewhere.txt").unlink()
    wait_for(lambda: not (m.path / "from-elsewhere.txt").exists(), timeout=10,
             what="the removed object to vanish")


def test_a_directory_moved_over_an_empty_listed_one_shows_its_entries(tmp_path, make_mount):
    """mv c d, where d is an empty directory this mount listed (and so persisted the
    listing of): d lists c's entries at once, not the replaced directory's for
    listing_ttl."""
    store = FileStore(tmp_path / "store")
    store.put("d/", b"")
    store.put("c/x", b"x")
    m = make_mount(store.url)
    assert os.listdir(m.path / "d") == []
    os.rename(m.path / "c", m.path / "d")
    assert os.listdir(m.path / "d") == ["x"]
    assert (m.path / "d" / "x").read_bytes() == b"x"
    assert os.listdir(m.path) == ["d"]


def test_daemon_crash_keeps_unflushed_data_and_next_start_recovers_it(tmp_path, make_mount):
    store = tmp_path / "store"
    store.mkdir()
    m = make_mount(f"file://{store}")
    fd = os.open(m.path / "unsaved", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"written but never closed")
    assert m.proc is not None
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait()
    # auto_unmount: the dead daemon leaves no hanging mount behind
    wait_for(lambda: mounted_fuse(str(m.path)) is None, timeout=10, what="auto unmount")
    with pytest.raises(OSError):
        os.close(fd)  # the connection is gone
    m.start()  # same cache directory
    recovered = list(Path(m.cache_dir, "recovered").rglob("stage-*"))
    assert [p.read_bytes() for p in recovered] == [b"written but never closed"]
    assert "moved to" in m.log()
    assert not (store / "unsaved").exists()


def test_unmount_by_hand_is_clean(local):
    (local.path / "f").write_text("x")
    subprocess.run(["fusermount3", "-u", str(local.path)], check=True)
    assert local.proc is not None
    assert local.proc.wait(timeout=30) == 0
    assert (local.store_dir / "f").read_text() == "x"


def test_the_reserved_top_level_name_is_refused_at_once(s3_store, make_mount):
    """Issue 19: `mkdir M/.stormount` and a file in it were accepted, then their uploads
    failed for ever (health degraded, flush failing). Now every way of making that name
    at the root fails with EACCES, and a lookup of it says ENOENT; deeper it is free."""
    m = make_mount(s3_store.url, env=s3_store.env)
    top = m.path / ".stormount"
    (m.path / "f.txt").write_bytes(b"f")
    attempts = [
        lambda: os.mkdir(top),
        lambda: top.write_bytes(b"x"),
        lambda: os.symlink("f.txt", top),
        lambda: os.mkfifo(top),
        lambda: os.rename(m.path / "f.txt", top),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionError):
            attempt()
    with pytest.raises(FileNotFoundError):
        os.stat(top)
    assert ".stormount" not in os.listdir(m.path)
    (m.path / "d").mkdir()
    (m.path / "d" / ".stormount").write_bytes(b"fine")  # only the top level is reserved
    assert m.ctl("flush").returncode == 0
    assert m.ask("health")["state"] == "ok"
    assert s3_store.get("d/.stormount") == b"fine"


def test_queued_uploads_under_the_reserved_name_are_dropped_at_start(s3_store, tmp_path,
                                                                      make_mount):
    """Issue 19: rows under `.stormount/` an earlier version took in failed for ever
    (health degraded, flush failing, every unmount waiting out its timeout). At start
    they are dropped, named in an error line, their data kept under recovered/."""
    cache = tmp_path / "mnt-cache"  # what make_mount gives the mount named "mnt"
    journal_with_reserved_rows(cache, b"x\n")
    m = make_mount(s3_store.url, env=s3_store.env)
    assert m.pending() == []
    assert m.ctl("flush").returncode == 0
    assert m.ask("health")["state"] == "ok"
    log = m.log()
    assert "ERROR" in log and ".stormount/inner was queued by an earlier version" in log
    kept = list((cache / "recovered").glob("*/.stormount/inner"))
    assert [p.read_bytes() for p in kept] == [b"x\n"]


def test_rmdir_keeps_a_directory_whose_marker_holds_data(s3_store, make_mount):
    """Issue 19: `rm -rf dir` whose `dir/` marker object held 15 bytes deleted them
    unseen. The rmdir is refused with ENOTEMPTY and a log line naming the marker."""
    s3_store.put("dir/", b"fifteen bytes!!")
    s3_store.put("dir/f.txt", b"f")
    s3_store.put("plain/", b"")
    m = make_mount(s3_store.url, env=s3_store.env)
    result = subprocess.run(["rm", "-rf", str(m.path / "dir")], capture_output=True)
    assert result.returncode != 0
    assert s3_store.get("dir/") == b"fifteen bytes!!"
    assert not (m.path / "dir" / "f.txt").exists()  # its files went, as rm asked
    with pytest.raises(OSError) as e:
        os.rmdir(m.path / "dir")
    assert e.value.errno == errno.ENOTEMPTY
    assert "its marker object dir/ holds 15 bytes" in m.log()
    os.rmdir(m.path / "plain")  # an empty marker goes as before
    assert "plain/" not in s3_store.keys(prefix="plain")
