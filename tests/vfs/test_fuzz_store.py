"""Fuzz of the objects in the store, through the namespace (issue 19): another client
puts keys of every shape S3 and Azure allow (`//`, `.` and `..` segments, a leading
`/`, NUL, segments over 255 bytes, a name that is both a file and a directory, the
reserved `.stormount`, deep keys) with metadata of any string (mode, uid, gid, mtime,
ctime, rdev, a symlink's target), and a mount walks its whole tree as the kernel would.

The invariants: listing a directory never fails; what it lists is exactly the tree the
keys make where every segment is a POSIX name (a directory wins over a file of its name),
and every entry listed can be looked up, stat'ed, read or readlink'ed, with attributes
the kernel takes (pyfuse3's EntryAttributes accepts them); a key that cannot be shown is
named in one warning, and no key is warned about twice however often it is listed.

`make test` runs a fixed budget with a fixed seed; STORMOUNT_FUZZ_SCALE=N runs N times
as many examples (`make fuzz` does, with a large N)."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio
from hypothesis import event, example, given
from hypothesis import strategies as st

from stormount.backends import Backend, open_backend
from stormount.backends.memory import _STORES
from stormount.cache.meta import MetaStore
from stormount.chain import Chain, Tier
from stormount.chain.health import RESERVED
from stormount.chain.repair import RepairJournal
from stormount.config import ID_MAX, CacheConfig, ChainConfig, FuseConfig, parse_tier_url
from stormount.fuse.ops import Operations
from stormount.vfs import attrs
from stormount.vfs.attrs import DIR, FILE, LINK, NS_MAX, NS_MIN, RDEV_MAX
from stormount.vfs.fs import RESERVED_NAME
from stormount.vfs.names import utf8, valid_name
from stormount.vfs.nodes import ROOT_INO, Node
from tests.helpers.fuzz import KEY_SHAPES, budget, shaped
from tests.helpers.vfs import S3LikeListings, VfsFactory

# --- what another client may put --------------------------------------------------------

SEGMENTS = ["a", "b", "c", "", ".", "..", "...", " ", "a b", "\\", "-", "~", "%2F", "\t",
            "a\nb", "\x00", "n\x00ul", "é", "\u202e", "\U0001f600", ".stormount",
            "stormount", "x" * 255, "y" * 256, "é" * 127 + "z", "é" * 128, "f.stormount-partial"]
segments = st.one_of(st.sampled_from(SEGMENTS),
                     st.text(st.characters(codec="utf-8", exclude_characters="/"), max_size=6))


@st.composite
def keys(draw: st.DrawFn) -> str:
    parts = draw(st.lists(segments, min_size=1, max_size=4))
    if draw(st.integers(0, 9)) == 0:  # deep
        parts = ["d"] * draw(st.integers(5, 40)) + parts
    key = shaped("/".join(parts), draw(st.sampled_from(KEY_SHAPES)))
    return key or "k"


NUMBERS = ["0", "-0", "1", "-1", "0644", "0100644", "33188", "16877", "41471", "4516",
           "8592", "24992", "49645", "0120777", "0x10", "1_000", "\u0663", " 12 ", "",
           "1e400", "-1e400", "1e999990", "1E+999990", "-1e999990", "1e-999999999",
           "nan", "NaN", "sNaN", "inf", "-Infinity", str(2**32 - 2), str(2**32 - 1),
           str(2**32), str(2**63), str(2**64), "9" * 100, "9" * 2000, "1600000000.123456789",
           "9223372036.854775807", "9223372036.854775808", "-9223372036.854775808",
           "-9223372036.854775809", "2024-01-01T00:00:00Z", "0.5", ".5", "5.", "+7"]
values = st.one_of(st.sampled_from(NUMBERS), st.text(max_size=10),
                   st.integers(-2**70, 2**70).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.builds(lambda m, e: f"{m}e{e}", st.integers(-99, 99),
                             st.integers(-2_000_000, 2_000_000)),
                   st.sampled_from([stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644,
                                    stat.S_IFSOCK | 0o755, stat.S_IFCHR | 0o600,
                                    stat.S_IFBLK | 0o600, stat.S_IFDIR | 0o755,
                                    stat.S_IFREG | 0o4755, 0o170000 | 0o777]).map(
                       lambda m: str(m) if m % 2 else f"0{m:o}"))
META_KEYS = ["mode", "uid", "gid", "mtime", "ctime", "rdev", "stormount-copy-of", "other"]
metadata = st.dictionaries(st.sampled_from(META_KEYS), values, max_size=6)
bodies = st.one_of(st.binary(max_size=40),
                   st.sampled_from([b"", b"/etc/passwd", b"../../../../etc", b"a\x00b",
                                    b"\xff\xfe", b"x" * 4095, b"x" * 4096]))


@st.composite
def store_contents(draw: st.DrawFn) -> dict[str, tuple[bytes, dict[str, str]]]:
    out: dict[str, tuple[bytes, dict[str, str]]] = {}
    for key in draw(st.lists(keys(), min_size=1, max_size=12)):
        out[key] = (draw(bodies), draw(metadata))
        if draw(st.integers(0, 3)) == 0:  # a file and a directory of one name
            out[key.rstrip("/") + "/" + draw(st.sampled_from(["in", "", "d/in"]))] = (
                draw(bodies), draw(metadata))
    return out


# --- what the mount must show -------------------------------------------------------------

def nameable(segment: str) -> bool:
    return valid_name(segment) and utf8(segment)


def expected_tree(keys_: Mapping[str, object]) -> dict[str, str]:
    """path -> DIR or FILE: what a mount shows of these keys, independently of how it
    lists them: every key whose segments are all names, with the directories above it
    (those on the way of a key whose lower segments are not names too); a directory
    hides a file of its name; nothing named `.stormount` at the top is shown."""
    tree: dict[str, str] = {}
    files: set[str] = set()
    for key in keys_:
        if key.startswith(RESERVED):
            continue
        marker = key.endswith("/")
        parts = (key[:-1] if marker else key).split("/")
        if parts[0] == RESERVED_NAME:
            continue  # the top `.stormount` is the daemon's, whatever another client put
        for i in range(1, len(parts) + 1):
            if not nameable(parts[i - 1]):
                break
            path = "/".join(parts[:i])
            if i < len(parts) or marker:
                tree[path] = DIR
            else:
                files.add(path)
    for path in files:
        tree.setdefault(path, FILE)
    return tree


def unshown(keys_: Mapping[str, object], tree: Mapping[str, str]) -> set[str]:
    """The keys no entry stands for: a segment that is no name, or a file a directory
    of the same name hides."""
    out = set()
    for key in keys_:
        if key.startswith(RESERVED):
            continue
        path = key[:-1] if key.endswith("/") else key
        if tree.get(path) != (DIR if key.endswith("/") else FILE) and not (
                key.endswith("/") and tree.get(path) == DIR):
            out.add(key)
    return out


# --- a mount over them, walked as the kernel walks it -------------------------------------

class Warnings(logging.Handler):
    """The warnings about single keys: what was skipped, what metadata was unusable."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_mount: list[Counter[str]] = [Counter()]  # skipped keys, by mount (run)
        self.unusable: Counter[str] = Counter()
        self.other: list[str] = []

    def restarted(self) -> None:
        """A new mount (a restart) warns afresh."""
        self.by_mount.append(Counter())

    @property
    def skipped(self) -> Counter[str]:
        return sum(self.by_mount, Counter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("skipping object"):
            self.by_mount[-1][str(record.args[0])] += 1  # type: ignore[index]
        elif "the store's value could not be used" in record.msg:
            self.unusable[str(record.args[0])] += 1  # type: ignore[index]
        else:
            self.other.append(record.getMessage())


@dataclass
class Walked:
    kinds: dict[str, str] = field(default_factory=dict)  # path -> kind


def check_attrs(node: Node, ops: Operations, path: str) -> None:
    a = node.attrs
    assert stat.S_IFMT(a.mode) in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO,
                                   stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK), (path, a)
    assert 0 <= a.mode <= 0o177777 and 0 <= a.uid <= ID_MAX and 0 <= a.gid <= ID_MAX, (path, a)
    assert NS_MIN <= a.mtime_ns <= NS_MAX and NS_MIN <= a.ctime_ns <= NS_MAX, (path, a)
    assert a.size >= 0 and 0 <= a.rdev <= RDEV_MAX, (path, a)
    e = ops._entry(node)  # what the kernel is sent: pyfuse3 takes it (OverflowError before)
    assert e.st_ino == node.ino


