"""Fuzz of the objects in the store, through the storage commands (issue 19): `usage`,
`pull`, `gc` and `lifecycle` over a store holding keys of every shape S3 and Azure
allow (`//`, `.` and `..` segments, a leading `/`, keys aimed out of the target folder,
segments over 255 bytes, deep keys, a file and a directory of one name, the reserved
`.stormount/`) with metadata of any string.

The invariants: no command shows a traceback, each ends with 0 or its documented
failure (1, one line per failure); `pull` creates nothing outside LOCAL_DIR, every file
it leaves there holds the bytes of the key of that very path (no key lands on another's
path), and every key it does not bring is named in its summary; `usage` counts every
file once; `gc` removes only the chain's probes (and, on a spill-over tier, copies the
primary holds); `lifecycle` changes nothing in a dry run and, applied, deletes or moves
exactly what its dry run listed, all of it files under a rule's folder whose stored
mtime is older than the rule's age.

`make test` runs a fixed budget with a fixed seed; STORMOUNT_FUZZ_SCALE=N runs N times
as many examples (`make fuzz` does, with a large N)."""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import event, given
from hypothesis import strategies as st

from stormount.backends import open_backend
from stormount.backends.memory import _STORES
from stormount.chain.health import PROBE_PREFIX, RESERVED
from stormount.chain.repair import STAMP
from stormount.config import parse_tier_url
from tests.helpers.cli import Ran, run_in_process
from tests.helpers.fuzz import KEY_SHAPES, budget, shaped

DAY = 86400.0



# --- what another client may put --------------------------------------------------------

SEGMENTS = ["a", "b", "logs", "", ".", "..", "...", " ", "\\", "-", "\x00", "é", ".stormount",
            "x" * 255, "y" * 256, "é" * 128, "f.stormount-partial", "~", "*", "a\nb"]
segments = st.one_of(st.sampled_from(SEGMENTS),
                     st.text(st.characters(codec="utf-8", exclude_characters="/"), max_size=5))
NUMBERS = ["0", "-1", "33188", "0100644", str(stat.S_IFLNK | 0o777), str(stat.S_IFREG | 0o4755),
           str(stat.S_IFIFO | 0o644), "99999999999", "1e400", "1e999990", "nan", "inf", "",
           "1600000000.123456789", "1000000000", "-5", "9223372036.854775808", "٣", "1_0",
           " 1500000000 ", "sNaN", "2024-01-01T00:00:00Z", str(2**32)]
values = st.one_of(st.sampled_from(NUMBERS), st.text(max_size=8),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(-2**40, 2**40).map(str))
metadata = st.dictionaries(st.sampled_from(["mode", "uid", "gid", "mtime", "ctime", "rdev",
                                            STAMP, "other"]), values, max_size=5)
bodies = st.one_of(st.binary(max_size=24),
                   st.sampled_from([b"", b"../outside", b"/etc", b"a\x00b", b"..", b"."]))


@st.composite
def keys(draw: st.DrawFn, outside: str) -> str:
    shape = draw(st.sampled_from([*KEY_SHAPES, "deep", "escape", "absolute", "reserved"]))
    parts = draw(st.lists(segments, min_size=1, max_size=4))
    key = shaped("/".join(parts), shape)
    if shape == "deep":
        key = "d/" * draw(st.integers(10, 300)) + key
    elif shape == "escape":  # aimed out of LOCAL_DIR
        key = draw(st.sampled_from(["../", "a/../../", "./../", "a/./../../"])) + \
            "outside/" + key
    elif shape == "absolute":
        key = outside.rstrip("/") + "/" + key
    elif shape == "reserved":
        key = draw(st.sampled_from([RESERVED, PROBE_PREFIX, RESERVED + "tmp/"])) + key
    return key or "k"


