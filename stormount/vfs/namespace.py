"""The namespace: which names exist, and what the store says of them.

Lookups, directory listings, the metadata cache (in memory and in
CACHE_DIR/meta.sqlite3), negative entries and invalidation live here; `Vfs` asks for
nodes and reports its own changes (`added`, `removed`, `seen`).

The rule kept here: an attribute the store did not tell us is never presented as a
fact. A listing of S3 carries no metadata, so what it introduces is provisional
(`Node.complete` is False): its kind may be a guess (a small object may be a symlink,
an empty one a fifo) and its mode, owner and times are unknown. `lookup` and `known`
complete such an entry (a HEAD, or a HEAD result persisted for the same version) before
returning it, and once one entry of a listing is asked for, the others are completed
in the background, `head_parallel` at a time, so that `ls -l`, `rsync -a` and `find`
mostly find them ready. A listing never downgrades what a HEAD said while the entry's version
(ETag and Last-Modified) is unchanged.
"""

from __future__ import annotations

import errno
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable

import trio

from stormount.backends.base import Backend, ObjectInfo, list_all
from stormount.cache.meta import MetaStore
from stormount.config import CacheConfig, FuseConfig
from stormount.errors import FsError, NotFound, Transient, first_error
from stormount.vfs.ahead import SCAN_WAIT, Ahead
from stormount.vfs.attrs import (
    DIR,
    attrs_from_object,
    default_attrs,
    kind_is_certain,
    kind_of,
    now_ns,
)
from stormount.vfs.listings import (
    Entries,
    entries_of,
)
from stormount.vfs.names import (
    NAME_MAX,
    Negatives,
    join,
    listable,
    node_holds,
    same_version,
    too_long,
    utf8,
    valid_name,
)
from stormount.vfs.nodes import InodeTable, Listing, Node

log = logging.getLogger(__name__)

KEPT_LISTINGS = 10_000  # listings kept for directories that have no node (by key)
KEPT_ENTRIES = 1_000_000  # ... and their entries, all together
WARNED_MAX = 4096  # keys skipped whose warning is remembered
CHANGE_LOG = 4096  # own changes remembered, for listings in flight to be checked against


