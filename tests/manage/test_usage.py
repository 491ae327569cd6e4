"""`stormount usage`: totals that match what the store holds, per folder and per tier,
from the store itself or from a running mount."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import one_error_line, run

pytestmark = pytest.mark.timeout(120)

TREE = {"photos/2024/a.jpg": 1000, "photos/2024/b.jpg": 2500, "photos/c.jpg": 300,
        "docs/report.txt": 42, "top.txt": 7}


def fill(store, tree=TREE):
    for key, size in tree.items():
        store.put(key, b"x" * size)


def usage(*args, env=None):
    result = run("usage", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_options_may_come_from_the_environment(data):
    """STORMOUNT_<COMMAND>_<OPTION>, named as the option is typed: --json and --depth."""
    (data / "a").mkdir()
    (data / "a" / "f.txt").write_bytes(b"x" * 10)
    result = run("usage", f"file://{data}",
                 env={"STORMOUNT_USAGE_JSON": "1", "STORMOUNT_USAGE_DEPTH": "0"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["depth"] == 0 and report["folders"] == []
    # the command line wins over the environment
    result = run("usage", f"file://{data}", "--depth", "1",
                 env={"STORMOUNT_USAGE_JSON": "1", "STORMOUNT_USAGE_DEPTH": "0"})
    assert json.loads(result.stdout)["depth"] == 1


def rows(report):
    return {row["path"]: (row["files"], row["bytes"]) for row in report["folders"]}


def test_usage_of_a_bucket_matches_what_it_holds(s3_store, tmp_path):
    fill(s3_store)
    s3_store.put("photos/", b"")  # a directory marker is no file
    s3_store.put(".stormount/probe/x", b"probe")  # nor is the chain's own probe
    report = usage(s3_store.url, "--depth", "2", env=s3_store.env)
    assert (report["files"], report["bytes"]) == (5, sum(TREE.values()))
    assert rows(report) == {"photos": (3, 3800), "photos/2024": (2, 3500),
                            "docs": (1, 42)}
    # a folder of it, as SOURCE/PATH
    sub = usage(s3_store.tier_url("photos"), env=s3_store.env)
    assert (sub["files"], sub["bytes"]) == (3, 3800)
    assert rows(sub) == {"2024": (2, 3500)}
    # the table names the folders and totals
    table = run("usage", s3_store.url, env=s3_store.env)
    assert table.returncode == 0, table.stderr
    assert "photos" in table.stdout and "(all)" in table.stdout and "3.7 KiB" in table.stdout


def test_usage_by_tier_counts_a_key_on_two_tiers_once_in_the_tree(s3_store, tmp_path):
    fill(s3_store)
    spill = tmp_path / "spill"
    (spill / "photos").mkdir(parents=True)
    (spill / "photos" / "c.jpg").write_bytes(b"y" * 300)  # on both tiers
    (spill / "spilled.bin").write_bytes(b"z" * 10)  # only on the lower one
    report = usage(s3_store.url, "--tier", f"file://{spill}", env=s3_store.env)
    assert (report["files"], report["bytes"]) == (6, sum(TREE.values()) + 10)
    tiers = {t["index"]: (t["files"], t["bytes"]) for t in report["tiers"]}
    assert tiers == {0: (5, sum(TREE.values())), 1: (2, 310)}
    table = run("usage", s3_store.url, "--tier", f"file://{spill}", "--by", "tier",
                env=s3_store.env)
    assert table.returncode == 0, table.stderr
    assert f"file://{spill}" in table.stdout


def test_usage_of_a_running_mount_counts_what_is_not_uploaded_yet(data, mnt, tmp_path):
    (data / "docs").mkdir()
    (data / "docs" / "old.txt").write_bytes(b"o" * 100)
    mounted = run("mount", f"file://{data}", str(mnt), "--cache-dir", str(tmp_path / "c"),
                  "-o", "debounce=3600")
    assert mounted.returncode == 0, mounted.stderr
    try:
        (mnt / "docs" / "new.txt").write_bytes(b"n" * 50)  # queued for an hour
        assert not (data / "docs" / "new.txt").exists()
        report = usage(str(mnt))
        assert (report["files"], report["bytes"]) == (2, 150)
        assert rows(report) == {"docs": (2, 150)}
        line = one_error_line(run("usage", str(mnt), "--by", "tier"))
        assert "--by tier needs the store" in line
    finally:
        assert run("unmount", str(mnt)).returncode == 0


def test_usage_errors_are_one_line(s3_store, tmp_path):
    missing = s3_store.url.replace(s3_store.bucket, "no-such-bucket-usage", 1)
    line = one_error_line(run("usage", missing, env=s3_store.env))
    assert "no-such-bucket-usage" in line and "does not exist" in line
    assert "not a storage URL" in one_error_line(run("usage", "no-such-thing"))
