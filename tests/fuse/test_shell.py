"""Ordinary shell tools on real mounts of each real store (local dir, moto S3, Azurite):
what they do must work, and what lands in the store must be plain objects, byte for byte."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)


def sh(cmd: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({result.returncode}):\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def make_tree(root: Path) -> dict[str, bytes]:
    """A small tree with an empty file, a big file, nesting and odd names."""
    files = {
        "empty.txt": b"",
        "hello.txt": b"hello world\n",
        "sub/nested/deep.bin": os.urandom(70_000),
        "sub/with space & more.txt": b"spaces\n",
        "sub/unicode-\u00e9\u00e8.txt": "caf\u00e9\n".encode(),
        "big.bin": os.urandom(9 * 1024 * 1024 + 123),  # above the multipart threshold
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "emptydir").mkdir()
    return files


def store_files(store, prefix: str = "") -> dict[str, bytes]:
    return {k[len(prefix):]: store.get(k) for k in store.keys(prefix) if not k.endswith("/")}


def test_cp_r_writes_plain_objects(mount, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    sh(f"cp -r {src} {mount.path}/copy")
    sh(f"diff -r {src} {mount.path}/copy")
    assert store_files(mount.store, "copy/") == files
    assert mount.store.exists("copy/emptydir/")  # an empty directory is a marker


def test_rsync_preserves_content_and_times(mount, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    os.utime(src / "hello.txt", (1_600_000_000, 1_600_000_000))
    sh(f"rsync -a {src}/ {mount.path}/r/")
    sh(f"diff -r {src} {mount.path}/r")
    assert (mount.path / "r/hello.txt").stat().st_mtime == 1_600_000_000
    assert store_files(mount.store, "r/") == files
    # a second run finds nothing to transfer
    out = sh(f"rsync -a --itemize-changes {src}/ {mount.path}/r/").stdout
    assert not [line for line in out.splitlines() if line.startswith(">f")], out


def test_tar_extract_and_create(mount, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    sh(f"tar -C {src} -cf {tmp_path}/a.tar .")
    (mount.path / "t").mkdir()
    sh(f"tar -C {mount.path}/t -xf {tmp_path}/a.tar")
    sh(f"diff -r {src} {mount.path}/t")
    sh(f"tar -C {mount.path}/t -cf {tmp_path}/b.tar .")
    listing_a = sh(f"tar -tf {tmp_path}/a.tar | sort").stdout
    listing_b = sh(f"tar -tf {tmp_path}/b.tar | sort").stdout
    assert listing_a == listing_b


def test_mv_and_rm_r(mount, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    sh(f"cp -r {src} {mount.path}/a")
    sh(f"mv {mount.path}/a/hello.txt {mount.path}/a/renamed.txt")
    sh(f"mv {mount.path}/a {mount.path}/b")
    expected = {("renamed.txt" if k == "hello.txt" else k): v for k, v in files.items()}
    assert store_files(mount.store, "b/") == expected
    assert not mount.store.keys("a/")
    assert sorted(os.listdir(mount.path)) == ["b"]
    sh(f"rm -r {mount.path}/b")
    assert os.listdir(mount.path) == []
    assert mount.store.keys() == []


def test_find_du_stat(mount, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    sh(f"cp -r {src} {mount.path}/f")
    found = sorted(sh(f"cd {mount.path}/f && find . | sort").stdout.split("\n"))
    expected = sorted(sh(f"cd {src} && find . | sort").stdout.split("\n"))
    assert found == expected
    du_kb = int(sh(f"du -sk {mount.path}/f").stdout.split()[0])
    assert du_kb >= 9 * 1024
    out = sh(f"stat -c '%s %F %a' {mount.path}/f/hello.txt").stdout.split()
    assert out == ["12", "regular", "file", "644"]


def test_truncate_and_append(mount):
    path = mount.path / "t.txt"
    sh(f"printf 'abcdef' > {path}")
    sh(f"truncate -s 3 {path}")
    assert path.read_bytes() == b"abc"
    sh(f"truncate -s 6 {path}")
    assert path.read_bytes() == b"abc\0\0\0"
    sh(f"echo more >> {path}")
    assert path.read_bytes() == b"abc\0\0\0more\n"
    assert mount.store.get("t.txt") == b"abc\0\0\0more\n"


def test_editor_style_save(mount):
    """Write a temporary file, fsync it, rename it over the original (vim, most editors)."""
    target = mount.path / "doc.txt"
    target.write_text("version 1\n")
    tmp = mount.path / ".doc.txt.swp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"version 2\n")
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, target)
    assert target.read_text() == "version 2\n"
    assert sorted(os.listdir(mount.path)) == ["doc.txt"]
    assert mount.store.get("doc.txt") == b"version 2\n"
    assert not mount.store.exists(".doc.txt.swp")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_git_inside_the_mount(mount):
    repo = mount.path / "repo"
    repo.mkdir()
    env = "GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@e GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@e"
    sh("git init -q", cwd=repo)
    (repo / "README").write_text("hi\n")
    (repo / "src").mkdir()
    (repo / "src/main.py").write_text("print('x')\n")
    sh("git add -A", cwd=repo)
    sh(f"{env} git commit -q -m first", cwd=repo)
    (repo / "README").write_text("hi again\n")
    sh(f"{env} git commit -q -am second", cwd=repo)
    assert sh("git log --oneline", cwd=repo).stdout.count("\n") == 2
    assert sh("git status --porcelain", cwd=repo).stdout == ""
    sh("git fsck --no-progress", cwd=repo)
    assert mount.store.get("repo/README") == b"hi again\n"


def test_preexisting_tree_without_markers(store, make_mount):
    """Objects written by other tools, with no directory markers and no metadata."""
    store.put("docs/a/one.txt", b"one\n")
    store.put("docs/two.txt", b"two\n")
    store.put("top.txt", b"top\n")
    m = make_mount(store.url, env=store.env)
    assert sorted(os.listdir(m.path)) == ["docs", "top.txt"]
    assert sorted(os.listdir(m.path / "docs")) == ["a", "two.txt"]
    assert (m.path / "docs/a/one.txt").read_bytes() == b"one\n"
    st = os.stat(m.path / "docs")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
    st = os.stat(m.path / "top.txt")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_uid == os.getuid() and st.st_size == 4


def test_open_file_survives_unlink(mount):
    path = mount.path / "gone.txt"
    path.write_bytes(b"still here")
    with open(path, "rb") as f:
        os.unlink(path)
        assert not path.exists()
        assert f.read() == b"still here"
    assert not mount.store.exists("gone.txt")


def test_symlinks(mount):
    (mount.path / "target.txt").write_text("pointed at\n")
    os.symlink("target.txt", mount.path / "link")
    assert os.readlink(mount.path / "link") == "target.txt"
    assert (mount.path / "link").read_text() == "pointed at\n"
    assert mount.store.get("link") == b"target.txt"
    assert stat.S_ISLNK(int(mount.store.metadata("link")["mode"]))


def test_chmod_and_mtime_are_kept(mount):
    path = mount.path / "m.sh"
    path.write_text("#!/bin/sh\n")
    os.chmod(path, 0o750)
    os.utime(path, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_mtime_ns == 1_500_000_000_123_456_789
    meta = mount.store.metadata("m.sh")
    assert int(meta["mode"]) & 0o7777 == 0o750


@pytest.mark.parametrize("what", ["hardlink", "nonempty-rmdir", "long-name"])
def test_unsupported_operations_errno(mount, what):
    (mount.path / "d").mkdir()
    (mount.path / "d/f").write_text("x")
    with pytest.raises(OSError) as info:
        if what == "hardlink":
            os.link(mount.path / "d/f", mount.path / "hl")
        elif what == "nonempty-rmdir":
            os.rmdir(mount.path / "d")
        else:
            (mount.path / ("x" * 256)).write_text("x")
    expected = {"hardlink": errno.EPERM, "nonempty-rmdir": errno.ENOTEMPTY,
                "long-name": errno.ENAMETOOLONG}[what]
    assert info.value.errno == expected


def test_large_directory_lists_fully(store, make_mount):
    names = {f"f{i:05d}" for i in range(1200)}  # more than one 1000-key listing page
    for name in names:
        store.put(f"many/{name}", b"")
    m = make_mount(store.url, env=store.env)
    assert set(os.listdir(m.path / "many")) == names


def test_bytes_round_trip_checksums(mount):
    data = os.urandom(3 * 1024 * 1024 + 17)
    (mount.path / "r.bin").write_bytes(data)
    digest = hashlib.sha256((mount.path / "r.bin").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(data).hexdigest()
    assert mount.store.get("r.bin") == data
