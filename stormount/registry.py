"""Where running mounts are recorded, so `unmount` and `ctl -m MOUNTPOINT` can find a
mount's daemon and socket from its mountpoint alone."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass

from stormount.config import mount_path


@dataclass(frozen=True)
class MountRecord:
    mountpoint: str
    pid: int
    source: str
    cache_dir: str
    socket: str | None = None


def runtime_dir() -> str:
    explicit = os.environ.get("STORMOUNT_RUNTIME_DIR")
    if explicit:
        return explicit
    if os.getuid() == 0:
        return "/run/stormount"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "stormount") if xdg else f"/tmp/stormount-{os.getuid()}"


def record_name(mountpoint: str, suffix: str = ".json") -> str:
    digest = hashlib.sha256(mount_path(mountpoint).encode()).hexdigest()[:16]
    return f"mount-{digest}{suffix}"


def _path(mountpoint: str) -> str:
    return os.path.join(runtime_dir(), record_name(mountpoint))


def register(record: MountRecord) -> None:
    os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
    path = _path(record.mountpoint)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(record), f)
    os.replace(tmp, path)


def unregister(mountpoint: str, pid: int | None = None) -> None:
    """Remove the record of the mount at `mountpoint`; with `pid`, only if that daemon
    made it: a daemon that detached lazily and serves on may find a new mount's record
    there by the time it exits."""
    path = _path(mountpoint)
    if pid is not None:
        try:
            with open(path) as f:
                owner = json.load(f).get("pid")
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError):
            owner = pid  # unreadable: nobody's record, removed
        if owner != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def alive(pid: int) -> bool:
    """Is process `pid` running (as far as this user can tell)? A zombie is not: it has
    exited, only its parent has not collected its status yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
    except OSError:
        return True
    return state != [b"Z"]


def stopped(pid: int) -> bool:
    """Is process `pid` stopped (SIGSTOP, or traced), so that it answers nothing until
    it is continued?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
    except OSError:
        return False
    return state in ([b"T"], [b"t"])


def lookup(mountpoint: str) -> MountRecord | None:
    record = last_record(mountpoint)
    return record if record is not None and alive(record.pid) else None


def last_record(mountpoint: str) -> MountRecord | None:
    """The record of the mount at `mountpoint`, even one left by a daemon that died."""
    try:
        with open(_path(mountpoint)) as f:
            return MountRecord(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def all_records() -> list[MountRecord]:
    try:
        names = os.listdir(runtime_dir())
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if name.startswith("mount-") and name.endswith(".json"):
            try:
                with open(os.path.join(runtime_dir(), name)) as f:
                    record = MountRecord(**json.load(f))
            except (OSError, ValueError, TypeError):
                continue
            if alive(record.pid):
                out.append(record)
    return out


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process sees, in order."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        sep = fields.index("-")
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        out.append((point, fields[sep + 1]))
    return out


def mounted_fuse(mountpoint: str) -> str | None:
    """The filesystem type mounted exactly at `mountpoint` (e.g. 'fuse.stormount'), if any."""
    target = mount_path(mountpoint)
    found = None
    for point, fstype in _mounts():
        if point == target:
            found = fstype  # the last one mounted there is the one seen
    return found


def filesystem_of(path: str) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount that holds `path`, which need not
    exist yet (symlinks in the part that exists are followed)."""
    target = os.path.realpath(path)
    best = ("/", "")
    for point, fstype in _mounts():
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype)
    return best
