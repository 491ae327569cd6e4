"""Inodes: the tree of names the kernel knows, and the local state of open files.

Paths are not stored: a node knows its parent and name, so renaming a directory moves
its whole subtree at once. Inode numbers are allocated monotonically and never reused
within a mount.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from stormount.backends.base import ObjectInfo
from stormount.ranges import Delta
from stormount.vfs.attrs import DIR, Attrs

ROOT_INO = 1


@dataclass(eq=False)
class Staging:
    """A local file holding the whole content of a file being written."""

    path: str
    fd: int
    dirty: bool = False  # the store does not have this content (yet)
    generation: int = 0  # bumped by every change; an upload is clean only if unchanged
    queued: tuple[int, dict[str, str]] | None = None  # (generation, metadata) journaled
    held: int = 0  # how it is journaled: final, or held (see Writeback.submit)
    # what differs from the stored version it was staged from (None: all of it, or
    # nothing is stored): an upload copies the rest in the store
    delta: Delta | None = None

    def close(self) -> None:
        try:
            os.close(self.fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


@dataclass(eq=False)
class Listing:
    """A directory's entries as last listed: name -> (kind, object or None for prefixes).
    Change them through `put` and `drop`, which keep the count of subdirectories."""

    entries: dict[str, tuple[str, ObjectInfo | None]]
    at: float
    subdirs: int = -1  # (counted at creation)
    _sorted: list[str] | None = None  # the names in order, once asked for

    def __post_init__(self) -> None:
        self.subdirs = sum(kind == DIR for kind, _ in self.entries.values())

    def put(self, name: str, entry: tuple[str, ObjectInfo | None]) -> None:
        old = self.entries.get(name)
        self.subdirs += (entry[0] == DIR) - (old is not None and old[0] == DIR)
        if old is None:
            self._sorted = None
        self.entries[name] = entry

    def drop(self, name: str) -> None:
        old = self.entries.pop(name, None)
        if old is not None:
            self._sorted = None
            if old[0] == DIR:
                self.subdirs -= 1

    def without_metadata(self, wanted: Callable[[str], bool]) -> list[str]:
        """Keys of the listed objects that came without their metadata (S3 listings
        carry none), of the names `wanted` says."""
        return [listed.key for name, (_, listed) in self.entries.items()
                if listed is not None and listed.metadata is None and wanted(name)]

    def after(self, name: str, count: int) -> list[str]:
        """Up to `count` names that sort after `name`."""
        if self._sorted is None:
            self._sorted = sorted(self.entries)
        start = bisect.bisect_right(self._sorted, name)
        return self._sorted[start:start + count]


@dataclass(eq=False)
class Node:
    ino: int
    name: str
    parent: Node | None
    attrs: Attrs
    etag: str | None = None  # version of the object in the store; None if not stored yet
    # the store's Last-Modified of that version (None: not known to the second), which
    # with the ETag tells whether a listing still shows the version a HEAD described
    modified: float | None = None
    stored: Mapping[str, str] | None = None  # that version's metadata (None: not known)
    page_cache_etag: str | None = None  # version the kernel's cached pages hold
    page_epoch: int = 0  # pages stored for it before the last change are void (pages.py)
    checked_at: float = -1e18  # trio time the attributes were last confirmed
    # the attributes are what the store says (a HEAD, a listing with metadata, an own
    # write); False: provisional, from a listing without metadata (S3), never shown to
    # the kernel as facts
    complete: bool = False
    kind_known: bool = True  # a provisional entry's kind is certain (see attrs.kind_is_certain)
    lookups: int = 0  # kernel references (lookup counts)
    opens: int = 0  # open file handles
    writers: int = 0  # of them, open for writing: uploads wait for the last one
    children: dict[str, Node] = field(default_factory=dict)
    listing: Listing | None = None
    staging: Staging | None = None
    link_target: str | None = None
    unlinked: bool = False  # removed from the namespace while still referenced
    lock: trio.Lock = field(default_factory=trio.Lock)  # serialises staging and uploads
    changes: int = 0  # own changes to this directory's entries, to spot racing listings
    refreshing: bool = False  # a background refresh of its listing is under way
    completing: bool = False  # background HEADs of its provisional entries are under way
    big: bool = False  # its listing is more than a page: lookups in it ask one by one
    marker_queued: bool = False  # a directory whose marker waits in the upload queue

    @property
    def kind(self) -> str:
        return self.attrs.kind

    @property
    def path(self) -> str:
        """Path relative to the mount root, "" for the root."""
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))

    @property
    def key(self) -> str:
        """The object key: directories end in "/" (their marker)."""
        path = self.path
        return path + "/" if self.kind == DIR and path else path

    def is_under(self, other: Node) -> bool:
        node: Node | None = self
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False


class InodeTable:
    def __init__(self, root_attrs: Attrs,
                 on_drop: Callable[[Node], None] = lambda node: None) -> None:
        self._on_drop = on_drop  # told of each node forgotten, before it goes
        self.root = Node(ino=ROOT_INO, name="", parent=None, attrs=root_attrs)
        self.root.lookups = 1  # the kernel never forgets the root
        self._nodes: dict[int, Node] = {ROOT_INO: self.root}
        self._next = ROOT_INO + 1

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def add(self, parent: Node, name: str, attrs: Attrs) -> Node:
        node = Node(ino=self._next, name=name, parent=parent, attrs=attrs)
        self._next += 1
        self._nodes[node.ino] = node
        parent.children[name] = node
        return node

    def detach(self, node: Node) -> None:
        """Take a node out of the namespace; it lives on while referenced."""
        parent = node.parent
        if parent is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
        node.unlinked = True
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        """Forget a node nobody references: no kernel lookups, no open handles; then its
        parent, if that was all that held it, and so on up (a loop, not a recursion: a
        key may be thousands of folders deep)."""
        current: Node | None = node
        while current is not None:
            node, current = current, None
            if node.ino == ROOT_INO or node.lookups > 0 or node.opens > 0:
                return
            if node.children:
                return  # children still name it as their parent
            if not node.unlinked and (node.marker_queued or (
                    node.staging is not None and node.staging.dirty)):
                return  # not in the store yet: never drop it
            self._on_drop(node)
            self._nodes.pop(node.ino, None)
            parent = node.parent
            if parent is not None and parent.children.get(node.name) is node:
                del parent.children[node.name]
                current = parent
            if node.staging is not None:
                node.staging.close()
                node.staging = None

    def revive(self, node: Node) -> Node:
        """Take back a node forgotten while nobody referenced it (a directory handle
        still lists it: the entry stands, its inode was never given to the kernel)."""
        assert not node.unlinked and node.parent is not None
        self._nodes[node.ino] = node
        node.parent.children[node.name] = node
        return node

    def at(self, path: str) -> Node | None:
        """The node at a path, if it is in memory."""
        node: Node | None = self.root
        for name in path.split("/") if path else []:
            if node is None:
                return None
            node = node.children.get(name)
        return node

    def nearest(self, path: str) -> tuple[Node, str] | None:
        """For a path whose node is not in memory: the deepest directory on it that is,
        and the next name (the kernel may hold a "no such file" entry for it)."""
        parts = [p for p in path.strip("/").split("/") if p]
        node = self.root
        for name in parts:
            child = node.children.get(name)
            if child is None:
                return node, name
            node = child
        return None

    def all(self) -> list[Node]:
        return list(self._nodes.values())