async def walk(vfs, ops: Operations, backend: Backend,
               store: dict[str, tuple[bytes, dict[str, str]]]) -> Walked:
    """Every directory listed, every entry looked up, stat'ed and read, from the root."""
    out = Walked()
    todo = [(ROOT_INO, "")]
    while todo:
        ino, path = todo.pop()
        fh = await vfs.opendir(ino)  # a directory never fails to list
        entries = vfs.readdir(fh, 0)
        vfs.releasedir(fh)
        assert [n for n, _, _ in entries] == sorted({n for n, _, _ in entries})
        for name, listed, _ in entries:
            child = f"{path}/{name}" if path else name
            assert nameable(name), child
            ops._entry(listed)  # the READDIRPLUS reply of it
            node = await vfs.lookup(ino, name)  # listed: it can be looked up
            node = await vfs.getattr(node.ino)
            check_attrs(node, ops, child)
            out.kinds[child] = node.kind
            if node.kind == DIR:
                todo.append((node.ino, child))
            elif node.kind == LINK:
                body = store[child][0]
                assert await vfs.readlink(node.ino) == os.fsdecode(body)
            elif node.kind == FILE:
                body = store[child][0]
                assert node.attrs.size == len(body)
                fh = await vfs.open(node.ino, os.O_RDONLY)
                try:
                    assert await vfs.read(fh, 0, len(body) + 1) == body
                finally:
                    await vfs.release(fh)
    return out


