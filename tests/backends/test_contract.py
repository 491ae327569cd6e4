"""One contract for every storage backend: memory, file, S3 (moto server) and Azure
(Azurite). Each backend is built the way the daemon builds it, from a tier URL."""

from __future__ import annotations

import base64
import datetime
import errno
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from stormount.backends import Backend, ObjectInfo, list_all, open_backend
from stormount.backends.base import Progress
from stormount.config import parse_tier_url
from stormount.errors import (
    BackendError,
    Changed,
    ConfigError,
    Conflict,
    ContainerMissing,
    NotFound,
    Permanent,
    PermissionDenied,
    Throttled,
    Transient,
)
from tests.stores import Store, free_port

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024
KINDS = ["memory", "file", "s3", "az"]
META = {"mode": "0644", "uid": "1000", "gid": "100", "mtime": "1700000000.25"}


@pytest.fixture(params=KINDS)
def any_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Store:
    st: Store = request.getfixturevalue(f"{request.param}_store")
    for name, value in st.env.items():
        monkeypatch.setenv(name, value)  # as a daemon started with st.env would see it
    return st


@asynccontextmanager
async def opened(url: str, **options: object) -> AsyncIterator[Backend]:
    backend = open_backend(parse_tier_url(url, options or None))
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.fixture
async def backend(any_store: Store) -> AsyncIterator[Backend]:
    async with opened(any_store.url) as b:
        yield b


def keys_of(objects: list[ObjectInfo]) -> list[str]:
    return [o.key for o in objects]


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


# --- objects -----------------------------------------------------------------------------


async def test_put_head_get_round_trip(backend: Backend, any_store: Store) -> None:
    data = b"hello, world\n"
    info = await backend.put_bytes("dir/file.txt", data, {**META, "Extra": "Mixed"})
    expected_meta = {**META, "extra": "Mixed"}
    assert (info.key, info.size, info.metadata) == ("dir/file.txt", len(data), expected_meta)
    assert info.etag

    head = await backend.head("dir/file.txt")
    assert (head.key, head.size, head.etag) == ("dir/file.txt", len(data), info.etag)
    assert head.metadata == expected_meta
    assert abs(head.mtime - info.mtime) < 3
    assert abs(head.mtime - time.time()) < 120

    assert await backend.get_range("dir/file.txt", 0, 100) == data
    assert await backend.get_range("dir/file.txt", 7, 5) == b"world"
    assert await backend.get_range("dir/file.txt", 0, 0) == b""
    # the bytes really are in the store, under the plain key
    assert any_store.get("dir/file.txt") == data
    assert any_store.metadata("dir/file.txt") == expected_meta

    # overwrite replaces data and metadata
    await backend.put_bytes("dir/file.txt", b"new", {"mode": "0600"})
    assert await backend.get_range("dir/file.txt", 0, 10) == b"new"
    assert (await backend.head("dir/file.txt")).metadata == {"mode": "0600"}


async def test_get_range_past_end_and_empty_object(backend: Backend) -> None:
    data = bytes(range(10))
    await backend.put_bytes("ten", data, {})
    assert await backend.get_range("ten", 8, 100) == data[8:]
    assert await backend.get_range("ten", 10, 5) == b""
    assert await backend.get_range("ten", 1000, 5) == b""

    info = await backend.put_bytes("empty", b"", {"mode": "0644"})
    assert info.size == 0
    assert (await backend.head("empty")).size == 0
    assert await backend.get_range("empty", 0, 10) == b""
    assert await backend.get_range("empty", 5, 10) == b""


async def test_conditional_range_read(backend: Backend) -> None:
    first = await backend.put_bytes("v", b"version one", {})
    assert await backend.get_range("v", 0, 7, first.etag) == b"version"
    assert (await backend.head("v")).etag == first.etag  # the version reads and HEADs agree
    second = await backend.put_bytes("v", b"version two", {})
    assert second.etag != first.etag
    with pytest.raises(Changed):
        await backend.get_range("v", 0, 7, first.etag)
    assert await backend.get_range("v", 8, 3, second.etag) == b"two"


