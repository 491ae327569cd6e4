"""The write path (section `write`). Write-back splits every write in two waits: the one a
user sees (the command returns) and the one the store sees (the objects are listed in the
bucket). Each figure is measured on a fresh mount beside the same work done on a local
disk or directly with boto3, and on rclone's `--vfs-cache-mode full` as the peer.

"In the bucket" is decided from outside the mount, the same way for every contender: the
mount's upload queue is empty (stormount's journal, rclone's remote control) and then a
listing or HEAD shows every object at its full size. The time ends after that check, so
every "in the bucket" figure, the direct reference's too, includes one such check."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import sysconfig
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from infra import BUCKET, Mount, Proxy, log, pending_uploads
from report import Goal, Row, fmt, ratio_goal
from workloads import Bench, MiB, Params, guarded, probe, timed

RENAME_SIZE = 100 * MiB
SMALL_FILE = MiB  # the tar tree takes no directory holding a file larger than this
POLL = 0.05  # seconds between two looks at a queue or the bucket
PATCH_SIZE, PATCH_AT, PATCH_LEN = 64 * MiB, 30 * MiB, 4096  # the 4 KiB change
PAUSE_S = 6.0  # how long the server is stopped in the middle of an upload


@dataclass
class Archive:
    path: Path
    sizes: dict[str, int]  # regular file (relative name) -> size
    dirs: list[str]  # the site-packages directories it was made of

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


# -- helpers ------------------------------------------------------------------------------

def scratch(b: Bench) -> Path:
    d = b.session.workdir / "write"
    d.mkdir(exist_ok=True)
    return d


def mount_of(b: Bench, kind: str, name: str, extra: tuple[str, ...] = (),
             port: int | None = None) -> AbstractContextManager[Mount]:
    """A fresh write mount of `kind` through `port` (default: straight to the server)."""
    port = b.port if port is None else port
    if kind == "stormount":
        return b.session.stormount(port, name, extra=extra)
    return b.session.rclone(port, name, rc=True)  # rc: its upload queue is visible


def kinds(b: Bench) -> list[str]:
    return ["stormount"] + (["rclone"] if b.has_rclone else [])


def listed(client: Any, prefix: str) -> dict[str, int]:
    """Key -> size of every object under `prefix`."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def has_all(client: Any, prefix: str, sizes: dict[str, int]) -> bool:
    got = listed(client, prefix)
    return all(got.get(prefix + name) == size for name, size in sizes.items())


