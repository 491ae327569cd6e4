"""What a lookup is for, where the kernel does not say.

The kernel looks a name up before it creates it (`open(O_CREAT)`, `mkdir`, `mknod`), and
FUSE does not pass the lookup's intent on. When the store cannot be reached, a lookup of
a name the mount knows nothing of has no honest answer but EIO: that is what `stat` and
a plain `open` get. A creating call, though, only needs to know the name is not known to
be taken: the create that follows is journaled, and its upload is conditional on nothing
being there, so a name taken in the store meanwhile keeps both versions.

The caller's system call is read from /proc/TID/syscall while it waits for our answer
(the daemon may read it for the processes of its own user; as root, for all). When it
cannot be read, or is not a creating call, nothing is assumed.
"""

from __future__ import annotations

import os
import platform

# system call numbers -> (position of the flags argument, or None: it always creates)
_BY_ARCH: dict[str, dict[int, int | None]] = {
    "x86_64": {2: 1, 257: 2, 85: None, 83: None, 258: None, 133: None, 259: None},
    # open, openat, creat, mkdir, mkdirat, mknod, mknodat
    "aarch64": {56: 2, 34: None, 33: None},  # openat, mkdirat, mknodat
}
_CREATING = _BY_ARCH.get(platform.machine(), {})


def creating(tid: int) -> bool:
    """Is thread `tid` in a system call that creates the name it looks up?"""
    if tid <= 0 or not _CREATING:
        return False
    try:
        with open(f"/proc/{tid}/syscall", "rb") as f:
            fields = f.read().split()
    except OSError:
        return False
    try:
        number = int(fields[0])
    except (IndexError, ValueError):
        return False  # "running", or not in a system call
    if number not in _CREATING:
        return False
    flags_at = _CREATING[number]
    if flags_at is None:
        return True
    try:
        return bool(int(fields[1 + flags_at], 16) & os.O_CREAT)
    except (IndexError, ValueError):
        return False
