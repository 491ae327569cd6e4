"""The upload queue continues a multipart upload from the parts already stored: after
a transient failure (the next attempt), and after a restart (a new Writeback over the
same journal). The store is moto, the backend the real S3 one; parts are counted as
the client sends them."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from stormount.backends.base import Backend
from stormount.config import WritebackConfig
from stormount.writeback import Journal, Writeback, read_multiparts, read_pending
from tests.backends.test_contract import opened, random_file
from tests.helpers.wire import s3_wire
from tests.stores import Store

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
PART = 5 * MiB
SIZE = 6 * PART - 77
FAST = WritebackConfig(debounce=0, retry_delay=0.05, retry_max_delay=0.1)
META = {"mode": "0644", "mtime": "1700000000.5"}


@pytest.fixture
async def s3(s3_store: Store) -> AsyncIterator[Backend]:
    url = s3_store.tier_url(multipart_threshold="5MiB", part_size="5MiB", max_connections=1)
    async with opened(url) as backend:
        yield backend


async def _until(check: Any, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def test_a_transient_failure_mid_upload_is_followed_by_a_resumed_attempt(
        s3: Backend, s3_store: Store, tmp_path: Path, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    data = random_file(tmp_path / "staged", SIZE)
    wb = Writeback(s3, Journal(str(tmp_path / "journal.sqlite3")), FAST)
    nursery.start_soon(wb.run)
    with s3_wire(s3) as wire, caplog.at_level(logging.INFO, "stormount.writeback"):
        wire.failing = {4}
        wb.submit("big", str(tmp_path / "staged"), None, META)
        await _until(lambda: wb.failures >= 1)
        wire.failing = set()
        await _until(lambda: wb.pending() == [])
    assert wire.parts == [1, 2, 3, 4, 5, 6]  # 1-3 once (first attempt), then 4-6
    assert wb.uploaded == 1 and s3_store.get("big") == data
    assert "resumed: 3 of 6 parts were already stored" in caplog.text
    assert s3_store.multipart_uploads() == []  # type: ignore[attr-defined]
    assert read_multiparts(str(tmp_path / "journal.sqlite3")) == []


async def test_a_restart_resumes_from_the_journal(
        s3: Backend, s3_store: Store, tmp_path: Path) -> None:
    data = random_file(tmp_path / "staged", SIZE)
    path = str(tmp_path / "journal.sqlite3")
    slow_retry = WritebackConfig(debounce=0, retry_delay=3600)
    async with trio.open_nursery() as nursery:  # the first run: cut after 3 parts, then stopped
        wb = Writeback(s3, Journal(path), slow_retry)
        nursery.start_soon(wb.run)
        with s3_wire(s3) as wire:
            wire.failing = {4}
            wb.submit("big", str(tmp_path / "staged"), None, META)
            await _until(lambda: wb.failures >= 1)
        nursery.cancel_scope.cancel()
    wb.journal.close()
    [recorded] = read_multiparts(path)
    assert sorted(recorded.parts) == [1, 2, 3] and recorded.key == "big"

    journal = Journal(path)  # the next run
    wb = Writeback(s3, journal, FAST)
    assert [up.path for up in wb.restore()] == ["big"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wb.run)
        with s3_wire(s3) as wire:
            await _until(lambda: wb.pending() == [])
        nursery.cancel_scope.cancel()
    assert sorted(wire.parts) == [4, 5, 6] and wire.bytes == SIZE - 3 * PART
    assert s3_store.get("big") == data and s3_store.multipart_uploads() == []  # type: ignore[attr-defined]
    assert read_multiparts(path) == [] and read_pending(path) == []
    journal.close()


async def test_content_changed_between_attempts_starts_over(
        s3: Backend, s3_store: Store, tmp_path: Path, nursery: trio.Nursery) -> None:
    random_file(tmp_path / "staged", SIZE)
    wb = Writeback(s3, Journal(str(tmp_path / "journal.sqlite3")),
                   WritebackConfig(debounce=0, retry_delay=3600))
    nursery.start_soon(wb.run)
    with s3_wire(s3) as wire:
        wire.failing = {4}
        wb.submit("big", str(tmp_path / "staged"), None, META)
        await _until(lambda: wb.failures >= 1)
    data = random_file(tmp_path / "staged", SIZE)  # rewritten: a new hand-over
    wb.submit("big", str(tmp_path / "staged"), None, META)
    with s3_wire(s3) as wire:
        await wb.flush()
    assert sorted(wire.parts) == [1, 2, 3, 4, 5, 6]
    assert s3_store.get("big") == data
    assert s3_store.multipart_uploads() == []  # type: ignore[attr-defined]  # old one aborted


async def test_a_file_dropped_from_the_queue_has_its_upload_aborted(
        s3: Backend, s3_store: Store, tmp_path: Path, nursery: trio.Nursery) -> None:
    random_file(tmp_path / "staged", SIZE)
    wb = Writeback(s3, Journal(str(tmp_path / "journal.sqlite3")),
                   WritebackConfig(debounce=0, retry_delay=3600))
    nursery.start_soon(wb.run)
    with s3_wire(s3) as wire:
        wire.failing = {2}
        wb.submit("big", str(tmp_path / "staged"), None, META)
        await _until(lambda: wb.failures >= 1)
    assert s3_store.multipart_uploads() == ["big"]  # type: ignore[attr-defined]
    assert await wb.discard("big")  # unlinked
    await _until(lambda: s3_store.multipart_uploads() == [])  # type: ignore[attr-defined]
    assert read_multiparts(str(tmp_path / "journal.sqlite3")) == []


def test_an_older_journal_gains_the_multipart_tables_in_place(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sqlite3")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE pending (path TEXT PRIMARY KEY, staging TEXT NOT NULL, base TEXT,
            metadata TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
            state TEXT NOT NULL, queued_at REAL NOT NULL);
        INSERT INTO pending VALUES ('a', '/x/stage-a', NULL, '{}', 0, NULL, 'queued', 1.0);
    """)
    db.close()
    assert read_multiparts(path) == []  # read-only readers cope before the upgrade
    journal = Journal(path)
    [up] = journal.load()
    assert (up.path, up.multipart) == ("a", None)
    journal.close()
    assert [row["path"] for row in read_pending(path)] == ["a"]
    assert read_multiparts(path) == []
