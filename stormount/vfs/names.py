"""Names and versions: which key segments can be POSIX names, how two descriptions of
an object are told to be one version, and the bounded cache of names the store does
not hold."""

from __future__ import annotations

from collections import OrderedDict

import trio

from stormount.backends.base import ObjectInfo
from stormount.vfs.nodes import Node

NAME_MAX = 255
NEGATIVE_MAX = 10_000  # names remembered as absent, over all directories


def valid_name(name: str) -> bool:
    """Can this key segment be a POSIX file name?"""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name
            and len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX)


def listable(name: str) -> bool:
    """Can a listing show this key segment as an entry? A POSIX name that is valid
    UTF-8: a lookup of any other finds nothing (no object of S3 or Azure can have it),
    so a name a local directory holds in another encoding is not shown either."""
    return utf8(name) and valid_name(name)


def utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def too_long(name: str) -> bool:
    return len(name.encode("utf-8", "surrogateescape")) > NAME_MAX


def join(parent: Node, name: str) -> str:
    path = parent.path
    return f"{path}/{name}" if path else name


def same_version(a: ObjectInfo, b: ObjectInfo, *, strict: bool = False) -> bool:
    """Do two descriptions of an object name one version? The ETag, and the
    Last-Modified to the second where both know it: a change of metadata alone (a copy
    onto itself) keeps the ETag and moves the time. `strict`: only if both know it (an
    estimated time, as of an own PUT, cannot vouch that the metadata is unchanged)."""
    if a.etag != b.etag:
        return False
    if not (a.mtime_exact and b.mtime_exact):
        return not strict
    return int(a.mtime) == int(b.mtime)


def node_holds(node: Node, info: ObjectInfo) -> bool:
    """Is `info` the version `node` describes?"""
    if node.etag is None or node.etag != info.etag:
        return False
    return node.modified is None or not info.mtime_exact or int(node.modified) == int(info.mtime)


class Negatives:
    """Names seen absent, per directory, with when: bounded in number (the oldest go
    first) and trusted for `negative_ttl` only, as mountpoint-s3's negative cache."""

    def __init__(self, limit: int = NEGATIVE_MAX) -> None:
        self.limit = limit
        self._seen: OrderedDict[tuple[int, str], float] = OrderedDict()
        self._by_dir: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, parent: Node, name: str) -> None:
        key = (parent.ino, name)
        self._seen.pop(key, None)
        self._seen[key] = trio.current_time()
        self._by_dir.setdefault(parent.ino, set()).add(name)
        while len(self._seen) > self.limit:
            (ino, old), _ = self._seen.popitem(last=False)
            self._forget(ino, old)

    def _forget(self, ino: int, name: str) -> None:
        names = self._by_dir.get(ino)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_dir[ino]

    def discard(self, parent: Node, name: str) -> None:
        if self._seen.pop((parent.ino, name), None) is not None:
            self._forget(parent.ino, name)

    def fresh(self, parent: Node, name: str, ttl: float) -> bool:
        at = self._seen.get((parent.ino, name))
        if at is None:
            return False
        if trio.current_time() - at < ttl:
            return True
        self.discard(parent, name)
        return False

    def clear(self, parent: Node) -> None:
        for name in self._by_dir.pop(parent.ino, ()):
            del self._seen[(parent.ino, name)]
