"""Tiers with real processes: moto as the primary behind a loopback proxy that can
refuse or hang, a local directory as the second tier, and a real mount over both."""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.helpers.mounts import wait_for
from tests.helpers.proxy import OutageProxy

pytestmark = pytest.mark.timeout(240)


def held(directory: Path) -> dict[str, bytes]:
    """The objects a file:// tier holds (its probe area left out)."""
    out = {}
    for path in directory.rglob("*"):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and not rel.startswith(".stormount/") and ".stormount-" not in rel:
            out[rel] = path.read_bytes()
    return out


def read_through(path: Path) -> bytes:
    """Read a file past the kernel's page cache, so the daemon serves (and caches) it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.read(fd, os.fstat(fd).st_size + 1)
    finally:
        os.close(fd)


def primary_url(s3_store, proxy: OutageProxy) -> str:
    # short SDK timeouts: a hung endpoint is noticed by them or by the stall watch
    return (f"s3://{s3_store.bucket}?endpoint=http://127.0.0.1:{proxy.port}"
            "&connect_timeout=1&read_timeout=2&sdk_retries=0")


def in_bucket(s3_store, expected: dict[str, bytes]) -> bool:
    keys = set(s3_store.keys())
    return expected.keys() <= keys and all(s3_store.get(k) == v for k, v in expected.items())


class Writer(threading.Thread):
    """Writes a new file every `every` seconds and fsyncs it (with -o fsync=upload an
    fsync returns once a tier holds the file), timing each write until stopped."""

    def __init__(self, root: Path, tag: str, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.tag, self.every = root, tag, every
        self.written: dict[str, bytes] = {}
        self.durations: list[float] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.done.wait(self.every):
            name = f"{self.tag}/f{n:04d}.bin"
            data = os.urandom(1000 + n * 37)
            start = time.monotonic()
            try:
                fd = os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                self.errors.append(e)
            else:
                self.durations.append(time.monotonic() - start)
                self.written[name] = data
            n += 1

    def stop(self) -> None:
        self.done.set()
        self.join(30)


@pytest.mark.parametrize("kind", ["refused", "hung"])
def test_writes_survive_a_primary_outage_and_land_in_the_primary(
        s3_store, make_mount, tmp_path, kind):
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    spill = tmp_path / "spill"
    spill.mkdir()
    with OutageProxy(port) as proxy:
        m = make_mount(primary_url(s3_store, proxy), env=s3_store.env,
                       args=("--tier", f"file://{spill}", "-o", "debounce=0,fsync=upload"))
        (m.path / "w").mkdir()
        cached = os.urandom(300_000)
        (m.path / "cached.bin").write_bytes(cached)
        m.settle()
        for _ in range(2):  # a block read twice is kept in the daemon's block cache
            assert read_through(m.path / "cached.bin") == cached
        writer = Writer(m.path, "w")
        writer.start()
        wait_for(lambda: len(writer.written) >= 4, what="writes before the outage")
        before = len(writer.written)
        proxy.stop() if kind == "refused" else proxy.hang()
        outage = 30 if kind == "refused" else 15
        end = time.monotonic() + outage
        while time.monotonic() < end:  # reads of cached data go on meanwhile
            assert read_through(m.path / "cached.bin") == cached
            time.sleep(1)
        proxy.start()
        recovered = time.monotonic()
        during = len(writer.written) - before
        wait_for(lambda: len(writer.written) >= before + during + 4, timeout=30,
                 what="writes after the outage")
        writer.stop()
        assert writer.errors == []
        assert during >= outage  # the writes went on throughout
        assert max(writer.durations) < 5, sorted(writer.durations)[-5:]
        m.settle()
        expected = dict(writer.written, **{"cached.bin": cached})
        wait_for(lambda: in_bucket(s3_store, expected), timeout=60,
                 what="every file in the primary")
        took = time.monotonic() - recovered
        assert took < 60
        wait_for(lambda: held(spill) == {}, timeout=30, what="the spill tier to empty")
        print(f"{kind} outage of {outage} s: {during} writes meanwhile, slowest write+fsync "
              f"{max(writer.durations):.2f} s; the primary held all {len(expected)} files "
              f"{took:.1f} s after the recovery")
        # and the mount reads them all back
        for name, data in expected.items():
            assert (m.path / name).read_bytes() == data


def test_a_mirror_serves_a_fresh_mount_while_the_primary_is_down(
        s3_store, make_mount, tmp_path):
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with OutageProxy(port) as proxy:
        config = tmp_path / "tiers.toml"
        config.write_text(
            f'[[tier]]\nurl = "{primary_url(s3_store, proxy)}"\n\n'
            f'[[tier]]\nurl = "file://{mirror}"\nmirror = true\n')
        first = make_mount(str(config), env=s3_store.env, args=("-o", "debounce=0"))
        files = {f"docs/n{i}.txt": os.urandom(2000 + i) for i in range(12)}
        (first.path / "docs").mkdir()
        for name, data in files.items():
            (first.path / name).write_bytes(data)
        first.settle()
        wait_for(lambda: in_bucket(s3_store, files), what="files in the primary")
        wait_for(lambda: all(held(mirror).get(k) == v for k, v in files.items()),
                 what="the mirror to hold every file")
        first.stop()

        proxy.stop()  # the primary goes down; a new daemon starts with an empty cache
        second = make_mount(str(config), env=s3_store.env, args=("-o", "debounce=0"),
                            name="fresh")
        assert "unreachable, starting without it" in second.log()
        assert sorted(os.listdir(second.path / "docs")) == sorted(
            Path(k).name for k in files)
        for name, data in files.items():
            assert (second.path / name).read_bytes() == data
        late = os.urandom(5000)
        (second.path / "docs/late.txt").write_bytes(late)
        second.settle()
        assert held(mirror)["docs/late.txt"] == late
        proxy.start()
        wait_for(lambda: in_bucket(s3_store, {**files, "docs/late.txt": late}), timeout=60,
                 what="the write made during the outage to reach the primary")
        assert all(held(mirror).get(k) == v for k, v in files.items())
