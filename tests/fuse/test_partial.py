"""A change to part of a big stored object sends only the parts it touched: the rest is
copied in the store from the version it replaces (S3 UploadPartCopy). Bytes are counted
where they cross the wire, at a proxy in front of the store."""

from __future__ import annotations

import os
import urllib.parse

import pytest

from tests.helpers.proxy import CountingProxy

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024


def mount_through(proxy: CountingProxy, s3_store, make_mount):
    """A mount of the bucket through `proxy`, in parts of 8 MiB, uploading at once."""
    url = (f"s3://{s3_store.bucket}?endpoint=http://127.0.0.1:{proxy.port}"
           "&part_size=8MiB&multipart_threshold=8MiB")
    return make_mount(url, env=s3_store.env, args=("-o", "debounce=0"))


def test_a_4k_change_inside_a_64mib_object_sends_one_part(s3_store, make_mount):
    data = bytearray(os.urandom(64 * MiB))
    s3_store.put("big", bytes(data))
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    with CountingProxy(port) as proxy:
        m = mount_through(proxy, s3_store, make_mount)
        change = os.urandom(4096)
        fd = os.open(m.path / "big", os.O_RDWR)
        try:
            os.pwrite(fd, change, 30 * MiB)
        finally:
            os.close(fd)
        proxy.reset()  # what the upload sends, not the staging download
        m.settle()
        sent = proxy.upstream_bytes
        m.stop()
    data[30 * MiB:30 * MiB + 4096] = change
    assert s3_store.get("big") == bytes(data)
    print(f"4 KiB changed in 64 MiB: {sent} B sent")
    assert sent <= 16 * MiB


def test_a_file_grown_past_its_stored_end_copies_only_the_unchanged_start(s3_store,
                                                                         make_mount):
    data = os.urandom(40 * MiB)
    s3_store.put("log", data)
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    with CountingProxy(port) as proxy:
        m = mount_through(proxy, s3_store, make_mount)
        tail = os.urandom(3 * MiB)
        with open(m.path / "log", "r+b") as f:  # a write past the end: a gap of zeros
            f.seek(50 * MiB)
            f.write(tail)
        proxy.reset()
        m.settle()
        sent = proxy.upstream_bytes
        m.stop()
    assert s3_store.get("log") == data + bytes(10 * MiB) + tail
    assert sent <= 24 * MiB  # the parts from 40 MiB on, not the 40 MiB before


def test_a_file_cut_and_grown_again_is_stored_as_written(s3_store, make_mount):
    data = os.urandom(40 * MiB)
    s3_store.put("f", data)
    port = urllib.parse.urlsplit(s3_store.endpoint).port
    with CountingProxy(port) as proxy:
        m = mount_through(proxy, s3_store, make_mount)
        with open(m.path / "f", "r+b") as f:
            f.truncate(20 * MiB)  # the stored bytes after 20 MiB are gone...
            f.truncate(30 * MiB)  # ...and come back as zeros
            f.seek(5 * MiB)
            f.write(b"changed")
        proxy.reset()
        m.settle()
        sent = proxy.upstream_bytes
        m.stop()
    expected = bytearray(data[:20 * MiB] + bytes(10 * MiB))
    expected[5 * MiB:5 * MiB + 7] = b"changed"
    assert s3_store.get("f") == bytes(expected)
    assert sent <= 24 * MiB  # the part from 8 to 16 MiB was copied
