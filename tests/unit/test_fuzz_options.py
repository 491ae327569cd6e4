"""Fuzz of the options and config surface (issue 19): random `-o key=value` strings,
config files (TOML of every known key with values of every type, and raw bytes) and
command lines. Whatever they hold, the config is built (a frozen MountConfig) or refused
with a ConfigError/StormountError of one line; a command line ends in a click usage
error (exit 2) or one line, never a traceback.

`make test` runs a fixed budget with a fixed seed; STORMOUNT_FUZZ_SCALE=N runs N times
as many examples (`make fuzz` does, with a large N)."""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from stormount import cli as cli_module
from stormount import config
from stormount.cli import mount as mount_module
from stormount.config import MountConfig, build_config
from stormount.errors import StormountError
from tests.helpers.fuzz import budget

SECTION_KEYS = {
    "cache": sorted(config.converters(config.CacheConfig)),
    "fuse": sorted(config.converters(config.FuseConfig)),
    "writeback": sorted(config.converters(config.WritebackConfig)),
    "chain": sorted(config.converters(config.ChainConfig)),
}
O_KEYS = sorted({*config.TIER_OPTIONS, *SECTION_KEYS["cache"], *SECTION_KEYS["fuse"],
                 *SECTION_KEYS["writeback"], *(f"chain.{k}" for k in SECTION_KEYS["chain"]),
                 *config.TOP_LEVEL, *config._O_ALIASES, "tier", "config", "exec", "rw",
                 "allow_other", "x-systemd.automount", "nofail", "colour"})
TIER_KEYS = sorted(config.TIER_OPTIONS)

WEIRD_TEXT = ["nan", "NaN", "inf", "-inf", "infinity", "1e400", "-1e400", "-1", "-0",
              "0", "1", "0.05", "99999999999999999999", str(2**32 - 1), str(2**64), "",
              " ", "0x10", "0o777", "0777", "08", "1.5", "8MiB", "5KiB", "-8MiB", "1e3MiB",
              "true", "false", "yes", "local", "upload", "degraded", "json", "debug",
              "127.0.0.1:9464", "[::1]:0", "host:99999", "memory://fz", "s3://b",
              "file:///nonexistent/fz", "/nonexistent/fz", "\udcff\udcfe", "\x00", "é",
              "a,b", "a=b", "30m", "7d", "1y"]
text_values = st.one_of(st.sampled_from(WEIRD_TEXT), st.text(max_size=12),
                        st.integers(-2**70, 2**70).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr))


def one_line(e: BaseException) -> None:
    message = str(e)
    assert message and "\n" not in message and "Traceback" not in message, repr(message)


def _built_or_refused(**kwargs: Any) -> None:
    try:
        cfg = build_config(**kwargs)
    except StormountError as e:  # ConfigError is one
        one_line(e)
        return
    assert isinstance(cfg, MountConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.source = "changed"  # type: ignore[misc]
    # what was taken is usable: no NaN or infinity (a NaN passes every bound), ids the
    # kernel takes
    for part in (cfg, cfg.cache, cfg.fuse, cfg.writeback, cfg.chain, *cfg.tiers,
                 *cfg.quotas, *cfg.lifecycle):
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if isinstance(value, float):
                assert math.isfinite(value) and value >= 0, (f.name, value)
    for value in (cfg.fuse.uid, cfg.fuse.gid):
        assert value is None or 0 <= value <= config.ID_MAX


@budget(300)
@given(st.lists(st.tuples(st.sampled_from(O_KEYS), text_values), max_size=6),
       st.sampled_from(["memory://fz", "memory://fz?debounce=1", "file:///nonexistent/fz",
                        "s3://bucket/p", "az://c", "s3://b?connect_timeout=nan", "x",
                        "s3://[x", "memory://fz?part_size=inf", "/nonexistent/fz.toml"]))
def test_fuzz_o_options(pairs: list[tuple[str, str]], source: str) -> None:
    options = tuple(f"{key}={value}" if value != "" else key for key, value in pairs)
    _built_or_refused(source=source, mountpoint="/tmp/fz/mnt", options=options)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(text, text)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                      for c in str(value) if not 0xD800 <= ord(c) <= 0xDFFF)
    return f'"{escaped}"'


