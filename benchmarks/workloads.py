"""The read figures and what every section shares. Each section fills its rows: a
stormount figure, the reference measured in the same run (boto3 on the same server, or
local files), and the peers (rclone, s3fs) where they apply. Every figure is timed with
time.perf_counter, every step that touches a mount runs in a child process or command
with a timeout, and "cold" means a fresh mount plus dropped kernel caches (when
permitted). The namespace sections (ls, tree, rsync) are in metadata.py, the writes in
writes.py."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from infra import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, Mount, Session, drop_caches, log
from report import Goal, Row, all_of, ratio_goal

MiB = 1 << 20
PROBE = str(Path(__file__).resolve().parent / "probe.py")
LS_COUNT, TREE_SHAPE, STAT_COUNT, LAT_SAMPLES = 5000, (10, 10, 20), 20, 20


@dataclass
class Params:
    seq_size: int
    rand_size: int
    fio_seconds: float
    read_deadline: float  # a sequential read stops here and reports what it did
    op_timeout: float  # ls, find, cp, stat on a mount are killed after this
    write_size: int = 512 * MiB  # the dd file of the write section
    tar_files: int = 2000  # about this many files in the write section's tar archive
    upload_deadline: float = 240.0  # a write section's wait for the bucket gives up here
    # the random-write workload: its files (stored before the mount) and what it writes
    randwrite_sizes: tuple[int, ...] = (256 * MiB, 128 * MiB, 32 * MiB, 8 * MiB)
    randwrite_total: int = 70 * MiB
    pause_size: int = 1024 * MiB  # the upload the server pauses in the middle of
    cp_dir: str = "tree"  # what the cp -r rows copy (--quick: tree/d0, a tenth)
    peers_20: bool = True  # the namespace rows' peers at 20 ms too (not with --quick)


@dataclass
class Bench:
    session: Session
    params: Params
    port: int  # the S3 server, direct
    proxy20: int | None  # the 20 ms RTT proxy in front of it
    has_fio: bool
    has_rclone: bool
    has_s3fs: bool
    rows: dict[str, Row]
    notes: list[str]
    s3: Any = None
    s3_20: Any = None
    dropped: bool | None = None
    rss: dict[str, float] = field(default_factory=dict)  # peak VmHWM per mount kind

    @property
    def local(self) -> Path:
        return self.session.workdir / "local"

    def client(self, port: int) -> Any:
        return boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(max_pool_connections=32, connect_timeout=5, read_timeout=60,
                          retries={"max_attempts": 3, "mode": "standard"},
                          s3={"addressing_style": "path"}))

    def cold(self) -> None:
        """Drop the kernel caches (the caller also uses a fresh mount)."""
        ok = drop_caches()
        if self.dropped is None:
            self.dropped = ok
            self.notes.append(
                "cold = fresh mount + `echo 3 > /proc/sys/vm/drop_caches`" if ok else
                "cold = fresh mount only: dropping the kernel caches is not permitted here")

    def track_rss(self, m: Mount) -> None:
        """Call after the mount's `with` block: its peak RSS over the read workloads."""
        if m.peak_rss_mib is not None:
            self.rss[m.kind] = max(self.rss.get(m.kind, 0.0), m.peak_rss_mib)


# -- helpers ------------------------------------------------------------------------------