@st.composite
def store_contents(draw: st.DrawFn, outside: str = "/nonexistent/outside"
                   ) -> dict[str, tuple[bytes, dict[str, str]]]:
    out: dict[str, tuple[bytes, dict[str, str]]] = {}
    for key in draw(st.lists(keys(outside), min_size=1, max_size=10)):
        meta = draw(metadata)
        if draw(st.booleans()):  # old enough for the rules, in the metadata the mount writes
            meta["mtime"] = draw(st.sampled_from(["1000000000.5", "1600000000", "0",
                                                  f"{time.time() - 3 * DAY:.9f}"]))
        out[key] = (draw(bodies), meta)
        extra = draw(st.sampled_from(["", "", "", "/in", "/d/in", "/"]))
        if extra:  # a file and a directory of one name
            out[key.rstrip("/") + extra] = (draw(bodies), draw(metadata))
        if draw(st.integers(0, 4)) == 0:  # a link, then a key through it
            link = draw(st.sampled_from(["ln", "a/ln", "logs/ln"]))
            out[link] = (draw(st.sampled_from([b"../outside", b"..", b"/", outside.encode(),
                                               b"."])),
                         {"mode": str(stat.S_IFLNK | 0o777)})
            out[link + "/" + draw(st.sampled_from(["pwn", "x/pwn"]))] = (b"pwned", {})
    return out


# --- a store, a sandbox around LOCAL_DIR, the command line ----------------------------------

@contextmanager
def memory_store(contents: dict[str, tuple[bytes, dict[str, str]]]) -> Iterator[str]:
    name = f"fzm-{uuid.uuid4().hex}"
    url = f"memory://{name}"
    backend = open_backend(parse_tier_url(url))

    async def fill() -> None:
        for key, (body, meta) in contents.items():
            await backend.put_bytes(key, body, meta)
    trio.run(fill)
    try:
        yield url
    finally:
        _STORES.pop(name, None)


def held(url: str) -> dict[str, tuple[bytes, str, dict[str, str]]]:
    """What a memory store holds: key -> (bytes, etag, metadata)."""
    objects = _STORES.get(url.removeprefix("memory://"), {})
    return {key: (data, info.etag, dict(info.metadata or {}))
            for key, (data, info) in objects.items()}


def snapshot(top: Path, skip: tuple[Path, ...]) -> dict[str, tuple[int, int, int]]:
    """(type, size, mtime) of everything under `top` but `skip`, without following links."""
    out: dict[str, tuple[int, int, int]] = {}
    todo = [top]
    while todo:
        path = todo.pop()
        for entry in os.scandir(path):
            if Path(entry.path) in skip:
                continue
            st_ = entry.stat(follow_symlinks=False)
            out[entry.path] = (stat.S_IFMT(st_.st_mode), st_.st_size, st_.st_mtime_ns)
            if entry.is_dir(follow_symlinks=False):
                todo.append(Path(entry.path))
    return out


def invoke(argv: list[str], env: dict[str, str]) -> Ran:
    """The command as `stormount ARGV` runs it: never a traceback, 0 or 1."""
    result = run_in_process(*argv, env=env)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-2000:]
    assert result.exit_code in (0, 1), (argv, result.exit_code, output[-2000:])
    return result


def json_of(result: Ran) -> Any:
    return json.loads(result.stdout)


def error_lines(result: Ran) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("stormount: ")]


def files_of(contents: dict[str, Any], prefix: str = "") -> set[str]:
    """The keys that are files (not markers, not the chain's own) under `prefix`."""
    return {k for k in contents
            if k.startswith(prefix) and not k.endswith("/") and not k.startswith(RESERVED)}


def remove_tree(path: Path) -> None:
    """rm -r without recursion (pytest's and shutil's recurse; a pull may make deep trees)."""
    dirs, todo = [], [path]
    while todo:
        current = todo.pop()
        dirs.append(current)
        for entry in os.scandir(current):
            if entry.is_dir(follow_symlinks=False):
                todo.append(Path(entry.path))
            else:
                os.unlink(entry.path)
    for current in reversed(dirs):
        os.rmdir(current)


@contextmanager
def sandbox() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="stormount-fz-"))
    try:
        (where / "outside").mkdir()
        (where / "outside" / "keep.txt").write_bytes(b"untouched")
        (where / "xdg").mkdir()
        yield where
    finally:
        remove_tree(where)


# --- pull ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def outside_dir() -> Iterator[Path]:
    """Absolute keys aim at this folder, which no pull may write into."""
    with sandbox() as where:
        yield where


