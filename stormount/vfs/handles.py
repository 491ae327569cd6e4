"""The open file and directory handles of a mount, by the numbers the kernel holds."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass, field

from stormount.errors import FsError
from stormount.vfs.nodes import Node
from stormount.vfs.reader import ReadState


@dataclass(eq=False)
class Handle:
    node: Node
    writable: bool
    read_state: ReadState = field(default_factory=ReadState)
    read_to: int = 0  # the furthest byte read through it
    # the stored version it was opened on, and its size: its reads stay on that version
    # when another client replaces the object (they fail with ESTALE once the store no
    # longer has it), never mixing the bytes of two. None: the node's current version.
    version: str | None = None
    size: int = 0

    def follow(self) -> None:
        """Read what the node stands for now (this mount moved or rewrote it)."""
        self.version, self.size = self.node.etag or None, self.node.attrs.size


@dataclass(eq=False)
class DirHandle:
    node: Node
    entries: list[tuple[str, Node]]


class Handles:
    """File handles count as opens (and writers) of their nodes while they live."""

    def __init__(self) -> None:
        self._files: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next = 1

    def _number(self) -> int:
        fh, self._next = self._next, self._next + 1
        return fh

    def open(self, node: Node, writable: bool) -> int:
        node.opens += 1
        node.writers += writable
        fh = self._number()
        handle = self._files[fh] = Handle(node=node, writable=writable)
        if node.staging is None:
            handle.follow()
        return fh

    def follow(self, nodes: Iterable[Node]) -> None:
        """The handles of these nodes read what the nodes stand for now."""
        if not self._files:
            return
        moved = {id(node) for node in nodes}
        for handle in self._files.values():
            if id(handle.node) in moved:
                handle.follow()

    def file(self, fh: int) -> Handle:
        try:
            return self._files[fh]
        except KeyError:
            raise FsError(errno.EBADF, f"unknown file handle {fh}") from None

    def close(self, fh: int) -> Handle | None:
        """The handle released, its node's counts taken down; None if unknown."""
        handle = self._files.pop(fh, None)
        if handle is not None:
            handle.node.opens -= 1
            handle.node.writers -= handle.writable
        return handle

    def opendir(self, node: Node, entries: list[tuple[str, Node]]) -> int:
        fh = self._number()
        self._dirs[fh] = DirHandle(node=node, entries=entries)
        return fh

    def dir(self, fh: int) -> DirHandle:
        try:
            return self._dirs[fh]
        except KeyError:
            raise FsError(errno.EBADF, f"unknown directory handle {fh}") from None

    def closedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
