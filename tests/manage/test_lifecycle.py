"""Lifecycle rules: a dry run lists exactly the expired files, --apply deletes or moves
only those, and files a mount has not uploaded yet are never touched, by the command or
by the daemon's own schedule."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.helpers.cli import one_error_line, run, run_in_process
from tests.helpers.mounts import wait_for

pytestmark = pytest.mark.timeout(120)
DAY = 86400

RULES = """
[[lifecycle]]
prefix = "logs/keep"
older_than = "10y"
action = "warn"

[[lifecycle]]
prefix = "logs"
older_than = "30d"
action = "delete"

[[lifecycle]]
prefix = "projects/done"
older_than = "7d"
action = "move"
to = "file://{archive}"

[[lifecycle]]
prefix = "reports"
older_than = "1d"
action = "warn"
"""


def aged(store, key, days, body=None):
    """An object whose mtime (in the metadata the mount writes) is `days` old."""
    mtime = time.time() - days * DAY
    store.put(key, body if body is not None else key.encode(),
              metadata={"mtime": f"{mtime:.9f}", "mode": "33188"})


def lifecycle(*args, env=None):
    result = run("lifecycle", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def decisions(report):
    return [(d["rule"], d["action"], d["key"], d["done"], d["skipped"] is not None)
            for d in report["decisions"]]


@pytest.fixture
def rules_file(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    path = tmp_path / "rules.toml"
    path.write_text(RULES.format(archive=archive))
    return path, archive


def test_dry_run_lists_exactly_the_expired_files_and_apply_handles_only_them(
        s3_store, rules_file):
    rules, archive = rules_file
    aged(s3_store, "logs/old.log", 40)
    aged(s3_store, "logs/recent.log", 3)
    aged(s3_store, "logs/keep/important.log", 60)  # rule 1 holds it: rule 2 does not get it
    aged(s3_store, "logs/deep/older.log", 90)
    aged(s3_store, "projects/done/site.tar", 10, b"t" * 5000)
    aged(s3_store, "projects/active/plan.txt", 400)  # no rule for it
    aged(s3_store, "reports/q1.pdf", 2)
    s3_store.put("logs/no-metadata.log", b"x")  # the store's own time: just now
    before = s3_store.keys()

    dry = lifecycle(s3_store.url, "--config", str(rules), env=s3_store.env)
    assert decisions(dry) == [(2, "delete", "logs/deep/older.log", False, False),
                              (2, "delete", "logs/old.log", False, False),
                              (3, "move", "projects/done/site.tar", False, False),
                              (4, "warn", "reports/q1.pdf", False, False)]
    assert s3_store.keys() == before  # a dry run changes nothing
    table = run("lifecycle", s3_store.url, "--config", str(rules), env=s3_store.env)
    assert "nothing was changed: run with --apply" in table.stdout

    applied = lifecycle(s3_store.url, "--config", str(rules), "--apply", env=s3_store.env)
    assert decisions(applied) == [(2, "delete", "logs/deep/older.log", True, False),
                                  (2, "delete", "logs/old.log", True, False),
                                  (3, "move", "projects/done/site.tar", True, False),
                                  (4, "warn", "reports/q1.pdf", False, False)]
    assert s3_store.keys() == ["logs/keep/important.log", "logs/no-metadata.log",
                               "logs/recent.log",
                               "projects/active/plan.txt", "reports/q1.pdf"]
    assert (archive / "projects" / "done" / "site.tar").read_bytes() == b"t" * 5000


def test_files_not_uploaded_yet_are_never_touched(s3_store, rules_file, mnt, tmp_path):
    rules, _ = rules_file
    aged(s3_store, "logs/old.log", 40)
    aged(s3_store, "logs/edited.log", 40)
    cache = tmp_path / "cache"
    mounted = run("mount", s3_store.url, str(mnt), "--cache-dir", str(cache),
                  "-o", "debounce=3600", env=s3_store.env)
    assert mounted.returncode == 0, mounted.stderr
    try:
        (mnt / "logs" / "edited.log").write_bytes(b"new content, queued for an hour")
        old = time.time() - 40 * DAY
        os.utime(mnt / "logs" / "edited.log", (old, old))
        # the running mount of the same SOURCE is found by itself
        applied = lifecycle(s3_store.url, "--config", str(rules), "--apply", env=s3_store.env)
        assert decisions(applied) == [(2, "delete", "logs/edited.log", False, True),
                                      (2, "delete", "logs/old.log", True, False)]
        assert s3_store.exists("logs/edited.log")
    finally:
        assert run("unmount", str(mnt)).returncode == 0
    assert s3_store.get("logs/edited.log") == b"new content, queued for an hour"


def test_the_daemon_applies_the_rules_on_a_schedule(s3_store, mnt, tmp_path):
    aged(s3_store, "logs/old.log", 40)
    aged(s3_store, "logs/kept.log", 40)
    config = tmp_path / "m.toml"
    config.write_text(f'lifecycle_interval = 1\n[[tier]]\nurl = "{s3_store.url}"\n'
                      '[[lifecycle]]\nprefix = "logs"\nolder_than = "30d"\n'
                      'action = "delete"\n')
    mounted = run("mount", str(config), str(mnt), "--cache-dir", str(tmp_path / "c"),
                  "-o", "debounce=3600", env=s3_store.env)
    assert mounted.returncode == 0, mounted.stderr
    try:
        (mnt / "logs" / "kept.log").write_bytes(b"edited here")  # pending: left alone
        wait_for(lambda: not s3_store.exists("logs/old.log"), timeout=30,
                 what="the scheduled rule to delete the old file")
        assert "old.log" not in os.listdir(mnt / "logs")
        assert (mnt / "logs" / "kept.log").read_bytes() == b"edited here"
    finally:
        assert run("unmount", str(mnt)).returncode == 0
    assert s3_store.get("logs/kept.log") == b"edited here"


def test_lifecycle_errors(s3_store, tmp_path):
    assert "no [[lifecycle]] rules" in one_error_line(
        run("lifecycle", s3_store.url, env=s3_store.env))
    bad = tmp_path / "bad.toml"
    bad.write_text('[[lifecycle]]\nolder_than = "1d"\naction = "move"\n')
    assert "move needs `to`" in one_error_line(
        run("lifecycle", s3_store.url, "--config", str(bad), env=s3_store.env))


def test_rules_act_on_keys_by_prefix_also_those_the_mount_cannot_show(memory_store,
                                                                      tmp_path):
    """A rule's folder is a key prefix: under `logs/`, the keys a mount cannot show
    (`logs//x`, `logs/../y`, a name over 255 bytes) are files of it like the others, by
    the mtime they store; `logs` itself (a file), `.stormount/` and what is too young or
    carries no usable mtime are left alone (the store fuzz checks the same at random)."""
    old, young = f"{time.time() - 40 * DAY:.9f}", f"{time.time() - DAY / 2:.9f}"
    for key, mtime in {"logs//x": old, "logs/../y": old, "logs/" + "z" * 300: old,
                       "logs/ok": old, "logs/young": young, "logs/nan": "nan",
                       "logs/huge": "1e999990", "logs": old, ".stormount/logs/p": old,
                       "other/old": old}.items():
        memory_store.put(key, b"x", {"mtime": mtime})
    rules = tmp_path / "rules.toml"
    rules.write_text('[[lifecycle]]\nprefix = "logs"\nolder_than = "30d"\naction = "delete"\n'
                     '[[lifecycle]]\nprefix = ".stormount"\nolder_than = "1d"\n'
                     'action = "delete"\n')
    result = run_in_process("lifecycle", memory_store.url, "--config", str(rules), "--json",
                            "--apply")
    assert result.exit_code == 0, result.stderr
    done = sorted(d["key"] for d in json.loads(result.stdout)["decisions"] if d["done"])
    assert done == sorted(["logs/" + "z" * 300, "logs//x", "logs/../y", "logs/ok"])
    assert memory_store.keys() == [".stormount/logs/p", "logs", "logs/huge", "logs/nan",
                                   "logs/young", "other/old"]
