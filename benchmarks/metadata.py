"""The namespace figures (sections `ls`, `tree`, `rsync`): listing, walking, stat and
copying trees out of a mount, each at 0 ms and through the 20 ms latency proxy, beside
direct boto3 through the same port in the same run, with s3fs as the peer (and rclone on
rsync). Where stormount's output can be wrong, it is checked, and a wrong result fails
the row whatever its time (a peer's wrong result is noted).

The objects carry attributes as stormount (and s3fs) store them: x-amz-meta-mode is the
full st_mode in decimal, uid/gid decimal, mtime/ctime "SECONDS.NNNNNNNNN"; a symlink is an
object whose body is its target and whose mode has S_IFLNK; a directory marker "dir/"
carries the directory's."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import random
import shutil
import stat
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from infra import BUCKET, log
from report import Goal, Row, ratio_goal
from workloads import LS_COUNT, STAT_COUNT, TREE_SHAPE, Bench, Params, guarded, probe

LS_DIR = "ls5000"
RSYNC_DIR = "rsync"
OLD_S = 1_000_000_000  # 2001-09-09: mtimes no upload of this run could have given
LS_MODES = (0o600, 0o640, 0o644, 0o755, 0o700, 0o444)
# owners to store (root can give a local copy any of them; anyone else only their own)
IDS = ((0, 0), (1000, 1000), (1001, 100), (65534, 65534), (0, 1000)) if os.geteuid() == 0 \
    else ((os.getuid(), os.getgid()),)
LS_L = ["ls", "-ln", "--time-style=+%s.%N"]  # `ls -l` with numbers we can check
C_LOCALE = {**os.environ, "LC_ALL": "C"}
HEAD_THREADS = 32


@dataclass(frozen=True)
class Attrs:
    mode: int  # full st_mode
    uid: int
    gid: int
    mtime_ns: int

    def metadata(self) -> dict[str, str]:
        """As stormount writes it (ctime: the same old time, as a restore would give)."""
        s, ns = divmod(self.mtime_ns, 1_000_000_000)
        t = f"{s}.{ns:09d}"
        return {"mode": str(self.mode), "uid": str(self.uid), "gid": str(self.gid),
                "mtime": t, "ctime": t}


def ls_attrs(i: int) -> Attrs:
    """Entry i of ls5000/: modes and owners cycle with different periods, so every mix
    shows up; mtimes are old, with nanoseconds."""
    uid, gid = IDS[i % len(IDS)]
    return Attrs(stat.S_IFREG | LS_MODES[i % len(LS_MODES)], uid, gid,
                 (OLD_S + 37 * i) * 1_000_000_000 + (i * 7919 + 1) % 1_000_000_000)


def ls_name(i: int) -> str:
    return f"f{i:05d}"


def tree_keys() -> list[str]:
    a, b, c = TREE_SHAPE
    return [f"tree/d{i}/e{j}/f{k:02d}" for i in range(a) for j in range(b) for k in range(c)]


def stat_names() -> list[str]:
    """One file per directory: a mount that lists a directory once one of its names is
    looked up (and completes the rest) would otherwise answer all but the first stat
    from its cache; each of these is a lookup nothing has prepared."""
    return [f"stat/d{i:02d}/f" for i in range(STAT_COUNT)]


def set_attrs(path: Path, a: Attrs) -> None:
    """chown before chmod (chown clears set-id bits); no following links."""
    os.chown(path, a.uid, a.gid, follow_symlinks=False)
    if not stat.S_ISLNK(a.mode):
        os.chmod(path, stat.S_IMODE(a.mode))
    os.utime(path, ns=(a.mtime_ns, a.mtime_ns), follow_symlinks=False)


# -- data ---------------------------------------------------------------------------------

def create_data(b: Bench) -> None:
    """ls5000/ (with metadata, plus a local copy with the same attributes), tree/ and
    stat/dNN/f (plain objects), and rsync/ (built locally, then stored object by object)."""
    t0 = time.perf_counter()
    s3 = b.s3
    local_ls = b.local / LS_DIR
    local_ls.mkdir()
    puts: list[dict[str, Any]] = []
    for i in range(LS_COUNT):
        body = os.urandom(256)
        (local_ls / ls_name(i)).write_bytes(body)
        set_attrs(local_ls / ls_name(i), ls_attrs(i))
        puts.append({"Key": f"{LS_DIR}/{ls_name(i)}", "Body": body,
                     "Metadata": ls_attrs(i).metadata()})
    puts += [{"Key": k, "Body": os.urandom(8192)} for k in tree_keys()]
    puts += [{"Key": k, "Body": os.urandom(1024)} for k in stat_names()]
    src = b.local / RSYNC_DIR
    build_rsync_tree(src)
    puts += rsync_objects(src)
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kw: s3.put_object(Bucket=BUCKET, **kw), puts))
    log(f"namespace data created in {time.perf_counter() - t0:.1f} s")


def build_rsync_tree(root: Path) -> None:
    """A small source tree of the kinds rsync -a must carry over: executables and varied
    modes (set-id bits too), several owners, old mtimes with nanoseconds, symlinks
    (relative, to a directory, absolute, dangling), an empty file and an empty directory,
    names with a space and non-ASCII."""
    rng = random.Random(17)
    file_modes = (0o644, 0o600, 0o640, 0o755, 0o700, 0o750, 0o444, 0o664)
    dir_modes = (0o755, 0o750, 0o700, 0o2775)
    sizes = (0, 100, 4096, 65536, 300_000)
    n = 0

    def attrs(kind: int, perm: int) -> Attrs:
        nonlocal n
        n += 1
        uid, gid = IDS[n % len(IDS)]
        return Attrs(kind | perm, uid, gid,
                     (OLD_S + 86_400 * n) * 1_000_000_000 + rng.randrange(1_000_000_000))

    def file(path: Path, size: int, perm: int) -> None:
        path.write_bytes(rng.randbytes(size))
        set_attrs(path, attrs(stat.S_IFREG, perm))

    def link(path: Path, target: str) -> None:
        path.symlink_to(target)
        set_attrs(path, attrs(stat.S_IFLNK, 0o777))

    dirs: list[tuple[Path, int]] = [(root, 0o755)]
    root.mkdir()
    for i, dmode in enumerate(dir_modes):
        top = root / f"d{i}"
        top.mkdir()
        dirs.append((top, dmode))
        for j in range(3):
            sub = top / f"s{j}"
            sub.mkdir()
            dirs.append((sub, file_modes[(i + j) % 3] | 0o700 if j else 0o755))
            for k in range(25):
                file(sub / f"f{k:02d}", sizes[(i + j + k) % len(sizes)],
                     file_modes[(i * 3 + j + k) % len(file_modes)])
            link(sub / "l-rel", "f00")
            link(sub / "l-up", f"../s{(j + 1) % 3}/f01")
            link(sub / "l-dir", f"../../d{(i + 1) % len(dir_modes)}")
    (root / "d0" / "empty").mkdir()
    dirs.append((root / "d0" / "empty", 0o700))
    file(root / "run.sh", 120, 0o755)
    file(root / "setuid", 4096, 0o4755)
    file(root / "secret", 64, 0o600)
    file(root / "with space.txt", 10, 0o644)
    file(root / "ünïcödé.txt", 10, 0o640)
    link(root / "l-abs", "/etc/hostname")
    link(root / "l-dangling", "no/such/target")
    for d, perm in reversed(dirs):  # deepest first: setting a child's times touches none
        set_attrs(d, attrs(stat.S_IFDIR, perm))


def rsync_objects(root: Path) -> list[dict[str, Any]]:
    """put_object arguments that store `root` under rsync/ as stormount would: a marker
    per directory (the root's too), a link's target as its body."""
    out = []
    for rel, st in walk(root):
        key = RSYNC_DIR + ("/" + rel if rel else "")
        a = Attrs(st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
        if stat.S_ISDIR(st.st_mode):
            key, body = key + "/", b""
        elif stat.S_ISLNK(st.st_mode):
            body = os.readlink(root / rel).encode()
        else:
            body = (root / rel).read_bytes()
        out.append({"Key": key, "Body": body, "Metadata": a.metadata()})
    return out


def walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry under `root` (itself as ""), by relative path, not following links."""
    out = [("", os.lstat(root))]
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        for name in dirnames + filenames:  # os.walk lists links to dirs among dirnames
            rel = str(base / name) if str(base) != "." else name
            out.append((rel, os.lstat(root / rel)))
    return out


def manifest(root: Path) -> dict[str, dict[str, object]]:
    """What rsync -a must carry over, per entry: type, permission bits (not a link's,
    which Linux fixes at 0777), owner, group, mtime to the nanosecond, a link's target,
    a file's content hash."""
    out: dict[str, dict[str, object]] = {}
    for rel, st in walk(root):
        e: dict[str, object] = {"type": stat.S_IFMT(st.st_mode), "uid": st.st_uid,
                                "gid": st.st_gid, "mtime": st.st_mtime_ns}
        if stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(root / rel)
        else:
            e["mode"] = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            e["content"] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        out[rel or "."] = e
    return out


def differences(want: dict[str, dict[str, object]], got: dict[str, dict[str, object]]
                ) -> tuple[int, Counter[str]]:
    """Entries of `got` that differ from `want` (missing and extra ones included), and
    how many differ in each field."""
    fields: Counter[str] = Counter()
    bad = 0
    for rel in want.keys() | got.keys():
        w, g = want.get(rel), got.get(rel)
        if w is None or g is None:
            fields["extra" if w is None else "missing"] += 1
            bad += 1
            continue
        wrong = [k for k in w.keys() | g.keys() if w.get(k) != g.get(k)]
        fields.update(wrong)
        bad += bool(wrong)
    return bad, fields


def describe(bad: int, fields: Counter[str], of: int) -> str:
    if not bad:
        return f"0 of {of:,} entries differ"
    by = ", ".join(f"{k} {v:,}" for k, v in fields.most_common())
    return f"{bad:,} of {of:,} entries differ ({by})"


# -- helpers ------------------------------------------------------------------------------

def rtts(b: Bench) -> list[tuple[int, int | None, Any]]:
    """(RTT in ms, S3 port, boto3 client on that port) for each latency measured; the
    20 ms port is None when latproxy.py is missing."""
    return [(0, b.port, b.s3), (20, b.proxy20, b.s3_20)]


def skip_20(rows: list[Row]) -> None:
    for row in rows:
        row.note("skipped: ../shared/bench/latproxy.py not found")


def peers(b: Bench, want: tuple[str, ...], rtt: int) -> list[str]:
    """The peers of `want` to measure at `rtt` (--quick: at 0 ms only)."""
    have = {"rclone": b.has_rclone, "s3fs": b.has_s3fs}
    return [p for p in want if have[p] and (rtt == 0 or b.params.peers_20)]


def wrong(row: Row, kind: str, text: str) -> None:
    """A wrong result fails the row when it is stormount's; a peer's is noted."""
    if kind == "stormount":
        row.fail(text)
    else:
        row.note(f"{kind}: {text}")


def run(argv: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds a command takes with its stdout to a pipe (read here), and its result."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=C_LOCALE)
    return time.perf_counter() - t0, r


def timed_lines(row: Row, kind: str, argv: list[str], p: Params, lines: int,
                what: str) -> None:
    """Time a command whose stdout has one line per entry, as `kind`'s figure of `row`;
    a failure raises, a count other than `lines` is a wrong result."""
    dt, r = run(argv, limit(p, row.reference))
    if r.returncode:
        raise RuntimeError(f"{argv[0]} exit {r.returncode}: {r.stderr.strip()[:160]}")
    row.set(kind, dt)
    got = len(r.stdout.splitlines())
    if got != lines:
        wrong(row, kind, f"{argv[0]} printed {got} of {lines} {what}")


def limit(p: Params, reference: float | None) -> float:
    """A step on a mount gets --op-timeout plus ten times its reference: room for a
    mount far off its goal (20 ms makes everything slower) without hanging the run."""
    return p.op_timeout + 10 * (reference or p.op_timeout)


def ls_check(out: str, want: dict[str, Attrs]) -> tuple[int, Counter[str]]:
    """Entries of `ls -ln --time-style=+%s.%N` output whose mode, owner, group or
    mtime (to the nanosecond) differ from what was stored; missing and extra too."""
    fields: Counter[str] = Counter()
    bad, seen = 0, set()
    for line in out.splitlines():
        f = line.split(None, 6)
        if len(f) < 7:  # "total N"
            continue
        perms, _, uid, gid, _, when, name = f
        a = want.get(name)
        if a is None:
            fields["extra"] += 1
            bad += 1
            continue
        seen.add(name)
        secs, _, frac = when.partition(".")
        got = {"mode": perms[:10], "uid": uid, "gid": gid, "mtime": f"{secs}.{frac:0<9}"}
        exp = {"mode": stat.filemode(a.mode), "uid": str(a.uid), "gid": str(a.gid),
               "mtime": a.metadata()["mtime"]}
        wrong = [k for k in exp if got[k] != exp[k]]
        fields.update(wrong)
        bad += bool(wrong)
    missing = len(want.keys() - seen)
    if missing:
        fields["missing"] += missing
    return bad + missing, fields


def ls_l(path: Path, timeout: float, want: dict[str, Attrs]) -> tuple[float, int, str]:
    """Time `ls -l` of `path`, then check what it printed: (seconds, entries wrong,
    what was wrong). ls exits 1 when an entry cannot be stat'ed; those lines show "?"
    and count as wrong."""
    dt, r = run([*LS_L, str(path)], timeout)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"ls exit {r.returncode}: {r.stderr.strip()[:200]}")
    bad, fields = ls_check(r.stdout, want)
    text = describe(bad, fields, len(want))
    if r.returncode:
        text += f"; ls exit 1: {r.stderr.strip().splitlines()[0][:120]}"
    return dt, bad, text


def list_and_head(client: Any, prefix: str) -> tuple[float, dict[str, dict[str, str]]]:
    """One paginated ListObjectsV2 and a HEAD of every object, HEAD_THREADS at a time,
    each page's HEADs started as the page arrives: what `ls -l` needs when listings carry
    no metadata. Returns the seconds and each key's metadata."""
    t0 = time.perf_counter()
    futs: dict[str, cf.Future[Any]] = {}
    with cf.ThreadPoolExecutor(HEAD_THREADS) as pool:
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=prefix, Delimiter="/"):
            for o in page.get("Contents", []):
                futs[o["Key"]] = pool.submit(client.head_object, Bucket=BUCKET, Key=o["Key"])
        heads = {k: f.result()["Metadata"] for k, f in futs.items()}
    return time.perf_counter() - t0, heads