@dataclass(frozen=True)
class Flavour:
    listings: str  # "metadata" (Azure, a local directory) or "none" (S3)
    background: bool  # refreshes and flat listings beside the requests, as the daemon
    trust_listings: bool = False
    options: bool = False  # uid/gid/umask given: every entry shows them
    restart: bool = False  # the second walk by a new mount, from the metadata cache


flavours = st.builds(Flavour, st.sampled_from(["metadata", "none"]), st.booleans(),
                     st.booleans(), st.booleans(), st.booleans())


def chain_over(backend: Backend, url: str, root: Path) -> Chain:
    """One tier behind the chain, as the daemon composes it (the chain hides
    `.stormount/` and the copies' own metadata)."""
    return Chain([Tier(0, backend, parse_tier_url(url))],
                 RepairJournal(str(root / "repair.sqlite3")), ChainConfig(),
                 str(root / "spool"), host="fuzzhost")


async def walk_twice(backend: Chain, root: Path,
                     contents: dict[str, tuple[bytes, dict[str, str]]], *,
                     fuse: FuseConfig | None = None, cache: CacheConfig | None = None,
                     background: bool = True, restart: Warnings | None = None
                     ) -> tuple[Walked, Walked]:
    """Walk a mount over `backend` twice: after dropping every cache, or (with
    `restart`) in a new mount served from what the first persisted."""
    fuse = fuse or FuseConfig()
    meta = MetaStore(str(root / "meta.sqlite3"))
    try:
        async with trio.open_nursery() as nursery:
            factory = VfsFactory(root, nursery)
            vfs = factory(backend, fuse=fuse, cache=cache, meta=meta)
            if background:
                vfs.background = nursery
            ops = Operations(vfs, fuse)
            first = await walk(vfs, ops, backend, contents)
            if restart is not None:  # what the first persisted serves the second
                restart.restarted()
                vfs.background = None
                vfs = factory(backend, fuse=fuse, cache=cache, meta=meta)
                ops = Operations(vfs, fuse)
            else:
                vfs.invalidate("", recursive=True)  # everything asked again
            second = await walk(vfs, ops, backend, contents)
            factory.close()
            backend.pending.journal.close()
            nursery.cancel_scope.cancel()
    finally:
        meta.close()
    return first, second


async def mount_and_walk(contents: dict[str, tuple[bytes, dict[str, str]]],
                         flavour: Flavour, root: Path, warnings: Warnings
                         ) -> tuple[Walked, Walked]:
    name = f"fz-{uuid.uuid4().hex}"
    url = f"memory://{name}"
    raw = open_backend(parse_tier_url(url))
    try:
        for key, (body, meta) in contents.items():
            await raw.put_bytes(key, body, meta)
        inner: Backend = raw if flavour.listings == "metadata" else S3LikeListings(raw)
        backend = chain_over(inner, url, root)
        fuse = FuseConfig(uid=4242, gid=4343, umask=0o027) if flavour.options else FuseConfig()
        cache = CacheConfig(trust_listings=flavour.trust_listings)
        first, second = await walk_twice(backend, root, contents, fuse=fuse, cache=cache,
                                         background=flavour.background,
                                         restart=warnings if flavour.restart else None)
        return first, second
    finally:
        _STORES.pop(name, None)


