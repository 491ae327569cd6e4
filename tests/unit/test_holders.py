"""The /proc scan that names what holds a mount, on a /proc made of files and links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stormount import holders

MP = "/mnt/x"


def fake_process(proc: Path, pid: int, comm: str, cwd: str = "/", root: str = "/",
                 exe: str = "/usr/bin/true", fds: dict[int, str] | None = None,
                 maps: list[str] = ()) -> None:
    base = proc / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "comm").write_text(comm + "\n")
    for name, target in (("cwd", cwd), ("root", root), ("exe", exe)):
        os.symlink(target, base / name)
    for fd, target in (fds or {}).items():
        os.symlink(target, base / "fd" / str(fd))
    (base / "maps").write_text("".join(
        f"7f0000000000-7f0000001000 r--p 00000000 00:2a {1000 + i}                 {path}\n"
        for i, path in enumerate(maps))
        + "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]\n")


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    (root / "self").mkdir(parents=True)
    (root / "self" / "mountinfo").write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"90 22 0:50 / {MP} rw,nosuid,nodev,noatime shared:2 - fuse.stormount file:///d "
        "rw,user_id=0,group_id=0,default_permissions\n"
        f"91 90 0:51 / {MP}/sub\\040dir rw - tmpfs tmpfs rw\n")
    return root


def test_every_kind_of_hold_is_found(proc):
    fake_process(proc, 10, "bash", cwd=f"{MP}/dir")
    fake_process(proc, 11, "python3", fds={0: "/dev/null", 3: f"{MP}/busy",
                                           4: f"{MP}/busy", 5: f"{MP}/gone (deleted)"})
    fake_process(proc, 12, "app", exe=f"{MP}/bin/app", maps=[f"{MP}/lib/x.so", "/lib/libc.so"])
    fake_process(proc, 13, "chrooted", root=MP)
    fake_process(proc, 14, "elsewhere", cwd="/mnt/xy", fds={3: "/mnt/xy/f"})  # a sibling
    found = holders.scan(MP, str(proc))
    assert [(h.pid, h.command, h.uses) for h in found.holders] == [
        (10, "bash", (f"cwd {MP}/dir",)),
        (11, "python3", (f"file {MP}/busy", f"file {MP}/gone (deleted)")),
        (12, "app", (f"exe {MP}/bin/app", f"mapped {MP}/lib/x.so")),
        (13, "chrooted", (f"root {MP}",)),
    ]
    assert found.submounts == [f"{MP}/sub dir"]
    assert not found.allow_other


def test_one_line_names_a_few_then_counts(proc):
    for pid in range(20, 26):
        fake_process(proc, pid, f"p{pid}", cwd=MP, fds={3: f"{MP}/a", 4: f"{MP}/b"})
    line = holders.describe(holders.scan(MP, str(proc)))
    assert "\n" not in line
    assert line.startswith(f"pid 20 (p20: cwd {MP}, file {MP}/a and 1 more), pid 21 ")
    assert "pid 23" not in line
    assert line.endswith(f" and 3 more process(es), a mount at {MP}/sub dir")


def test_unreadable_processes_are_mentioned_only_when_they_matter(proc, monkeypatch):
    (proc / "self" / "mountinfo").write_text(
        f"90 22 0:50 / {MP} rw shared:2 - fuse.stormount f rw,allow_other\n")
    fake_process(proc, 30, "mine", cwd=MP)
    fake_process(proc, 31, "theirs", cwd="/home/them")
    real = os.readlink

    def readlink(path, *args, **kwargs):
        if f"{proc}/31/" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", readlink)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    found = holders.scan(MP, str(proc))
    assert found.unreadable == 1 and [h.pid for h in found.holders] == [30]
    # others may use an allow_other mount: what could not be checked is said
    assert "1 process(es) of other users could not be checked" in holders.describe(found)
    found.allow_other = False  # only the owner can use it: nothing more to say
    assert "other users" not in holders.describe(found)
    found.holders = []  # busy, but nothing seen: the unseen ones may be why
    assert "other users could not be checked" in holders.describe(found)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert "other users" not in holders.describe(found)
