"""Who holds a mount: the processes whose working directory, root, program, open files
or mapped files are at or under a mountpoint, as fuser and lsof find them, and the
mounts made under it. What makes a plain unmount fail with "target is busy".

Only /proc is read, with readlink and plain reads: nothing here stats a path through
the mount, so a mount whose daemon hangs cannot hang the scan.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

SHOWN = 3  # holding processes named in one line; the rest are counted
USES_SHOWN = 2  # uses named per process


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    uses: tuple[str, ...]  # e.g. "cwd /mnt/x/d", "file /mnt/x/a", "mapped /mnt/x/lib.so"


@dataclass
class Scan:
    holders: list[Holder] = field(default_factory=list)
    submounts: list[str] = field(default_factory=list)  # mounts at paths under the mount
    unreadable: int = 0  # processes this user may not look into (other users')
    allow_other: bool = False  # the mount lets other users in

    def __bool__(self) -> bool:
        return bool(self.holders or self.submounts)


def _under(path: str, mountpoint: str) -> bool:
    # a deleted file still open reads as "PATH (deleted)": it still holds the mount
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except FileNotFoundError:  # the process or fd went meanwhile
        return None


def _uses(base: str, mountpoint: str) -> list[str]:
    """What one process (/proc/PID) holds under the mountpoint. PermissionError when it
    is not ours to look into."""
    uses = []
    for what in ("cwd", "root", "exe"):
        target = _link(f"{base}/{what}")
        if target is not None and _under(target, mountpoint):
            uses.append(f"{what} {target}")
    try:
        fds = sorted(os.listdir(f"{base}/fd"), key=lambda fd: int(fd) if fd.isdigit() else -1)
    except FileNotFoundError:
        fds = []
    seen = set()
    for fd in fds:
        target = _link(f"{base}/fd/{fd}")
        if target is not None and _under(target, mountpoint) and target not in seen:
            seen.add(target)
            uses.append(f"file {target}")
    try:
        with open(f"{base}/maps", errors="replace") as maps:
            for line in maps:
                # address perms offset dev inode PATH: a path only for file mappings
                parts = line.rstrip("\n").split(maxsplit=5)
                if len(parts) == 6 and parts[4] != "0" and _under(parts[5], mountpoint) \
                        and parts[5] not in seen:
                    seen.add(parts[5])
                    uses.append(f"mapped {parts[5]}")
    except FileNotFoundError:
        pass
    return uses


def _mounts_under(mountpoint: str, proc: str) -> tuple[list[str], bool]:
    """The mounts at paths under the mountpoint (they hold it too), and whether the
    mount lets other users in (allow_other), from this process's mountinfo."""
    try:
        with open(f"{proc}/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return [], False
    under, allow_other = [], False
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or "-" not in fields:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == mountpoint:
            # ID PARENT DEV ROOT POINT OPTIONS [TAGS...] - TYPE SOURCE SUPER_OPTIONS
            allow_other = "allow_other" in fields[-1].split(",")
        elif _under(point, mountpoint):
            under.append(point)
    return under, allow_other


def scan(mountpoint: str, proc: str = "/proc") -> Scan:
    """Every process (that this user may look into) holding `mountpoint` (its canonical
    path, as /proc shows paths), and the mounts under it."""
    submounts, allow_other = _mounts_under(mountpoint, proc)
    result = Scan(submounts=submounts, allow_other=allow_other)
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return result
    for pid in pids:
        base = f"{proc}/{pid}"
        try:
            uses = _uses(base, mountpoint)
        except PermissionError:
            result.unreadable += 1
            continue
        except OSError:  # gone while read (ESRCH and the like)
            continue
        if uses:
            try:
                with open(f"{base}/comm", errors="replace") as f:
                    command = f.read().strip() or "?"
            except OSError:
                command = "?"
            result.holders.append(Holder(pid, command, tuple(uses)))
    return result


def describe(found: Scan, shown: int = SHOWN) -> str:
    """One line naming what holds the mount: a few processes, then "and N more". Says
    that other users' processes could not be checked only when that matters: the mount
    lets other users in (allow_other) and some could not be read, or nothing was found."""
    parts = []
    for holder in found.holders[:shown]:
        uses = ", ".join(holder.uses[:USES_SHOWN])
        if len(holder.uses) > USES_SHOWN:
            uses += f" and {len(holder.uses) - USES_SHOWN} more"
        parts.append(f"pid {holder.pid} ({holder.command}: {uses})")
    more = len(found.holders) - shown
    if more > 0:
        parts[-1] += f" and {more} more process(es)"
    parts += [f"a mount at {point}" for point in found.submounts[:shown]]
    text = ", ".join(parts)
    unseen = found.unreadable and os.geteuid() != 0 and (found.allow_other or not found)
    if not text:
        text = "no process this command can see"
    if unseen:
        text += (f"; {found.unreadable} process(es) of other users could not be checked "
                 "(run as root to see them)")
    return text
