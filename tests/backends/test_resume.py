"""Resumable multipart uploads against real servers (moto, Azurite): an upload cut
short after k of n parts and tried again with its record sends only the n-k parts
missing, counted as they cross the wire (the SDK calls that send a part)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from stormount.backends.resume import Resume
from stormount.errors import Transient
from tests.backends.test_contract import META, MiB, opened, random_file
from tests.helpers.wire import s3_wire, wire_of
from tests.stores import Store

pytestmark = pytest.mark.timeout(60)

PART = 5 * MiB
SIZE = 6 * PART - 123  # six parts, the last one short
# one connection: parts go one after the other, so "k parts landed" is exact
OPTIONS = {"multipart_threshold": "5MiB", "part_size": "5MiB", "max_connections": 1}


def _unfinished(store: Store) -> list[str]:
    if store.kind == "s3":
        return store.multipart_uploads()  # type: ignore[attr-defined,no-any-return]
    return []  # Azure: uncommitted blocks are not listed as uploads here


@pytest.fixture(params=["s3", "az"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Store:
    st: Store = request.getfixturevalue(f"{request.param}_store")
    for name, value in st.env.items():
        monkeypatch.setenv(name, value)
    return st


async def test_interrupted_upload_resumes_with_the_missing_parts_only(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = random_file(tmp_path / "big", SIZE)
    resume = Resume("sig-1")
    async with opened(store.tier_url(**OPTIONS)) as b:
        with wire_of(store.kind, b, monkeypatch) as wire:
            wire.failing = {4}
            with pytest.raises(Transient):
                await b.put_file("big", str(tmp_path / "big"), META, resume=resume)
            assert wire.parts == [1, 2, 3]
        recorded = resume.recorded
        assert recorded is not None and sorted(recorded.parts) == [1, 2, 3]
        # not aborted: the parts stay for the next attempt
        assert _unfinished(store) == (["big"] if store.kind == "s3" else [])

        again = Resume("sig-1", recorded)
        with wire_of(store.kind, b, monkeypatch) as wire:
            info = await b.put_file("big", str(tmp_path / "big"), META, resume=again)
        assert sorted(wire.parts) == [4, 5, 6]
        assert wire.bytes == SIZE - 3 * PART
    assert (again.reused, again.parts) == (3, 6) and again.recorded is None
    assert info.size == SIZE and store.get("big") == data
    assert store.metadata("big") == META
    assert _unfinished(store) == []


async def test_a_part_whose_local_bytes_changed_is_sent_again(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signature is a quick test; the MD5 of each part's bytes is the proof."""
    random_file(tmp_path / "big", SIZE)
    resume = Resume("same")
    async with opened(store.tier_url(**OPTIONS)) as b:
        with wire_of(store.kind, b, monkeypatch) as wire:
            wire.failing = {4}
            with pytest.raises(Transient):
                await b.put_file("big", str(tmp_path / "big"), META, resume=resume)
        with open(tmp_path / "big", "r+b") as f:  # part 2 changes, the signature does not
            f.seek(PART + 10)
            f.write(b"changed")
        data = (tmp_path / "big").read_bytes()
        again = Resume("same", resume.recorded)
        with wire_of(store.kind, b, monkeypatch) as wire:
            await b.put_file("big", str(tmp_path / "big"), META, resume=again)
        assert sorted(wire.parts) == [2, 4, 5, 6]
    assert store.get("big") == data


async def test_changed_staging_starts_over_and_the_old_upload_is_aborted(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    random_file(tmp_path / "big", SIZE)
    resume = Resume("v1")
    async with opened(store.tier_url(**OPTIONS)) as b:
        with wire_of(store.kind, b, monkeypatch) as wire:
            wire.failing = {4}
            with pytest.raises(Transient):
                await b.put_file("big", str(tmp_path / "big"), META, resume=resume)
        old = resume.recorded
        assert old is not None
        data = random_file(tmp_path / "big", SIZE)  # new content: a new signature
        again = Resume("v2", old)
        with wire_of(store.kind, b, monkeypatch) as wire:
            await b.put_file("big", str(tmp_path / "big"), META, resume=again)
        assert sorted(wire.parts) == [1, 2, 3, 4, 5, 6]
    assert again.reused == 0 and store.get("big") == data
    assert _unfinished(store) == []  # S3: the old upload was aborted


async def test_a_conflict_at_completion_aborts_the_upload(
        s3_store: Store, tmp_path: Path) -> None:
    from stormount.errors import Changed

    random_file(tmp_path / "big", SIZE)
    s3_store.put("big", b"someone else's")
    resume = Resume("c")
    async with opened(s3_store.tier_url(**OPTIONS)) as b:
        with pytest.raises(Changed):
            await b.put_file("big", str(tmp_path / "big"), META, if_absent=True,
                             resume=resume)
    assert resume.recorded is None
    assert s3_store.multipart_uploads() == []  # type: ignore[attr-defined]
    assert s3_store.get("big") == b"someone else's"


async def test_a_cancelled_attempt_leaves_its_parts_for_the_next_even_those_landing_late(
        s3_store: Store, tmp_path: Path) -> None:
    data = random_file(tmp_path / "big", SIZE)
    resume = Resume("x")
    async with opened(s3_store.tier_url(**OPTIONS)) as b:
        with trio.CancelScope() as scope, s3_wire(b) as wire:
            def landed(**kwargs: Any) -> None:
                if len(wire.parts) == 2:
                    trio.from_thread.run_sync(scope.cancel)
            b._client.meta.events.register(  # type: ignore[attr-defined]
                "after-call.s3.UploadPart", landed, unique_id="cancel")
            await b.put_file("big", str(tmp_path / "big"), META, resume=resume)
        b._client.meta.events.unregister(  # type: ignore[attr-defined]
            "after-call.s3.UploadPart", unique_id="cancel")
        assert s3_store.multipart_uploads() == ["big"]  # type: ignore[attr-defined]
        recorded = resume.recorded
        assert recorded is not None
        # part 2 was in flight at the cancel: its thread, abandoned, still records it
        with trio.fail_after(10):
            while len(recorded.parts) < 2:
                await trio.sleep(0.01)
        again = Resume("x", recorded)
        with s3_wire(b) as wire:
            await b.put_file("big", str(tmp_path / "big"), META, resume=again)
        assert again.reused == 2 and sorted(wire.parts) == [3, 4, 5, 6]
    assert s3_store.get("big") == data and s3_store.multipart_uploads() == []  # type: ignore[attr-defined]


async def test_abandon_aborts_a_recorded_upload(s3_store: Store, tmp_path: Path) -> None:
    random_file(tmp_path / "big", SIZE)
    resume = Resume("a")
    async with opened(s3_store.tier_url(**OPTIONS)) as b:
        with s3_wire(b) as wire:
            wire.failing = {2}
            with pytest.raises(Transient):
                await b.put_file("big", str(tmp_path / "big"), META, resume=resume)
        assert resume.recorded is not None
        await b.abandon(resume.recorded)  # type: ignore[attr-defined]
    assert s3_store.multipart_uploads() == []  # type: ignore[attr-defined]
    assert not os.path.exists(tmp_path / "nothing")
