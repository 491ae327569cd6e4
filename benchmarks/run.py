#!/usr/bin/env python3
"""`make bench`: stormount beside its references (boto3 on the same moto server, local
files) and rclone and s3fs mounts as peers, reads, the namespace and writes, all in one
run; prints a markdown table and writes JSON + markdown to benchmarks/results/. See
benchmarks/results/README.md.

    .venv/bin/python benchmarks/run.py [--quick] [--seq-mib N] [--only SECTION,...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import metadata as md
import report
import workloads as w
import writes
from infra import BenchError, Session, log, stormount_source

SECTIONS = {"seq": w.sequential, "random": w.random_reads, **md.SECTIONS,
            "restart": w.restart_offline, "write": writes.writes}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="64 MiB objects and dd, 3 s fio runs, cp -r of a tenth of the "
                         "tree, namespace peers at 0 ms only, shorter limits (~6 min)")
    ap.add_argument("--seq-mib", type=int, help="sequential object size (default 512, quick 64)")
    ap.add_argument("--rand-mib", type=int, help="random-read object (default 256, quick 64)")
    ap.add_argument("--fio-seconds", type=float, help="fio/ranged-GET run time (10, quick 3)")
    ap.add_argument("--read-deadline", type=float,
                    help="a sequential read stops after this many seconds (60, quick 20)")
    ap.add_argument("--op-timeout", type=float,
                    help="timeout for one ls/find/cp/stat/rsync/tar/dd/mv on a mount (120, "
                         "quick 60; a namespace step adds 10x its reference)")
    ap.add_argument("--write-mib", type=int, help="dd file of `write` (default 512, quick 64)")
    ap.add_argument("--tar-files", type=int, default=2000,
                    help="about this many files in the tar archive of `write` (2000)")
    ap.add_argument("--pause-mib", type=int,
                    help="the upload of `write` paused mid-way (default 1024, quick 256)")
    ap.add_argument("--upload-deadline", type=float,
                    help="`write` waits this long for the bucket to show a write (240, "
                         "quick 120)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    ap.add_argument("--no-rclone", action="store_true", help="skip the rclone peer")
    ap.add_argument("--no-s3fs", action="store_true", help="skip the s3fs peer")
    return ap.parse_args()


def _interrupt(signum: int, frame: object) -> None:
    log(f"{signal.Signals(signum).name} received")
    raise KeyboardInterrupt


def main() -> int:
    a = parse_args()
    q = a.quick
    params = w.Params(
        seq_size=(a.seq_mib or (64 if q else 512)) * w.MiB,
        rand_size=(a.rand_mib or (64 if q else 256)) * w.MiB,
        fio_seconds=a.fio_seconds or (3 if q else 10),
        read_deadline=a.read_deadline or (20 if q else 60),
        op_timeout=a.op_timeout or (60 if q else 120),
        write_size=(a.write_mib or (64 if q else 512)) * w.MiB,
        tar_files=a.tar_files,
        upload_deadline=a.upload_deadline or (120 if q else 240),
        randwrite_sizes=tuple(n * w.MiB for n in ((64, 16, 4) if q else (256, 128, 32, 8))),
        randwrite_total=(16 if q else 70) * w.MiB,
        pause_size=(a.pause_mib or (256 if q else 1024)) * w.MiB,
        cp_dir="tree/d0" if q else "tree", peers_20=not q)
    only = [s for s in a.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown section(s): {', '.join(sorted(unknown))}")
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _interrupt)

    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    load0 = os.getloadavg()[0]
    rows = w.read_rows(params) | md.make_rows(params) | w.mount_rows(params) \
        | writes.make_rows(params)
    notes: list[str] = []
    has_fio = shutil.which("fio") is not None
    has_rclone = shutil.which("rclone") is not None and not a.no_rclone
    has_s3fs = shutil.which("s3fs") is not None and not a.no_s3fs
    if not has_fio:
        notes.append("fio is not installed (benchmarks/install-tools.sh could not install "
                     "it): the fio figures are skipped")
    if a.no_rclone:
        notes.append("rclone peer skipped (--no-rclone)")
    elif not has_rclone:
        notes.append("rclone is not installed (benchmarks/install-tools.sh could not "
                     "install it): no rclone column")
    if a.no_s3fs:
        notes.append("s3fs peer skipped (--no-s3fs)")
    elif not has_s3fs:
        notes.append("s3fs is not installed (benchmarks/install-tools.sh could not "
                     "install it): no s3fs column")
    session = Session()
    code = 0
    try:
        notes.append(f"stormount under test: {stormount_source()}")
        port, server = session.start_s3_server()
        notes.append(f"S3 server: {server}, object data in memory")
        proxy20 = session.start_proxy(port, 20)
        if proxy20 is None:
            notes.append("../shared/bench/latproxy.py not found: the 20 ms figures are skipped")
        b = w.Bench(session, params, port, proxy20, has_fio, has_rclone, has_s3fs, rows,
                    notes)
        b.s3 = b.client(port)
        b.s3_20 = b.client(proxy20) if proxy20 else None
        w.create_data(b)
        md.create_data(b)
        for name in only:
            SECTIONS[name](b)
        w.finish_rss(b)
    except KeyboardInterrupt:
        log("interrupted: cleaning up; the report holds what was measured so far")
        notes.append("INTERRUPTED: incomplete run")
        code = 130
    except BenchError as e:
        log(f"error: {e}")
        notes.append(f"ABORTED: {e}")
        code = 1
    finally:
        session.close()
    for row in rows.values():
        if row.stormount is None and row.reference is None and not row.notes:
            row.note("not measured in this run")
    load = os.getloadavg()[0]
    notes.append(f"1-minute load average {load0:.1f} at the start, {load:.1f} at the end on "
                 f"{os.cpu_count()} CPUs: other work on the machine moves absolute numbers; "
                 "compare ratios")
    meta = {"started": started, "duration_s": time.perf_counter() - t0,
            "parameters": (f"sequential {params.seq_size // w.MiB} MiB, random "
                           f"{params.rand_size // w.MiB} MiB, fio {params.fio_seconds:g} s, "
                           f"read limit {params.read_deadline:g} s, dd "
                           f"{params.write_size // w.MiB} MiB, tar ~{params.tar_files} files, "
                           f"random writes of {params.randwrite_total // w.MiB} MiB to "
                           f"{len(params.randwrite_sizes)} files, paused upload "
                           f"{params.pause_size // w.MiB} MiB, "
                           f"cp -r of {params.cp_dir}/"
                           + ("" if params.peers_20 else ", namespace peers at 0 ms only")
                           + (" (--quick)" if q else "")),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "python": platform.python_version(), "load_start": load0,
                        "load_end": load},
            "sections": only}
    text, paths = report.write(list(rows.values()), meta, notes)
    print(text)
    log(f"wrote {', '.join(str(p) for p in paths)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