def object_size(client: Any, key: str) -> int | None:
    try:
        return int(client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
    except ClientError:  # 404: not (yet) there
        return None


def wait_for(cond: Callable[[], bool], limit: float, what: str) -> None:
    """Poll `cond` until it holds; RuntimeError after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not so after {limit:.0f} s")
        time.sleep(POLL)


def stored(m: Mount, check: Callable[[], bool]) -> Callable[[], bool]:
    """The mount's queue is empty and `check` (a look at the bucket) holds. The cheap
    queue comes first, so the bucket is only listed once uploads look done; the check
    still matters, since a file closed just before the command returned may not be
    queued yet (FUSE's release is asynchronous)."""
    return lambda: pending_uploads(m) == 0 and check()


def guarded_all(rows: list[Row], who: str, fn: Callable[[], None]) -> None:
    """guarded() for a step that fills several rows (e.g. a mount): its failure is
    noted on each of them."""
    scratch_row = Row(rows[0].key, "", "")
    guarded(scratch_row, who, fn)
    for row in rows:
        row.notes.extend(scratch_row.notes)


def run_then_stored(kind: str, m: Mount, t0: float, limit: float, first: Row,
                    run: Callable[[], float], store: Row, check: Callable[[], bool],
                    what: str) -> None:
    """`first` gets what `run` measures; then, if it finished, `store` gets the seconds
    from `t0` until the mount's queue is empty and `check` sees the bucket complete."""
    guarded(first, kind, lambda: first.set(kind, run()))
    if first.get(kind) is None:
        store.note(f"{kind}: not measured, {what} did not finish")
        return

    def until_stored() -> None:
        wait_for(stored(m, check), limit, f"what {what} wrote, in the bucket")
        store.set(kind, time.perf_counter() - t0)

    guarded(store, kind, until_stored)


def random_file(path: Path, size: int) -> None:
    """Incompressible bytes, left in the page cache (dd then reads its source from RAM)."""
    with open(path, "wb") as f:
        for _ in range(0, size, 8 * MiB):
            f.write(random.randbytes(min(8 * MiB, size - f.tell())))


def delete_prefix(client: Any, prefix: str) -> None:
    """Delete what a figure stored (moto keeps objects in memory)."""
    keys = list(listed(client, prefix))
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={
            "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})


def sha256_of_object(client: Any, key: str) -> str:
    h = hashlib.sha256()
    for chunk in client.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(MiB):
        h.update(chunk)
    return h.hexdigest()


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def ranged(client: Any, key: str, off: int, length: int) -> bytes:
    r = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{off + length - 1}")
    return bytes(r["Body"].read())


def multipart() -> TransferConfig:
    return TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                          max_concurrency=10)


# -- tar x of ~2,000 small files ----------------------------------------------------------

def tree_dirs(site: Path, target: int) -> Iterator[tuple[str, int]]:
    """Top-level directories of `site` in name order, with their file counts, until about
    `target` files: a real tree of mostly small files (sources, stubs, package metadata)
    that every machine running the benchmark has. A directory holding a file over
    SMALL_FILE, a symlink or a hard link is passed over (small regular files only), and
    so is one that would overshoot the target by more than 10%."""
    n = 0
    for d in sorted(site.iterdir()):
        if not d.is_dir() or d.name.startswith("_") or d.is_symlink():
            continue
        count, ok = 0, True
        for root, dirs, files in os.walk(d):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            for f in files:
                st = (Path(root) / f).lstat()
                ok = ok and stat.S_ISREG(st.st_mode) and st.st_nlink == 1 \
                    and st.st_size <= SMALL_FILE
                count += 1
        if ok and count and n + count <= target * 1.1:
            n += count
            yield d.name, count
            if n >= target:
                return


def build_archive(b: Bench) -> Archive:
    """`tar cf` of part of this venv's site-packages, without __pycache__ (a source tree,
    as an sdist is). Built at bench time, so nothing is shipped or downloaded."""
    site = Path(sysconfig.get_paths()["purelib"])
    dirs = [name for name, _ in tree_dirs(site, b.params.tar_files)]
    path = scratch(b) / "tree.tar"
    timed(["tar", "cf", str(path), "--exclude=__pycache__", "-C", str(site), *dirs], 300)
    with tarfile.open(path) as tf:
        sizes = {m.name: m.size for m in tf.getmembers() if m.isfile()}
    return Archive(path, sizes, dirs)


def tar_x(arch: Archive, dest: Path) -> list[str]:
    # --no-same-owner: as root tar would chown every file, which is not what is measured
    return ["tar", "xf", str(arch.path), "--no-same-owner", "-C", str(dest)]


def untar(b: Bench, arch: Archive) -> None:
    ret, store, store20 = b.rows["untar_return"], b.rows["untar_store"], b.rows["untar_store_20"]
    to, limit = b.params.op_timeout, b.params.upload_deadline
    bodies = {}
    with tarfile.open(arch.path) as tf:
        for name in arch.sizes:
            f = tf.extractfile(name)
            assert f is not None
            bodies[name] = f.read()

    def local() -> None:
        dest = scratch(b) / "untar-local"
        dest.mkdir()
        ret.reference = timed(tar_x(arch, dest), to)

    def direct(client: Any, row: Row, prefix: str) -> None:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=BUCKET, Key=prefix + kv[0],
                                                       Body=kv[1]), bodies.items()))
        if not has_all(b.s3, prefix, arch.sizes):
            raise RuntimeError("the bucket does not list every file after the uploads")
        row.reference = time.perf_counter() - t0

    def mounted(kind: str) -> None:
        prefix = f"untar-{kind}/"
        with mount_of(b, kind, f"{kind}-untar") as m:
            timed(["mkdir", str(m.path / prefix)], to)
            t0 = time.perf_counter()
            run_then_stored(kind, m, t0, limit,
                            ret, lambda: timed(tar_x(arch, m.path / prefix), to),
                            store, lambda: has_all(b.s3, prefix, arch.sizes), "tar")

    def mounted20(kind: str, proxy: int) -> None:
        prefix = f"untar20-{kind}/"
        with mount_of(b, kind, f"{kind}-untar20", port=proxy) as m:
            timed(["mkdir", str(m.path / prefix)], to)
            t0 = time.perf_counter()
            returned = timed(tar_x(arch, m.path / prefix), to)
            wait_for(stored(m, lambda: has_all(b.s3, prefix, arch.sizes)), limit,
                     "what tar wrote, in the bucket")
            store20.set(kind, time.perf_counter() - t0)
        store20.note(f"{kind}: tar returned after {returned:.2f} s")

    log(f"tar x of {len(arch.sizes)} files: local, direct uploads")
    guarded(ret, "local", local)
    guarded(store, "direct", partial(direct, b.s3, store, "untar-direct/"))
    for kind in kinds(b):
        log(f"tar x of {len(arch.sizes)} files, {kind}")
        guarded_all([ret, store], kind, partial(mounted, kind))
    if b.proxy20 is None or b.s3_20 is None:
        store20.note("skipped: ../shared/bench/latproxy.py not found")
    else:
        log(f"tar x of {len(arch.sizes)} files at 20 ms: direct uploads, stormount")
        guarded(store20, "direct", partial(direct, b.s3_20, store20, "untar20-direct/"))
        guarded(store20, "stormount", partial(mounted20, "stormount", b.proxy20))
    bodies.clear()
    if ret.peer_ratio("rclone") is not None:
        ret.note(f"stormount / rclone = {ret.peer_ratio('rclone'):.2f}")
    elif ret.stormount is not None:
        ret.note("rclone not measured: the goal is not judged; Ratio is against local")