def raw_list(client: Any, prefix: str, delimiter: str | None) -> tuple[float, int]:
    kw = {"Bucket": BUCKET, "Prefix": prefix} | ({"Delimiter": delimiter} if delimiter else {})
    t0 = time.perf_counter()
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(**kw):
        n += len(page.get("Contents", []))
    return time.perf_counter() - t0, n


# -- ls -----------------------------------------------------------------------------------

def listing(b: Bench) -> None:
    want = {ls_name(i): ls_attrs(i) for i in range(LS_COUNT)}
    to = b.params.op_timeout
    for rtt, port, client in rtts(b):
        cold, warm, names = (b.rows[f"{k}_{rtt}"] for k in ("ls_cold", "ls_warm",
                                                             "ls_names_cold"))
        if port is None:
            skip_20([cold, warm, names])
            continue

        def ref_cold(client: Any = client, cold: Row = cold) -> None:
            cold.reference, heads = list_and_head(client, f"{LS_DIR}/")
            stored = {k.rsplit("/", 1)[1]: m for k, m in heads.items()}
            if stored != {n: a.metadata() for n, a in want.items()}:  # the data is right
                raise RuntimeError("the HEADs do not show the metadata put")

        def ref_warm(warm: Row = warm) -> None:
            local = b.local / LS_DIR
            run([*LS_L, str(local)], to)
            warm.reference, bad, text = ls_l(local, to, want)
            if bad:  # the checker itself is wrong: the local copy has these attributes
                warm.note(f"local copy: {text}")

        def ref_names(client: Any = client, names: Row = names) -> None:
            names.reference, n = raw_list(client, f"{LS_DIR}/", "/")
            if n != LS_COUNT:
                raise RuntimeError(f"listed {n} of {LS_COUNT}")

        guarded(cold, "list+HEAD", ref_cold)
        guarded(warm, "local ls", ref_warm)
        guarded(names, "raw listing", ref_names)

        def long(kind: str, port: int = port, rtt: int = rtt, cold: Row = cold,
                 warm: Row = warm) -> None:
            with b.session.mount(kind, port, f"{kind}-ls-{rtt}") as m:
                b.cold()
                dt, bad, text = ls_l(m.path / LS_DIR, limit(b.params, cold.reference), want)
                cold.set(kind, dt)
                if bad:
                    wrong(cold, kind, f"wrong attributes: {text}")
                else:
                    cold.note(f"{kind}: attributes checked, {text}")
                if kind != "stormount":
                    return
                dt, bad, text = ls_l(m.path / LS_DIR, limit(b.params, warm.reference), want)
                warm.stormount = dt
                if bad:
                    warm.fail(f"wrong attributes: {text}")

        def short(kind: str, port: int = port, rtt: int = rtt, names: Row = names) -> None:
            with b.session.mount(kind, port, f"{kind}-lsnames-{rtt}") as m:
                b.cold()
                timed_lines(names, kind, ["ls", str(m.path / LS_DIR)], b.params, LS_COUNT,
                            "names")

        for kind in ["stormount", *peers(b, ("s3fs",), rtt)]:
            log(f"ls -l of {LS_COUNT:,} objects with metadata, {kind}, {rtt} ms")
            guarded(cold, kind, partial(long, kind))
            log(f"ls (names) of {LS_COUNT:,} objects, {kind}, {rtt} ms")
            guarded(names, kind, partial(short, kind))