@budget(80)
@given(data=st.data())
def test_fuzz_store_pull(outside_dir: Path, data: st.DataObject) -> None:
    contents = data.draw(store_contents(str(outside_dir / "outside")))
    before_outside = snapshot(outside_dir, ())
    with sandbox() as where, memory_store(contents) as url:
        local = where / "local"
        if data.draw(st.booleans()):  # a target that exists, with a file of its own
            local.mkdir()
            (local / "mine.txt").write_bytes(b"mine")
        env = {"XDG_CACHE_HOME": str(where / "xdg")}
        before = snapshot(where, (local, where / "xdg"))
        result = invoke(["pull", url, str(local), "--json", "--parallel", "4"], env)
        summary = json_of(result)
        # nothing outside LOCAL_DIR (and the pull's own state) changed
        assert snapshot(where, (local, where / "xdg")) == before
        assert snapshot(outside_dir, ()) == before_outside
        files = files_of(contents)
        assert summary["files"] == len(files)
        failed = {f["path"] for f in summary["failed"]}
        folders = {k for k in contents if k.endswith("/") and not k.startswith(RESERVED)}
        assert failed <= files | folders
        assert summary["downloaded"] + summary["skipped"] + len(failed & files) == len(files)
        # every file there holds the bytes of the key of its own path: no key landed on
        # another's path (a/../b on b, a//b on a/b)
        for path in snapshot(local, ()):
            rel = os.path.relpath(path, local)
            full = Path(path)
            if rel == "mine.txt":
                assert full.read_bytes() == b"mine"
            elif full.is_symlink():
                assert rel in contents and rel not in failed
                assert os.fsencode(os.readlink(full)) == contents[rel][0]
            elif full.is_file():
                assert rel in contents and rel not in failed, rel
                assert full.read_bytes() == contents[rel][0], rel
                assert full.stat().st_mode & 0o7000 == 0  # no set-id bits from a store
        event(f"pull: {min(summary['downloaded'], 5)} downloaded, {min(len(failed), 3)} failed")
        if failed:
            assert result.exit_code == 1 and len(error_lines(result)) == 1, result.stderr
            assert f"{len(failed)} of {len(files)} file(s) failed" in result.stderr
        else:
            assert result.exit_code == 0, result.stdout[-1000:] + result.stderr[-1000:]


# --- usage ---------------------------------------------------------------------------------

@budget(40)
@given(store_contents(), st.integers(0, 3))
def test_fuzz_store_usage(contents: dict[str, tuple[bytes, dict[str, str]]],
                          depth: int) -> None:
    with memory_store(contents) as url:
        result = invoke(["usage", url, "--json", "--depth", str(depth)], {})
        report = json_of(result)
        plain = invoke(["usage", url, "--depth", str(depth)], {})
    assert result.exit_code == 0 and plain.exit_code == 0
    files = files_of(contents)
    assert (report["files"], report["bytes"]) == (
        len(files), sum(len(contents[k][0]) for k in files))
    for row in report["folders"]:
        assert 0 < row["files"] <= len(files)


# --- gc ------------------------------------------------------------------------------------

@budget(50)
@given(store_contents(), st.booleans(), st.data())
def test_fuzz_store_gc(contents: dict[str, tuple[bytes, dict[str, str]]], two_tiers: bool,
                       data: st.DataObject) -> None:
    spilled: dict[str, tuple[bytes, dict[str, str]]] = {}
    stand_in: set[str] = set()  # copies stamped with the primary's very version
    if two_tiers:  # a spill-over tier: copies of the primary's keys, and one of its own
        copies = data.draw(st.lists(st.sampled_from(sorted(contents)), max_size=5,
                                    unique=True))
        for key in [*copies, "only-spilled"]:
            body, meta = contents.get(key, (b"s", {}))
            meta = dict(meta)
            meta.pop(STAMP, None)
            if key in contents and data.draw(st.booleans()):
                stand_in.add(key)
            elif data.draw(st.booleans()):
                meta[STAMP] = "another-version"
            spilled[key] = (body, meta)
    with memory_store(contents) as url, memory_store(spilled) as spill_url:
        for key in stand_in:  # the chain's repair stamp: a copy of this version
            _STORES[spill_url.removeprefix("memory://")][key][1].metadata[STAMP] = \
                held(url)[key][1]
        tiers = ["--tier", spill_url] if two_tiers else []
        before, before_spill = held(url), held(spill_url)
        dry = invoke(["gc", url, *tiers, "--older-than", "0", "--json"], {})
        assert (held(url), held(spill_url)) == (before, before_spill)
        result = invoke(["gc", url, *tiers, "--older-than", "0", "--apply", "--json"], {})
        after, after_spill = held(url), held(spill_url)
    assert dry.exit_code == 0 and result.exit_code == 0, result.stderr[-2000:]
    # the primary loses its probes alone
    assert after == {k: v for k, v in before.items() if not k.startswith(PROBE_PREFIX)}
    # a spill-over tier loses its probes and the copies of the very version the primary
    # holds, nothing else
    for key in set(before_spill) - set(after_spill):
        assert key.startswith(PROBE_PREFIX) or key in stand_in, key
    assert "only-spilled" in after_spill or not two_tiers
    removed = {f["what"] for f in json_of(result)["findings"] if f["done"]}
    event(f"gc: {'two tiers' if two_tiers else 'one tier'}, {min(len(removed), 3)} removed")
    assert removed == ({k for k in before if k.startswith(PROBE_PREFIX)}
                       | (set(before_spill) - set(after_spill)))