scalars = st.one_of(text_values, st.integers(-2**65, 2**65), st.booleans(),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0o644, 0o7777, 0o17777, 2**32 - 2, 2**32]))
values = st.one_of(scalars, st.lists(scalars, max_size=2),
                   st.dictionaries(st.sampled_from(["a", "url"]), scalars, max_size=2))


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    lines: list[str] = []
    for key in draw(st.lists(st.sampled_from([*config.TOP_LEVEL, "bogus"]), max_size=3,
                             unique=True)):
        lines.append(f"{key} = {toml_value(draw(values))}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[tier]]")
        if draw(st.booleans()) or not lines:
            url = draw(st.sampled_from(["memory://fz", "s3://b", "file:///nonexistent/fz",
                                        "x", ""]))
            lines.append(f"url = {toml_value(url)}")
        for key in draw(st.lists(st.sampled_from(TIER_KEYS), max_size=3, unique=True)):
            lines.append(f"{key} = {toml_value(draw(values))}")
    for section, keys in SECTION_KEYS.items():
        chosen = draw(st.lists(st.sampled_from([*keys, "bogus"]), max_size=3, unique=True))
        if chosen:
            lines.append(f"[{section}]")
            lines += [f"{key} = {toml_value(draw(values))}" for key in chosen]
    for table, keys in (("quota", ["path", "max_bytes", "max_files", "x"]),
                        ("lifecycle", ["prefix", "older_than", "action", "to", "x"])):
        for _ in range(draw(st.integers(0, 1))):
            lines.append(f"[[{table}]]")
            for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
                lines.append(f"{key} = {toml_value(draw(values))}")
    body = ("\n".join(lines) + "\n").encode()
    mangle = draw(st.sampled_from(["none", "none", "bytes", "insert", "truncate"]))
    if mangle == "bytes":
        return draw(st.binary(max_size=200))
    if mangle == "insert":
        at = draw(st.integers(0, len(body)))
        return body[:at] + draw(st.binary(min_size=1, max_size=4)) + body[at:]
    if mangle == "truncate":
        return body[:draw(st.integers(0, len(body)))]
    return body


@budget(300)
@given(config_files(), st.lists(st.tuples(st.sampled_from(O_KEYS), text_values), max_size=2),
       st.booleans())
def test_fuzz_config_files(body: bytes, pairs: list[tuple[str, str]], as_source: bool) -> None:
    with tempfile.TemporaryDirectory() as where:
        path = os.path.join(where, "fz.toml")
        Path(path).write_bytes(body)
        options = tuple(f"{key}={value}" for key, value in pairs)
        if as_source:
            _built_or_refused(source=path, mountpoint="/tmp/fz/mnt", options=options)
        else:
            _built_or_refused(source="memory://fz", mountpoint="/tmp/fz/mnt",
                              config_file=path, options=options)


class _WouldMount(Exception):
    """A command line that a real `stormount mount` would act on: the fuzz stops there."""


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
    return out


COMMANDS = _commands(cli_module.cli)
OPTION_NAMES = sorted({opt for command in [cli_module.cli, *(
    cli_module.cli.commands[c[0]] for c in COMMANDS)] if isinstance(command, click.Command)
    for param in command.params for opt in getattr(param, "opts", [])})


@pytest.fixture
def no_real_mounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    def refuse(*args: object, **kwargs: object) -> None:
        raise _WouldMount

    monkeypatch.setattr(mount_module, "_mount_foreground", refuse)
    monkeypatch.setattr(mount_module, "_mount_background", refuse)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_command_is_fuzzed() -> None:
    names = {c[0] for c in COMMANDS}
    assert {"mount", "unmount", "ctl", "gc", "lifecycle", "pull", "push", "usage"} <= names


@budget(200)
@given(st.data())
def test_fuzz_command_lines(no_real_mounts: Path, data: st.DataObject) -> None:
    command = data.draw(st.sampled_from(COMMANDS))
    # arguments never name something that exists, so no command acts on this host
    # (stores are memory:// or a folder that does not exist yet, under tmp_path)
    token = st.one_of(st.sampled_from(OPTION_NAMES), text_values,
                      st.sampled_from(["memory://fz", "memory://fz/a", "fz-new",
                                       f"file://{no_real_mounts}/fz-store", "-o",
                                       "debounce=nan", "uid=99999999999"]))
    argv = [*command, *data.draw(st.lists(token, max_size=6))]
    argv = [a for a in argv
            if ("\x00" not in a and not (a and os.path.lexists(a))) or a in command]
    runner = CliRunner()
    try:
        result = runner.invoke(cli_module.cli, argv, catch_exceptions=False)
    except _WouldMount:
        return
    except (StormountError, OSError, sqlite3.Error) as e:  # cli.main makes these one line
        one_line(e)
        return
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output)