# -- dd of a large file -------------------------------------------------------------------

def dd(src: Path, dst: Path, size: int) -> list[str]:
    return ["dd", f"if={src}", f"of={dst}", "bs=1M", f"count={size // MiB}", "conv=fsync",
            "status=none"]


def big_file(b: Bench) -> None:
    rate, store, up = b.rows["dd_rate"], b.rows["dd_store"], b.rows["dd_fsync_upload"]
    store20 = b.rows["dd_store_20"]
    size, to, limit = b.params.write_size, b.params.op_timeout, b.params.upload_deadline
    src = scratch(b) / "dd-source.bin"
    random_file(src, size)

    def local() -> None:
        dst = scratch(b) / "dd-local.bin"
        rate.reference = size / MiB / timed(dd(src, dst, size), to)
        dst.unlink()

    def direct(client: Any, rows: list[Row], key: str) -> None:
        t0 = time.perf_counter()
        client.upload_file(str(src), BUCKET, key, Config=multipart())
        if object_size(b.s3, key) != size:
            raise RuntimeError("the object is not in the bucket after upload_file")
        for row in rows:
            row.reference = time.perf_counter() - t0
        b.s3.delete_object(Bucket=BUCKET, Key=key)

    def mounted(kind: str) -> None:
        key = f"dd-{kind}.bin"
        with mount_of(b, kind, f"{kind}-dd") as m:
            t0 = time.perf_counter()
            run_then_stored(kind, m, t0, limit,
                            rate, lambda: size / MiB / timed(dd(src, m.path / key, size), to),
                            store, lambda: object_size(b.s3, key) == size, "dd")
        if m.peak_rss_mib is not None:
            rate.note(f"{kind} peak RSS {m.peak_rss_mib:.0f} MiB")
        b.s3.delete_object(Bucket=BUCKET, Key=key)

    def mounted20(kind: str, proxy: int) -> None:
        key = f"dd20-{kind}.bin"
        with mount_of(b, kind, f"{kind}-dd20", port=proxy) as m:
            t0 = time.perf_counter()
            returned = timed(dd(src, m.path / key, size), to)
            wait_for(stored(m, lambda: object_size(b.s3, key) == size), limit,
                     "what dd wrote, in the bucket")
            store20.set(kind, time.perf_counter() - t0)
        store20.note(f"{kind}: dd returned after {returned:.2f} s")
        b.s3.delete_object(Bucket=BUCKET, Key=key)

    def fsync_upload() -> None:
        key = "dd-fsync-upload.bin"
        with mount_of(b, "stormount", "stormount-dd-upload", ("-o", "fsync=upload")) as m:
            up.stormount = timed(dd(src, m.path / key, size), to)
            there = object_size(b.s3, key) == size  # what fsync=upload promises
        up.note(f"{size / MiB / up.stormount:.0f} MiB/s; the object was "
                f"{'' if there else 'NOT '}in the bucket when dd returned")
        up.ok = there
        b.s3.delete_object(Bucket=BUCKET, Key=key)

    log(f"dd {size // MiB} MiB: local, direct upload")
    guarded(rate, "local", local)
    guarded(store, "direct", partial(direct, b.s3, [store, up], "dd-direct.bin"))
    for kind in kinds(b):
        log(f"dd {size // MiB} MiB, {kind}")
        guarded_all([rate, store], kind, partial(mounted, kind))
    log(f"dd {size // MiB} MiB, stormount -o fsync=upload")
    guarded(up, "stormount", fsync_upload)
    if b.proxy20 is None or b.s3_20 is None:
        store20.note("skipped: ../shared/bench/latproxy.py not found")
    else:
        log(f"dd {size // MiB} MiB at 20 ms: direct upload, stormount")
        guarded(store20, "direct", partial(direct, b.s3_20, [store20], "dd20-direct.bin"))
        guarded(store20, "stormount", partial(mounted20, "stormount", b.proxy20))
    src.unlink()


