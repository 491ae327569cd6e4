"""Config is built and validated at the CLI edge: URL forms, options, precedence."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stormount.config import MiB, build_config, parse_size, parse_tier_url
from stormount.errors import ConfigError


def test_url_forms():
    s3 = parse_tier_url("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1")
    assert (s3.scheme, s3.container, s3.prefix) == ("s3", "bucket", "some/prefix/")
    assert s3.endpoint == "http://127.0.0.1:9000" and s3.region == "eu-west-1"
    az = parse_tier_url("az://container")
    assert (az.scheme, az.container, az.prefix) == ("az", "container", "")
    local = parse_tier_url("file:///srv/data/")
    assert (local.scheme, local.container) == ("file", "/srv/data")
    assert parse_tier_url("s3://bkt?multipart_threshold=16MiB").multipart_threshold == 16 * MiB
    defaults = parse_tier_url("s3://bkt")
    assert (defaults.transfer_stall_timeout, defaults.complete_timeout) == (60.0, 300.0)


@pytest.mark.parametrize(("url", "message"), [
    ("bucket", "not a storage URL"),
    ("gs://bucket", "unknown storage scheme 'gs'"),
    ("s3://", "names no bucket"),
    ("s3://bkt/a//b", "empty path segment"),
    ("file://host/dir", "absolute path"),
    ("s3://bkt?colour=red", "unknown tier option 'colour'"),
    ("s3://bkt?max_connections=x", "expected an integer"),
    ("s3://bkt?part_size=1MiB", "at least 5MiB"),
    ("s3://[bucket", "not a storage URL"),
    ("s3://bkt?transfer_stall_timeout=nan", r"transfer_stall_timeout: expected a finite "
     r"number, got 'nan'"),
    ("s3://bkt?complete_timeout=-5", r"complete_timeout must be .* \(got -5\.0\)"),
    ("s3://bkt?upload_timeout=NaN", "upload_timeout: expected a finite number"),
    ("s3://My_Bucket", r'invalid bucket name "My_Bucket" \(S3 bucket names are 3-63'),
    ("s3://b", 'invalid bucket name "b"'),
    ("s3://" + "x" * 64, "invalid bucket name"),
])
def test_bad_urls(url, message):
    with pytest.raises(ConfigError, match=message):
        parse_tier_url(url)


def test_sizes():
    assert parse_size("8MiB", "x") == 8 * MiB
    assert parse_size("10MB", "x") == 10_000_000
    assert parse_size(4096, "x") == 4096
    for bad in ("lots", "inf", "infGiB", float("inf")):
        with pytest.raises(ConfigError):
            parse_size(bad, "x")


def test_precedence_file_then_flags_then_o(tmp_path):
    cfg_file = tmp_path / "m.toml"
    cfg_file.write_text(
        '[[tier]]\nurl = "file:///srv/a"\n\n[cache]\ndir = "/from/file"\nlisting_ttl = 10\n'
        '[fuse]\nuid = 5\nfile_mode = "0600"\n')
    cfg = build_config(str(cfg_file), str(tmp_path / "mnt"), cache_dir="/from/flag",
                       options=("uid=7,ro", "listing_ttl=20"))
    assert cfg.tiers[0].container == "/srv/a"
    assert cfg.cache.dir == "/from/flag"
    assert cfg.cache.listing_ttl == 20
    assert cfg.fuse.uid == 7 and cfg.fuse.read_only
    assert cfg.fuse.file_mode == 0o600
    cfg = build_config(str(cfg_file), str(tmp_path / "mnt"), options=("cache_dir=/from/o",))
    assert cfg.cache.dir == "/from/o"


def test_fstab_options_are_accepted(tmp_path):
    cfg = build_config("file:///srv", str(tmp_path),
                       options=("_netdev,nofail,x-systemd.automount,rw",))
    assert not cfg.fuse.read_only
    assert build_config("file:///srv", str(tmp_path), options=("noexec",)).fuse.noexec
    assert not build_config("file:///srv", str(tmp_path), options=("noexec,exec",)).fuse.noexec


def test_a_path_with_a_nul_from_toml_is_a_config_error(tmp_path):
    config = tmp_path / "m.toml"
    config.write_text('log_file = "/var/log/a\\u0000b"\n[[tier]]\nurl = "file:///srv"\n')
    with pytest.raises(ConfigError, match="log_file: a path must not contain a NUL"):
        build_config(str(config), str(tmp_path / "mnt"))


def test_default_cache_dir_is_per_source_and_mountpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = build_config("file:///srv/a", "/mnt/a").cache.dir
    b = build_config("file:///srv/b", "/mnt/a").cache.dir
    assert a != b and a.startswith(str(tmp_path / "stormount"))


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no storage tier"):
        build_config(str(_write(tmp_path, "[cache]\n")), "/mnt")
    with pytest.raises(ConfigError, match="unknown config key 'tiers'"):
        build_config(str(_write(tmp_path, '[[tiers]]\nurl="s3://bkt"\n')), "/mnt")
    with pytest.raises(ConfigError, match="needs a url"):
        build_config(str(_write(tmp_path, '[[tier]]\nendpoint="x"\n')), "/mnt")
    with pytest.raises(ConfigError, match="octal mode"):
        build_config("file:///srv", "/mnt", options=("umask=abc",))


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


# issue 19, finding 3: NaN compares false with every bound, so it passed each check
# (debounce=nan mounted and then never uploaded); infinity is no time either
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "1e400"])
@pytest.mark.parametrize("key", ["debounce", "metadata_ttl", "listing_ttl", "negative_ttl",
                                 "entry_timeout", "attr_timeout", "retry_delay",
                                 "chain.retry_delay", "connect_timeout", "read_timeout",
                                 "quota_interval", "lifecycle_interval"])
def test_nan_and_infinity_are_refused_in_o_options(key, value):
    with pytest.raises(ConfigError) as info:
        build_config("memory://x", "/tmp/mnt", options=(f"{key}={value}",))
    message = str(info.value)
    assert "\n" not in message and key.removeprefix("chain.") in message


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("section", "key"), [
    ("writeback", "debounce"), ("cache", "metadata_ttl"), ("fuse", "attr_timeout"),
    ("chain", "retry_max_delay"), ("", "quota_interval"), ("", "lifecycle_interval"),
    ("tier", "connect_timeout")])
def test_nan_and_infinity_are_refused_in_the_config_file(tmp_path, section, key, text):
    if section == "tier":
        body = f'[[tier]]\nurl = "memory://x"\n{key} = {text}\n'
    elif section:
        body = f'[[tier]]\nurl = "memory://x"\n[{section}]\n{key} = {text}\n'
    else:
        body = f'{key} = {text}\n[[tier]]\nurl = "memory://x"\n'
    path = tmp_path / "m.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=key):
        build_config(str(path), "/tmp/mnt")


def test_negative_seconds_are_refused():
    for key in ("debounce", "metadata_ttl", "quota_interval", "connect_timeout"):
        with pytest.raises(ConfigError, match=key):
            build_config("memory://x", "/tmp/mnt", options=(f"{key}=-1",))


def test_cache_sizes_have_bounds():
    """The read-ahead window queues a task per span: past 1 GiB it would queue
    thousands per read for nothing (memory in flight is bounded apart from it)."""
    assert build_config("memory://x", "/tmp/mnt",
                        options=("read_ahead_max=1GiB",)).cache.read_ahead_max == 1024**3
    for option, message in (("read_ahead_max=2GiB", "read_ahead_max must be at most 1GiB"),
                            ("block_size=128MiB", "block_size must be between")):
        with pytest.raises(ConfigError, match=message):
            build_config("memory://x", "/tmp/mnt", options=(option,))


# issue 19, finding 6: a config file that is not UTF-8 printed a 34-line
# UnicodeDecodeError traceback
@pytest.mark.parametrize("body", [b"\xff\xfe[fuse]\n", b'[[tier]]\nurl = "memory://\xe9"\n',
                                  b"\x80" * 10])
def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, body):
    path = tmp_path / "bad.toml"
    path.write_bytes(body)
    with pytest.raises(ConfigError, match=f"cannot read config file {path}: ") as info:
        build_config(str(path), "/tmp/mnt")
    assert "\n" not in str(info.value)
    stormount = os.path.join(os.path.dirname(sys.executable), "stormount")
    result = subprocess.run([stormount, "mount", str(path), str(tmp_path / "mnt")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"stormount: error: cannot read config file {path}: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# issue 19, finding 2: -o uid=99999999999999 killed the daemon with only "did not become
# ready; see log" (OverflowError at the first stat); out-of-range ownership and modes
# are refused at start, in one line
@pytest.mark.parametrize("option", ["uid=99999999999999", "gid=4294967295", "uid=-1",
                                    "gid=-5", "umask=99999999", "umask=17777",
                                    "file_mode=-1", "dir_mode=777777777777",
                                    "uid=1e400", "gid=nan"])
def test_out_of_range_ownership_and_modes_are_refused_at_start(tmp_path, option):
    key = option.partition("=")[0]
    with pytest.raises(ConfigError, match=key):
        build_config("memory://x", str(tmp_path / "mnt"), options=(option,))
    stormount = os.path.join(os.path.dirname(sys.executable), "stormount")
    (tmp_path / "mnt").mkdir()
    result = subprocess.run([stormount, "mount", "memory://x", str(tmp_path / "mnt"),
                             "-o", option], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("stormount: error: ") and key in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_largest_ids_are_taken():
    fuse = build_config("memory://x", "/tmp/mnt", options=("uid=4294967294,gid=0",)).fuse
    assert (fuse.uid, fuse.gid) == (2**32 - 2, 0)


# found by tests/unit/test_fuzz_options.py: a newline in a config path, an -o key or a
# [[quota]] path made the error two lines; what the user gave is shown escaped instead
@pytest.mark.parametrize(("kwargs", "body"), [
    ({"options": ("config=\n0",)}, None),
    ({"options": ("bad\nkey=1",)}, None),
    ({"options": ("\udcff=1",)}, None),
    ({}, '[[tier]]\nurl = "memory://x"\n[[quota]]\npath = "a\\nb"\nmax_files = -1\n'),
])
def test_refusals_naming_what_was_given_are_one_line(tmp_path, kwargs, body):
    source = "memory://x"
    if body is not None:
        source = str(tmp_path / "q.toml")
        (tmp_path / "q.toml").write_text(body)
    with pytest.raises(ConfigError) as info:
        build_config(source, "/tmp/mnt", **kwargs)
    assert "\n" not in str(info.value) and str(info.value).isprintable()