def check_walk(contents: dict[str, tuple[bytes, dict[str, str]]], flavour: Flavour
               ) -> tuple[Walked, Warnings]:
    attrs._warned.clear()  # (module-wide: each example starts afresh)
    warnings = Warnings()
    logger = logging.getLogger("stormount")
    logger.addHandler(warnings)
    try:
        with tempfile.TemporaryDirectory() as where:
            first, second = trio.run(mount_and_walk, contents, flavour, Path(where),
                                     warnings)
    finally:
        logger.removeHandler(warnings)
    want = expected_tree(contents)
    assert {p: k == DIR for p, k in first.kinds.items()} == \
        {p: k == DIR for p, k in want.items()}
    assert second.kinds == first.kinds
    # every key not shown is named by a warning (a listing names the first segment that
    # is no name: `a//` for `a//b`), and no key twice
    for key in unshown(contents, want):
        assert any(key.startswith(w) for w in warnings.skipped), (key, warnings.skipped)
    # once per mount: a restarted one may list a directory anew, and warns afresh
    assert all(n == 1 for run in warnings.by_mount for n in run.values()), warnings.by_mount
    assert not [k for k in warnings.skipped if k.startswith(RESERVED)]  # the daemon's own
    assert all(n == 1 for n in warnings.unusable.values()), warnings.unusable
    for key in warnings.unusable:
        assert key in contents or key + "/" in contents, key
    assert not [m for m in warnings.other if "unexpected" in m or "failed" in m], \
        warnings.other
    return first, warnings


@budget(100)
@given(store_contents(), flavours)
# (found at 30x: a restarted mount lists a directory anew and warns afresh, as it should)
@example({"d/a": (b"", {}), "d/a/in": (b"", {}), "a": (b"\x00", {"mode": "41471"}),
          "/a": (b"", {}), "/a/in": (b"", {})}, Flavour("none", False, restart=True))
def test_fuzz_store_walk(contents: dict[str, tuple[bytes, dict[str, str]]],
                         flavour: Flavour) -> None:
    walked, warnings = check_walk(contents, flavour)
    event(f"entries walked: {min(len(walked.kinds) // 5 * 5, 30)}+")
    event(f"keys warned about: {min(len(warnings.skipped), 3)}")
    event(f"keys with unusable metadata: {min(len(warnings.unusable), 3)}")
    event(f"kinds: {sorted(set(walked.kinds.values()))}")


# --- metadata alone: any string of every attribute ---------------------------------------

@budget(400)
@given(metadata, st.sampled_from(["f", "d/", "ln", "dev"]),
       st.sampled_from([0, 1, 5, 4095, 4096]))
def test_fuzz_store_metadata_values(meta: dict[str, str], key: str, size: int) -> None:
    """Whatever the metadata says, the attributes are within what the kernel takes,
    worked out at once (a time of 1e999990 took 27 s of the event loop before), and an
    unusable value is warned about once."""
    from stormount.backends.base import ObjectInfo
    from stormount.vfs.attrs import attrs_from_object, kind_of, shown

    attrs._warned.clear()
    warnings = Warnings()
    logger = logging.getLogger("stormount")
    logger.addHandler(warnings)
    try:
        info = ObjectInfo(key=key, size=size, mtime=1_700_000_000.25, etag="e",
                          metadata=meta)
        for fuse in (FuseConfig(), FuseConfig(uid=1, gid=2, umask=0o077, file_mode=0o640)):
            started = time.monotonic()
            kind = kind_of(key, meta, size)
            a = attrs_from_object(info, kind, fuse)
            b = attrs_from_object(info, kind, fuse)
            assert time.monotonic() - started < 1.0, meta
            assert a == b and a.kind == kind
            node = Node(ino=2, name=key, parent=None, attrs=shown(a, fuse), complete=True)
            check_attrs(node, _OPS, key)
    finally:
        logger.removeHandler(warnings)
    assert all(n == 1 for n in warnings.unusable.values()), warnings.unusable


class _NoVfs:
    """What Operations._entry asks of the filesystem for a node that is no directory."""

    def nlink(self, node: Node) -> int:
        return 1


_OPS = Operations(_NoVfs(), FuseConfig())  # type: ignore[arg-type]


# --- a local-directory tier: the names a filesystem holds ---------------------------------

NAME_BYTES = [b"a", b"b", b"...", b" ", b"-", b"\\", b"a\nb", b"\xff", b"caf\xe9",
              b"\xc3\xa9", b"\xed\xa0\x80", b".stormount", b"x" * 255, b"\xe9" * 255,
              b".hidden", b"f.stormount-partial"]