# --- lifecycle -----------------------------------------------------------------------------

RULE_PREFIXES = ["", "a", "logs", "a/b", "d", "..", "a//b", "/", ".stormount", "x" * 255]


@st.composite
def rule_files(draw: st.DrawFn, archive: str) -> tuple[str, list[tuple[str, str]]]:
    rules = []
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        prefix = draw(st.sampled_from(RULE_PREFIXES))
        action = draw(st.sampled_from(["delete", "delete", "move", "warn"]))
        lines += ["[[lifecycle]]", f"prefix = {json.dumps(prefix)}", 'older_than = "1d"',
                  f'action = "{action}"']
        if action == "move":
            lines.append(f'to = "{archive}"')
        rules.append((prefix, action))
    return "\n".join(lines) + "\n", rules


def usable_mtime(meta: dict[str, str]) -> float | None:
    """The stored mtime, by another reading than the mount's (float, not Decimal)."""
    try:
        value = float(str(meta.get("mtime", "")).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) < 9.2e9 else None


@budget(50)
@given(store_contents(), st.data())
def test_fuzz_store_lifecycle(contents: dict[str, tuple[bytes, dict[str, str]]],
                              data: st.DataObject) -> None:
    archive_name = f"fza-{uuid.uuid4().hex}"
    archive = f"memory://{archive_name}"
    body, rules = data.draw(rule_files(archive))
    with sandbox() as where, memory_store(contents) as url:
        config = where / "rules.toml"
        config.write_text(body)
        try:
            args = ["lifecycle", url, "--config", str(config), "--json"]
            before = held(url)
            dry = invoke(args, {})
            assert held(url) == before
            result = invoke([*args, "--apply"], {})
            after, moved = held(url), held(archive)
        finally:
            _STORES.pop(archive_name, None)
    event(f"lifecycle: exit {dry.exit_code}")
    if dry.exit_code == 1 and not dry.stdout:  # the rules refused (a prefix `..`): one line
        assert len(error_lines(dry)) == 1 and "[[lifecycle]]" in dry.stderr, dry.stderr
        assert after == before
        return
    planned = {d["key"]: d for d in json_of(dry)["decisions"]}
    decided = json_of(result)["decisions"]
    done = {d["key"] for d in decided if d["done"]}
    gone = set(before) - set(after)
    event(f"lifecycle: {min(len(planned), 3)} planned, {min(len(gone), 3)} done")
    assert gone == done  # exactly what it says it did
    assert done <= {k for k, d in planned.items() if d["action"] in ("delete", "move")
                    and d["skipped"] is None}
    now = time.time()
    for key in gone | set(planned):
        assert not key.endswith("/") and not key.startswith(RESERVED), key
        assert any(key.startswith(p.strip("/") + "/" if p.strip("/") else "")
                   for p, _ in rules), key
        mtime = usable_mtime(before[key][2])
        assert mtime is not None and mtime <= now - DAY + 60, (key, before[key][2])
    for key in (d["key"] for d in decided if d["done"] and d["action"] == "move"):
        assert moved[key][0] == before[key][0] and moved[key][2] == before[key][2]
    assert set(moved) <= done