# -- rename of an object already in the bucket --------------------------------------------

def rename(b: Bench) -> None:
    row, row20 = b.rows["rename"], b.rows["rename_20"]
    to, limit = b.params.op_timeout, b.params.upload_deadline
    src = scratch(b) / "rename-source.bin"
    random_file(src, RENAME_SIZE)

    def put(prefix: str) -> None:
        b.s3.upload_file(str(src), BUCKET, prefix + "old.bin", Config=multipart())

    def renamed(prefix: str) -> bool:
        got = listed(b.s3, prefix)
        return got.get(prefix + "new.bin") == RENAME_SIZE and prefix + "old.bin" not in got

    def direct(client: Any, row: Row, prefix: str) -> None:
        put(prefix)
        t0 = time.perf_counter()
        client.copy_object(Bucket=BUCKET, Key=prefix + "new.bin",
                           CopySource={"Bucket": BUCKET, "Key": prefix + "old.bin"})
        client.delete_object(Bucket=BUCKET, Key=prefix + "old.bin")
        if not renamed(prefix):
            raise RuntimeError("the listing does not show the copy")
        row.reference = time.perf_counter() - t0
        delete_prefix(b.s3, prefix)

    def mounted(kind: str, row: Row, port: int, prefix: str) -> None:
        put(prefix)  # uploaded before the mount: the mount only knows it from the store
        with mount_of(b, kind, f"{kind}-{prefix.rstrip('/')}", port=port) as m:
            d = m.path / prefix
            t0 = time.perf_counter()
            returned = timed(["mv", str(d / "old.bin"), str(d / "new.bin")], to)
            wait_for(lambda: renamed(prefix), limit, "the new name alone in the bucket")
            row.set(kind, time.perf_counter() - t0)
        row.note(f"{kind}: mv returned after {returned:.3f} s")
        delete_prefix(b.s3, prefix)

    log("rename of a 100 MiB object: direct")
    guarded(row, "copy+delete", partial(direct, b.s3, row, "mv-direct/"))
    for kind in kinds(b):
        log(f"rename of a 100 MiB object, {kind}")
        guarded(row, kind, partial(mounted, kind, row, b.port, f"mv-{kind}/"))
    if b.proxy20 is None or b.s3_20 is None:
        row20.note("skipped: ../shared/bench/latproxy.py not found")
    else:
        log("rename of a 100 MiB object at 20 ms: direct, stormount")
        guarded(row20, "copy+delete", partial(direct, b.s3_20, row20, "mv20-direct/"))
        guarded(row20, "stormount",
                partial(mounted, "stormount", row20, b.proxy20, "mv20-stormount/"))
    src.unlink()