def probe(*args: object, timeout: float) -> dict:
    r = subprocess.run([sys.executable, PROBE, *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip()
                           else f"probe exit {r.returncode}")
    return json.loads(r.stdout)


def timed(argv: list[str], timeout: float) -> float:
    """Seconds a command takes (stdout discarded); raises on failure or timeout."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} exit {r.returncode}: {r.stderr.strip()[:200]}")
    return dt


def seq_read(path: Path, size: int, deadline: float) -> tuple[float, int]:
    """MiB/s of a sequential read of up to `size` bytes, stopping at `deadline` s; and
    the bytes read."""
    out = probe("read", path, size, deadline, timeout=deadline + 60)
    return out["bytes"] / MiB / out["seconds"], out["bytes"]


def partial_note(row: Row, who: str, got: int, size: int, deadline: float) -> None:
    if got < size:
        row.note(f"{who} stopped at the {deadline:.0f} s limit after {got / MiB:.0f} of "
                 f"{size / MiB:.0f} MiB; rate over what was read")


def guarded(row: Row, who: str, fn: Callable[[], None]) -> None:
    """Run one measurement; a failure becomes a note on its row, not the end of the run."""
    try:
        fn()
    except KeyboardInterrupt:
        raise
    except subprocess.TimeoutExpired as e:
        row.note(f"{who}: timed out after {e.timeout:.0f} s")
        log(f"{row.key}/{who}: timed out")
    except Exception as e:
        row.note(f"{who} failed: {str(e)[:160]}")
        log(f"{row.key}/{who}: {e!r}")


# -- data ---------------------------------------------------------------------------------

def create_data(b: Bench) -> None:
    """The bucket and the large objects (the namespace's small ones: metadata.py)."""
    t0 = time.perf_counter()
    s3 = b.s3
    s3.create_bucket(Bucket=BUCKET)
    b.local.mkdir()
    big = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB,
                         max_concurrency=4)
    for name, size in (("seq.bin", b.params.seq_size), ("rand.bin", b.params.rand_size),
                       ("r64.bin", 64 * MiB)):
        path = b.local / name
        with open(path, "wb") as f:
            for _ in range(0, size, 8 * MiB):
                f.write(random.randbytes(min(8 * MiB, size - f.tell())))
        s3.upload_file(str(path), BUCKET, name, Config=big)
    log(f"large objects created in {time.perf_counter() - t0:.1f} s")


# -- sequential reads ---------------------------------------------------------------------

def boto3_download_mibs(client: Any, key: str, size: int) -> float:
    class Sink:  # a seekable /dev/null, so s3transfer writes parts in place
        pos = 0

        def write(self, data: bytes) -> int:
            self.pos += len(data)
            return len(data)

        def seek(self, pos: int, whence: int = 0) -> int:
            self.pos = pos
            return pos

        def tell(self) -> int:
            return self.pos

        def seekable(self) -> bool:
            return True

    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                         max_concurrency=10)
    t0 = time.perf_counter()
    client.download_fileobj(BUCKET, key, Sink(), Config=cfg)
    return size / MiB / (time.perf_counter() - t0)


def sequential(b: Bench) -> None:
    p, size = b.params, b.params.seq_size
    r0, r20, rw = b.rows["seq_cold_0"], b.rows["seq_cold_20"], b.rows["seq_warm"]

    def ref0() -> None:
        r0.reference = boto3_download_mibs(b.s3, "seq.bin", size)

    def local_warm() -> None:
        probe("read", b.local / "seq.bin", size, 600, timeout=120)  # into the page cache
        rw.reference = seq_read(b.local / "seq.bin", size, p.read_deadline)[0]

    guarded(r0, "boto3", ref0)
    guarded(rw, "local", local_warm)

    def mount_reads(kind: str, port: int, cold_row: Row, warm: bool) -> None:
        mount = b.session.stormount if kind == "stormount" else b.session.rclone
        with mount(port, f"{kind}-seq-{port}") as m:
            b.cold()
            rate, got = seq_read(m.path / "seq.bin", size, p.read_deadline)
            cold_row.set(kind, rate)
            partial_note(cold_row, f"{kind} (cold)", got, size, p.read_deadline)
            if warm:
                rate, got2 = seq_read(m.path / "seq.bin", got, p.read_deadline)
                rw.set(kind, rate)
                partial_note(rw, f"{kind} (warm)", got2, got, p.read_deadline)
        b.track_rss(m)

    kinds = ["stormount"] + (["rclone"] if b.has_rclone else [])
    for kind in kinds:
        log(f"sequential read, {kind}, 0 ms")
        guarded(r0, kind, partial(mount_reads, kind, b.port, r0, True))
    if b.proxy20 is None:
        r20.note("skipped: ../shared/bench/latproxy.py not found")
        return

    def ref20() -> None:
        r20.reference = boto3_download_mibs(b.s3_20, "seq.bin", size)

    guarded(r20, "boto3", ref20)
    for kind in kinds:
        log(f"sequential read, {kind}, 20 ms")
        guarded(r20, kind, partial(mount_reads, kind, b.proxy20, r20, False))


# -- random reads -------------------------------------------------------------------------

def ranged_get(client: Any, key: str, off: int) -> None:
    body = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{off + 4095}")["Body"]
    if len(body.read()) != 4096:
        raise RuntimeError("short ranged GET")