# -- find, stat, cp -r --------------------------------------------------------------------

def cp_keys(p: Params) -> list[str]:
    """What `cp -r` copies: the tree, or (--quick) one of its top directories."""
    return [k for k in tree_keys() if k.startswith(p.cp_dir + "/")]


def tree(b: Bench) -> None:
    keys, stats, copied = tree_keys(), stat_names(), cp_keys(b.params)
    top, mid, _ = TREE_SHAPE
    find_lines = 1 + top + top * mid + len(keys)  # tree/ itself, its directories, the files
    for rtt, port, client in rtts(b):
        find, st, cp = (b.rows[f"{k}_{rtt}"] for k in ("find_cold", "stat_cold", "cp_cold"))
        if port is None:
            skip_20([find, st, cp])
            continue

        def ref_find(client: Any = client, find: Row = find) -> None:
            find.reference, n = raw_list(client, "tree/", None)
            if n != len(keys):
                raise RuntimeError(f"listed {n} of {len(keys)}")

        def ref_head(client: Any = client, st: Row = st) -> None:
            client.head_object(Bucket=BUCKET, Key="seq.bin")  # a warm connection
            times = []
            for k in stats:
                t0 = time.perf_counter()
                client.head_object(Bucket=BUCKET, Key=k)
                times.append(time.perf_counter() - t0)
            st.reference = statistics.median(times) * 1000

        def ref_gets(client: Any = client, cp: Row = cp) -> None:
            t0 = time.perf_counter()
            for k in copied:
                client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            cp.reference = time.perf_counter() - t0

        def mounted_find(kind: str, port: int = port, rtt: int = rtt, find: Row = find
                         ) -> None:
            with b.session.mount(kind, port, f"{kind}-find-{rtt}") as m:
                b.cold()
                timed_lines(find, kind, ["find", str(m.path / "tree")], b.params, find_lines,
                            "paths")

        def mounted_stat(kind: str, port: int = port, rtt: int = rtt, st: Row = st) -> None:
            with b.session.mount(kind, port, f"{kind}-stat-{rtt}") as m:
                b.cold()
                # each directory is looked up first, untimed: the figure is the file's
                paths = [p for n in stats for p in (m.path / n.rpartition("/")[0], m.path / n)]
                out = probe("stat", *paths, timeout=b.params.op_timeout)
                st.set(kind, statistics.median(out["seconds"][1::2]) * 1000)
                if kind == "stormount":
                    first = out["seconds"][1] * 1000
                    st.note(f"median of {STAT_COUNT} files, each in a directory of its "
                            f"own; stormount's first took {first:.1f} ms")

        def mounted_cp(kind: str, port: int = port, rtt: int = rtt, cp: Row = cp) -> None:
            out = b.session.workdir / f"cp-out-{kind}-{rtt}"
            try:
                with b.session.mount(kind, port, f"{kind}-cp-{rtt}") as m:
                    b.cold()
                    dt, r = run(["cp", "-r", str(m.path / b.params.cp_dir), str(out)],
                                limit(b.params, cp.reference))
                    if r.returncode:
                        raise RuntimeError(f"cp exit {r.returncode}: "
                                           f"{r.stderr.strip()[:160]}")
                    cp.set(kind, dt)
                n = sum(len(files) for _, _, files in os.walk(out))
                if n != len(copied):
                    wrong(cp, kind, f"cp -r copied {n} of {len(copied)} files")
            finally:
                shutil.rmtree(out, ignore_errors=True)

        for row, who, fn in ((find, "raw listing", ref_find), (st, "HEAD", ref_head),
                             (cp, "serial GETs", ref_gets)):
            guarded(row, who, fn)
        for kind in ["stormount", *peers(b, ("s3fs",), rtt)]:
            log(f"find, stat, cp -r ({len(copied)} files) of the tree, {kind}, {rtt} ms")
            guarded(find, kind, partial(mounted_find, kind))
            guarded(st, kind, partial(mounted_stat, kind))
            guarded(cp, kind, partial(mounted_cp, kind))