# -- bytes on the wire: a 4 KiB change, random writes, an upload across a pause ---------
# Each figure has a 0 ms latproxy of its own between the mount and the server, and counts
# what it forwards from just before the figure's first write until the object is stored:
# the mount's start (and its first listing) is not counted, and the checks of the bucket
# go straight to the server, so they are not counted either.

@dataclass
class Plan:
    """Open/pwrite/close cycles on files stored before the mount (probe.py writes)."""
    sizes: dict[str, int]  # file name -> size (unchanged by the writes)
    seed: int
    cycles: list[tuple[str, list[tuple[int, int]]]]  # (name, [(offset, length), ...])

    @property
    def written(self) -> int:
        return sum(n for _, ops in self.cycles for _, n in ops)

    def last_writes(self) -> dict[str, tuple[int, int]]:
        """Each file's last write: once the store shows it, the file's last close is
        stored (its content is then checked whole, after the clock stops)."""
        return {name: ops[-1] for name, ops in self.cycles if ops}

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps({"seed": self.seed, "cycles": self.cycles}))
        return path


def random_plan(sizes: dict[str, int], total: int, seed: int) -> Plan:
    """Cycles of 16 to 64 writes of 4 to 64 KiB at random (unaligned) offsets of a file:
    each file once, then files chosen in proportion to their size, until `total` bytes."""
    rng = random.Random(seed)
    names = list(sizes)
    cycles: list[tuple[str, list[tuple[int, int]]]] = []
    n = 0
    while n < total:
        name = names[len(cycles)] if len(cycles) < len(names) else \
            rng.choices(names, weights=[sizes[x] for x in names])[0]
        ops = []
        for _ in range(rng.randint(16, 64)):
            length = rng.randint(4 * 1024, 64 * 1024)
            ops.append((rng.randrange(sizes[name] - length + 1), length))
            n += length
        cycles.append((name, ops))
    return Plan(sizes, seed + 1, cycles)


@dataclass
class Wire:
    """What one figure sent through its proxy."""
    up: int
    down: int
    conns: int
    seconds: float


def counting(b: Bench, name: str) -> Proxy:
    proxy = b.session.counting_proxy(b.port, 0, name)
    if proxy is None:
        raise RuntimeError("../shared/bench/latproxy.py not found: no byte counts")
    return proxy


def wire_note(row: Row, kind: str, w: Wire) -> None:
    row.note(f"{kind}: {fmt(w.up / MiB, 'MiB')} sent, {fmt(w.down / MiB, 'MiB')} received, "
             f"{w.conns} new connection(s), stored after {w.seconds:.1f} s")


