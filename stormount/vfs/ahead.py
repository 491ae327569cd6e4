"""What the namespace fetches before it is asked for, in the background:

- flat listings of subtrees (rclone's --fast-list): when a directory with subdirectories
  is looked up or listed, everything under it is listed flat, and the listings of its
  subdirectories, with whether each has a marker, are derived from that: a walk (find,
  du, cp -r, rsync) of a small subtree costs one LIST per thousand keys instead of one
  per directory, and a directory without a marker no HEAD; lookups and listings inside
  one wait for it, briefly, for what it can tell;
- glances: one page of a directory whose names are being looked up one by one;
- the attributes (HEADs) of a listing's provisional entries once one is needed."""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from stormount.backends.base import Backend, ObjectInfo, list_pages
from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig
from stormount.errors import StormountError
from stormount.vfs.attrs import DIR
from stormount.vfs.listings import (
    Derived,
    Entries,
    Scan,
    covered,
    derive,
    entries_of,
    mark_subdirs,
)
from stormount.vfs.names import join, listable
from stormount.vfs.nodes import InodeTable, Listing, Node

log = logging.getLogger(__name__)

SCAN_PAGES = 10  # a flat listing of a subtree gives up after this many pages
SCAN_WAIT = 10.0  # seconds a lookup waits for a flat listing under way to reach it
SCANNED_MAX = 10_000  # subtrees remembered as listed whole


class Fed(Protocol):
    """What Ahead uses of the namespace it feeds (a Namespace, which imports this
    module: typed structurally so the import runs one way)."""

    backend: Backend
    cache: CacheConfig
    meta: MetaStore | None
    inodes: InodeTable
    background: trio.Nursery | None

    @property
    def seq(self) -> int: ...
    def changed_under(self, top: str, since: int) -> bool: ...
    def warn_skip(self, key: str, why: str) -> None: ...
    def implied_dir(self, key: str) -> ObjectInfo: ...
    def load_listing(self, node: Node) -> Listing | None: ...
    def keep_listing(self, key: str, listing: Listing) -> None: ...
    def adopt(self, node: Node, entries: Entries, marker: ObjectInfo | None,
              at: float) -> Listing: ...
    def own_marker(self, node: Node, marker: ObjectInfo | None, at: float) -> None: ...
    def child_from_object(self, parent: Node, name: str, kind: str, info: ObjectInfo,
                          complete: bool, at: float | None = None) -> Node: ...
    async def lookup(self, parent: Node, name: str) -> Node | None: ...