# -- rsync -a out of a mount --------------------------------------------------------------

def rsync_out(b: Bench) -> None:
    src = b.local / RSYNC_DIR
    want = manifest(src)
    n = len(want)
    for rtt, port, _ in rtts(b):
        row = b.rows[f"rsync_{rtt}"]
        if port is None:
            skip_20([row])
            continue

        def ref(row: Row = row, rtt: int = rtt) -> None:
            out = b.session.workdir / f"rsync-local-{rtt}"
            try:
                b.cold()
                dt, r = run(["rsync", "-a", f"{src}/", f"{out}/"], b.params.op_timeout)
                if r.returncode:
                    raise RuntimeError(f"rsync exit {r.returncode}: {r.stderr.strip()[:160]}")
                bad, fields = differences(want, manifest(out))
                if bad:  # then the check, not a mount, is wrong
                    raise RuntimeError(f"the local copy: {describe(bad, fields, n)}")
                row.reference = dt
            finally:
                shutil.rmtree(out, ignore_errors=True)

        def mounted(kind: str, port: int = port, rtt: int = rtt, row: Row = row) -> None:
            out = b.session.workdir / f"rsync-{kind}-{rtt}"
            try:
                with b.session.mount(kind, port, f"{kind}-rsync-{rtt}") as m:
                    b.cold()
                    dt, r = run(["rsync", "-a", f"{m.path / RSYNC_DIR}/", f"{out}/"],
                                limit(b.params, row.reference))
                bad, fields = differences(want, manifest(out)) if out.exists() else \
                    (n, Counter(missing=n))
                text = describe(bad, fields, n)
                if r.returncode:
                    text += f"; rsync exit {r.returncode}: " + \
                        (r.stderr.strip().splitlines() or [""])[-1][:120]
                row.set(kind, dt)
                if bad or r.returncode:
                    wrong(row, kind, text)
                else:
                    row.note(f"{kind}: {text}")
            finally:
                shutil.rmtree(out, ignore_errors=True)

        guarded(row, "local rsync", ref)
        for kind in ["stormount", *peers(b, ("s3fs", "rclone"), rtt)]:
            log(f"rsync -a out of a mount, {kind}, {rtt} ms")
            guarded(row, kind, partial(mounted, kind))