def plan_figure(b: Bench, row: Row, kind: str, tag: str, plan: Plan, files: PlanFiles
                ) -> None:
    """Store the plan's files (the originals) with boto3, mount through a counting proxy,
    run the plan on the mount and count the bytes each way until the queue is empty and
    every file's last write is in the bucket; then check every object against the
    expected content (SHA-256), straight from the server."""
    to, limit = b.params.op_timeout, b.params.upload_deadline
    prefix = f"{tag}-{kind}/"
    for name in plan.sizes:
        b.s3.upload_file(str(files.originals / name), BUCKET, prefix + name,
                         Config=multipart())
    last = plan.last_writes()
    want = {}
    for name, (off, n) in last.items():
        with open(files.expected / name, "rb") as f:
            f.seek(off)
            want[name] = f.read(n)

    def there() -> bool:
        return all(ranged(b.s3, prefix + name, off, n) == want[name]
                   for name, (off, n) in last.items())

    planfile = plan.save(scratch(b) / f"{tag}-plan.json")
    proxy_name = f"{tag}-{kind}-proxy"
    proxy = counting(b, proxy_name)
    try:
        with mount_of(b, kind, f"{kind}-{tag}", port=proxy.port) as m:
            before = proxy.counts()
            t0 = time.perf_counter()
            probe("writes", m.path / prefix, planfile, timeout=to)
            wait_for(stored(m, there), limit, "the last writes, in the bucket")
            dt = time.perf_counter() - t0
            after = proxy.counts()
    finally:
        b.session.stop(proxy_name)
    w = Wire(after["up"] - before["up"], after["down"] - before["down"],
             after["conns"] - before["conns"], dt)
    row.set(kind, w.up / MiB)
    wire_note(row, kind, w)
    wrong = [name for name in plan.sizes
             if sha256_of_object(b.s3, prefix + name) != files.sha256[name]]
    if wrong:
        text = f"{kind}: stored content differs from the writes in {', '.join(wrong)}"
        row.fail(text) if kind == "stormount" else row.note(text)
    delete_prefix(b.s3, prefix)


@dataclass
class PlanFiles:
    originals: Path  # the files as stored before the mount
    expected: Path  # the same after the plan ran on them
    sha256: dict[str, str]  # name -> SHA-256 of the expected content


def prepare_plan(b: Bench, tag: str, plan: Plan) -> PlanFiles:
    """The plan's files (random bytes) and what they must become: the same probe run on
    a local copy."""
    files = PlanFiles(scratch(b) / f"{tag}-originals", scratch(b) / f"{tag}-expected", {})
    files.originals.mkdir()
    for name, size in plan.sizes.items():
        random_file(files.originals / name, size)
    shutil.copytree(files.originals, files.expected)
    probe("writes", files.expected, plan.save(scratch(b) / f"{tag}-plan.json"),
          timeout=b.params.op_timeout)
    files.sha256 = {name: sha256_of_file(files.expected / name) for name in plan.sizes}
    return files


def plan_rows(b: Bench, row: Row, tag: str, plan: Plan, what: str) -> None:
    files: list[PlanFiles] = []
    guarded(row, "preparing the files", lambda: files.append(prepare_plan(b, tag, plan)))
    for f in files:
        for kind in kinds(b):
            log(f"{what}, {kind}")
            guarded(row, kind, partial(plan_figure, b, row, kind, tag, plan, f))
    for d in (f"{tag}-originals", f"{tag}-expected"):
        shutil.rmtree(scratch(b) / d, ignore_errors=True)


def patch(b: Bench) -> None:
    """open O_RDWR, pwrite 4 KiB at 30 MiB, close, on a 64 MiB stored object."""
    row = b.rows["patch_bytes"]
    plan = Plan({"obj.bin": PATCH_SIZE}, 18, [("obj.bin", [(PATCH_AT, PATCH_LEN)])])
    row.reference = PATCH_SIZE / MiB
    plan_rows(b, row, "patch", plan, "4 KiB change in a 64 MiB object")


