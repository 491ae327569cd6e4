"""A stateful model test: random sequences of file and directory operations run, with
plain os calls, both on a real mount and on a local directory (the model). Every
operation must have the same outcome on both sides (its value, or the same errno), and
after every step both trees must hold the same names, types, sizes and bytes.

Names come from a tiny alphabet so that operations collide: renames onto existing files
and directories, into other directories, writes past the end, removals of non-empty
directories, and so on."""

from __future__ import annotations

import collections
import errno
import itertools
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stormount.registry import mounted_fuse
from tests.helpers.mounts import Mount
from tests.stores import FileStore, Store

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(300)]

LETTERS = ("a", "b", "c")
ALL_PATHS = [*LETTERS, *(f"{x}/{y}" for x in LETTERS for y in LETTERS),
             *(f"{x}/{y}/{z}" for x in LETTERS for y in LETTERS for z in LETTERS)]
payloads = st.binary(max_size=5000)
offsets = st.integers(min_value=0, max_value=9000)

Outcome = tuple[str, object]


def outcome(fn: Callable[[Path], object], root: Path) -> Outcome:
    """("ok", value) or ("err", errno name): what a caller would see."""
    try:
        return "ok", fn(root)
    except OSError as e:
        return "err", errno.errorcode.get(e.errno or 0, e.errno)


def read_fd(fd: int) -> bytes:
    out = bytearray()
    while chunk := os.pread(fd, 65536, len(out)):
        out += chunk
    return bytes(out)


def snapshot(root: Path, contents: bool = True) -> dict[str, object]:
    """Every name under root, recursively: "dir" or ("file", st_size, content)."""
    tree: dict[str, object] = {}

    def walk(path: Path, rel: str) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = rel + entry.name
            st_ = os.lstat(entry.path)
            if stat.S_ISDIR(st_.st_mode):
                tree[name] = "dir"
                walk(Path(entry.path), name + "/")
            elif stat.S_ISREG(st_.st_mode):
                if contents:
                    with open(entry.path, "rb") as f:
                        tree[name] = ("file", st_.st_size, f.read())
                else:
                    tree[name] = "file"
            else:
                tree[name] = ("other", stat.S_IFMT(st_.st_mode))

    walk(root, "")
    return tree


# --- the operations, each run the same way on both roots --------------------------------


def op_create(path: str, data: bytes, exclusive: bool) -> Callable[[Path], object]:
    def run(root: Path) -> object:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(root / path, flags, 0o644)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)
    return run


def op_write_at(path: str, offset: int, data: bytes) -> Callable[[Path], object]:
    def run(root: Path) -> object:
        fd = os.open(root / path, os.O_WRONLY)
        try:
            return os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
    return run


def op_append(path: str, data: bytes) -> Callable[[Path], object]:
    def run(root: Path) -> object:
        fd = os.open(root / path, os.O_WRONLY | os.O_APPEND)
        try:
            written = os.write(fd, data)
            return written, os.fstat(fd).st_size
        finally:
            os.close(fd)
    return run


def op_truncate(path: str, size: int) -> Callable[[Path], object]:
    def run(root: Path) -> object:
        os.truncate(root / path, size)
        return os.stat(root / path).st_size
    return run


def op_ftruncate_and_write(path: str, size: int, data: bytes) -> Callable[[Path], object]:
    """Truncate through an open descriptor, then write after it, then read it back."""
    def run(root: Path) -> object:
        fd = os.open(root / path, os.O_RDWR)
        try:
            os.ftruncate(fd, size)
            os.pwrite(fd, data, size)
            return read_fd(fd)
        finally:
            os.close(fd)
    return run


def op_second_fd(path: str, offset: int, data: bytes) -> Callable[[Path], object]:
    """While one descriptor is open for reading, open, write and close a second one;
    the first must then read the new content."""
    def run(root: Path) -> object:
        reader = os.open(root / path, os.O_RDONLY)
        try:
            before = read_fd(reader)
            writer = os.open(root / path, os.O_WRONLY)
            try:
                os.pwrite(writer, data, offset)
            finally:
                os.close(writer)
            return before, read_fd(reader)
        finally:
            os.close(reader)
    return run


def op_read(path: str) -> Callable[[Path], object]:
    def run(root: Path) -> object:
        with open(root / path, "rb") as f:
            return f.read()
    return run


