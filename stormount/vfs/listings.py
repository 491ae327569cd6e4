"""Directory listings from the store's pages.

A delimited listing gives one directory's entries. A flat (recursive) listing gives the
listings of a whole subtree at once, as rclone's --fast-list does: a walk of a small
subtree (find, du, cp -r, rsync) then costs one LIST per thousand keys instead of one
LIST per directory, and it also shows which directories have a marker (`d/`), so the
attributes of those without one are known without a HEAD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from stormount.backends.base import ObjectInfo
from stormount.vfs.attrs import DIR, kind_of

Entries = dict[str, tuple[str, ObjectInfo | None]]  # name -> (kind, object or None)
Warn = Callable[[str, str], None]  # (key, why) of a key that cannot be an entry


def entries_of(dir_key: str, objects: list[ObjectInfo], prefixes: list[str],
               valid: Callable[[str], bool], warn: Warn
               ) -> tuple[Entries, ObjectInfo | None]:
    """The entries of a delimited listing of `dir_key`, and the directory's own marker
    if the listing shows one. A directory hides a file of the same name."""
    entries: Entries = {}
    for prefix in prefixes:
        name = prefix[len(dir_key):-1]
        if valid(name):
            entries[name] = (DIR, None)
        else:
            warn(prefix, "not a valid file name")
    marker: ObjectInfo | None = None
    for info in objects:
        if info.key == dir_key:
            marker = info
            continue
        name = info.key[len(dir_key):]
        if not valid(name):
            warn(info.key, "not a valid file name")
        elif name in entries:
            warn(info.key, "a directory of the same name hides it")
        else:
            entries[name] = (kind_of(info.key, info.metadata, info.size), info)
    return entries, marker


@dataclass
class Derived:
    """One directory's listing as a flat listing shows it."""
    entries: Entries = field(default_factory=dict)
    marker: ObjectInfo | None = None  # its own marker object, if it has one


def derive(top: str, objects: list[ObjectInfo], valid: Callable[[str], bool], warn: Warn,
           out: dict[str, Derived]) -> None:
    """Add what a page of a flat listing of `top` (a directory key: "" or ending in "/")
    shows to `out`, the listings of the directories under it by key. Subdirectory
    entries are (DIR, None) here; `mark_subdirs` fills in their markers."""
    for info in objects:
        parts = info.key[len(top):].split("/")
        base = top
        for part in parts[:-1]:  # the directories on its way
            if not valid(part):
                warn(info.key, "not a valid file name")
                break
            listing = out.setdefault(base, Derived())
            if listing.entries.get(part, (None,))[0] != DIR:
                if part in listing.entries:
                    warn(base + part, "a directory of the same name hides it")
                listing.entries[part] = (DIR, None)
            base = base + part + "/"
        else:
            listing = out.setdefault(base, Derived())
            name = parts[-1]
            if name == "":
                listing.marker = info  # the marker of `base`
            elif not valid(name):
                warn(info.key, "not a valid file name")
            elif listing.entries.get(name, (None,))[0] == DIR:
                warn(info.key, "a directory of the same name hides it")
            else:
                listing.entries[name] = (kind_of(info.key, info.metadata, info.size), info)


def mark_subdirs(key: str, listing: Derived, out: dict[str, Derived],
                 implied: Callable[[str], ObjectInfo]) -> None:
    """Each subdirectory entry of a covered listing carries what the flat listing shows
    of its marker: the marker object, or, when it has none, that nothing is stored."""
    for name, (kind, info) in listing.entries.items():
        if kind == DIR and info is None:
            sub = out.get(key + name + "/")
            marker = None if sub is None else sub.marker
            listing.entries[name] = (DIR, marker or implied(key + name + "/"))


def covered(key: str, last: str | None, done: bool) -> bool:
    """Has a flat listing in key order that got as far as `last` seen every key of the
    directory `key`?"""
    return done or (last is not None and last > key and not last.startswith(key))


class Scan:
    """A flat listing of a subtree under way, page by page: what it has covered, a way
    to wait until it covers a directory (or ends), and whether what it derives is used
    (it goes on only while it is)."""

    def __init__(self, top: str) -> None:
        self.top = top
        self.last: str | None = None  # the last key seen
        self.complete = False  # everything under `top` seen
        self.done = False  # it ended: complete, or given up
        self.used = trio.Event()  # a directory it derived was looked up or listed
        self._moved = trio.Event()

    def within(self, key: str) -> bool:
        return key.startswith(self.top)

    def covers(self, key: str) -> bool:
        """Has it seen every key of the directory `key`?"""
        return covered(key, self.last, self.complete)

    def use(self) -> None:
        self.used.set()

    def advance(self, last: str | None, *, complete: bool = False, done: bool = False
                ) -> None:
        self.last = last if last is not None else self.last
        self.complete = self.complete or complete
        self.done = self.done or done or complete
        self._moved.set()
        self._moved = trio.Event()

    async def wait_for(self, key: str, pages: int = 2) -> bool:
        """Until the scan has seen every key of the directory `key`, or ended, or gone
        `pages` further; whether it covers `key` now."""
        for _ in range(pages):
            if self.done or self.covers(key):
                break
            await self._moved.wait()
        return self.covers(key)