def random_writes(b: Bench) -> None:
    row = b.rows["randwrite_bytes"]
    p = b.params
    sizes = {f"f{i}.bin": size for i, size in enumerate(p.randwrite_sizes)}
    plan = random_plan(sizes, p.randwrite_total, 18)
    row.reference = plan.written / MiB
    row.note(f"{len(plan.cycles)} open/write/close cycles, "
             f"{sum(len(ops) for _, ops in plan.cycles):,} writes, back to back, to "
             f"{len(sizes)} files of {', '.join(str(n // MiB) for n in sizes.values())} MiB")
    plan_rows(b, row, "randwrite", plan, "random writes")


def paused_upload(b: Bench) -> None:
    """dd of `pause_size` through a counting proxy; once the proxy has sent half of it
    up, the S3 server is stopped (SIGSTOP) for PAUSE_S seconds, then continued."""
    row = b.rows["pause_bytes"]
    size, to, limit = b.params.pause_size, b.params.op_timeout, b.params.upload_deadline
    server = b.session.procs["s3server"]
    src = scratch(b) / "pause-source.bin"
    key = "pause-stormount.bin"
    row.reference = size / MiB

    def cont() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGCONT)

    def measure() -> None:
        random_file(src, size)
        want = sha256_of_file(src)
        proxy = counting(b, "pause-proxy")
        stop = threading.Event()
        paused: dict[str, float] = {}

        def monitor(base: int, t0: float) -> None:
            try:
                while not stop.is_set():
                    if proxy.counts()["up"] - base >= size // 2:
                        paused["at"] = time.perf_counter() - t0
                        os.kill(server.pid, signal.SIGSTOP)
                        try:
                            stop.wait(PAUSE_S)
                        finally:
                            cont()
                            paused["for"] = time.perf_counter() - t0 - paused["at"]
                        return
                    time.sleep(POLL)
            except Exception as e:  # the main thread's wait gives up in time
                log(f"pause monitor: {e!r}")

        try:
            with mount_of(b, "stormount", "stormount-pause", port=proxy.port) as m:
                before = proxy.counts()
                t0 = time.perf_counter()
                watcher = threading.Thread(target=monitor, args=(before["up"], t0))
                watcher.start()
                try:
                    returned = timed(dd(src, m.path / key, size), to)
                    wait_for(stored(m, lambda: object_size(b.s3, key) == size), limit,
                             "the object, in the bucket")
                    dt = time.perf_counter() - t0
                finally:
                    stop.set()
                    watcher.join()
                    cont()  # whatever happened above
                after = proxy.counts()
        finally:
            b.session.stop("pause-proxy")
        if "for" not in paused:
            raise RuntimeError("the upload never reached half its size at the proxy: no "
                               "pause")
        w = Wire(after["up"] - before["up"], after["down"] - before["down"],
                 after["conns"] - before["conns"], dt)
        row.stormount = w.up / MiB
        wire_note(row, "stormount", w)
        row.note(f"dd returned after {returned:.1f} s; server stopped {paused['at']:.1f} s "
                 f"after dd started, for {paused['for']:.1f} s")
        if sha256_of_object(b.s3, key) != want:
            row.fail("the stored object differs from what dd wrote")

    log(f"upload of {size // MiB} MiB with the server paused {PAUSE_S:g} s, stormount")
    try:
        guarded(row, "stormount", measure)
    finally:
        cont()
        src.unlink(missing_ok=True)
        guarded(row, "cleanup", lambda: delete_prefix(b.s3, key))


# -- the section --------------------------------------------------------------------------

