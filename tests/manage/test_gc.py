"""`stormount gc`: finds what crashes and failed uploads leave behind, changes nothing
without --apply, and with it removes exactly the leftovers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

import pytest
import trio

from stormount.backends.local import LocalBackend
from stormount.chain.repair import STAMP
from stormount.config import parse_tier_url
from stormount.registry import mounted_fuse
from stormount.writeback import Journal, Upload, read_pending
from tests.helpers.cli import one_error_line, run
from tests.helpers.journal import journal_with_reserved_rows
from tests.helpers.mounts import wait_for

pytestmark = pytest.mark.timeout(120)


def gc(*args, env=None):
    result = run("gc", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def kinds(report):
    return sorted((f["kind"], f["what"], f["action"], f["done"]) for f in report["findings"])


def test_an_abandoned_multipart_upload_and_a_stray_probe_are_found_then_removed(s3_store):
    s3_store.put("kept.txt", b"a real file")
    s3_store.put(".stormount/probe/deadhost-123", b"probe")
    upload = s3_store.client.create_multipart_upload(Bucket=s3_store.bucket, Key="big.iso")
    s3_store.client.upload_part(Bucket=s3_store.bucket, Key="big.iso", PartNumber=1,
                                UploadId=upload["UploadId"], Body=b"p" * 1024)
    up = f"big.iso (upload {upload['UploadId']})"

    # the default is a dry run, and young leftovers are left alone (the probe is seconds
    # old; moto dates every multipart upload 2010-11-10, so it cannot show that rule)
    young = gc(s3_store.url, env=s3_store.env)
    assert young["apply"] is False and [f["kind"] for f in young["findings"]] == [
        "unfinished-upload"]
    dry = gc(s3_store.url, "--older-than", "0", env=s3_store.env)
    assert dry["apply"] is False
    assert kinds(dry) == [("probe", ".stormount/probe/deadhost-123", "remove", False),
                          ("unfinished-upload", up, "remove", False)]
    assert s3_store.multipart_uploads() == ["big.iso"]
    table = run("gc", s3_store.url, "--older-than", "0", env=s3_store.env)
    assert "would be cleaned up; nothing was changed" in table.stdout

    applied = gc(s3_store.url, "--older-than", "0", "--apply", env=s3_store.env)
    assert kinds(applied) == [("probe", ".stormount/probe/deadhost-123", "remove", True),
                              ("unfinished-upload", up, "remove", True)]
    assert s3_store.multipart_uploads() == []
    assert s3_store.keys() == ["kept.txt"]
    assert gc(s3_store.url, "--older-than", "0")["findings"] == []


def test_a_spilled_copy_is_removed_only_once_the_primary_holds_its_version(s3_store, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    (spill / "repaired.txt").write_bytes(b"copied up")
    (spill / "owed.txt").write_bytes(b"not copied up yet")

    async def etag() -> str:
        return (await LocalBackend(parse_tier_url(f"file://{spill}")).head("repaired.txt")).etag
    # the primary's copy says which version it is a copy of, as the chain's copy up does
    s3_store.put("repaired.txt", b"copied up", metadata={STAMP: trio.run(etag)})
    tiers = (s3_store.url, "--tier", f"file://{spill}", "--older-than", "0")
    dry = gc(*tiers, env=s3_store.env)
    assert kinds(dry) == [("repaired-spill", "repaired.txt", "remove", False),
                          ("unrepaired-spill", "owed.txt", "keep", False)]
    gc(*tiers, "--apply", env=s3_store.env)
    assert sorted(os.listdir(spill)) == ["owed.txt"]  # the owed copy stays for its repair
    assert s3_store.get("repaired.txt") == b"copied up"


def test_a_crashed_mounts_cache_directory(tmp_path, make_mount):
    store = tmp_path / "store"
    store.mkdir()
    m = make_mount(f"file://{store}", args=("-o", "debounce=3600"))
    (m.path / "queued.txt").write_bytes(b"closed, journaled")
    # while the mount runs, its cache directory is not touched
    line = one_error_line(run("gc", f"file://{store}", "--cache-dir", str(m.cache_dir)))
    assert "in use by a running mount" in line
    assert m.proc is not None
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait()
    wait_for(lambda: mounted_fuse(str(m.path)) is None, timeout=10, what="auto unmount")
    staging = m.cache_dir / "staging"
    db = sqlite3.connect(m.cache_dir / "journal.sqlite3")
    (queued,) = db.execute("SELECT staging FROM pending WHERE path = 'queued.txt'").fetchone()
    db.close()
    os.unlink(queued)  # deleted by hand: that row can no longer upload
    stray = staging / "stage-stray"
    stray.write_bytes(b"no row names me")  # a staging file no journal row names

    dry = gc(f"file://{store}", "--cache-dir", str(m.cache_dir), "--older-than", "0")
    assert kinds(dry) == [("lost-staging", "queued.txt", "drop", False),
                          ("unqueued-staging", str(stray), "recover", False)]
    assert stray.exists()
    applied = gc(f"file://{store}", "--cache-dir", str(m.cache_dir), "--older-than", "0",
                 "--apply")
    assert kinds(applied) == [("lost-staging", "queued.txt", "drop", True),
                              ("unqueued-staging", str(stray), "recover", True)]
    recovered = [p for p in (m.cache_dir / "recovered").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in recovered] == [b"no row names me"]
    # the recovered data is reported, never removed; the dropped row is gone for good
    again = gc(f"file://{store}", "--cache-dir", str(m.cache_dir), "--older-than", "0",
               "--apply")
    assert [(f["kind"], f["action"]) for f in again["findings"]] == [("recovered", "keep")]
    assert [p.read_bytes() for p in recovered] == [b"no row names me"]
    m.start()  # and the next mount starts clean
    assert "queued.txt" not in os.listdir(m.path)


def test_journal_rows_under_the_reserved_name_are_dropped_their_data_recovered(tmp_path):
    """Issue 19: rows under `.stormount/` that an earlier version took in can never
    upload. A mount drops them at its start; `gc --cache-dir` drops them too (whatever
    their age), with the same code: the row gone, its bytes under recovered/, one line
    of the output saying where."""
    store = tmp_path / "store"
    store.mkdir()
    cache = tmp_path / "cache"
    staged = journal_with_reserved_rows(cache, b"acknowledged bytes\n")
    where = (f"file://{store}", "--cache-dir", str(cache))

    dry = gc(*where)
    assert kinds(dry) == [("reserved-row", ".stormount/", "recover", False),
                          ("reserved-row", ".stormount/inner", "recover", False)]
    assert sorted(row["path"] for row in read_pending(str(cache / "journal.sqlite3"))) == [
        ".stormount/", ".stormount/inner"]
    assert staged.exists()

    result = run("gc", *where, "--apply")
    assert result.returncode == 0, result.stderr
    assert read_pending(str(cache / "journal.sqlite3")) == []
    (kept,) = (cache / "recovered").glob("*/.stormount/inner")
    assert kept.read_bytes() == b"acknowledged bytes\n" and not staged.exists()
    (line,) = [line for line in result.stdout.splitlines() if ".stormount/inner" in line]
    assert "reserved-row" in line and f"moved to {kept.relative_to(cache)}" in line, line
    again = gc(*where)
    assert [(f["kind"], f["action"]) for f in again["findings"]] == [("recovered", "keep")]


def test_bad_age_is_one_line(s3_store):
    assert "expected an age" in one_error_line(run("gc", s3_store.url, "--older-than",
                                                   "soon", env=s3_store.env))


def test_uncommitted_azure_blocks_are_found_then_discarded(az_store):
    az_store.put("kept.txt", b"a real file")
    blob = az_store.client.get_blob_client("half-uploaded.bin")
    blob.stage_block(block_id="YmxvY2stMQ==", data=b"b" * 2048)  # never committed
    dry = gc(az_store.url, "--older-than", "0", env=az_store.env)
    assert [(f["kind"], f["what"], f["done"]) for f in dry["findings"]] == [
        ("unfinished-upload", "half-uploaded.bin", False)]
    assert blob.get_block_list("uncommitted")[1]  # still there after the dry run
    applied = gc(az_store.url, "--older-than", "0", "--apply", env=az_store.env)
    assert [f["done"] for f in applied["findings"]] == [True]
    assert az_store.keys() == ["kept.txt"]
    assert gc(az_store.url, "--older-than", "0", env=az_store.env)["findings"] == []


def journaled_upload(s3_store, cache, staging: str) -> dict:
    """A row for big.iso (staged at `staging` in the cache) that recorded a multipart
    upload begun in the store; the upload."""
    from stormount.backends.resume import Recorded

    (cache / "staging").mkdir(parents=True)
    ours = s3_store.client.create_multipart_upload(Bucket=s3_store.bucket, Key="big.iso")
    journal = Journal(str(cache / "journal.sqlite3"))
    journal.put(Upload("big.iso", str(cache / "staging" / staging), None, {}))
    journal.begin_multipart("big.iso", Recorded(s3_store.url, "big.iso", ours["UploadId"],
                                                5 << 20, "sig"))
    journal.close()
    return ours


def test_an_upload_a_journal_records_as_resumable_is_kept(s3_store, tmp_path):
    cache = tmp_path / "cache"
    ours = journaled_upload(s3_store, cache, "stage-big")
    (cache / "staging" / "stage-big").write_bytes(b"content")
    orphan = s3_store.client.create_multipart_upload(Bucket=s3_store.bucket, Key="old.iso")

    applied = gc(s3_store.url, "--older-than", "0", "--apply", "--cache-dir", str(cache),
                 env=s3_store.env)
    assert kinds(applied) == [
        ("resumable-upload", f"big.iso (upload {ours['UploadId']})", "keep", False),
        ("unfinished-upload", f"old.iso (upload {orphan['UploadId']})", "remove", True)]
    assert s3_store.multipart_uploads() == ["big.iso"]


def test_a_dropped_rows_recorded_upload_is_removed_with_it(s3_store, tmp_path):
    """A row whose staging file is gone is dropped with the multipart upload it recorded:
    nothing can resume that upload any more, so it is an unfinished upload like another
    (it was kept as resumable for ever, and its parts billed)."""
    cache = tmp_path / "cache"
    ours = journaled_upload(s3_store, cache, "stage-gone")  # (never written)
    applied = gc(s3_store.url, "--older-than", "0", "--apply", "--cache-dir", str(cache),
                 env=s3_store.env)
    assert ("lost-staging", "big.iso", "drop", True) in kinds(applied)
    # the next run finds the upload no row records any more, and removes it
    again = gc(s3_store.url, "--older-than", "0", "--apply", "--cache-dir", str(cache),
               env=s3_store.env)
    assert kinds(again) == [
        ("unfinished-upload", f"big.iso (upload {ours['UploadId']})", "remove", True)]
    assert s3_store.multipart_uploads() == []
