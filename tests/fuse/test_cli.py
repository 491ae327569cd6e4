"""Every mistake a user can make ends in one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import subprocess

import pytest

from stormount.registry import mounted_fuse
from tests.helpers.cli import one_error_line, run
from tests.helpers.mounts import stormount_cmd, unmount_quietly, wait_for

pytestmark = pytest.mark.timeout(120)


def test_not_a_url(mnt, tmp_path):
    line = one_error_line(run("mount", "just-words", str(mnt), "--cache-dir",
                              str(tmp_path / "c")))
    assert "not a storage URL" in line


def test_unknown_scheme(mnt, tmp_path):
    line = one_error_line(run("mount", "gs://bucket", str(mnt)))
    assert "unknown storage scheme 'gs'" in line


def test_invalid_bucket_name_is_one_line(mnt, tmp_path):
    """Issue 19: boto's two-line regex error became one line, at URL parsing."""
    line = one_error_line(run("mount", "s3://Bad_Bucket!", str(mnt), "--cache-dir",
                              str(tmp_path / "c")))
    assert line == ('stormount: error: invalid bucket name "Bad_Bucket!" (S3 bucket names '
                    "are 3-63 characters of a-z, 0-9, . and -)")


def test_a_socket_in_a_missing_directory_is_refused(mnt, tmp_path):
    """Issue 19: `--socket /nonexistent/dir/x.sock` made /nonexistent/dir."""
    store = tmp_path / "store"
    store.mkdir()
    missing = tmp_path / "no" / "dir"
    line = one_error_line(run("mount", f"file://{store}", str(mnt), "--cache-dir",
                              str(tmp_path / "c"), "--socket", str(missing / "x.sock")))
    assert f"the directory {missing} does not exist" in line
    assert not (tmp_path / "no").exists()
    assert mounted_fuse(str(mnt)) is None


def test_relative_file_url(mnt):
    assert "absolute path" in one_error_line(run("mount", "file://relative/dir", str(mnt)))


def test_missing_directory_tier(mnt, tmp_path):
    line = one_error_line(run("mount", f"file://{tmp_path}/nope", str(mnt), "--cache-dir",
                              str(tmp_path / "c")))
    assert "does not exist" in line


def test_mountpoint_missing(data, tmp_path):
    line = one_error_line(run("mount", f"file://{data}", str(tmp_path / "absent")))
    assert "mountpoint" in line and "does not exist" in line


