"""I/O against a mount, run as a child process so that a hung mount costs a timeout (the
parent kills the child) instead of the whole run. Prints one JSON object.

    probe.py read PATH LIMIT_BYTES DEADLINE_S   sequential 1 MiB reads until LIMIT or DEADLINE
    probe.py stat PATH...                       seconds per os.stat, in order
    probe.py pread PATH OFFSET...               seconds per 4 KiB pread (POSIX_FADV_RANDOM)
    probe.py writes ROOT PLAN_JSON              the open/pwrite/close cycles of a plan
"""

from __future__ import annotations

import json
import os
import random
import sys
import time


def read(path: str, limit: int, deadline: float) -> dict[str, object]:
    buf = memoryview(bytearray(1 << 20))
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n < limit:
            k = f.readinto(buf[:min(len(buf), limit - n)])
            if not k:
                break
            n += k
            if time.perf_counter() - t0 > deadline:
                break
    return {"bytes": n, "seconds": time.perf_counter() - t0}


def stat(paths: list[str]) -> dict[str, object]:
    times = []
    for p in paths:
        t0 = time.perf_counter()
        os.stat(p)
        times.append(time.perf_counter() - t0)
    return {"seconds": times}


def pread(path: str, offsets: list[int]) -> dict[str, object]:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead: one 4 KiB read
        times = []
        for off in offsets:
            t0 = time.perf_counter()
            if len(os.pread(fd, 4096, off)) != 4096:
                raise OSError(f"short read at {off}")
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return {"seconds": times}


def writes(root: str, plan_path: str) -> dict[str, object]:
    """A plan is {"seed": N, "cycles": [[NAME, [[OFFSET, LENGTH], ...]], ...]}: each cycle
    opens ROOT/NAME O_RDWR (an existing file), pwrites its writes in order and closes.
    The bytes come from random.Random(seed) in plan order, so the same plan run on a
    local copy gives the content the store must end up with."""
    with open(plan_path) as f:
        plan = json.load(f)
    rng = random.Random(plan["seed"])
    n = 0
    t0 = time.perf_counter()
    for name, ops in plan["cycles"]:
        fd = os.open(os.path.join(root, name), os.O_RDWR)
        try:
            for off, length in ops:
                if os.pwrite(fd, rng.randbytes(length), off) != length:
                    raise OSError(f"short write at {off} of {name}")
                n += length
        finally:
            os.close(fd)
    return {"bytes": n, "seconds": time.perf_counter() - t0}


def main() -> None:
    op, path, *rest = sys.argv[1:]
    if op == "read":
        out = read(path, int(rest[0]), float(rest[1]))
    elif op == "stat":
        out = stat([path, *rest])
    elif op == "pread":
        out = pread(path, [int(x) for x in rest])
    elif op == "writes":
        out = writes(path, rest[0])
    else:
        raise SystemExit(f"unknown probe {op}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
