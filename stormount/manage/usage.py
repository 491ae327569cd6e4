"""`stormount usage`: files and bytes per folder and per tier.

From a SOURCE every tier is listed (flat listings, page by page); the folder totals are
those of the tree the mount shows, so a key on two tiers (a mirror, a spilled write not
copied up yet) counts once. From a MOUNTPOINT the mounted tree is walked: the mount
answers from its caches where they are fresh, and files not uploaded yet count too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from stormount.manage.store import Store, objects


@dataclass
class Count:
    files: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size

    def as_dict(self) -> dict[str, int]:
        return {"files": self.files, "bytes": self.bytes}


@dataclass
class Tally:
    """Totals, and totals per folder down to `depth` levels (a folder's total holds
    everything below it)."""
    depth: int
    total: Count = field(default_factory=Count)
    folders: dict[str, Count] = field(default_factory=dict)

    def add(self, rel: str, size: int) -> None:
        self.total.add(size)
        parts = rel.split("/")[:-1]  # the folders the file is in
        for level in range(1, min(self.depth, len(parts)) + 1):
            self.folders.setdefault("/".join(parts[:level]), Count()).add(size)

    def folder_rows(self) -> list[dict[str, object]]:
        return [{"path": path, **count.as_dict()} for path, count in sorted(self.folders.items())]


Progress = Callable[[str, int, int], None]  # (what is scanned, files so far, bytes so far)


async def of_store(store: Store, prefix: str, depth: int,
                   progress: Progress = lambda what, files, size: None) -> dict[str, object]:
    """Usage of the tree under `prefix` ('' or 'a/b/'), per folder and per tier."""
    tree = Tally(depth)
    seen: set[str] = set()  # keys counted in the tree already (only kept with >1 tier)
    tiers = []
    for tier in store.tiers:
        mine = Tally(depth)
        what = f"tier {tier.index} ({tier.url})"
        async for info in objects(store, tier, prefix):
            if info.key.endswith("/"):
                continue  # a directory marker: no file
            rel = info.key[len(prefix):]
            mine.add(rel, info.size)
            if len(store.tiers) == 1:
                tree.add(rel, info.size)
            elif info.key not in seen:
                seen.add(info.key)
                tree.add(rel, info.size)
            if mine.total.files % 1000 == 0:
                progress(what, mine.total.files, mine.total.bytes)
        progress(what, mine.total.files, mine.total.bytes)
        tiers.append({"index": tier.index, "url": tier.url, **mine.total.as_dict(),
                      "folders": mine.folder_rows()})
    return {"path": prefix.rstrip("/"), "depth": depth, **tree.total.as_dict(),
            "folders": tree.folder_rows(), "tiers": tiers}


def of_mount(root: str, depth: int,
             progress: Progress = lambda what, files, size: None) -> dict[str, object]:
    """Usage of a mounted tree, walked through the mount (blocking: run in a thread)."""
    tree = Tally(depth)

    def walk(path: str, rel: str) -> None:
        with os.scandir(path) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                name = f"{rel}{entry.name}"
                if stat.S_ISDIR(st.st_mode):
                    walk(entry.path, name + "/")
                else:  # a file or a symlink: both are objects of their own
                    tree.add(name, st.st_size)
                    if tree.total.files % 1000 == 0:
                        progress(root, tree.total.files, tree.total.bytes)

    walk(root, "")
    progress(root, tree.total.files, tree.total.bytes)
    return {"path": "", "depth": depth, **tree.total.as_dict(), "folders": tree.folder_rows()}


