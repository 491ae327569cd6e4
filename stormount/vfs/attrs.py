"""POSIX attributes and how they travel in object metadata.

Mode (full st_mode, decimal), uid, gid, mtime and ctime (seconds, decimal with
fraction) and rdev use the metadata names s3fs and rclone use, so trees written by
either tool keep their attributes here and the other way round. Objects that carry
none get the mount's defaults. A symlink is an object whose mode has S_IFLNK and whose
body is the target; a fifo, socket or device is an empty object whose mode says so.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

from stormount.backends.base import ObjectInfo
from stormount.config import ID_MAX, FuseConfig

log = logging.getLogger(__name__)

FILE, DIR, LINK, SPECIAL = "file", "dir", "link", "special"
# a symlink's target is shorter than this (symlink(2) refuses longer ones): an object
# this big is a regular file whatever it carries
PATH_MAX = 4096
_SPECIAL_TYPES = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
# Bounds of what the kernel takes, for metadata another client may have put: a mode is
# a file type and permission bits (16 bits); times are nanoseconds in an int64 (years
# 1677 to 2262); a device number is 32 bits in FUSE's attributes. A stored value
# outside them is not used: the mount's default for that attribute shows instead.
MODE_MAX = 0o177777
NS_MIN, NS_MAX = -(2**63), 2**63 - 1
RDEV_MAX = 2**32 - 1
SECONDS_DIGITS = 11  # a time of 10**12 s or more is out of that range whatever its digits
# object keys whose unusable metadata was logged, so each is logged once; the oldest
# are forgotten past this many
_WARNED_MAX = 4096
_warned: OrderedDict[str, None] = OrderedDict()


@dataclass(slots=True)
class Attrs:
    mode: int  # with the file-type bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0  # device number of a character or block device

    @property
    def kind(self) -> str:
        if stat.S_ISDIR(self.mode):
            return DIR
        if stat.S_ISLNK(self.mode):
            return LINK
        if stat.S_ISREG(self.mode):
            return FILE
        return SPECIAL


def now_ns() -> int:
    return time.time_ns()


def _umask(fuse: FuseConfig) -> int:
    return 0o022 if fuse.umask is None else fuse.umask


def default_attrs(kind: str, fuse: FuseConfig, size: int = 0, mtime_ns: int = 0) -> Attrs:
    """What an entry carries when the store tells nothing of it: the mounting user,
    0644 files and 0755 directories. (Ownership options change what is shown, `shown`,
    never this: it is what a chmod of such an object stores with the new mode.)"""
    if kind == DIR:
        mode = stat.S_IFDIR | 0o755
    elif kind == LINK:
        mode = stat.S_IFLNK | 0o777
    else:
        mode = stat.S_IFREG | 0o644
    mtime_ns = mtime_ns or now_ns()
    return Attrs(mode=mode, uid=os.getuid(), gid=os.getgid(), size=size, mtime_ns=mtime_ns,
                 ctime_ns=mtime_ns)


def shown(attrs: Attrs, fuse: FuseConfig) -> Attrs:
    """The attributes as the kernel sees them. Ownership and mode options given
    explicitly apply to every entry (as in s3fs, rclone and mountpoint-s3), whatever
    the objects store; without them, the stored values show."""
    if fuse.uid is None and fuse.gid is None and fuse.umask is None and \
            fuse.file_mode is None and fuse.dir_mode is None:
        return attrs
    mode = attrs.mode
    kind = attrs.kind
    if kind == DIR and fuse.dir_mode is not None:
        mode = stat.S_IFDIR | (fuse.dir_mode & ~_umask(fuse))
    elif kind == FILE and fuse.file_mode is not None:
        mode = stat.S_IFREG | (fuse.file_mode & ~_umask(fuse))
    elif fuse.umask is not None and kind != LINK:
        mode = mode & ~fuse.umask
    return replace(attrs, mode=mode,
                   uid=attrs.uid if fuse.uid is None else fuse.uid,
                   gid=attrs.gid if fuse.gid is None else fuse.gid)


POSIX_KEYS = frozenset({"mode", "uid", "gid", "mtime", "ctime", "rdev"})


def carries_attrs(metadata: Mapping[str, str] | None) -> bool:
    """Does stored metadata hold POSIX attributes (ours, s3fs's, rclone's)?"""
    return bool(metadata) and not POSIX_KEYS.isdisjoint(metadata)  # type: ignore[arg-type]


def with_attrs(stored: Mapping[str, str] | None, attrs: Attrs) -> dict[str, str]:
    """An object's metadata with new attributes: what else it carries (another tool's
    keys) is kept."""
    kept = {k: v for k, v in (stored or {}).items() if k not in POSIX_KEYS}
    return kept | metadata_of(attrs)


def with_ctime(stored: Mapping[str, str], ctime_ns: int) -> dict[str, str]:
    """An object's metadata as it is, with a new ctime (a rename)."""
    return {**stored, "ctime": _seconds(ctime_ns)}