def ranged_get_iops(client: Any, size: int, threads: int, seconds: float) -> float:
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def worker(i: int) -> None:
        rng = random.Random(i)
        while time.perf_counter() < stop:
            ranged_get(client, "rand.bin", rng.randrange(size // 4096) * 4096)
            counts[i] += 1

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def fio_iops(path: Path, jobs: int, seconds: float) -> float:
    argv = ["fio", "--name=randread", f"--filename={path}", "--rw=randread", "--bs=4k",
            "--ioengine=psync", "--direct=0", f"--numjobs={jobs}", "--time_based",
            f"--runtime={seconds:g}", "--group_reporting", "--readonly",
            "--output-format=json"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if r.returncode != 0:
        raise RuntimeError(f"fio exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return float(json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]["read"]["iops"])


def random_reads(b: Bench) -> None:
    """Uncached 4 KiB read latency and fio random reads, at 0 ms and through the 20 ms
    proxy; the references are ranged GETs over the same path."""
    p, size = b.params, b.params.rand_size
    # distinct 4 KiB blocks, one per 1/LAT_SAMPLES of the object: none shares a page
    stride = size // LAT_SAMPLES
    offsets = [i * stride + random.randrange(stride // 4096) * 4096 for i in range(LAT_SAMPLES)]
    kinds = ["stormount"] + (["rclone"] if b.has_rclone else [])
    paths = [(0, b.port, b.s3)] + ([(20, b.proxy20, b.s3_20)] if b.proxy20 else [])
    if b.proxy20 is None:
        for key in ("rand_lat_20", "rand_1_20", "rand_4_20"):
            b.rows[key].note("skipped: ../shared/bench/latproxy.py not found")
    for rtt, port, client in paths:
        lat = b.rows[f"rand_lat_{rtt}"]

        def ref_lat(client: Any = client, lat: Row = lat) -> None:
            ranged_get(client, "rand.bin", 0)  # a warm connection, as the daemon has
            times = []
            for off in offsets:
                t0 = time.perf_counter()
                ranged_get(client, "rand.bin", off)
                times.append(time.perf_counter() - t0)
            lat.reference = statistics.median(times) * 1000

        guarded(lat, "ranged GET", ref_lat)
        for kind in kinds:
            def mount_lat(kind: str = kind, port: int = port, lat: Row = lat) -> None:
                mount = b.session.stormount if kind == "stormount" else b.session.rclone
                with mount(port, f"{kind}-lat-{port}") as m:
                    probe("stat", m.path / "rand.bin", timeout=p.op_timeout)  # lookup, untimed
                    b.cold()
                    out = probe("pread", m.path / "rand.bin", *offsets, timeout=p.op_timeout)
                    lat.set(kind, statistics.median(out["seconds"]) * 1000)
                b.track_rss(m)
            log(f"uncached 4 KiB read latency, {kind}, {rtt} ms")
            guarded(lat, kind, mount_lat)
        lat.note(f"median of {LAT_SAMPLES} reads at distinct offsets, file already looked up")

        for jobs in (1, 4):
            row = b.rows[f"rand_{jobs}_{rtt}"]

            def ref(jobs: int = jobs, row: Row = row, client: Any = client) -> None:
                row.reference = ranged_get_iops(client, size, jobs, p.fio_seconds)
            guarded(row, "ranged GETs", ref)
            if not b.has_fio:
                row.note("skipped: fio is not installed (apt-get install fio failed)")
                continue
            for kind in kinds:
                def run_fio(kind: str = kind, jobs: int = jobs, row: Row = row,
                            port: int = port) -> None:
                    mount = b.session.stormount if kind == "stormount" else b.session.rclone
                    with mount(port, f"{kind}-fio{jobs}-{port}") as m:
                        b.cold()
                        row.set(kind, fio_iops(m.path / "rand.bin", jobs, p.fio_seconds))
                    b.track_rss(m)
                log(f"fio randread {jobs} job(s), {kind}, {rtt} ms")
                guarded(row, kind, run_fio)


# -- restart with a warm cache and the store unreachable ----------------------------------

def restart_offline(b: Bench) -> None:
    """Warm a mount through its own 0 ms proxy, unmount, kill the proxy (the store is now
    unreachable), mount again on the same cache directory and repeat the warm figures."""
    ls_row, rd_row = b.rows["restart_ls"], b.rows["restart_read"]
    to, dl = b.params.op_timeout, b.params.read_deadline
    proxy = b.session.start_proxy(b.port, 0, name="offline-proxy")
    if proxy is None:
        for row in (ls_row, rd_row):
            row.note("skipped: ../shared/bench/latproxy.py not found")
        return
    cache = b.session.workdir / "cache" / "restart"
    f64 = "r64.bin"

    def online() -> None:
        with b.session.stormount(proxy, "restart-1", cache_dir=cache) as m:
            timed(["ls", "-l", str(m.path / "ls5000")], to)
            ls_row.reference = timed(["ls", "-l", str(m.path / "ls5000")], to)
            seq_read(m.path / f64, 64 * MiB, dl)
            rd_row.reference = seq_read(m.path / f64, 64 * MiB, dl)[0]

    def offline() -> None:
        b.session.stop("offline-proxy")
        with b.session.stormount(proxy, "restart-2", cache_dir=cache) as m:
            def ls() -> None:
                ls_row.stormount = timed(["ls", "-l", str(m.path / "ls5000")], to)

            def rd() -> None:
                rate, got = seq_read(m.path / f64, 64 * MiB, dl)
                rd_row.stormount, rd_row.ok = rate, got == 64 * MiB

            guarded(ls_row, "stormount", ls)
            guarded(rd_row, "stormount", rd)

    log("restart with a warm cache, store unreachable")
    guarded(ls_row, "online warm-up", online)
    try:
        offline()
    except KeyboardInterrupt:
        raise
    except Exception as e:
        for row in (ls_row, rd_row):
            row.note(f"restart with the store unreachable failed: {str(e)[:160]}")
    for row in (ls_row, rd_row):
        row.ok = row.ok and row.stormount is not None


# -- the figures --------------------------------------------------------------------------

def read_rows(p: Params) -> dict[str, Row]:
    seq = f"{p.seq_size // MiB} MiB"
    rnd = f"{p.rand_size // MiB} MiB"
    rows = [
        Row("seq_cold_0", f"Sequential read {seq}, cold, 0 ms RTT", "MiB/s",
            "boto3, 8 MiB parts, 10 threads", ratio_goal(">=", 0.9, "direct")),
        Row("seq_cold_20", f"Sequential read {seq}, cold, 20 ms RTT", "MiB/s",
            "boto3 via the same proxy", ratio_goal(">=", 0.8, "direct")),
        Row("seq_warm", f"Sequential read {seq}, warm (2nd read)", "MiB/s",
            "local file, page cache", ratio_goal(">=", 0.5, "local")),
    ]
    for rtt in (0, 20):
        via = "" if rtt == 0 else ", via the same proxy"
        rows += [
            Row(f"rand_1_{rtt}", f"4 KiB random read, fio 1 job, {rnd}, {rtt} ms RTT", "IOPS",
                f"ranged GETs, 1 thread{via}",
                all_of(Goal("abs", ">=", 46_000, "≥ 46k IOPS (s3fs)"),
                       ratio_goal(">=", 1.5, "rclone full", kind="peer"))),
            Row(f"rand_4_{rtt}", f"4 KiB random read, fio 4 jobs, {rnd}, {rtt} ms RTT",
                "IOPS", f"ranged GETs, 4 threads{via}",
                all_of(Goal("abs", ">=", 169_000, "≥ 169k IOPS (s3fs)"),
                       ratio_goal(">=", 1.5, "rclone full", kind="peer"))),
            Row(f"rand_lat_{rtt}", f"One uncached 4 KiB read, {rtt} ms RTT", "ms",
                f"one ranged GET{via}", ratio_goal("<=", 1.1, "one GET")),
        ]
    return {r.key: r for r in rows}


def mount_rows(p: Params) -> dict[str, Row]:
    rows = [
        Row("peak_rss", "Peak RSS of the daemon, read workloads", "MiB", "",
            Goal("abs", "<=", 150, "≤ 150 MiB")),
        Row("restart_ls", f"After restart, store unreachable: `ls -l` {LS_COUNT:,}", "s",
            "same mount online, warm", Goal("works", ">=", 0, "works offline")),
        Row("restart_read", "After restart, store unreachable: re-read 64 MiB", "MiB/s",
            "same mount online, warm", Goal("works", ">=", 0, "works offline")),
    ]
    return {r.key: r for r in rows}


def finish_rss(b: Bench) -> None:
    row = b.rows["peak_rss"]
    row.stormount = b.rss.get("stormount")
    row.set("rclone", b.rss.get("rclone"))
    row.note("max VmHWM over the sequential and random-read mounts")