class Ahead:
    def __init__(self, ns: Fed) -> None:
        self.ns = ns  # whose listings and nodes it feeds
        self._heads = trio.Semaphore(ns.cache.head_parallel)  # background HEADs at once
        self._scans: list[Scan] = []
        self._scanned: dict[str, float] = {}  # tops of flat listings that ended whole, when

    def scan_used(self, key: str) -> None:
        """A listing derived for the directory `key` was taken: the scans above go on."""
        for scan in self._scans:
            if scan.within(key):
                scan.use()

    def stop_scans_under(self, prefix: str) -> None:
        """Scans above or below the directory `prefix` stop (invalidation)."""
        for scan in self._scans:
            if scan.within(prefix) or scan.top.startswith(prefix):
                scan.advance(None, done=True)

    def scan_over(self, key: str) -> Scan | None:
        """A flat listing under way of a directory above `key` that will reach it."""
        for scan in self._scans:
            if scan.within(key) and key != scan.top and not scan.covers(key):
                return scan
        return None

    async def scan_listing(self, node: Node) -> Listing | None:
        """The listing of a directory a flat listing under way is about to derive."""
        scan = self.scan_over(node.key)
        if scan is None:
            return None
        with trio.move_on_after(SCAN_WAIT):
            await scan.wait_for(node.key)
        return self.ns.load_listing(node)  # (which marks the scan used if it derived it)

    def scan(self, node: Node) -> None:
        """List the subtree of a directory flat, in the background, beside its own
        listing: the listings of its subdirectories (and whether they have markers)
        come from one LIST per thousand keys. It goes on past its second page only while
        what it derives is used, and gives up after SCAN_PAGES pages."""
        if self.ns.background is None or any(scan.within(node.key) for scan in self._scans):
            return
        when = self._scanned.get(node.key)
        if when is not None and trio.current_time() - when < self.ns.cache.listing_ttl:
            return  # listed whole a moment ago
        scan = Scan(node.key)
        self._scans.append(scan)
        self.ns.background.start_soon(self._run, scan)

    async def _run(self, scan: Scan) -> None:
        out: dict[str, Derived] = {}
        adopted: set[str] = set()
        listing = list_pages(self.ns.backend, scan.top)
        try:
            for _ in range(SCAN_PAGES):
                since, started = self.ns.seq, trio.current_time()
                page = await anext(listing)
                if self.ns.changed_under(scan.top, since):
                    return  # this mount changed the subtree meanwhile: the page may be older
                derive(scan.top, page.objects, listable, self.ns.warn_skip, out)
                done = page.token is None
                last = page.objects[-1].key if page.objects else None
                self._adopt_covered(out, adopted, last, done)
                scan.advance(last, complete=done)
                if done:
                    self._scanned.pop(scan.top, None)
                    self._scanned[scan.top] = trio.current_time()
                    while len(self._scanned) > SCANNED_MAX:
                        del self._scanned[next(iter(self._scanned))]
                if done or not any("/" in info.key[len(scan.top):] for info in page.objects):
                    return  # all of it, or a flat directory: nothing more to derive
                # on only while what it gives is used (a walk); a page's time to see
                with trio.move_on_after(max(1.0, trio.current_time() - started)):
                    await scan.used.wait()
                if not scan.used.is_set():
                    return
        except StormountError as e:  # those waiting for it ask the store themselves
            log.debug("flat listing of /%s: %s", scan.top, e)
        except Exception:  # best effort: never the end of the mount
            log.exception("flat listing of /%s failed", scan.top)
        finally:
            scan.advance(None, done=True)
            self._scans.remove(scan)

    def _adopt_covered(self, out: dict[str, Derived], adopted: set[str], last: str | None,
                       complete: bool) -> None:
        """The derived listings of the directories a flat listing has seen all of."""
        now = trio.current_time()
        persist = []
        for key in sorted(out):  # parents first
            if key in adopted or not covered(key, last, complete):
                continue
            adopted.add(key)
            derived = out[key]
            mark_subdirs(key, derived, out, self.ns.implied_dir)
            node = self.ns.inodes.at(key.rstrip("/"))
            if node is None or node.kind != DIR or node.unlinked:
                self.ns.keep_listing(key, Listing(entries=derived.entries, at=now))
                persist.append((key, derived.entries))
                continue
            if node.listing is None:
                self.ns.adopt(node, derived.entries, derived.marker, now)
            else:
                self.ns.own_marker(node, derived.marker, now)
            self._subdirs_known(node, derived.entries, now)
        if persist and self.ns.meta is not None:
            self.ns.meta.put_listings(persist)

    def _subdirs_known(self, node: Node, entries: Entries, at: float) -> None:
        """What a flat listing showed of the markers of a directory's subdirectories
        goes into its listing, and completes their nodes where that says it all."""
        listing = node.listing
        for name, (kind, info) in entries.items():
            if kind != DIR or info is None:
                continue
            if listing is not None and listing.entries.get(name) == (DIR, None):
                listing.put(name, (DIR, info))
            child = node.children.get(name)
            if (child is not None and child.kind == DIR and not child.complete
                    and info.metadata is not None and not child.marker_queued):
                self.ns.child_from_object(node, name, DIR, info, complete=True, at=at)

    def complete(self, node: Node) -> None:
        """HEAD the provisional entries of a directory in the background, a bounded
        number at once; a lookup of one of them joins its HEAD once it is under way.
        Started by the first entry of a listing that someone needs the attributes of
        (ls -l, rsync, cp and find's lstat ask for each entry in turn), not by the
        listing itself: `ls` and a find that needs no more than the kinds send no HEADs."""
        if self.ns.background is None or node.completing or self.ns.cache.trust_listings:
            return
        listing = node.listing
        if listing is None:
            return
        names = []
        for name, (_, listed) in listing.entries.items():
            if listed is not None and listed.metadata is not None:
                continue  # the listing says it all
            child = node.children.get(name)
            if child is None or not child.complete:
                names.append(name)
        if not names:
            return
        node.completing = True

        async def one(name: str) -> None:
            try:
                child = node.children.get(name)
                if (child is None or not child.complete) and not node.unlinked:
                    await self.ns.lookup(node, name)
            except StormountError as e:  # the lookup that needs it tries again
                log.debug("completing /%s: %s", join(node, name), e)
            except Exception as e:  # best effort: never the end of the mount
                log.warning("completing /%s failed: %r", join(node, name), e)
            finally:
                self._heads.release()

        async def run() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    for name in names:
                        child = node.children.get(name)
                        if child is not None and child.complete:
                            continue
                        await self._heads.acquire()
                        nursery.start_soon(one, name)
            finally:
                node.completing = False
        self.ns.background.start_soon(run)

    def glance(self, node: Node) -> None:
        """Lookups in a directory whose listing is not known list it, one page in the
        background (as rclone looks names up through listings): the names looked up
        next in it take one request, or none. A directory of more than a page is left
        to the lookups."""
        if self.ns.background is None or node.refreshing or node.kind != DIR or node.big:
            return
        node.refreshing = True

        async def glance() -> None:
            try:
                since = self.ns.seq
                page = await self.ns.backend.list(node.key, "/")
                if page.token is not None:
                    node.big = True  # more than a page: left to the lookups
                elif (not self.ns.changed_under(node.key, since) and node.listing is None
                        and not node.unlinked):
                    entries, marker = entries_of(node.key, page.objects, page.prefixes,
                                                 listable, self.ns.warn_skip)
                    self.ns.adopt(node, entries, marker, trio.current_time())
            except StormountError as e:  # the lookups ask the store themselves
                log.debug("listing /%s for its lookups: %s", node.path, e)
            except Exception:  # best effort: never the end of the mount
                log.exception("listing /%s for its lookups failed", node.path)
            finally:
                node.refreshing = False
        self.ns.background.start_soon(glance)
