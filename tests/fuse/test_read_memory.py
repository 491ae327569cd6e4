"""Memory stays bounded on a long sequential read (issue 20): what the daemon holds is
the GETs in flight and the page-cache queue, never a share of the file, whatever the
read-ahead window grows to."""

from __future__ import annotations

import hashlib
import os

import pytest

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
SIZE = 1024 * MiB
PEAK_RSS_MAX = 150 * MiB  # the bound for the read workloads


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def sha256_of(path, chunk: int = 8 * MiB) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def test_a_1_gib_sequential_read_with_the_largest_window_holds_little(data, make_mount):
    big = data / "big.bin"
    with open(big, "wb") as f:  # sparse, with distinct bytes in every 4 MiB block
        f.truncate(SIZE)
        for offset in range(0, SIZE, 4 * MiB):
            f.seek(offset + 12345)
            f.write(os.urandom(4096))
    m = make_mount(f"file://{data}", args=("-o", "read_ahead_max=1GiB"))
    assert m.proc is not None
    before = peak_rss(m.proc.pid)
    assert sha256_of(m.path / "big.bin") == sha256_of(big)
    peak = peak_rss(m.proc.pid)
    assert peak <= PEAK_RSS_MAX, f"peak RSS {peak / MiB:.0f} MiB (before the read " \
                                 f"{before / MiB:.0f} MiB)"
    # 24 MiB of read-ahead in flight, a block the reader fetches, 8 MiB queued for the
    # page cache, and the allocator's slack (97 MiB with a heap per thread)
    assert peak - before <= 80 * MiB, f"the read took {(peak - before) / MiB:.0f} MiB"
    print(f"peak RSS {peak / MiB:.0f} MiB, {before / MiB:.0f} MiB before the read")
