"""A file read while another client replaces it gives the version it was opened on, or
ESTALE: never bytes of two versions (issue 19, finding 10). Two ways in: the mount
learning of the new version mid-read (a stat, an invalidate), and a ranged GET cut short
on the wire whose retry would find the new version."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from tests.helpers.proxy import CountingProxy

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
SIZE = 24 * MiB


def versions() -> tuple[bytes, bytes]:
    old = os.urandom(SIZE)
    new = bytes(b ^ 0xFF for b in old[:MiB]) * (SIZE // MiB)
    return old, new


def read_rest(fd: int, first: bytes) -> bytes | int:
    """The whole file through `fd` (its start already read), or the errno that ended it."""
    parts = [first]
    try:
        while chunk := os.read(fd, MiB):
            parts.append(chunk)
    except OSError as e:
        return e.errno or 0
    return b"".join(parts)


def whole_or_stale(got: bytes | int, old: bytes, new: bytes) -> None:
    if isinstance(got, int):
        assert got == errno.ESTALE, os.strerror(got)
        return
    digest = hashlib.md5(got).hexdigest()
    assert got == old, (f"read {len(got)} bytes, md5 {digest}: neither the version opened "
                        f"({hashlib.md5(old).hexdigest()}) nor whole")
    assert got != new


@pytest.mark.parametrize("store", ["s3", "az"], indirect=True)
def test_a_replacement_seen_mid_read_never_mixes_versions(store, make_mount):
    old, new = versions()
    store.put("big.bin", old)
    m = make_mount(store.url, env=store.env, args=("-o", "metadata_ttl=0"))
    path = m.path / "big.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        first = os.read(fd, MiB)
        assert first == old[:MiB]
        store.put("big.bin", new)
        assert m.ask("invalidate", "big.bin")
        assert os.stat(path).st_size == SIZE  # the mount now knows the new version
        whole_or_stale(read_rest(fd, first), old, new)
    finally:
        os.close(fd)
    assert path.read_bytes() == new  # a new open reads the new version


@pytest.mark.parametrize("store", ["s3", "az"], indirect=True)
def test_a_get_cut_mid_body_and_retried_keeps_the_version(store, make_mount):
    """The first ranged GET of the file is cut after 300 KiB of its body; before its retry,
    another client replaces the object. The retry must ask for the same version (and get
    "changed", shown as ESTALE) or the read must come whole from the first version."""
    old, new = versions()
    store.put("big.bin", old)
    host_port = store.endpoint if store.kind == "s3" else store.account_url
    port = int(host_port.rsplit(":", 1)[1].split("/")[0])
    with CountingProxy(port) as proxy:
        url = store.url.replace(f":{port}", f":{proxy.port}")
        if store.kind == "az":
            env = {**store.env, "AZURE_STORAGE_CONNECTION_STRING": store.env[
                "AZURE_STORAGE_CONNECTION_STRING"].replace(f":{port}", f":{proxy.port}")}
        else:
            env = store.env
        m = make_mount(url, env=env, args=("-o", "metadata_ttl=0"))
        path = m.path / "big.bin"
        replaced = []

        def replace() -> None:
            store.put("big.bin", new)
            replaced.append(True)

        proxy.cut_response("GET", "big.bin", after=300 * 1024, then=replace)
        fd = os.open(path, os.O_RDONLY)
        try:
            got = read_rest(fd, b"")
        finally:
            os.close(fd)
        assert replaced, "no GET of big.bin was cut"
        whole_or_stale(got, old, new)
        # nothing short or foreign was kept as a block of the old version: a fresh read
        # gives the new version whole
        m.ask("invalidate", "big.bin")
        assert path.read_bytes() == new


@pytest.mark.parametrize("store", ["s3", "az"], indirect=True)
def test_a_file_moved_by_the_mount_while_open_reads_on_whole(store, make_mount):
    """A move is a copy, a new version on Azure: an open file follows it."""
    old, _ = versions()
    store.put("d/big.bin", old)
    m = make_mount(store.url, env=store.env)
    fd = os.open(m.path / "d" / "big.bin", os.O_RDONLY)
    try:
        first = os.read(fd, MiB)
        os.rename(m.path / "d" / "big.bin", m.path / "d" / "moved.bin")
        os.rename(m.path / "d", m.path / "e")
        assert read_rest(fd, first) == old
    finally:
        os.close(fd)
    assert (m.path / "e" / "moved.bin").read_bytes() == old