def op_stat(path: str) -> Callable[[Path], object]:
    def run(root: Path) -> object:
        st_ = os.stat(root / path)
        return "dir" if stat.S_ISDIR(st_.st_mode) else ("file", st_.st_size)
    return run


def op_listdir(path: str) -> Callable[[Path], object]:
    return lambda root: sorted(os.listdir(root / path))


def op_rename(src: str, dst: str) -> Callable[[Path], object]:
    return lambda root: os.rename(root / src, root / dst)


def op_unlink(path: str) -> Callable[[Path], object]:
    return lambda root: os.unlink(root / path)


def op_mkdir(path: str) -> Callable[[Path], object]:
    return lambda root: os.mkdir(root / path)


def op_rmdir(path: str) -> Callable[[Path], object]:
    return lambda root: os.rmdir(root / path)


FD_MODES = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "a": os.O_WRONLY | os.O_APPEND}
MAX_FDS = 4


class FsModel(RuleBasedStateMachine):
    """Bound to a mount, its store and a model directory by `run_model`."""

    mount: Mount
    model_base: Path
    store: Store
    examples: itertools.count
    steps: list[int]  # one count per example, for the test's report
    outcomes: collections.Counter[str]  # "ok" or the errno name, for the test's report

    def __init__(self) -> None:
        super().__init__()
        self.name = f"ex{next(self.examples)}"
        self.real = self.mount.path / self.name
        self.model = self.model_base / self.name
        self.real.mkdir()
        self.model.mkdir()
        self.fds: list[tuple[int, int, str]] = []  # (fd on the mount, fd on disk, mode)
        self.steps.append(0)

    def both(self, fn: Callable[[Path], object]) -> Outcome:
        self.steps[-1] += 1
        expected = outcome(fn, self.model)
        actual = outcome(fn, self.real)
        assert actual == expected, f"mount: {actual!r}, local disk: {expected!r}"
        self.outcomes[actual[0] if actual[0] == "ok" else str(actual[1])] += 1
        return actual

    def both_fd(self, data: st.DataObject, fn: Callable[[int], object]) -> Outcome:
        """Run fn on one open descriptor: the mount's and the model's twin."""
        real_fd, model_fd, _ = data.draw(st.sampled_from(self.fds), label="fd")
        return self.both(lambda root: fn(real_fd if root == self.real else model_fd))

    # --- choosing paths: mostly names that exist or whose directory exists, so that
    # operations collide and succeed; sometimes any path, for ENOENT/ENOTDIR -------------

    def _model_tree(self) -> tuple[list[str], list[str]]:
        files, dirs = [], []
        for rel, kind in snapshot(self.model, contents=False).items():
            (dirs if kind == "dir" else files).append(rel)
        return files, dirs

    def draw_path(self, data: st.DataObject, prefer: str = "any") -> str:
        """Half the time an existing name of the preferred kind, else mostly a name in an
        existing directory (new or not), sometimes any path at all."""
        files, dirs = self._model_tree()
        under_dirs = [f"{d}/{x}" if d else x for d in ["", *dirs] for x in LETTERS]
        preferred = {"file": files, "dir": dirs, "any": files + dirs, "new": []}[prefer]
        pools = [under_dirs, under_dirs, ALL_PATHS]
        if preferred:
            pools = [preferred] * 3 + pools
        return data.draw(st.one_of([st.sampled_from(p) for p in pools]), label=prefer)

    # --- rules on paths ---------------------------------------------------------------

    @initialize(data=st.data(), n_dirs=st.integers(0, 4),
                files=st.lists(payloads, max_size=5))
    def start_tree(self, data: st.DataObject, n_dirs: int, files: list[bytes]) -> None:
        """A few directories and files to begin with."""
        for _ in range(n_dirs):
            self.both(op_mkdir(self.draw_path(data, "new")))
        for payload in files:
            self.both(op_create(self.draw_path(data, "new"), payload, False))

    @rule(data=st.data(), payload=payloads, exclusive=st.booleans())
    def create_file(self, data: st.DataObject, payload: bytes, exclusive: bool) -> None:
        self.both(op_create(self.draw_path(data), payload, exclusive))

    @rule(data=st.data(), offset=offsets, payload=payloads)
    def write_at(self, data: st.DataObject, offset: int, payload: bytes) -> None:
        self.both(op_write_at(self.draw_path(data, "file"), offset, payload))

    @rule(data=st.data(), payload=payloads)
    def append(self, data: st.DataObject, payload: bytes) -> None:
        self.both(op_append(self.draw_path(data, "file"), payload))

    @rule(data=st.data(), size=offsets)
    def truncate(self, data: st.DataObject, size: int) -> None:
        self.both(op_truncate(self.draw_path(data, "file"), size))

    @rule(data=st.data(), size=offsets, payload=st.binary(max_size=100))
    def ftruncate_and_write(self, data: st.DataObject, size: int, payload: bytes) -> None:
        self.both(op_ftruncate_and_write(self.draw_path(data, "file"), size, payload))

    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        src = self.draw_path(data)
        dst = self.draw_path(data, data.draw(st.sampled_from(["any", "dir"]), label="onto"))
        self.both(op_rename(src, dst))

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        self.both(op_unlink(self.draw_path(data, "file")))

    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        self.both(op_mkdir(self.draw_path(data, "dir")))

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        self.both(op_rmdir(self.draw_path(data, "dir")))

    @rule(data=st.data())
    def read_file(self, data: st.DataObject) -> None:
        self.both(op_read(self.draw_path(data, "file")))

    @rule(data=st.data(), offset=offsets, payload=payloads)
    def write_through_second_fd(self, data: st.DataObject, offset: int,
                                payload: bytes) -> None:
        self.both(op_second_fd(self.draw_path(data, "file"), offset, payload))

    @rule(data=st.data())
    def stat_size(self, data: st.DataObject) -> None:
        self.both(op_stat(self.draw_path(data)))

    @rule(data=st.data())
    def listdir(self, data: st.DataObject) -> None:
        self.both(op_listdir(data.draw(st.just("") | st.sampled_from(self._model_tree()[1]
                                                                       or [""]))))

    # --- rules on descriptors kept open across steps: unlink, rename, truncate and
    # overwrite files that are open; write after the name is gone ----------------------

    @precondition(lambda self: len(self.fds) < MAX_FDS)
    @rule(data=st.data(), mode=st.sampled_from(sorted(FD_MODES)))
    def open_fd(self, data: st.DataObject, mode: str) -> None:
        path = self.draw_path(data, "file")
        opened: dict[Path, int] = {}

        def _open(root: Path) -> object:
            opened[root] = os.open(root / path, FD_MODES[mode])
            return None
        try:
            self.both(_open)
        except AssertionError:  # one side opened, the other did not
            for fd in opened.values():
                os.close(fd)
            raise
        if opened:
            self.fds.append((opened[self.real], opened[self.model], mode))

    @precondition(lambda self: self.fds)
    @rule(data=st.data(), offset=offsets, payload=payloads)
    def fd_write(self, data: st.DataObject, offset: int, payload: bytes) -> None:
        self.both_fd(data, lambda fd: os.pwrite(fd, payload, offset))

    @precondition(lambda self: self.fds)
    @rule(data=st.data(), payload=payloads)
    def fd_write_sequential(self, data: st.DataObject, payload: bytes) -> None:
        """write(2) at the descriptor's position (the end, for O_APPEND)."""
        self.both_fd(data, lambda fd: (os.write(fd, payload), os.lseek(fd, 0, os.SEEK_CUR)))

    @precondition(lambda self: self.fds)
    @rule(data=st.data())
    def fd_read(self, data: st.DataObject) -> None:
        self.both_fd(data, read_fd)

    @precondition(lambda self: self.fds)
    @rule(data=st.data(), size=offsets)
    def fd_truncate(self, data: st.DataObject, size: int) -> None:
        self.both_fd(data, lambda fd: os.ftruncate(fd, size))

    @precondition(lambda self: self.fds)
    @rule(data=st.data())
    def fd_stat(self, data: st.DataObject) -> None:
        def _fstat(fd: int) -> object:
            st_ = os.fstat(fd)
            return "dir" if stat.S_ISDIR(st_.st_mode) else ("file", st_.st_size)
        self.both_fd(data, _fstat)

    @precondition(lambda self: self.fds)
    @rule(data=st.data())
    def fd_fsync(self, data: st.DataObject) -> None:
        self.both_fd(data, os.fsync)

    @precondition(lambda self: self.fds)
    @rule(data=st.data())
    def fd_close(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.fds) - 1), label="fd index")
        real_fd, model_fd, _ = self.fds.pop(i)
        self.both(lambda root: os.close(real_fd if root == self.real else model_fd))

    # --- checks -----------------------------------------------------------------------

    @invariant()
    def trees_match(self) -> None:
        assert self.mount.proc is not None and self.mount.proc.poll() is None, \
            f"the daemon exited:\n{self.mount.log()}"
        # (another test session's cleanup may unmount it: then the test would go on, on
        # the empty directory beneath, and fail with misleading differences)
        assert mounted_fuse(str(self.mount.path)) == "fuse.stormount", "the mount is gone"
        assert snapshot(self.real) == snapshot(self.model)

    def teardown(self) -> None:
        """Close what is open and flush, then the store must hold the model's tree as
        plain objects: a marker per directory, the bytes of every file (a listing of
        the store may lag a little: wait a little)."""
        errors = []
        for real_fd, model_fd, _ in self.fds:
            os.close(model_fd)
            try:
                os.close(real_fd)
            except OSError as e:  # close reports a failed upload: that is a failure
                errors.append(e)
        self.fds = []
        assert not errors, f"close on the mount failed: {errors}"
        expected: dict[str, bytes | None] = {f"{self.name}/": None}
        for rel, entry in snapshot(self.model).items():
            if entry == "dir":
                expected[f"{self.name}/{rel}/"] = None
            else:
                assert isinstance(entry, tuple)
                expected[f"{self.name}/{rel}"] = entry[2]

        def stored() -> dict[str, bytes | None]:
            return {key: None if key.endswith("/") else self.store.get(key)
                    for key in self.store.keys(f"{self.name}/")}
        # every descriptor is closed: nothing may still wait for a writer's last close
        queue = self.mount.ask("queue")["uploads"]
        assert not [u["path"] for u in queue if u["state"] == "open"], queue
        # upload now what waits for its debounce (a file rewritten again and again waits
        # longer each time): the store must then hold the model's tree
        flushed = self.mount.ctl("flush", self.name)
        assert flushed.returncode == 0, flushed.stderr
        deadline = time.monotonic() + STORE_SETTLE_S
        while (actual := stored()) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert actual == expected