# -- the figures --------------------------------------------------------------------------

def make_rows(p: Params) -> dict[str, Row]:
    rows = []
    what = "the 2,000-file tree" if p.cp_dir == "tree" else \
        f"{len(cp_keys(p)):,} files of the tree ({p.cp_dir}/)"
    for rtt in (0, 20):
        at = f"{rtt} ms RTT"
        via = "" if rtt == 0 else ", via the same proxy"
        rows += [
            Row(f"ls_cold_{rtt}", f"`ls -l` of {LS_COUNT:,} objects with metadata, cold, "
                f"{at}", "s", f"ListObjectsV2 + HEADs, {HEAD_THREADS} threads{via}",
                ratio_goal("<=", 1.3, "list+HEAD")),
            Row(f"ls_warm_{rtt}", f"`ls -l` of {LS_COUNT:,} objects, warm (2nd), {at}", "s",
                "local directory", ratio_goal("<=", 3.0, "local")),
            Row(f"ls_names_cold_{rtt}", f"`ls` (names, to a pipe) of {LS_COUNT:,} objects, "
                f"cold, {at}", "s", f"paginated ListObjectsV2{via}",
                ratio_goal("<=", 1.5, "raw")),
        ]
    for rtt in (0, 20):
        at = f"{rtt} ms RTT"
        via = "" if rtt == 0 else ", via the same proxy"
        rows += [
            Row(f"find_cold_{rtt}", f"`find` over a 2,000-file tree, cold, {at}", "s",
                f"flat ListObjectsV2{via}", ratio_goal("<=", 1.5, "raw")),
            Row(f"stat_cold_{rtt}", f"`stat` of one uncached file, {at}", "ms",
                f"one HEAD, warm connection{via}", ratio_goal("<=", 1.2, "HEAD")),
            Row(f"cp_cold_{rtt}", f"`cp -r` of {what}, cold, {at}", "s",
                f"serial GETs{via}", ratio_goal("<=", 1.0, "GETs")),
        ]
    for rtt in (0, 20):
        rows.append(Row(f"rsync_{rtt}", "`rsync -a` of a tree with symlinks, modes, owners, "
                        f"old mtimes, out of a fresh mount, {rtt} ms RTT", "s",
                        "`rsync -a` of the same tree, local to local",
                        Goal("works", ">=", 0, "exact copy (0 differences)")))
    return {r.key: r for r in rows}


SECTIONS: dict[str, Callable[[Bench], None]] = {"ls": listing, "tree": tree,
                                                "rsync": rsync_out}