def _int(meta: Mapping[str, str], key: str, low: int, high: int) -> int | None:
    """The integer stored under `key` if it lies in low..high, else None."""
    try:
        value = int(meta[key])
    except (KeyError, ValueError, TypeError):
        return None
    return value if low <= value <= high else None


def _mode(meta: Mapping[str, str]) -> int | None:
    """s3fs writes the mode in decimal ("33188"), rclone in octal with a leading zero
    ("0100644"): read both. A value beyond a file type and permission bits (or
    negative) is no mode."""
    raw = str(meta.get("mode", "")).strip()
    try:
        value = int(raw, 8) if len(raw) > 1 and raw.startswith("0") else int(raw)
    except ValueError:
        return None
    return value if 0 <= value <= MODE_MAX else None


def _seconds_ns(meta: Mapping[str, str], key: str) -> int | None:
    if key not in meta:
        return None
    try:
        # Decimal keeps nanoseconds that a float would round away
        seconds = Decimal(str(meta[key]).strip())
        if seconds and seconds.is_finite() and seconds.adjusted() > SECONDS_DIGITS:
            return None  # beyond an int64 of ns, and int() of 1e999990 takes half a minute
        value = int(seconds * 1_000_000_000)
    except (ArithmeticError, ValueError):  # nan, inf (OverflowError), decimal signals
        return None
    return value if NS_MIN <= value <= NS_MAX else None


def _unusable(key: str, meta: Mapping[str, str], names: list[str]) -> None:
    """Log, once per object key, that stored attributes could not be used."""
    if key in _warned:
        return
    _warned[key] = None
    if len(_warned) > _WARNED_MAX:
        _warned.popitem(last=False)
    shown_values = ", ".join(f"{name}={str(meta[name])[:40]!r}" for name in names)
    log.warning("%s: the store's value could not be used (out of range or not a number), "
                "the mount's default shows instead: %s", key, shown_values)


def kind_of(key: str, metadata: Mapping[str, str] | None, size: int | None = None) -> str:
    """The kind of entry an object is, from its key and metadata. A link's body is its
    target, so a link object is never empty nor PATH_MAX bytes or more; fifos, sockets
    and devices are empty objects."""
    if key.endswith("/"):
        return DIR
    mode = _mode(metadata or {})
    if mode is None:
        return FILE
    if stat.S_ISLNK(mode) and (size is None or 0 < size < PATH_MAX):
        return LINK
    if stat.S_IFMT(mode) in _SPECIAL_TYPES and not size:
        return SPECIAL
    return FILE


def kind_is_certain(kind: str, info: ObjectInfo | None) -> bool:
    """Does a listing entry without metadata say what kind of entry it is? A common
    prefix is a directory, and an object of PATH_MAX bytes or more can only be a
    regular file; a smaller one may be a link, and an empty one a fifo or device."""
    return kind == DIR or info is None or info.size >= PATH_MAX


def attrs_from_object(info: ObjectInfo, kind: str, fuse: FuseConfig) -> Attrs:
    """Attributes of an object as the mount shows them: its metadata where present,
    the store's size and modification time, the mount's defaults for the rest. Without
    a stored ctime, the store's own time of the last change (Last-Modified) is it."""
    modified_ns = int(info.mtime * 1e9)
    attrs = default_attrs(kind, fuse, size=0 if kind == DIR else info.size,
                          mtime_ns=modified_ns)
    meta = info.metadata or {}
    unusable = []
    mode = _mode(meta)
    if mode is None and "mode" in meta:
        unusable.append("mode")
    rdev = _int(meta, "rdev", 0, RDEV_MAX)
    if rdev is None and "rdev" in meta:
        unusable.append("rdev")
    if kind == SPECIAL and mode is not None:
        attrs.mode = mode
        attrs.rdev = rdev or 0
    elif mode is not None:
        attrs.mode = stat.S_IFMT(attrs.mode) | stat.S_IMODE(mode)
    uid, gid = _int(meta, "uid", 0, ID_MAX), _int(meta, "gid", 0, ID_MAX)
    if uid is not None:
        attrs.uid = uid
    elif "uid" in meta:
        unusable.append("uid")
    if gid is not None:
        attrs.gid = gid
    elif "gid" in meta:
        unusable.append("gid")
    mtime = _seconds_ns(meta, "mtime")
    if mtime is not None:
        attrs.mtime_ns = mtime
    elif "mtime" in meta:
        unusable.append("mtime")
    ctime = _seconds_ns(meta, "ctime")
    if ctime is None and "ctime" in meta:
        unusable.append("ctime")
    attrs.ctime_ns = ctime if ctime is not None else (modified_ns or attrs.mtime_ns)
    if unusable:
        _unusable(info.key, meta, unusable)
    return attrs


def _seconds(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return f"{seconds}.{frac:09d}"


def metadata_of(attrs: Attrs) -> dict[str, str]:
    meta = {"mode": str(attrs.mode), "uid": str(attrs.uid), "gid": str(attrs.gid),
            "mtime": _seconds(attrs.mtime_ns), "ctime": _seconds(attrs.ctime_ns)}
    if attrs.rdev:
        meta["rdev"] = str(attrs.rdev)
    return meta