# how long the store may take to catch up with the mount at the end of an example
STORE_SETTLE_S = 10.0
# STORMOUNT_MODEL_SCALE=20 runs 20 times as many examples: a longer bug hunt
SCALE = float(os.environ.get("STORMOUNT_MODEL_SCALE", "1"))
# every lookup, stat and listing goes through the daemon to the store
NO_CACHES = ("-o", "metadata_ttl=0,listing_ttl=0,negative_ttl=0,entry_timeout=0,attr_timeout=0")


def run_model(mount: Mount, store: Store, model_base: Path, max_examples: int,
              steps: int) -> None:
    model_base.mkdir()
    machine = type("FsModelRun", (FsModel,), {
        "mount": mount, "model_base": model_base, "store": store,
        "examples": itertools.count(), "steps": [], "outcomes": collections.Counter()})
    started = time.monotonic()
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=max(1, int(max_examples * SCALE)),
                          stateful_step_count=steps, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow]))
    print(f"model test on {store.kind}: {len(machine.steps)} examples, "
          f"{sum(machine.steps)} operations in {time.monotonic() - started:.1f} s; "
          f"outcomes {dict(machine.outcomes)}")


@pytest.mark.parametrize(("options", "examples", "steps"),
                         [((), 40, 30), (NO_CACHES, 20, 25)], ids=["cached", "uncached"])
def test_model_local_directory_tier(make_mount, tmp_path, options, examples, steps):
    """Against file://TMP/store; "uncached" turns the kernel's and the daemon's caches
    off, so that every lookup, stat and listing goes to the store."""
    store = FileStore(tmp_path / "store")  # the tier, and a view of its objects
    mount = make_mount(store.url, args=options)
    run_model(mount, store, tmp_path / "model", max_examples=examples, steps=steps)


def test_model_s3_tier(make_mount, s3_store, tmp_path):
    """Against a bucket of the moto server, with the default caches (each S3 request
    costs ~10 ms, so the uncached run is left to the local tier)."""
    mount = make_mount(s3_store.url, env=s3_store.env)
    run_model(mount, s3_store, tmp_path / "model", max_examples=15, steps=20)
