"""POSIX attributes and how they travel in object metadata.

Mode (full st_mode, decimal), uid, gid and mtime (seconds, decimal with fraction) use
the metadata names s3fs and rclone use, so trees written by either tool keep their
attributes here and the other way round. Objects that carry none get the mount's
defaults. A symlink is an object whose mode has S_IFLNK and whose body is the target.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from stormount.backends.base import ObjectInfo
from stormount.config import FuseConfig

FILE, DIR, LINK = "file", "dir", "link"


@dataclass(slots=True)
class Attrs:
    mode: int  # with the file-type bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @property
    def kind(self) -> str:
        if stat.S_ISDIR(self.mode):
            return DIR
        if stat.S_ISLNK(self.mode):
            return LINK
        return FILE


def now_ns() -> int:
    return time.time_ns()


def default_attrs(kind: str, fuse: FuseConfig, size: int = 0, mtime_ns: int = 0) -> Attrs:
    if kind == DIR:
        mode = stat.S_IFDIR | (fuse.dir_mode & ~fuse.umask)
    elif kind == LINK:
        mode = stat.S_IFLNK | 0o777
    else:
        mode = stat.S_IFREG | (fuse.file_mode & ~fuse.umask)
    mtime_ns = mtime_ns or now_ns()
    return Attrs(mode=mode, uid=fuse.uid, gid=fuse.gid, size=size, mtime_ns=mtime_ns,
                 ctime_ns=mtime_ns)


def _int(meta: Mapping[str, str], key: str) -> int | None:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        return None


def _mode(meta: Mapping[str, str]) -> int | None:
    """s3fs writes the mode in decimal ("33188"), rclone in octal with a leading zero
    ("0100644"): read both."""
    raw = meta.get("mode", "").strip()
    try:
        return int(raw, 8) if len(raw) > 1 and raw.startswith("0") else int(raw)
    except ValueError:
        return None


def kind_of(key: str, metadata: Mapping[str, str] | None) -> str:
    if key.endswith("/"):
        return DIR
    mode = _mode(metadata or {})
    if mode is not None and stat.S_ISLNK(mode):
        return LINK
    return FILE


def attrs_from_object(info: ObjectInfo, kind: str, fuse: FuseConfig) -> Attrs:
    """Attributes of an object as the mount shows them: its metadata where present,
    the store's size and modification time, the mount's defaults for the rest."""
    attrs = default_attrs(kind, fuse, size=0 if kind == DIR else info.size,
                          mtime_ns=int(info.mtime * 1e9))
    meta = info.metadata or {}
    mode = _mode(meta)
    if mode is not None:
        perms = stat.S_IMODE(mode)
        attrs.mode = stat.S_IFMT(attrs.mode) | perms
    uid, gid = _int(meta, "uid"), _int(meta, "gid")
    if uid is not None and uid >= 0:
        attrs.uid = uid
    if gid is not None and gid >= 0:
        attrs.gid = gid
    if "mtime" in meta:
        try:
            # Decimal keeps nanoseconds that a float would round away
            attrs.mtime_ns = int(Decimal(meta["mtime"]) * 1_000_000_000)
            attrs.ctime_ns = attrs.mtime_ns
        except (InvalidOperation, ValueError):
            pass
    return attrs


def metadata_of(attrs: Attrs) -> dict[str, str]:
    seconds, ns = divmod(attrs.mtime_ns, 1_000_000_000)
    return {"mode": str(attrs.mode), "uid": str(attrs.uid), "gid": str(attrs.gid),
            "mtime": f"{seconds}.{ns:09d}"}