class Namespace:
    def __init__(self, backend: Backend, fuse: FuseConfig, cache: CacheConfig,
                 meta: MetaStore | None, queued_under: Callable[[str], bool]) -> None:
        self.backend = backend
        self.fuse = fuse
        self.cache = cache
        self.meta = meta  # persisted listings and HEAD results; None: memory only
        self._queued_under = queued_under  # are uploads queued under this key prefix?
        self.inodes = InodeTable(default_attrs(DIR, fuse), on_drop=self._dropped)
        self.inodes.root.checked_at = math.inf
        self.inodes.root.complete = True
        self.negatives = Negatives()
        # set by the daemon: stale listings are then served at once and refreshed, and
        # provisional entries completed, beside the requests
        self.background: trio.Nursery | None = None
        self._asking: dict[tuple[int, str], trio.Event] = {}  # lookups asking the store
        # flat listings of subtrees under way, and the listings they derived for
        # directories that have no node yet (by directory key)
        self.ahead = Ahead(self)  # listings and attributes fetched before they are asked for
        self._derived: dict[str, Listing] = {}
        self._derived_entries = 0
        # this mount's changes, by directory key (and moves of directories): a listing
        # that raced one is not adopted
        self._log: deque[tuple[int, str, bool]] = deque(maxlen=CHANGE_LOG)
        self._seq = 0
        self._moving: list[str] = []  # directory keys (old and new) of moves under way
        self._misses: dict[int, int] = {}  # lookups that asked the store, by directory
        self._start_ns = now_ns()
        # keys skipped and warned about, so each is warned once; the oldest are
        # forgotten past WARNED_MAX (a bucket may hold millions of `a//b`)
        self._warned: OrderedDict[str, None] = OrderedDict()
        # lookups, getattrs and listings answered from the caches, and those that asked
        # the store (for the stats)
        self.hits = 0
        self.misses = 0

    # --- small helpers ------------------------------------------------------------

    def _fresh(self, at: float, ttl: float) -> bool:
        return trio.current_time() - at < ttl

    def warn_skip(self, key: str, why: str) -> None:
        if key not in self._warned:
            self._warned[key] = None
            if len(self._warned) > WARNED_MAX:
                self._warned.popitem(last=False)
            log.warning("skipping object %r: %s", key, why)

    def _offline(self, what: str, error: Transient) -> None:
        log.warning("store unreachable, serving %s from cache: %s", what, error)

    def holds_queued(self, node: Node) -> bool:
        """A directory with queued uploads inside exists, whatever the store says yet."""
        return node.kind == DIR and self._queued_under(node.key)

    def implied_dir(self, key: str) -> ObjectInfo:
        """A directory without a marker: the store holds no metadata for it (an empty
        mapping, not None: that is known), so it shows the mount's defaults."""
        return ObjectInfo(key=key, size=0, mtime=self._start_ns / 1e9, etag="", metadata={})

    def set_version(self, node: Node, info: ObjectInfo) -> None:
        """The node now stands for this version of its object."""
        node.etag = info.etag
        node.modified = info.mtime if info.mtime_exact else None
        node.stored = info.metadata

    # --- nodes from what the store says -------------------------------------------

    def child_from_object(self, parent: Node, name: str, kind: str, info: ObjectInfo,
                          complete: bool, at: float | None = None) -> Node:
        """Create or refresh the node for a name the store just told us about. With
        `complete` False, `info` comes from a listing without metadata: the node is
        provisional, and a HEAD result of the same version is never downgraded."""
        now = trio.current_time() if at is None else at
        if self.cache.trust_listings:
            complete = True  # the user vouches: listings say all there is
        certain = complete or kind_is_certain(kind, info)
        attrs = attrs_from_object(info, kind, self.fuse)
        child = parent.children.get(name)
        if child is not None:
            if child.staging is not None and child.staging.dirty and not child.unlinked:
                return child  # not uploaded yet: what this mount wrote wins
            if not complete and child.complete and node_holds(child, info):
                # a listing never downgrades what a HEAD said of this very version
                if child.modified is not None and info.mtime_exact:
                    child.checked_at = max(child.checked_at, now)
                self.negatives.discard(parent, name)
                return child
            if child.kind != kind:
                unknown_to_kernel = (child.lookups == 0 and child.opens == 0
                                     and not child.children and child.staging is None)
                if not certain and not unknown_to_kernel:
                    # a new version of an entry the kernel knows, of a kind a listing
                    # cannot tell: it keeps its kind, unshown, until a HEAD says
                    if not node_holds(child, info):
                        child.link_target = None
                    self.set_version(child, info)
                    child.complete = child.kind_known = False
                    self.negatives.discard(parent, name)
                    return child
                if not unknown_to_kernel:
                    self.inodes.detach(child)
                    child = None
                # else: the kernel never saw this inode: it takes the true kind in place
        if child is None:
            child = self.inodes.add(parent, name, attrs)
        else:
            if not node_holds(child, info):
                child.link_target = None
            child.attrs = attrs
        child.complete = complete
        child.kind_known = certain
        self.set_version(child, info)
        child.checked_at = now
        self.negatives.discard(parent, name)
        return child

    def dir_from_prefix(self, parent: Node, name: str) -> Node:
        """The node of a directory a listing shows as a common prefix: a directory, of
        attributes unknown until its marker is asked for (a prefix never changes what a
        directory node already knows)."""
        child = parent.children.get(name)
        if child is not None and child.kind == DIR:
            return child
        return self.child_from_object(parent, name, DIR,
                                      self.implied_dir(join(parent, name) + "/"),
                                      complete=False)

    def remember(self, kind: str, info: ObjectInfo) -> None:
        """Persist what a HEAD (or an own write) told us, for restarts and outages."""
        if self.meta is not None and info.metadata is not None:
            self.meta.put_object(info.key, kind, info)

    def _remembered(self, path: str, hint: str | None) -> tuple[float, str, ObjectInfo] | None:
        """(age, kind, info) of a persisted HEAD result for this path."""
        if self.meta is None:
            return None
        keys = {DIR: (path + "/",), None: (path + "/", path)}.get(hint, (path,))
        for key in keys:
            row = self.meta.object(key)
            if row is not None:
                return row
        return None

    # --- what this mount changed, and what the store says ----------------------------

    def _changed(self, parent: Node) -> None:
        """This mount changed what a directory holds: a listing of it in flight, or a
        flat listing of a subtree holding it, may be older than that."""
        parent.changes += 1
        self._seq += 1
        self._log.append((self._seq, parent.key, False))

    def changed_under(self, top: str, since: int) -> bool:
        """Has this mount changed anything under the directory `top` since `since` (a
        `seq`), or is it moving a directory above or below it?"""
        if any(top.startswith(k) or k.startswith(top) for k in self._moving):
            return True
        if self._log and self._log[0][0] > since + 1:
            return True  # the log no longer reaches back that far
        for seq, key, move in reversed(self._log):
            if seq <= since:
                return False
            if key.startswith(top) or (move and top.startswith(key)):
                return True
        return False

    @property
    def seq(self) -> int:
        return self._seq

    def _listing_put(self, parent: Node, name: str, kind: str, info: ObjectInfo | None
                     ) -> None:
        self.negatives.discard(parent, name)
        if parent.listing is not None:
            parent.listing.put(name, (kind, info))
        self._persist_change(parent, name, kind, info)

    def added(self, parent: Node, name: str, kind: str, info: ObjectInfo | None) -> None:
        """This mount made the entry (create, mkdir, symlink, mknod, rename)."""
        self._changed(parent)
        self._listing_put(parent, name, kind, info)

    def stored(self, parent: Node, name: str, kind: str, info: ObjectInfo) -> None:
        """A write of this mount landed (an upload, a marker, new metadata): a listing
        in flight may not show it yet."""
        self._changed(parent)
        self._listing_put(parent, name, kind, info)

    def seen(self, parent: Node, name: str, kind: str, info: ObjectInfo | None) -> None:
        """The store holds the entry as `info` says (a lookup found it)."""
        self._listing_put(parent, name, kind, info)

    def _drop(self, parent: Node, name: str) -> None:
        self.negatives.add(parent, name)
        if parent.listing is not None:
            parent.listing.drop(name)
        self._persist_change(parent, name, None, None)

    def removed(self, parent: Node, name: str) -> None:
        """This mount removed the entry (unlink, rmdir, the old name of a rename): a
        listing in flight, which may still show it, is not believed."""
        self._changed(parent)
        self._drop(parent, name)

    def absent(self, parent: Node, name: str) -> None:
        """The store says there is no such entry (someone else removed it)."""
        self._drop(parent, name)

    def begin_move(self, old: str, new: str) -> None:
        """A directory is being moved (its keys copied, then deleted): no listing of
        either place is believed until it is done, and none kept from before is, in
        memory or on disk (at the new place, they are of the directory it replaces)."""
        self._moving.extend((old, new))
        self._moved(old, new)

    def end_move(self, old: str, new: str) -> None:
        self._moving.remove(old)
        self._moving.remove(new)
        self._moved(old, new)

    def _moved(self, old: str, new: str) -> None:
        for key in (old, new):
            self._seq += 1
            self._log.append((self._seq, key, True))
            self._forget_kept(key)
            if self.meta is not None:
                self.meta.forget_prefix(key)  # listings and attributes at and below it

    def _forget_kept(self, prefix: str) -> None:
        """Listings kept for directories at or below `prefix` (a directory key) go."""
        for key in [k for k in self._derived if k.startswith(prefix)]:
            self._drop_kept(key)

    def keep_listing(self, key: str, listing: Listing) -> None:
        self._drop_kept(key)
        self._derived[key] = listing
        self._derived_entries += len(listing.entries)
        while len(self._derived) > KEPT_LISTINGS or self._derived_entries > KEPT_ENTRIES:
            self._drop_kept(next(iter(self._derived)))  # the oldest first

    def _drop_kept(self, key: str) -> Listing | None:
        listing = self._derived.pop(key, None)
        if listing is not None:
            self._derived_entries -= len(listing.entries)
        return listing

    def _dropped(self, node: Node) -> None:
        """The kernel forgot a directory (memory pressure, drop_caches): its listing,
        which may hold names the store has not seen yet, is kept for its next node."""
        if node.kind == DIR and node.listing is not None and not node.unlinked:
            self.keep_listing(node.key, node.listing)

    def list_again(self, parent: Node) -> None:
        """The directory changed in ways its listing does not show: list it again."""
        self._changed(parent)
        if parent.listing is not None:
            parent.listing.at = -math.inf
        if self.meta is not None:
            self.meta.forget_listing(parent.key)

    def _persist_change(self, parent: Node, name: str, kind: str | None,
                        info: ObjectInfo | None) -> None:
        """A change: the persisted listing of the parent no longer holds (a restart lists
        it again), and the object's persisted attributes follow the change."""
        if self.meta is None:
            return
        self.meta.forget_listing(parent.key)
        if kind is None:
            self.meta.removed(join(parent, name))
        elif info is not None:
            self.remember(kind, info)

    # --- lookups ---------------------------------------------------------------------

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The live node for `name` in `parent`, complete (its attributes as the store
        has them), from the caches or else the store; None when there is no such entry.
        ENAMETOOLONG for a name no entry can have."""
        if too_long(name):
            raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
        if not valid_name(name) or not utf8(name):
            return None  # such a name cannot be stored, so it does not exist
        waited = False
        while True:
            said, cached = self._cached(parent, name)
            if said:
                self.hits += 1
                return cached
            asking = self._asking.get((parent.ino, name))
            if asking is None or waited:
                break
            await asking.wait()  # one request per name at a time: its answer serves all
            waited = True
        self.misses += 1
        event = trio.Event()
        mine = (parent.ino, name) not in self._asking
        if mine:
            self._asking[(parent.ino, name)] = event
        try:
            return await self._ask_store(parent, name)
        finally:
            if mine:
                del self._asking[(parent.ino, name)]
                event.set()

    async def existing(self, parent: Node, name: str) -> Node:
        node = await self.lookup(parent, name)
        if node is None:
            raise FsError(errno.ENOENT, f"no such file: {join(parent, name)}")
        return node

    async def resolve(self, path: str) -> Node:
        """The node at a path of the mount ("" for the root), looked up name by name;
        FsError (ENOENT, ENOTDIR) as a path walk gives."""
        node = self.inodes.root
        for name in path.strip("/").split("/") if path.strip("/") else []:
            if node.kind != DIR:
                raise FsError(errno.ENOTDIR, f"{node.path} is not a directory")
            node = await self.existing(node, name)
        return node

    async def known(self, node: Node) -> Node:
        """The node with its attributes as the store has them: a provisional one is
        completed first (by a HEAD, or a persisted one of its version). Returns the node
        now at its name, which is another one when the store says it is of another
        kind; ENOENT when the store no longer has it."""
        if node.complete or node.parent is None or node.unlinked:
            return node
        found = await self.lookup(node.parent, node.name)
        if found is None:
            raise FsError(errno.ENOENT, f"{node.path} was removed from the store")
        return found

    def _cached(self, parent: Node, name: str) -> tuple[bool, Node | None]:
        """What the caches alone can say of a name: (True, the node or None when absent),
        or (False, None) when they cannot say."""
        child = parent.children.get(name)
        if child is not None and (
                child.staging is not None or child.etag is None
                or (child.complete and self._fresh(child.checked_at, self.cache.metadata_ttl))):
            return True, child
        if child is None and self.negatives.fresh(parent, name, self.cache.negative_ttl):
            return True, None
        listing = self.load_listing(parent)
        if listing is None or not self._fresh(listing.at, self.cache.listing_ttl):
            remembered = self._remembered(join(parent, name), None)
            if remembered is not None and remembered[0] < self.cache.metadata_ttl:
                age, kind, info = remembered
                return True, self.child_from_object(parent, name, kind, info, complete=True,
                                                    at=trio.current_time() - age)
            return False, None
        entry = listing.entries.get(name)
        if entry is None:
            if child is not None and self.holds_queued(child):
                return True, child
            if child is not None:
                self.inodes.detach(child)
            return True, None
        kind, listed = entry
        if listed is not None and self._fresh(listing.at, self.cache.metadata_ttl) and (
                listed.metadata is not None or self.cache.trust_listings):
            # the listing says it all (its store lists metadata, or a HEAD was folded in)
            return True, self.child_from_object(parent, name, kind, listed, complete=True,
                                                at=listing.at)
        remembered = self._remembered(join(parent, name), kind)
        if remembered is not None:
            age, rkind, info = remembered
            vouched = listed is not None and same_version(listed, info, strict=True)
            if listed is not None and not vouched:
                return False, None  # the listing knows a newer version
            at = trio.current_time() - age
            if vouched:
                at = max(at, listing.at)  # the listing saw this very version then
            if self._fresh(at, self.cache.metadata_ttl):
                listing.put(name, (rkind, info))
                return True, self.child_from_object(parent, name, rkind, info, complete=True,
                                                    at=at)
        return False, None

    async def _ask_store(self, parent: Node, name: str) -> Node | None:
        listing = self.load_listing(parent)
        fresh = listing is not None and self._fresh(listing.at, self.cache.listing_ttl)
        entry = listing.entries.get(name) if listing is not None else None
        if (entry is None or entry[0] == DIR or not fresh) and \
                (scan := self.ahead.scan_over(join(parent, name) + "/")) is not None:
            # a flat listing under way is about to say what it is (a directory's marker,
            # its parent's listing); a file's attributes need a HEAD whatever it says
            with trio.move_on_after(SCAN_WAIT):
                if await scan.wait_for(join(parent, name) + "/"):
                    scan.use()
            said, node = self._cached(parent, name)
            if said:
                return node
        for _ in range(3):
            key = join(parent, name)
            listing = self.load_listing(parent)
            fresh = listing is not None and self._fresh(listing.at, self.cache.listing_ttl)
            entry = listing.entries.get(name) if listing is not None else None
            hint = entry[0] if fresh and entry is not None else None
            if hint is not None:
                self.ahead.complete(parent)  # its siblings are likely asked for next
            child = parent.children.get(name)
            held = child is not None and self.holds_queued(child)
            try:
                found = await self._stat_remote(parent, name, hint)
            except Transient as e:
                return self._offline_lookup(parent, name, entry, e)
            if join(parent, name) == key:
                break  # (else it moved meanwhile: the answer is of its old name)
        else:
            raise FsError(errno.ESTALE, f"/{join(parent, name)} kept moving while it was "
                          "looked up")
        # what this mount did while the store was asked (a create, an unlink, an upload
        # landing, another lookup's answer) is newer than the answer
        said, node = self._cached(parent, name)
        if said:
            return node
        if listing is None:
            # a second name asked for in a directory never listed: list it (after this
            # lookup's own requests, not competing with them), so the next take one
            # request, or none
            misses = self._misses.pop(parent.ino, 0) + 1
            if misses >= 2:
                self.ahead.glance(parent)
            else:
                self._misses[parent.ino] = misses
                while len(self._misses) > KEPT_LISTINGS:
                    del self._misses[next(iter(self._misses))]
        child = parent.children.get(name)
        if found is None:
            if held or (child is not None and self.holds_queued(child)):
                # its queued contents landed while the store was asked: it is there
                return child if child is not None else self.child_from_object(
                    parent, name, DIR, self.implied_dir(join(parent, name) + "/"),
                    complete=True)
            if child is not None:
                self.inodes.detach(child)
            self.absent(parent, name)
            return None
        kind, info, deeper = found
        node = self.child_from_object(parent, name, kind, info, complete=True)
        if deeper:
            self.ahead.scan(node)  # its subtree, listed flat before it is walked
        listing = parent.listing  # (it may have been listed again meanwhile)
        entry = listing.entries.get(name) if listing is not None else None
        if entry is None or entry[0] != kind:
            self.seen(parent, name, kind, info)  # news to the listing
        else:
            assert listing is not None
            listing.put(name, (kind, info))  # the listing now says it all
            self.remember(kind, info)
        return node

    def _offline_lookup(self, parent: Node, name: str,
                        entry: tuple[str, ObjectInfo | None] | None, error: Transient) -> Node:
        """The store cannot be reached: the last thing we knew of the name, however old,
        beats an error; a guess does not."""
        path = join(parent, name)
        remembered = self._remembered(path, None if entry is None else entry[0])
        if remembered is not None:
            self._offline(path, error)
            return self.child_from_object(parent, name, remembered[1], remembered[2],
                                          complete=True, at=-math.inf)
        if entry is not None and entry[1] is not None and (
                entry[1].metadata is not None or self.cache.trust_listings):
            self._offline(path, error)
            return self.child_from_object(parent, name, entry[0], entry[1], complete=True,
                                          at=-math.inf)
        child = parent.children.get(name)
        if child is not None and self.inodes.get(child.ino) is child and child.complete:
            self._offline(path, error)
            return child
        raise error

    async def _stat_remote(self, parent: Node, name: str, hint: str | None
                           ) -> tuple[str, ObjectInfo, bool] | None:
        """What the store holds under this name: a directory wins over a file of the
        same name (as in mountpoint-s3), since a directory cannot be shadowed safely.
        `hint`: what a fresh listing says the name is; a directory there has keys under
        name/ (with or without a marker), trusted within the listing TTL as its
        absences are. With the kind and object: whether it was seen to hold
        subdirectories."""
        key = join(parent, name)
        if hint == DIR:
            try:
                return DIR, await self.backend.head(key + "/"), False
            except NotFound:
                return DIR, self.implied_dir(key + "/"), False
        if hint is not None:
            try:
                info = await self.backend.head(key)
                return kind_of(key, info.metadata, info.size), info, False
            except NotFound:
                pass
        head: ObjectInfo | None = None
        page_has_children = deeper = False
        marker: ObjectInfo | None = None

        async def _head() -> None:
            nonlocal head
            try:
                head = await self.backend.head(key)
            except NotFound:
                head = None

        async def _list() -> None:
            nonlocal page_has_children, marker, deeper
            page = await self.backend.list(key + "/", "/", limit=1)
            page_has_children = bool(page.objects or page.prefixes)
            deeper = bool(page.prefixes)  # it has subdirectories: a walk may follow
            if page.objects and page.objects[0].key == key + "/":
                marker = page.objects[0]

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_head)
                nursery.start_soon(_list)
        except ExceptionGroup as group:
            raise first_error(group) from None
        if page_has_children:
            if marker is not None and marker.metadata is None:
                try:
                    marker = await self.backend.head(key + "/")
                except NotFound:
                    marker = None
            return DIR, marker or self.implied_dir(key + "/"), deeper
        if head is not None:
            return kind_of(key, head.metadata, head.size), head, False
        return None

    # --- listings --------------------------------------------------------------------

    def load_listing(self, node: Node) -> Listing | None:
        """The directory's listing from memory (its own, or one a flat listing of a
        directory above derived), else as persisted by an earlier run."""
        if node.listing is None and node.key in self._derived:
            node.listing = self._drop_kept(node.key)
            self.ahead.scan_used(node.key)
        if node.listing is None and self.meta is not None:
            persisted = self.meta.listing(node.key)
            if persisted is not None:
                age, entries = persisted
                node.listing = Listing(entries=entries, at=trio.current_time() - age)
        return node.listing

    async def _fetch_listing(self, node: Node) -> Listing:
        """List a directory in the store; remember it in memory and on disk. A listing
        that raced with an own change of the directory is dropped: the cached one, which
        has the change, stays (stale, so the next access lists again)."""
        for _ in range(3):
            changes = node.changes
            objects, prefixes = await list_all(self.backend, node.key, "/")
            if node.changes == changes:
                break
            if node.listing is not None:
                return node.listing
        raced = node.changes != changes  # own changes kept landing: trust nothing absent
        entries, own_marker = entries_of(node.key, objects, prefixes, listable,
                                         self.warn_skip)
        if raced:
            for name, child in node.children.items():
                if child.etag is not None and not child.unlinked and name not in entries:
                    entries[name] = (child.kind, None if child.kind == DIR else ObjectInfo(
                        key=child.key, size=child.attrs.size, mtime=child.attrs.mtime_ns / 1e9,
                        etag=child.etag, metadata=None))
            listing = node.listing = Listing(entries=entries, at=-math.inf)  # list again
            return listing
        return self.adopt(node, entries, own_marker, trio.current_time())

    def adopt(self, node: Node, entries: Entries, marker: ObjectInfo | None,
               at: float) -> Listing:
        """A directory's listing as the store gave it at `at`: kept in memory and on
        disk; children it no longer names are gone (removed by someone else)."""
        listing = node.listing = Listing(entries=entries, at=at)
        node.big = False
        self._drop_kept(node.key)
        if self.meta is not None:
            self.meta.put_listing(node.key, entries)
        for name, child in list(node.children.items()):
            if (name not in entries and child.etag is not None and child.staging is None
                    and not self.holds_queued(child)):
                self.inodes.detach(child)  # removed from the store by someone else
        self.own_marker(node, marker, at)
        return listing

    def own_marker(self, node: Node, marker: ObjectInfo | None, at: float) -> None:
        """A directory's own listing shows whether it has a marker: without one, its
        attributes are the mount's defaults, a fact; with one that lists its metadata,
        they are the marker's."""
        parent = node.parent
        if parent is None or node.complete or node.marker_queued or node.unlinked:
            return
        if marker is None:
            info = self.implied_dir(node.key)
        elif marker.metadata is not None:
            info = marker
        else:
            return  # a marker whose metadata this listing does not show: a HEAD tells
        self.child_from_object(parent, node.name, DIR, info, complete=True, at=at)
        self.remember(DIR, info)

    def refresh_soon(self, node: Node) -> None:
        if node.refreshing or self.background is None:
            return
        node.refreshing = True

        async def refresh() -> None:
            try:
                await self._fetch_listing(node)
            except Transient as e:
                self._offline(f"the listing of /{node.path}", e)
            except Exception as e:  # a refresh is best effort; the next access retries
                log.warning("refreshing the listing of /%s failed: %s", node.path, e)
            finally:
                node.refreshing = False
        self.background.start_soon(refresh)

    async def list_dir(self, node: Node) -> list[tuple[str, Node]]:
        """The entries of a directory, sorted by name: the store's (as listed within
        the listing TTL) and this mount's own not uploaded yet. Entries the listing
        introduced without metadata are provisional, and being completed."""
        listing = self.load_listing(node)
        if listing is None:
            listing = await self.ahead.scan_listing(node)
        if listing is None:
            self.misses += 1
            listing = await self._fetch_listing(node)
            if listing.subdirs:
                self.ahead.scan(node)  # its subdirectories are likely listed next (find)
        elif not self._fresh(listing.at, self.cache.listing_ttl):
            if self.background is not None:
                self.hits += 1
                self.refresh_soon(node)  # serve the stale listing; the next access sees news
            else:
                self.misses += 1
                try:
                    listing = await self._fetch_listing(node)
                except Transient as e:
                    self._offline(f"the listing of /{node.path}", e)
        else:
            self.hits += 1
        rows = self._rows_for(node, listing)
        result: dict[str, Node] = {}
        for name, (kind, listed) in listing.entries.items():
            known = node.children.get(name)
            if known is not None and known.kind == kind and (
                    known.staging is not None or known.checked_at > listing.at):
                child = known  # newer than the listing: keep it
            elif kind == DIR and listed is None:
                child = self.dir_from_prefix(node, name)
            elif listed is None:
                # made here, its upload not seen yet: the node is all there is to show
                if known is None or known.unlinked:
                    continue
                child = known
            else:
                complete = listed.metadata is not None
                row = rows.get(listed.key)
                if not complete and row is not None and same_version(listed, row[2],
                                                                     strict=True):
                    # a HEAD of an earlier run described this very version
                    kind, listed, complete = row[1], row[2], True
                    listing.put(name, (kind, listed))
                child = self.child_from_object(node, name, kind, listed, complete,
                                               at=listing.at)
            result[name] = child
        for name, known in node.children.items():
            if not known.unlinked and (known.etag is None or (
                    name not in result and self.holds_queued(known))):
                result.setdefault(name, known)  # created here, not in the store yet
        return sorted(result.items())

    def _rows_for(self, node: Node, listing: Listing) -> dict[str, tuple[float, str, ObjectInfo]]:
        """Persisted HEAD results of the listed objects whose nodes are not complete."""
        if self.meta is None or self.cache.trust_listings:
            return {}
        keys = listing.without_metadata(lambda name: (
            (known := node.children.get(name)) is None or not known.complete))
        return (self.meta.objects(keys) or {}) if keys else {}

    # --- the kernel lets go, and invalidation ---------------------------------------

    def forget(self, node: Node, count: int) -> None:
        node.lookups = max(0, node.lookups - count)
        self.inodes.maybe_drop(node)

    def invalidate(self, path: str, recursive: bool = False) -> list[Node]:
        """Forget what the metadata caches know of a path (and, recursively, of
        everything below it): attributes, listings and negative entries in memory and on
        disk. The next access asks the store. Returns the known nodes whose kernel
        entries the caller should drop too."""
        path = path.strip("/")
        prefix = path + "/" if path else ""
        self._forget_kept(prefix)
        self.ahead.stop_scans_under(prefix)  # what they show may be older than the news
        self._seq += 1
        self._log.append((self._seq, prefix, True))
        node: Node | None = self.inodes.root
        for name in path.split("/") if path else []:
            if node is None:
                break  # nothing of it in memory: the persistent caches are dropped below
            parent, node = node, node.children.get(name)
            self.negatives.discard(parent, name)
            parent.changes += 1  # a listing in flight must not bring the old view back
            if node is None:
                parent.listing = None  # it may not know the name yet: listed anew
        if self.meta is not None:
            self.meta.forget_path(path, recursive)
        affected: list[Node] = []
        todo = [node] if node is not None else []
        while todo:
            current = todo.pop()
            affected.append(current)
            if current is not self.inodes.root:
                current.checked_at = -math.inf
                current.complete = current.staging is not None or current.etag is None
            current.listing = None  # the next listing asks the store, and waits for it
            current.changes += 1
            self.negatives.clear(current)
            if current.parent is not None:
                current.parent.listing = None
            if recursive:
                todo.extend(current.children.values())
        return affected