name_bytes = st.one_of(st.sampled_from(NAME_BYTES),
                       st.text(st.characters(codec="utf-8", exclude_characters="/\0"),
                               min_size=1, max_size=8).map(
                           lambda t: t.replace(".", "_").encode()),
                       st.binary(min_size=1, max_size=8).map(
                           lambda b: b"_" if b in (b".", b"..") else
                           b.replace(b"/", b"_").replace(b"\0", b"_")))
XATTR_VALUES = st.one_of(values.map(str.encode), st.binary(max_size=12))


@st.composite
def local_trees(draw: st.DrawFn) -> list[tuple[tuple[bytes, ...], str, bytes,
                                               dict[str, bytes]]]:
    """(path segments, "file" or "dir" (a marked one), body, xattrs) to make in order."""
    out = []
    for _ in range(draw(st.integers(1, 10))):
        path = tuple(draw(st.lists(name_bytes, min_size=1, max_size=4)))
        kind = draw(st.sampled_from(["file", "file", "dir"]))
        meta = draw(st.dictionaries(st.sampled_from(META_KEYS), XATTR_VALUES, max_size=5))
        out.append((path, kind, draw(bodies), meta))
    return out


def make_local(root: bytes, tree: list[tuple[tuple[bytes, ...], str, bytes,
                                              dict[str, bytes]]]) -> None:
    """Make what the filesystem can: a path whose folder is a file already is left out."""
    for parts, kind, body, meta in tree:
        path = b"/".join([root, *parts])
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if kind == "dir":
                os.makedirs(path, exist_ok=True)
                os.setxattr(path, b"user.stormount.dir", b"1")
            elif not os.path.lexists(path):
                with open(path, "wb") as f:
                    f.write(body)
            for name, value in meta.items():
                os.setxattr(path, b"user.stormount." + name.encode(), value)
        except OSError:
            continue


def local_expected(root: bytes) -> dict[str, str]:
    """What the local tier holds, as a mount shows it: every entry whose segments are
    all UTF-8 names, but the top `.stormount`."""
    tree: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == b".":
            dirnames[:] = [d for d in dirnames if d != b".stormount"]
            filenames = [f for f in filenames if f != b".stormount"]
        parts = [] if rel == b"." else rel.split(b"/")
        try:
            base = [p.decode() for p in parts]
        except UnicodeDecodeError:
            dirnames[:] = []
            continue
        for names, kind in ((dirnames, DIR), (filenames, FILE)):
            for name in names:
                try:
                    tree["/".join([*base, name.decode()])] = kind
                except UnicodeDecodeError:
                    continue
    return tree


async def walk_local(root: Path, data: Path) -> tuple[Walked, Walked]:
    backend = chain_over(open_backend(parse_tier_url(f"file://{data}")), f"file://{data}",
                         root)
    store: dict[str, tuple[bytes, dict[str, str]]] = {}
    for dirpath, _, filenames in os.walk(bytes(data)):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                store[os.fsdecode(os.path.relpath(path, bytes(data)))] = (f.read(), {})
    return await walk_twice(backend, root, store)


@budget(60)
@given(local_trees())
def test_fuzz_store_local_directory(tree: list[tuple[tuple[bytes, ...], str, bytes,
                                                     dict[str, bytes]]]) -> None:
    """A local-directory tier whose files another program made, with any bytes in their
    names and extended attributes: the same invariants."""
    attrs._warned.clear()
    warnings = Warnings()
    logger = logging.getLogger("stormount")
    logger.addHandler(warnings)
    try:
        with tempfile.TemporaryDirectory() as where:
            root = Path(where)
            data = root / "data"
            data.mkdir()
            make_local(bytes(data), tree)
            want = local_expected(bytes(data))
            first, second = trio.run(walk_local, root, data)
    finally:
        logger.removeHandler(warnings)
    event(f"local: {min(len(want) // 3 * 3, 12)}+ entries, "
          f"{min(len(warnings.skipped), 2)} names skipped")
    assert {p: k == DIR for p, k in first.kinds.items()} == \
        {p: k == DIR for p, k in want.items()}
    assert second.kinds == first.kinds
    assert all(n == 1 for n in warnings.skipped.values()), warnings.skipped
    assert all(n == 1 for n in warnings.unusable.values()), warnings.unusable