async def test_missing_objects(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.head("nope")
    with pytest.raises(NotFound):
        await backend.get_range("nope", 0, 10)
    with pytest.raises(NotFound):
        await backend.head("no/such/dir/")
    with pytest.raises(NotFound):
        await backend.copy("nope", "other")


async def test_delete_is_idempotent(backend: Backend, any_store: Store) -> None:
    await backend.put_bytes("d/x", b"x", {})
    await backend.delete("d/x")
    assert not any_store.exists("d/x")
    await backend.delete("d/x")
    await backend.delete("never/was/here")
    with pytest.raises(NotFound):
        await backend.head("d/x")


# --- markers and listings ----------------------------------------------------------------


async def test_markers_and_listing(backend: Backend, any_store: Store) -> None:
    await backend.put_bytes("a/", b"", {"mode": "0755"})
    await backend.put_bytes("a/x", b"1", {})
    await backend.put_bytes("e/", b"", {})
    await backend.put_bytes("top", b"t", {})
    assert any_store.exists("a/")

    marker = await backend.head("a/")
    assert (marker.key, marker.size, marker.metadata) == ("a/", 0, {"mode": "0755"})

    objects, prefixes = await list_all(backend, "", "/")
    assert (keys_of(objects), prefixes) == (["top"], ["a/", "e/"])

    objects, prefixes = await list_all(backend, "a/", "/")
    assert (keys_of(objects), prefixes) == (["a/", "a/x"], [])
    assert objects[1].size == 1 and objects[1].etag

    objects, prefixes = await list_all(backend, "e/", "/")
    assert (keys_of(objects), prefixes) == (["e/"], [])

    # deleting the marker leaves the directory implied by its child
    await backend.delete("a/")
    objects, prefixes = await list_all(backend, "a/", "/")
    assert (keys_of(objects), prefixes) == (["a/x"], [])


async def test_implied_directories(backend: Backend) -> None:
    await backend.put_bytes("a/b/c", b"c", {})
    await backend.put_bytes("a/b2", b"b2", {})
    assert await list_all(backend, "", "/") == ([], ["a/"])
    objects, prefixes = await list_all(backend, "a/", "/")
    assert (keys_of(objects), prefixes) == (["a/b2"], ["a/b/"])
    objects, prefixes = await list_all(backend, "a/b/", "/")
    assert (keys_of(objects), prefixes) == (["a/b/c"], [])
    with pytest.raises(NotFound):
        await backend.head("a/")  # no marker: the directory exists only by implication
    assert await list_all(backend, "zzz/", "/") == ([], [])


async def pages(backend: Backend, prefix: str, delimiter: str, limit: int) -> list[list[str]]:
    out: list[list[str]] = []
    token: str | None = None
    while True:
        page = await backend.list(prefix, delimiter, token, limit)
        entries = keys_of(page.objects) + page.prefixes
        assert len(entries) <= limit
        out.append(entries)
        token = page.token
        if token is None:
            return out
        assert len(out) < 50, "listing does not end"


async def test_pagination_over_keys(backend: Backend) -> None:
    names = [f"p/k{i}" for i in range(7)]
    for name in reversed(names):
        await backend.put_bytes(name, name.encode(), {})
    await backend.put_bytes("q", b"outside", {})
    got = await pages(backend, "p/", "/", 2)
    flat = [k for page in got for k in page]
    assert flat == names
    assert len(got) >= 4
    flat = [k for page in await pages(backend, "p/k", "/", 3) for k in page]
    assert flat == names


async def test_pagination_over_common_prefixes(backend: Backend) -> None:
    for i in range(5):
        for child in ("x", "y"):
            await backend.put_bytes(f"q/d{i}/{child}", b"", {})
    for i in range(3):
        await backend.put_bytes(f"q/f{i}", b"", {})
    got = await pages(backend, "q/", "/", 2)
    flat = [k for page in got for k in page]
    assert len(flat) == len(set(flat))
    assert [k for k in flat if k.endswith("/")] == [f"q/d{i}/" for i in range(5)]
    assert [k for k in flat if not k.endswith("/")] == [f"q/f{i}" for i in range(3)]
    objects, prefixes = await list_all(backend, "q/", "/")
    assert (keys_of(objects), prefixes) == ([f"q/f{i}" for i in range(3)],
                                            [f"q/d{i}/" for i in range(5)])


async def test_recursive_listing(backend: Backend) -> None:
    keys = ["r/a", "r/b/c", "r/b/d/e", "r/m/", "r/m/n"]
    for key in keys:
        await backend.put_bytes(key, b"data" if not key.endswith("/") else b"", {})
    objects, prefixes = await list_all(backend, "r/", "")
    assert (keys_of(objects), prefixes) == (keys, [])
    sizes = {o.key: o.size for o in objects}
    assert sizes["r/b/d/e"] == 4 and sizes["r/m/"] == 0
    flat = [k for page in await pages(backend, "r/", "", 2) for k in page]
    assert flat == keys


# --- copies ------------------------------------------------------------------------------


async def test_copy(backend: Backend, any_store: Store) -> None:
    data = b"copy me" * 100
    await backend.put_bytes("src", data, {"mode": "0600", "uid": "7"})

    info = await backend.copy("src", "dst")
    assert (info.key, info.size, info.metadata) == ("dst", len(data), {"mode": "0600", "uid": "7"})
    assert any_store.get("dst") == data
    assert any_store.metadata("dst") == {"mode": "0600", "uid": "7"}
    assert (await backend.head("dst")).metadata == {"mode": "0600", "uid": "7"}

    info = await backend.copy("src", "sub/dst2", {"mode": "0644"})
    assert (info.size, info.metadata) == (len(data), {"mode": "0644"})
    assert any_store.get("sub/dst2") == data
    assert (await backend.head("sub/dst2")).metadata == {"mode": "0644"}
    # the source is untouched
    assert (await backend.head("src")).metadata == {"mode": "0600", "uid": "7"}
    assert any_store.get("src") == data


async def test_copy_to_self_replaces_metadata(backend: Backend, any_store: Store) -> None:
    await backend.put_bytes("self", b"same bytes", {"mode": "0600", "uid": "7"})
    info = await backend.copy("self", "self", {"mode": "0700"})
    assert (info.key, info.size, info.metadata) == ("self", 10, {"mode": "0700"})
    assert (await backend.head("self")).metadata == {"mode": "0700"}
    assert any_store.get("self") == b"same bytes"
    # a copy onto itself without metadata changes nothing
    info = await backend.copy("self", "self")
    assert (info.size, info.metadata) == (10, {"mode": "0700"})


# --- uploads from files ------------------------------------------------------------------


async def test_put_file_small(backend: Backend, any_store: Store, tmp_path: Path) -> None:
    data = random_file(tmp_path / "small", 1000)
    info = await backend.put_file("files/small.bin", str(tmp_path / "small"), META)
    assert (info.key, info.size, info.metadata) == ("files/small.bin", 1000, META)
    assert any_store.get("files/small.bin") == data
    head = await backend.head("files/small.bin")
    assert (head.size, head.etag, head.metadata) == (1000, info.etag, META)
    (tmp_path / "empty").write_bytes(b"")
    assert (await backend.put_file("files/empty", str(tmp_path / "empty"), {})).size == 0
    assert await backend.get_range("files/empty", 0, 10) == b""


async def test_put_file_multipart(any_store: Store, tmp_path: Path) -> None:
    data = random_file(tmp_path / "big", 12 * MiB)
    url = any_store.tier_url(multipart_threshold="5MiB", part_size="5MiB")
    async with opened(url) as backend:
        info = await backend.put_file("big.bin", str(tmp_path / "big"), META)
        assert (info.size, info.metadata) == (12 * MiB, META)
        head = await backend.head("big.bin")
        assert (head.size, head.etag, head.metadata) == (12 * MiB, info.etag, META)
        assert await backend.get_range("big.bin", 5 * MiB - 10, 20) == data[
            5 * MiB - 10:5 * MiB + 10]
    assert any_store.get("big.bin") == data
    if any_store.kind == "s3":
        assert info.etag.endswith("-3"), "uploaded in three parts"
    if any_store.kind == "az":
        committed, _ = any_store.client.get_blob_client("big.bin").get_block_list()
        assert [b.size for b in committed] == [5 * MiB, 5 * MiB, 2 * MiB]


@pytest.mark.parametrize("size", ["small", "multipart"])
async def test_conditional_put_file(any_store: Store, tmp_path: Path, size: str) -> None:
    """A write-back upload is conditional on the version it was based on: a version that
    moved on, or an object that appeared meanwhile, is Changed and stays as it was."""
    n = 12 * MiB if size == "multipart" else 1000
    mine, theirs = random_file(tmp_path / "mine", n), b"someone else's"
    url = any_store.tier_url(multipart_threshold="5MiB", part_size="5MiB")
    async with opened(url) as backend:
        created = await backend.put_file("c.bin", str(tmp_path / "mine"), META,
                                         if_absent=True)
        assert any_store.get("c.bin") == mine
        with pytest.raises(Changed):
            await backend.put_file("c.bin", str(tmp_path / "mine"), META, if_absent=True)
        again = await backend.put_file("c.bin", str(tmp_path / "mine"), META,
                                       if_match=created.etag)
        any_store.put("c.bin", theirs)  # another writer
        with pytest.raises(Changed):
            await backend.put_file("c.bin", str(tmp_path / "mine"), META, if_match=again.etag)
        assert any_store.get("c.bin") == theirs
        await backend.delete("c.bin")
        with pytest.raises(Changed):
            await backend.put_file("c.bin", str(tmp_path / "mine"), META, if_match=again.etag)
        assert not any_store.exists("c.bin")


async def test_get_range_of_big_object(backend: Backend, any_store: Store) -> None:
    data = os.urandom(12 * MiB)
    any_store.put("big", data)
    for offset in (0, 5 * MiB - 100, 12 * MiB - 4096):
        assert await backend.get_range("big", offset, 4096) == data[offset:offset + 4096]


# --- tiers with a prefix, and tier-level failures ----------------------------------------


async def test_prefix_tier_sees_only_its_keys(any_store: Store) -> None:
    any_store.put("pre/fix/a", b"A", {"mode": "0644"})
    any_store.put("pre/fix/sub/b", b"B")
    any_store.put("pre/fixother", b"X")
    any_store.put("other/c", b"C")
    async with opened(any_store.tier_url("pre/fix")) as backend:
        objects, prefixes = await list_all(backend, "", "")
        assert (keys_of(objects), prefixes) == (["a", "sub/b"], [])
        objects, prefixes = await list_all(backend, "", "/")
        assert (keys_of(objects), prefixes) == (["a"], ["sub/"])
        head = await backend.head("a")
        assert (head.key, head.size, head.metadata) == ("a", 1, {"mode": "0644"})
        assert await backend.get_range("sub/b", 0, 10) == b"B"
        with pytest.raises(NotFound):
            await backend.head("fixother")
        assert (await backend.put_bytes("new", b"N", {})).key == "new"
        assert (await backend.copy("a", "a2")).key == "a2"
        await backend.delete("a")
        page = await backend.list("", "/", None, 1)
        assert page.objects or page.prefixes
        assert all(not o.key.startswith("pre/") for o in page.objects)
    assert any_store.get("pre/fix/new") == b"N"
    assert any_store.get("pre/fix/a2") == b"A"
    assert not any_store.exists("pre/fix/a")
    assert any_store.get("pre/fixother") == b"X"


async def test_check(any_store: Store, tmp_path: Path) -> None:
    async with opened(any_store.url) as backend:
        await backend.check()
    if any_store.kind == "memory":
        return  # a memory store exists as soon as it is named
    if any_store.kind == "file":
        missing = f"file://{tmp_path}/does-not-exist"
    else:
        missing = any_store.url.replace(any_store.url.split("://")[1].split("?")[0].split("/")[0],
                                        "missing-container-x")
    async with opened(missing) as backend:
        with pytest.raises(ContainerMissing) as err:
            await backend.check()
    assert "missing-container-x" in str(err.value) or "does-not-exist" in str(err.value)


async def test_azure_wrong_key_is_permission_denied(az_store: Store) -> None:
    bad_key = base64.b64encode(os.urandom(64)).decode()
    url = az_store.tier_url(account_url=az_store.account_url,
                            account_key=bad_key, sdk_retries=0)
    async with opened(url) as backend:
        with pytest.raises(PermissionDenied) as err:
            await backend.check()
        assert "access denied" in str(err.value)
        with pytest.raises(PermissionDenied):
            await backend.head("x")


@pytest.mark.parametrize("kind", ["s3", "az"])
async def test_unreachable_endpoint_is_transient(kind: str) -> None:
    port = free_port()  # nothing listens there
    quick: dict[str, object] = {"connect_timeout": 1, "read_timeout": 1, "sdk_retries": 0}
    if kind == "s3":
        url = f"s3://bucket?endpoint=http://127.0.0.1:{port}"
    else:
        url = "az://container"
        quick.update(account_url=f"http://127.0.0.1:{port}/devstoreaccount1",
                     account_key=base64.b64encode(b"k" * 64).decode())
    with trio.fail_after(8):
        async with opened(url, **quick) as backend:
            with pytest.raises(Transient) as err:
                await backend.check()
            assert "cannot reach" in str(err.value)
            with pytest.raises(Transient):
                await backend.head("some/key")
            with pytest.raises(Transient):
                await backend.put_bytes("some/key", b"x", {})


# --- S3 specifics ------------------------------------------------------------------------


async def test_s3_multipart_aborted_on_failure(s3_store: Store, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    random_file(tmp_path / "big", 11 * MiB)
    async with opened(s3_store.tier_url(multipart_threshold="5MiB", part_size="5MiB")) as b:
        client = b._client  # type: ignore[attr-defined]
        real = client.upload_part

        def failing(**kwargs: object) -> object:
            if kwargs["PartNumber"] == 2:
                response: Any = {"Error": {"Code": "InternalError", "Message": "boom"},
                                 "ResponseMetadata": {"HTTPStatusCode": 500}}
                raise ClientError(response, "UploadPart")
            return real(**kwargs)

        monkeypatch.setattr(client, "upload_part", failing)
        with pytest.raises(Transient):
            await b.put_file("big", str(tmp_path / "big"), {})
    assert s3_store.multipart_uploads() == []
    assert not s3_store.exists("big")


async def test_s3_multipart_aborted_on_cancel(s3_store: Store, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    random_file(tmp_path / "big", 11 * MiB)
    async with opened(s3_store.tier_url(multipart_threshold="5MiB", part_size="5MiB")) as b:
        client = b._client  # type: ignore[attr-defined]
        real = client.upload_part
        with trio.CancelScope() as scope:
            def cancelling(**kwargs: object) -> object:
                if kwargs["PartNumber"] == 2:
                    trio.from_thread.run_sync(scope.cancel)
                return real(**kwargs)

            monkeypatch.setattr(client, "upload_part", cancelling)
            await b.put_file("big", str(tmp_path / "big"), {})
        assert scope.cancelled_caught
    assert s3_store.multipart_uploads() == []
    assert not s3_store.exists("big")


@pytest.mark.parametrize("size", [1000, 11 * MiB])
async def test_put_file_reports_its_progress(any_store: Store, tmp_path: Path,
                                             size: int) -> None:
    """Every byte once, however the SDK reads the body (S3 signs it first)."""
    random_file(tmp_path / "f", size)
    progress = Progress()
    progress.begin(size)
    url = any_store.tier_url(multipart_threshold="5MiB", part_size="5MiB")
    async with opened(url) as backend:
        await backend.put_file("f", str(tmp_path / "f"), META, progress=progress)
    assert progress.sent == size and progress.moves > 0
    # the store assembling the parts is a step of its own (the stall watch leaves it be)
    assert progress.finishing == (size > 5 * MiB and any_store.kind in ("s3", "az"))


def _lost_answer(client: Any, monkeypatch: pytest.MonkeyPatch, *, again: bool,
                 meanwhile: Any = None) -> None:
    """CompleteMultipartUpload completes on the server, and its answer is lost: the
    SDK sends it again (`again`), which finds the upload gone, or the connection times
    out and the upload is aborted, which finds it gone."""
    from botocore.exceptions import ReadTimeoutError

    real = client.complete_multipart_upload

    def completing(**kwargs: object) -> object:
        real(**kwargs)
        if meanwhile is not None:
            meanwhile()
        if again:
            return real(**kwargs)
        raise ReadTimeoutError(endpoint_url="http://store")

    monkeypatch.setattr(client, "complete_multipart_upload", completing)


@pytest.mark.parametrize("again", [True, False], ids=["sent-again", "aborted"])
async def test_s3_upload_completed_though_its_answer_was_lost_counts_as_done(
        s3_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        again: bool) -> None:
    data = random_file(tmp_path / "big", 11 * MiB)
    async with opened(s3_store.tier_url(multipart_threshold="5MiB", part_size="5MiB")) as b:
        _lost_answer(b._completer, monkeypatch, again=again)  # type: ignore[attr-defined]
        info = await b.put_file("big", str(tmp_path / "big"), META)
        head = await b.head("big")
    assert (info.size, info.etag, info.metadata) == (11 * MiB, head.etag, META)
    assert info.etag.endswith("-3")
    assert s3_store.get("big") == data and s3_store.multipart_uploads() == []


async def test_s3_upload_gone_and_replaced_by_another_is_a_failure(
        s3_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    random_file(tmp_path / "big", 11 * MiB)
    async with opened(s3_store.tier_url(multipart_threshold="5MiB", part_size="5MiB")) as b:
        _lost_answer(b._completer, monkeypatch, again=False,  # type: ignore[attr-defined]
                     meanwhile=lambda: s3_store.put("big", b"another writer's", META))
        with pytest.raises(Transient):
            await b.put_file("big", str(tmp_path / "big"), META)
    assert s3_store.get("big") == b"another writer's"


async def test_s3_copy_in_parts(s3_store: Store) -> None:
    data = os.urandom(12 * MiB)
    s3_store.put("big", data, {"mode": "0600"})
    async with opened(s3_store.url) as b:
        b.copy_part_limit = 5 * MiB  # type: ignore[attr-defined]
        b.copy_part_size = 5 * MiB  # type: ignore[attr-defined]
        info = await b.copy("big", "copy")
        assert (info.size, info.metadata) == (12 * MiB, {"mode": "0600"})
        assert info.etag.endswith("-3")
        info = await b.copy("big", "copy2", {"mode": "0644"})
        assert info.metadata == {"mode": "0644"}
    assert s3_store.get("copy") == data and s3_store.get("copy2") == data
    assert s3_store.metadata("copy") == {"mode": "0600"}
    assert s3_store.metadata("copy2") == {"mode": "0644"}


async def test_s3_endpoint_from_environment(s3_store: Store,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_store.endpoint)  # type: ignore[attr-defined]
    async with opened(s3_store.url.split("?")[0]) as b:
        client = b._client  # type: ignore[attr-defined]
        assert client.meta.endpoint_url == s3_store.endpoint  # type: ignore[attr-defined]
        assert client.meta.config.s3["addressing_style"] == "path"
        await b.check()
        await b.put_bytes("via-env", b"e", {})
    assert s3_store.get("via-env") == b"e"


async def test_azure_account_url_and_sas_token(az_store: Store) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from tests.stores import AZURITE_ACCOUNT, AZURITE_KEY

    sas = generate_container_sas(
        AZURITE_ACCOUNT, az_store.container, account_key=AZURITE_KEY,  # type: ignore[attr-defined]
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    az_store.put("src", b"via sas", {"mode": "0600"})
    url = az_store.tier_url(account_url=az_store.account_url,  # type: ignore[attr-defined]
                            sas_token=sas)
    async with opened(url) as b:
        await b.check()
        assert await b.get_range("src", 0, 100) == b"via sas"
        info = await b.copy("src", "dst")
        assert info.metadata == {"mode": "0600"}
    assert az_store.get("dst") == b"via sas"


async def test_backend_errors_name_the_object(backend: Backend, any_store: Store) -> None:
    with pytest.raises(BackendError) as err:
        await backend.head("where/is/it")
    assert "where/is/it" in str(err.value)
    assert err.value.key == "where/is/it"


@pytest.mark.parametrize("kind", ["s3", "az"])
async def test_metadata_that_http_cannot_carry_is_refused(
        kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    any_store: Store = request.getfixturevalue(f"{kind}_store")
    for name, value in any_store.env.items():
        monkeypatch.setenv(name, value)
    async with opened(any_store.url) as backend:
        for value in ("two\nlines", " padded", "caf\u00e9"):
            with pytest.raises(Permanent) as err:
                await backend.put_bytes("meta", b"", {"note": value})
            assert err.value.errno == errno.EINVAL
    assert not any_store.exists("meta")


# --- error mapping, without a network ----------------------------------------------------


S3_CODES = [
    ("NoSuchKey", 404, NotFound), ("404", 404, NotFound), ("NoSuchBucket", 404, ContainerMissing),
    ("AccessDenied", 403, PermissionDenied), ("InvalidAccessKeyId", 403, PermissionDenied),
    ("SignatureDoesNotMatch", 403, PermissionDenied), ("ExpiredToken", 400, PermissionDenied),
    ("PreconditionFailed", 412, Conflict), ("OperationAborted", 409, Transient),
    ("SlowDown", 503, Throttled), ("Throttling", 400, Throttled),
    ("TooManyRequests", 429, Throttled), ("RequestTimeout", 400, Transient),
    ("InternalError", 500, Transient), ("502", 502, Transient), ("504", 504, Transient),
    ("InvalidArgument", 400, Permanent), ("InvalidObjectState", 403, Permanent),
]


@pytest.fixture(scope="module")
def offline_s3() -> Any:
    """An S3 backend that is never asked to talk (making a boto3 client takes ~0.5 s)."""
    return open_backend(parse_tier_url("s3://bkt/pre?endpoint=http://127.0.0.1:9"))


@pytest.mark.parametrize(("code", "status", "expected"), S3_CODES)
def test_s3_error_mapping(code: str, status: int, expected: type[BackendError],
                          offline_s3: Any) -> None:
    from botocore.exceptions import ClientError

    backend = offline_s3
    response: Any = {"Error": {"Code": code, "Message": "details"},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    err = backend._map(ClientError(response, "GetObject"), "get", "a/b")
    assert type(err) is expected
    assert (err.key, err.backend) == ("a/b", backend.url)
    assert "s3://bkt/pre/a/b" in str(err) or "bucket bkt" in str(err)


def test_s3_sdk_error_mapping(offline_s3: Any) -> None:
    from botocore import exceptions as bx

    backend = offline_s3
    url = "http://127.0.0.1:9"
    for exc, expected in [(bx.EndpointConnectionError(endpoint_url=url), Transient),
                          (bx.ConnectTimeoutError(endpoint_url=url), Transient),
                          (bx.ReadTimeoutError(endpoint_url=url), Transient),
                          (bx.ConnectionClosedError(endpoint_url=url), Transient),
                          (bx.NoCredentialsError(), PermissionDenied)]:
        assert type(backend._map(exc, "get", "k")) is expected, exc


class _FakeResponse:
    def __init__(self, status: int, code: str) -> None:
        self.status_code = status
        self.reason = "reason"
        self.headers = {"x-ms-error-code": code}
        self.content_type = "application/xml"

    def text(self, encoding: str | None = None) -> str:
        return ""

    def body(self) -> bytes:
        return b""


AZ_CODES = [
    ("BlobNotFound", 404, NotFound), ("ContainerNotFound", 404, ContainerMissing),
    ("AuthenticationFailed", 403, PermissionDenied), ("AuthorizationFailure", 403,
                                                      PermissionDenied),
    ("ConditionNotMet", 412, Conflict), ("LeaseIdMissing", 412, Conflict),
    ("ServerBusy", 503, Throttled), ("", 429, Throttled),
    ("OperationTimedOut", 500, Transient), ("InternalError", 500, Transient),
    ("", 502, Transient), ("InvalidMetadata", 400, Permanent), ("", 400, Permanent),
]


@pytest.mark.parametrize(("code", "status", "expected"), AZ_CODES)
def test_azure_error_mapping(code: str, status: int, expected: type[BackendError]) -> None:
    from azure.core.exceptions import HttpResponseError

    backend: Any = open_backend(parse_tier_url(
        "az://cont/pre", {"connection_string": "DefaultEndpointsProtocol=http;AccountName=a;"
                          "AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/a;"}))
    exc = HttpResponseError(message="details", response=_FakeResponse(status, code))
    exc.error_code = code or None
    err = backend._map(exc, "get", "a/b")
    assert type(err) is expected
    assert err.key == "a/b"


def test_azure_sdk_error_mapping() -> None:
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseError,
    )

    backend: Any = open_backend(parse_tier_url(
        "az://cont", {"connection_string": "DefaultEndpointsProtocol=http;AccountName=a;"
                      "AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/a;"}))
    for exc, expected in [(ServiceRequestError("refused"), Transient),
                          (ServiceResponseError("reset"), Transient),
                          (ClientAuthenticationError("bad key"), PermissionDenied)]:
        assert type(backend._map(exc, "get", "k")) is expected, exc


def test_azure_without_credentials_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(ConfigError) as err:
        open_backend(parse_tier_url("az://cont"))
    assert "AZURE_STORAGE_CONNECTION_STRING" in str(err.value)
