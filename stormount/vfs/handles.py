"""The open file and directory handles of a mount, by the numbers the kernel holds."""

from __future__ import annotations

import errno
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
        self._files[fh] = Handle(node=node, writable=writable)
        return fh

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