def test_mountpoint_not_a_directory(data, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert "not a directory" in one_error_line(run("mount", f"file://{data}", str(target)))


def test_mountpoint_not_empty(data, mnt):
    (mnt / "something").write_text("x")
    assert "not empty" in one_error_line(run("mount", f"file://{data}", str(mnt)))


def test_mountpoint_busy(data, mnt, tmp_path):
    ok = run("mount", f"file://{data}", str(mnt), "--cache-dir", str(tmp_path / "c1"))
    assert ok.returncode == 0, ok.stderr
    try:
        assert mounted_fuse(str(mnt)) == "fuse.stormount"
        line = one_error_line(run("mount", f"file://{data}", str(mnt), "--cache-dir",
                                  str(tmp_path / "c2")))
        assert "busy" in line
    finally:
        assert run("unmount", str(mnt)).returncode == 0
    assert mounted_fuse(str(mnt)) is None


def test_cache_dir_shared_with_running_mount(data, mnt, tmp_path):
    ok = run("mount", f"file://{data}", str(mnt), "--cache-dir", str(tmp_path / "c"))
    assert ok.returncode == 0, ok.stderr
    other = tmp_path / "mnt2"
    other.mkdir()
    try:
        line = one_error_line(run("mount", f"file://{data}", str(other), "--cache-dir",
                                  str(tmp_path / "c")))
        assert "in use by another running mount" in line
    finally:
        run("unmount", str(mnt))
        unmount_quietly(other)


def test_unknown_config_key(data, mnt, tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[[tier]]\nurl = "file://{data}"\n\n[fuse]\ncolour = "blue"\n')
    line = one_error_line(run("mount", str(cfg), str(mnt)))
    assert "unknown option 'colour'" in line


def test_unreadable_config(mnt, tmp_path):
    line = one_error_line(run("mount", str(tmp_path / "absent.toml"), str(mnt)))
    assert "cannot read config file" in line


def test_invalid_toml(mnt, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[[tier]\nurl=")
    assert "not valid TOML" in one_error_line(run("mount", str(cfg), str(mnt)))


def test_unknown_mount_option(data, mnt):
    assert "unknown mount option -o frobnicate" in one_error_line(
        run("mount", f"file://{data}", str(mnt), "-o", "frobnicate=1"))


def test_bad_option_value(data, mnt):
    assert "uid: expected an integer" in one_error_line(
        run("mount", f"file://{data}", str(mnt), "-o", "uid=bob"))


def test_fuse_device_missing(data, mnt, tmp_path):
    # a private mount namespace whose /dev lacks the fuse device
    wrap = ["unshare", "--mount", "--", "sh", "-c", 'mount -t tmpfs tmpfs /dev && exec "$@"',
            "sh"]
    line = one_error_line(run("mount", f"file://{data}", str(mnt), "--cache-dir",
                              str(tmp_path / "c"), wrap=wrap))
    assert "/dev/fuse is missing" in line


def test_unmount_of_something_not_mounted(tmp_path):
    assert "is not mounted" in one_error_line(run("unmount", str(tmp_path)))


def test_a_timeout_of_nan_is_a_usage_error(tmp_path):
    # NaN passes click's FloatRange (it compares false with every bound). Before (issue
    # 19): `ctl --timeout nan` ended in a traceback (ValueError from socket.settimeout),
    # `ctl flush --wait nan` and `unmount --timeout nan` sent it to the daemon
    sock = str(tmp_path / "none.sock")
    for args in (("ctl", "--socket", sock, "--timeout", "nan", "health"),
                 ("ctl", "--socket", sock, "flush", "--wait", "NaN"),
                 ("unmount", str(tmp_path), "--timeout", "nan")):
        result = run(*args)
        assert result.returncode == 2, (args, result)
        assert "is not a number of seconds" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_an_error_quoting_a_line_break_is_still_one_line(tmp_path):
    # argv may hold any character but NUL. Before (issue 19): `ctl --socket $'a\nb'`
    # printed "no control socket at a", then "b (is the mount running?)" on a line of
    # its own (and \x85 or \u2028 split it for a reader of lines too)
    for name in ("a\nb", "a\rb", "a\x85b", "a\u2028b", "a\x1bb"):
        result = run("ctl", "--socket", str(tmp_path / name), "health")
        line = one_error_line(result)
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "no control socket at" in line and repr(name)[2:-2] in line, line


def test_background_mount_returns_when_ready_and_unmount_waits(data, mnt, tmp_path):
    result = run("mount", f"file://{data}", str(mnt), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    # ready means usable at once: no polling needed
    (mnt / "f.txt").write_text("written\n")
    assert run("unmount", str(mnt)).returncode == 0
    assert mounted_fuse(str(mnt)) is None
    assert (data / "f.txt").read_text() == "written\n"


def test_foreground_ctrl_c_unmounts_cleanly(data, mnt, tmp_path):
    proc = subprocess.Popen(stormount_cmd("mount", f"file://{data}", str(mnt), "--cache-dir",
                                          str(tmp_path / "c"), "-f"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: mounted_fuse(str(mnt)) == "fuse.stormount", what="mount")
        fd = os.open(mnt / "open.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"data")
        os.close(fd)
        proc.send_signal(2)  # SIGINT, as Ctrl-C sends
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert mounted_fuse(str(mnt)) is None
    assert (data / "open.txt").read_bytes() == b"data"