def writes(b: Bench) -> None:
    t0 = time.perf_counter()
    tar_rows = [b.rows["untar_return"], b.rows["untar_store"]]
    arch: list[Archive] = []
    guarded_all(tar_rows, "building the archive", lambda: arch.append(build_archive(b)))
    if arch:
        a = arch[0]
        tar_rows[0].note(f"{len(a.sizes):,} files, {a.bytes / MiB:.1f} MiB (mean "
                         f"{a.bytes / len(a.sizes) / 1024:.0f} KiB): {len(a.dirs)} "
                         f"directories of this venv's site-packages, {a.dirs[0]} to "
                         f"{a.dirs[-1]}, without __pycache__")
        untar(b, a)
    big_file(b)
    rename(b)
    patch(b)
    random_writes(b)
    paused_upload(b)
    log(f"write section took {time.perf_counter() - t0:.0f} s")


def make_rows(p: Params) -> dict[str, Row]:
    dd_size = f"{p.write_size // MiB} MiB"
    tar = f"`tar x` of ~{p.tar_files:,} small files"
    rw = f"{p.randwrite_total // MiB} MiB"
    pause = f"{p.pause_size // MiB} MiB"
    rows = [
        Row("untar_return", f"{tar}: until tar returns", "s", "same untar, local directory",
            ratio_goal("<=", 0.5, "rclone full", "rclone 4.1 s, s3fs 44.7 s", kind="peer")),
        Row("untar_store", f"{tar}: until every object is in the bucket, 0 ms RTT", "s",
            "boto3 put_object, 16 threads",
            ratio_goal("<=", 1.3, "direct", "direct 5.8 s, rclone full 13.9 s")),
        Row("untar_store_20", f"{tar}: until every object is in the bucket, 20 ms RTT",
            "s", "boto3 put_object, 16 threads, via the same proxy",
            ratio_goal("<=", 1.3, "direct")),
        Row("dd_rate", f"`dd` {dd_size} `conv=fsync`, default fsync", "MiB/s",
            "same dd to a local file",
            Goal("abs", ">=", 600, "≥ 600 MiB/s (rclone full 680, s3fs 64)")),
        Row("dd_store", f"`dd` {dd_size}: until the object is in the bucket, 0 ms RTT", "s",
            "boto3 upload_file, 8 MiB parts, 10 threads",
            ratio_goal("<=", 1.2, "direct", "direct 4.2 s, rclone 14.5 s, s3fs 8.0 s")),
        Row("dd_store_20", f"`dd` {dd_size}: until the object is in the bucket, 20 ms RTT",
            "s", "boto3 upload_file, 8 MiB parts, 10 threads, via the same proxy",
            ratio_goal("<=", 1.2, "direct")),
        Row("dd_fsync_upload", f"`dd` {dd_size} `conv=fsync` with `-o fsync=upload`", "s",
            "boto3 upload_file, as above"),
        Row("rename", "`mv` of a 100 MiB object: until the bucket shows only the new name, "
            "0 ms RTT", "s", "copy_object + delete_object",
            ratio_goal("<=", 1.2, "reference", "0.26 s")),
        Row("rename_20", "`mv` of a 100 MiB object: until the bucket shows only the new "
            "name, 20 ms RTT", "s", "copy_object + delete_object via the same proxy",
            ratio_goal("<=", 1.2, "reference")),
        Row("patch_bytes", "4 KiB change inside a 64 MiB stored object (O_RDWR, pwrite 4 KiB "
            "at 30 MiB, close): bytes sent upstream until it is stored", "MiB",
            "the object's size", Goal("abs", "<=", 16, "≤ 16 MiB sent")),
        Row("randwrite_bytes", f"Random writes of 4 to 64 KiB, {rw} in all, to stored files of "
            f"up to {max(p.randwrite_sizes) // MiB} MiB: bytes sent upstream until stored",
            "MiB", "bytes written", ratio_goal("<=", 4, "bytes written")),
        Row("pause_bytes", f"Upload of {pause} with the server stopped {PAUSE_S:g} s "
            "mid-upload: bytes sent upstream until stored", "MiB", "the object's size",
            ratio_goal("<=", 1.2, "object size")),
    ]
    return {r.key: r for r in rows}
