"""`stormount pull` and `push`: whole trees down and up, resumed after an interruption,
with the same bytes, names, links and times at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.helpers.cli import run, run_in_process
from tests.helpers.mounts import stormount_cmd, wait_for
from tests.helpers.proxy import OutageProxy, proxied

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def env(tmp_path):
    """The pull state goes to this test's own cache directory."""
    return {"XDG_CACHE_HOME": str(tmp_path / "xdg")}


def tree_of(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel + "/"] = b""
        else:
            out[rel] = path.read_bytes()
    return out


def json_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_interrupted_pull_resumes_and_ends_with_the_same_tree(s3_store, tmp_path, env):
    want = {f"a/small-{i}.bin": os.urandom(200 * 1024) for i in range(6)}
    want |= {f"z/big-{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(2)}
    for key, body in want.items():
        s3_store.put(key, body)
    out = tmp_path / "out"
    with OutageProxy(urllib.parse.urlsplit(s3_store.endpoint).port) as proxy:
        url = proxied(s3_store, proxy, read_timeout=30)
        first = subprocess.Popen(
            stormount_cmd("pull", url, str(out), "--parallel", "2", "-o", "block_size=64KiB"),
            env={**os.environ, **s3_store.env, **env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        try:
            def partway() -> bool:
                partial = list(out.glob("z/*.stormount-partial"))
                return bool(partial) and partial[0].stat().st_size >= 128 * 1024
            wait_for(partway, what="a big file part-way down")
            proxy.hang()  # the store stops answering mid-file ...
            first.send_signal(signal.SIGKILL)  # ... and the pull is killed there
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    done = [p for p in out.rglob("*.bin")]
    assert len(done) >= 6 and list(out.glob("z/*.stormount-partial"))

    second = json_of(run("pull", s3_store.url, str(out), "--json", "-o", "block_size=64KiB",
                         env={**s3_store.env, **env}))
    assert second["failed"] == []
    assert second["skipped"] == len(done)  # finished files are not fetched again
    assert second["resumed"] >= 1  # the partial one continued where it stopped
    assert second["transferred_bytes"] < sum(len(b) for b in want.values())
    assert tree_of(out) == {"a/": b"", "z/": b"", **want}
    assert not list(out.rglob("*.stormount-partial"))
    # and a third run has nothing left to do
    third = json_of(run("pull", s3_store.url, str(out), "--json", env={**s3_store.env, **env}))
    assert (third["skipped"], third["downloaded"], third["transferred_bytes"]) == (8, 0, 0)


def test_push_then_pull_keeps_bytes_links_folders_and_times(s3_store, tmp_path, env):
    src = tmp_path / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "docs" / "a.txt").write_bytes(b"alpha\n")
    (src / "docs" / "deep" / "b.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # multipart
    (src / "link").symlink_to("docs/a.txt")
    os.utime(src / "docs" / "a.txt", ns=(1_600_000_000_123_456_789,) * 2)
    os.chmod(src / "docs" / "a.txt", 0o600)
    target = s3_store.tier_url("backup")

    first = json_of(run("push", str(src), target, "--json", env=s3_store.env))
    assert (first["uploaded"], first["skipped"], first["failed"]) == (3, 0, [])
    assert s3_store.keys("backup/") == ["backup/docs/a.txt", "backup/docs/deep/b.bin",
                                        "backup/empty/", "backup/link"]
    assert s3_store.get("backup/docs/a.txt") == b"alpha\n"
    # run again: nothing changed, nothing is sent; a changed file is sent again
    again = json_of(run("push", str(src), target, "--json", env=s3_store.env))
    assert (again["uploaded"], again["skipped"]) == (0, 3)
    (src / "docs" / "a.txt").write_bytes(b"alpha, edited\n")
    edited = json_of(run("push", str(src), target, "--json", env=s3_store.env))
    assert (edited["uploaded"], edited["skipped"]) == (1, 2)

    back = tmp_path / "back"
    pulled = json_of(run("pull", target, str(back), "--json", env={**s3_store.env, **env}))
    assert (pulled["downloaded"], pulled["failed"]) == (3, [])
    assert tree_of(back) == tree_of(src)
    assert (back / "docs" / "a.txt").stat().st_mtime_ns == \
        (src / "docs" / "a.txt").stat().st_mtime_ns
    assert (back / "docs" / "a.txt").stat().st_mode & 0o777 == 0o600
    # the table form says what it did
    line = run("pull", target, str(back), env={**s3_store.env, **env})
    assert line.returncode == 0 and "3 already there" in line.stdout


def test_a_file_that_cannot_be_written_fails_alone(s3_store, tmp_path, env):
    s3_store.put("ok.txt", b"fine")
    s3_store.put("blocked", b"cannot land")
    out = tmp_path / "out"
    (out / "blocked").mkdir(parents=True)  # a folder where the file should go
    result = run("pull", s3_store.url, str(out), env={**s3_store.env, **env})
    assert result.returncode == 1
    assert "1 of 2 file(s) failed: blocked:" in result.stderr
    assert "run the command again" in result.stderr
    assert (out / "ok.txt").read_bytes() == b"fine"


def test_transfer_errors_are_one_line(s3_store, tmp_path, env):
    missing = s3_store.url.replace(s3_store.bucket, "no-such-bucket-pull", 1)
    result = run("pull", missing, str(tmp_path / "o"), env={**s3_store.env, **env})
    assert result.returncode == 1 and "does not exist" in result.stderr
    result = run("push", str(tmp_path / "nothing-here"), s3_store.url, env=s3_store.env)
    assert result.returncode == 1 and "is not a directory" in result.stderr


def test_links_in_the_store_never_lead_a_pull_out_of_its_folder(s3_store, tmp_path, env):
    outside = tmp_path / "outside"
    outside.mkdir()
    s3_store.put("evil", str(outside).encode(), metadata={"mode": str(0o120777)})  # a link
    s3_store.put("evil/x", b"must not land outside")
    s3_store.put("setid", b"s", metadata={"mode": str(0o104755)})
    out = tmp_path / "out"
    result = run("pull", s3_store.url, str(out), "--parallel", "1", env={**s3_store.env, **env})
    assert result.returncode == 1 and "evil/x" in result.stderr
    assert list(outside.iterdir()) == []
    assert (out / "setid").stat().st_mode & 0o7777 == 0o755  # no set-id bits from a store


def test_pull_key_too_deep_fails_that_file_only(s3_store, tmp_path, env):
    """A key 5,000 folders deep cannot be written locally (File name too long): that file
    fails with a one-line reason, the others arrive, no partial file is left and no
    traceback reaches the user (issue 19, finding 8)."""
    deep = "d/" * 5000 + "deep.txt"
    s3_store.put(deep, b"too deep")
    s3_store.put("a.txt", b"alpha")
    s3_store.put("sub/b.txt", b"beta")
    out = tmp_path / "out"
    result = run("pull", s3_store.url, str(out), "--parallel", "2", env={**s3_store.env, **env})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert "1 of 3 file(s) failed" in errors[0] and "File name too long" in errors[0]
    assert (out / "a.txt").read_bytes() == b"alpha"
    assert (out / "sub" / "b.txt").read_bytes() == b"beta"
    assert sorted(os.listdir(out)) == ["a.txt", "sub"]  # no folder chain of the deep key
    assert sorted(os.listdir(out / "sub")) == ["b.txt"]  # no partial file


def test_pull_key_2000_folders_deep(s3_store, tmp_path, env):
    """Deeper than Python's recursion limit, short enough for Linux: it arrives."""
    deep = "d/" * 2000 + "x"
    s3_store.put(deep, b"deep")
    out = tmp_path / "out"
    result = run("pull", s3_store.url, str(out), env={**s3_store.env, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    fd = os.open(out, os.O_RDONLY)
    try:
        for _ in range(2000):
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        with os.fdopen(os.open("x", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep"
    finally:
        os.close(fd)
        # pytest's own cleanup (shutil.rmtree) recurses and would fail on this tree
        subprocess.run(["rm", "-rf", "--", str(out)], check=True)


def test_keys_the_mount_would_not_show_are_skipped_never_written_elsewhere(memory_store,
                                                                         tmp_path, env):
    """Found by tests/manage/test_fuzz_store_manage.py: `a//b` and `a/./c` were written
    to a/b and a/c, and `x/../d` to d (paths of other keys, whose bytes they replaced or
    that no key has), `/abs` to `abs`. Each is named as failed, with why, and skipped."""
    for key, body in {"a/b": b"the real a/b", "a//b": b"impostor", "a/./c": b"dot",
                      "x/../d": b"dotdot", "/abs": b"leading slash", "ok": b"fine"}.items():
        memory_store.put(key, body)
    url = memory_store.url
    out = tmp_path / "out"
    result = run_in_process("pull", url, str(out), "--json", "--parallel", "1", env=env)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    failed = {f["path"]: f["error"] for f in summary["failed"]}
    assert sorted(failed) == ["/abs", "a/./c", "a//b", "x/../d"]
    assert all("not a local path" in why for why in failed.values())
    assert summary["downloaded"] == 2 and summary["files"] == 6
    assert tree_of(out) == {"a/": b"", "a/b": b"the real a/b", "ok": b"fine"}
    assert "4 of 6 file(s) failed" in result.stderr
    # nothing to retry: the summary says so, and --json marks each
    assert "they can never be files here" in result.stderr
    assert "run the command again" not in result.stderr
    assert not any(f["retry"] for f in summary["failed"])


def test_no_key_is_written_through_a_link_another_key_made(memory_store, tmp_path, env):
    """Found by tests/manage/test_fuzz_store_manage.py: the link object logs/ln -> ..
    then the key logs/ln/pwn wrote the file pwn at the top of LOCAL_DIR (the path of
    another key), since only links leading out of it were refused; a link to a folder
    outside had the folders of a key below it made there before the refusal; and the
    clean-up of a refused file unlinked its partial file through the link, outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "report.pdf.stormount-partial").write_bytes(b"someone else's")
    link = {"mode": str(0o120777)}
    for key, body in {"logs/ln": b"..", "logs/ln/pwn": b"pwned", "ln": bytes(outside),
                      "ln/x/pwn": b"pwned", "ln/report.pdf": b"r", "pwn": b"real"}.items():
        memory_store.put(key, body, link if key in ("logs/ln", "ln") else None)
    url = memory_store.url
    out = tmp_path / "out"
    result = run_in_process("pull", url, str(out), "--json", "--parallel", "1", env=env)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    failed = {f["path"]: f["error"] for f in json.loads(result.stdout)["failed"]}
    assert sorted(failed) == ["ln/report.pdf", "ln/x/pwn", "logs/ln/pwn"]
    assert all("symbolic link" in why for why in failed.values())
    assert tree_of(out) == {"ln": f"-> {outside}", "logs/": b"", "logs/ln": "-> ..",
                            "pwn": b"real"}
    assert tree_of(outside) == {"report.pdf.stormount-partial": b"someone else's"}
