"""Asking the kernel to unmount a FUSE mount: plainly, which fails with EBUSY while any
process holds it (as `umount` and `fusermount3 -u` do), or lazily, which detaches it at
once and leaves it to those processes until they let go (`umount -l`, `fusermount3
-u -z`).

As root the umount2 system call is used, for its errno; otherwise the setuid
fusermount3, whose only answer is its message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess

from stormount.errors import StormountError

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


class UnmountError(StormountError):
    errno = errno.EIO


class Busy(UnmountError):
    """Something holds the mount: a plain unmount was refused."""

    errno = errno.EBUSY


class NotMounted(UnmountError):
    errno = errno.EINVAL


def _umount2(mountpoint: str, flags: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(os.fsencode(mountpoint), flags) == 0:
        return
    code = ctypes.get_errno()
    if code == errno.EBUSY:
        raise Busy(f"{mountpoint} is busy")
    if code == errno.EINVAL:
        raise NotMounted(f"{mountpoint} is not mounted")
    raise UnmountError(f"cannot unmount {mountpoint}: {os.strerror(code)}")


def _command(mountpoint: str, *, lazy: bool) -> list[str]:
    """The fusermount3 command line of an unprivileged unmount."""
    return ["fusermount3", "-u", *(["-z"] if lazy else []), "--", mountpoint]


def _judge(mountpoint: str, returncode: int, stderr: str) -> None:
    """fusermount3's outcome as an exception (none when it unmounted)."""
    if returncode == 0:
        return
    message = stderr.strip() or f"fusermount3 exited with status {returncode}"
    if "busy" in message.lower():  # "failed to unmount M: Device or resource busy"
        raise Busy(f"{mountpoint} is busy")
    # "entry for M not found in /etc/mtab" (not ours, or not mounted), "Invalid argument"
    if "not found in" in message or "invalid argument" in message.lower():
        raise NotMounted(f"{mountpoint} is not mounted")
    raise UnmountError(f"cannot unmount {mountpoint}: {message}")


def unmount(mountpoint: str, *, lazy: bool) -> None:
    """Unmount now (blocking: call from a thread in an event loop, never from the
    daemon's own loop, which must go on serving the requests the unmount may cause)."""
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
    if os.geteuid() == 0:
        _umount2(mountpoint, flags)
        return
    result = subprocess.run(_command(mountpoint, lazy=lazy), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    _judge(mountpoint, result.returncode, result.stderr)
