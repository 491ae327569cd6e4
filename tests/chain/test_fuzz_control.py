"""Fuzz of the control socket (issue 19), kernel-free: the real ControlServer and the
real command handler over a Vfs on a chain of two memory tiers, composed as the daemon
composes them and served from a trio loop in a thread of its own; hypothesis sends what
a client could: any bytes (invalid UTF-8, NULs, lines beyond the size limit, no newline
at the end), any JSON value, objects with any keys, the real commands with arguments of
every type and value (paths with `..`, absolute ones, NUL, lone surrogates, numbers
NaN/Infinity/huge/negative, JSON nested deep), several requests in one write, and
connections half-closed or given up without reading.

Invariants, per request: one answer per request line, each a JSON object with a boolean
`"ok"`, an error (`"ok": false`) with a non-empty message that names no internal error;
the commands that take no argument succeed; the connection stays open unless the
request was too large. After every example a fresh connection's `health` answers, no
error was logged (nothing escaped a command or a client's task), nothing changed in the
stores, on this host outside the mount, or in the kernel's view of other mounts (every
cache drop names an inode of this mount), and `unmount` was only ever asked with sane
arguments. `stormount ctl`'s command line is fuzzed against the same server and against
a socket that is not there: a click usage error (exit 2) or the documented exit code
with one line, never a traceback.

`make test` runs a fixed budget with a fixed seed; STORMOUNT_FUZZ_SCALE=N runs N times
as many examples (`make fuzz`)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from stormount import cli as cli_module
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.cli.ctl import ctl as ctl_command
from stormount.config import CacheConfig, MountConfig
from stormount.control import commands
from stormount.control.commands import Control
from stormount.control.server import MAX_REQUEST, ControlServer
from stormount.fuse.ops import Operations
from stormount.vfs.nodes import ROOT_INO
from stormount.vfs.pins import Pins
from tests.helpers.chain import Tiers
from tests.helpers.fuzz import budget
from tests.helpers.vfs import GID, UID, VfsFactory, write

pytestmark = pytest.mark.timeout(600)

ANSWER_TIMEOUT = 20.0  # seconds for any answer of the in-process server



# --- the mount under test: served from its own thread ------------------------------------

FILES = {"a.txt": b"alpha", "docs/b.txt": b"bravo" * 100, "docs/deep/c.txt": b"c"}


class Served:
    """A Vfs over two memory tiers with its Control behind a ControlServer, run by
    trio.run in a thread; the test talks to it over the socket like any client."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mountpoint = root / "mnt"  # exists and stays empty: a path "under" it is valid
        self.mountpoint.mkdir()
        self.outside = root / "outside"  # this host beyond the mount: must stay as it is
        self.outside.mkdir()
        (self.outside / "secret").write_bytes(b"not the mount's")
        self.socket = str(root / "ctl.sock")
        self.unmounts: list[dict[str, Any]] = []  # the arguments `unmount` was asked with
        self.dropped_entries: list[tuple[int, bytes]] = []  # the kernel cache drops asked
        self.dropped_inodes: list[int] = []
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.tiers = Tiers(root / "chain", 2)
        (root / "chain").mkdir()
        self._thread = threading.Thread(target=self._run, name="control-fuzz", daemon=True)

    def start(self) -> Served:
        self._thread.start()
        if not self._ready.wait(60) or self.error is not None:
            raise RuntimeError(f"the control server did not start: {self.error!r}")
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as e:  # reported by stop(); the test fails there
            self.error = e
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            chain = self.tiers.make()
            await chain.check()
            nursery.start_soon(chain.run)
            cache_dir = self.root / "cache"
            cache_dir.mkdir()
            blocks = BlockCache(str(cache_dir / "blocks"), block_size=4096,
                                max_bytes=1 << 24, min_free_bytes=0)
            meta = MetaStore(str(cache_dir / "meta.sqlite3"))
            self.factory = VfsFactory(self.root / "vfs", nursery)
            (self.root / "vfs").mkdir()
            vfs = self.factory(chain, blocks=blocks, meta=meta)
            self.vfs = vfs
            ops = Operations(vfs, vfs.fuse)
            pins = Pins(vfs, blocks, 60.0)
            nursery.start_soon(pins.run)
            docs = await vfs.mkdir(ROOT_INO, "docs", 0o755, UID, GID)
            deep = await vfs.mkdir(docs.ino, "deep", 0o755, UID, GID)
            await write(vfs, "a.txt", FILES["a.txt"])
            await write(vfs, "b.txt", FILES["docs/b.txt"], docs.ino)
            await write(vfs, "c.txt", FILES["docs/deep/c.txt"], deep.ino)
            assert not await vfs.writeback.flush()

            async def unmount(**kwargs: Any) -> dict[str, Any]:
                # the daemon's Stopper, which would end the mount: only recorded here
                # (tests/fuse/test_fuzz_control_mount.py sends it hostile requests)
                self.unmounts.append(kwargs)
                return {"unmounted": False, "pending": 0}

            cfg = MountConfig(source="memory://", mountpoint=str(self.mountpoint), tiers=(),
                              cache=CacheConfig(dir=str(cache_dir)))
            self.control = Control(cfg, vfs, ops, chain, pins=pins, unmount=unmount)
            self.chain = chain
            server = ControlServer(self.socket, self.control.handle)
            self.server = server
            nursery.start_soon(server.serve)
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                nursery.cancel_scope.cancel()
                server.close()
        self.factory.close()
        meta.close()
        blocks.close()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` (sync) on the server's loop, between requests."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def stop(self) -> None:
        if self._token is not None and self._thread.is_alive():
            assert self._stop is not None
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        self.tiers.close()
        if self.error is not None:
            raise AssertionError("the server's loop ended with an exception") from self.error
        assert not self._thread.is_alive(), "the server's loop did not stop"

    # --- what must not change --------------------------------------------------------

    def host_state(self) -> dict[str, Any]:
        outside = {str(p.relative_to(self.outside)): p.read_bytes() if p.is_file() else None
                   for p in self.outside.rglob("*")}
        return {"outside": outside, "mountpoint": sorted(os.listdir(self.mountpoint)),
                "tiers": [self.tiers.objects(i) for i in range(2)]}

    def reset(self) -> None:
        """Put the tiers back in service (`drain` is a fair command to fuzz)."""
        for tier in self.chain.tiers:
            tier.drain(False)

    def quiet(self) -> None:
        """Until the server has done with every client (one given up on goes on being
        served until its requests are answered)."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while self.server.clients:
            assert time.monotonic() < deadline, "a client's task does not end"
            time.sleep(0.002)

    def known_inodes(self) -> set[int]:
        return {node.ino for node in self.vfs.inodes.all()}


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    server = Served(tmp_path)

    # no kernel here: the cache drops the FUSE adapter asks for are recorded, and checked
    def entry(parent: int, name: bytes, ignore_enoent: bool = False) -> None:
        assert isinstance(name, bytes)
        server.dropped_entries.append((parent, name))

    def inode(ino: int, attr_only: bool = False) -> None:
        server.dropped_inodes.append(ino)

    monkeypatch.setattr(pyfuse3, "invalidate_entry_async", entry)
    monkeypatch.setattr(pyfuse3, "invalidate_inode", inode)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- a client over a plain blocking socket -----------------------------------------------


class Conversation:
    """One connection: sends bytes (in a thread, so that a large write never waits on
    answers nobody reads yet) and reads answer lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(ANSWER_TIMEOUT)
        self.sock.connect(path)
        self.buffer = b""
        self.sender: threading.Thread | None = None

    def send(self, data: bytes, half_close: bool = False) -> None:
        def run() -> None:
            with contextlib.suppress(OSError):  # the server may close on a large request
                self.sock.sendall(data)
                if half_close:
                    self.sock.shutdown(socket.SHUT_WR)

        self.sender = threading.Thread(target=run, daemon=True)
        self.sender.start()

    def line(self) -> dict[str, Any] | None:
        """The next answer line as JSON; None at the end of the connection."""
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                assert not self.buffer, f"a partial answer line: {self.buffer[:200]!r}"
                return None
            self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\n")
        answer = json.loads(raw)  # every answer is JSON (ValueError fails the test)
        assert isinstance(answer, dict), answer
        return answer

    def answer(self) -> dict[str, Any] | None:
        """The next answer, past any progress lines."""
        while True:
            reply = self.line()
            if reply is None or reply.get("event") != "progress":
                return reply
            assert reply.get("ok") is True, reply

    def close(self) -> None:
        if self.sender is not None:
            self.sender.join(ANSWER_TIMEOUT)
        self.sock.close()


def health_answers(path: str) -> None:
    c = Conversation(path)
    try:
        c.send(b'{"command": "health"}\n')
        reply = c.answer()
        assert reply is not None and reply["ok"] is True and reply["state"] in (
            "ok", "degraded", "down"), reply
    finally:
        c.close()


# --- what is sent -------------------------------------------------------------------------

HOSTILE_TEXT = [
    "", ".", "..", "../..", "../../etc", "../../../../../../etc/passwd", "/", "//", "/..",
    "/../..", "a/../..", "a/./b", "./a.txt", "a.txt", "a.txt/", "docs", "docs/", "docs/b.txt",
    "docs/deep", "/docs/../a.txt", "docs/../../outside", "\x00", "a.txt\x00", "a\x00/b",
    "\ud800", "\udcff", "docs/\udcff", "é", "a\nb", "a\\b", " ", "x" * 300, "x" * 5000,
    "/etc/passwd", "/etc", "/proc/self/root", "/dev/null", "~", "$HOME", "*", "?",
    "0", "1", "2", "-1", "00", " 0", "0 ", "+1", "1.0", "²", "٣", "\uff11",
    "99999999999999999999",
    "memory://", "memory://x", "s3://b", "true", "null", "NaN", "Infinity",
    "health", "unmount", "drain", "\uff48ealth",
]
NUMBERS = [0, -0.0, 1, -1, 0.5, 1e-9, -1e-9, 300, 10**6, 2**31, 2**63, 2**64, 10**30,
           10**400, -(10**400), 1e308, -1e308, math.inf, -math.inf, math.nan]


@functools.cache  # built once per server: building them is slow
def hostile_texts(served: Served) -> st.SearchStrategy[str]:
    mp, outside = str(served.mountpoint), str(served.outside)
    near = [mp, mp + "/", mp + "/a.txt", mp + "/docs/..", mp + "/..", mp + "/../outside",
            mp + "/../outside/secret", mp + "x", mp + "/\x00", outside, outside + "/secret",
            served.socket, str(served.root), str(served.root / "cache")]
    return st.one_of(st.sampled_from(HOSTILE_TEXT + near), st.text(max_size=20),
                     st.lists(st.sampled_from(["..", ".", "", "a.txt", "docs", "deep", "x",
                                               "\udcff", "é"]), max_size=6).map("/".join))


@functools.cache
def json_values(served: Served) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.sampled_from(NUMBERS),
        st.integers(-(2**80), 2**80), st.floats(allow_nan=True, allow_infinity=True),
        hostile_texts(served))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=8)


# the arguments each command reads; any other key is sent now and then too
ARGS_OF = {"invalidate": ["path", "recursive"], "flush": ["path", "timeout", "progress"],
           "pin": ["path"], "unpin": ["path"], "drain": ["tier"], "undrain": ["tier"],
           "stats": ["reset"], "unmount": ["timeout", "lazy", "force", "progress"]}
OTHER_KEYS = ["command", "event", "ok", "wait", "x", "", "\udcff"]
# unmount is fuzzed too: here its end is only recorded (the arguments must be sane)
COMMAND_NAMES = list(commands.COMMANDS)
TIER_TEXT = ["0", "1", "2", "-1", "01", "00", " 1", "1 ", "+1", "1.0", "1e0", "0x1", "²",
             "٣", "\uff11", "⑦", "9" * 20, "9" * 5000, "memory://", "memory://tier0",
             "file:///", "s3://b", ""]


@functools.cache
def argument_values(served: Served, name: str) -> st.SearchStrategy[Any]:
    values = json_values(served)
    own: st.SearchStrategy[Any] = {
        "path": hostile_texts(served),
        "tier": st.one_of(st.sampled_from(TIER_TEXT), st.integers(-3, 3),
                          st.sampled_from(NUMBERS)),
        "timeout": st.one_of(st.sampled_from(NUMBERS), st.floats(-1, 0.05)),
    }.get(name, st.booleans())
    return st.one_of(own, own, values)


@functools.cache
def command_requests(served: Served) -> st.SearchStrategy[dict[str, Any]]:
    """A real command with its arguments (each of any type, mostly of hostile values of
    its own kind), now and then with keys it does not read."""
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        name = draw(st.sampled_from(COMMAND_NAMES))
        request: dict[str, Any] = {"command": name}
        for key in draw(st.lists(st.sampled_from(ARGS_OF.get(name, ["x"])), unique=True,
                                 max_size=4)):
            request[key] = draw(argument_values(served, key))
        for key in draw(st.lists(st.sampled_from(OTHER_KEYS), unique=True, max_size=1)):
            if key != "command" or draw(st.booleans()):
                request[key] = draw(json_values(served))
        return request

    return build()


def deep(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


RAW_LINES = [
    b"", b" ", b"\t", b"\r", b"\x0b", b"\x00", b"\x00" * 10, b"\xff\xfe", b"\xef\xbb\xbf{}",
    b'\xef\xbb\xbf{"command": "health"}', b"{", b"}", b"[]", b"null", b"0", b"NaN",
    b'"health"', b'{"command": "health"', b'{"command": "health"}}', b"{'command': 'health'}",
    b'{"command": "health", "command": "drain"}', b'{"command": "health\x00"}',
    b'{"command": "\xff"}', b'{"command": "\\ud800"}', b'{"command": "flush", "path": "\\ud800"}',
    b'{"command": "invalidate", "path": "\\udcff"}',
    b'{"command": "invalidate", "path": "\\ud800"}',
    b'{"command": "pin", "path": "\\ud800/x"}', b'{"command": "flush", "timeout": NaN}',
    b'{"command": "flush", "timeout": Infinity}', b'{"command": "flush", "timeout": 1e999}',
    b'{"command": "flush", "timeout": ' + b"9" * 400 + b"}",
    b'{"command": "unmount", "timeout": NaN}', b'{"command": "unmount", "timeout": Infinity}',
    b'{"command": "unmount", "timeout": ' + b"9" * 400 + b"}",
    b'{"command": "drain", "tier": ' + b"9" * 4000 + b"}",
    b'{"command": "drain", "tier": "' + b"9" * 5000 + b'"}',
    b'{"command": "drain", "tier": -0}', b'{"command": "undrain", "tier": 1.0}',
    b'{"command": "invalidate", "path": "a.txt", "recursive": 1}',
    '{"command": "health"}'.encode("utf-16"), '{"command": "health"}'.encode("utf-32-le"),
    deep(10), deep(500), deep(900), deep(990), deep(1000), deep(5000), deep(30000),
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
    b'{"command": "drain", "tier": ' + deep(400) + b"}",
    b'{"command": "drain", "tier": ' + deep(800) + b"}",
    b'{"command": "drain", "tier": ' + deep(950) + b"}",
    b'{"command": "unpin", "path": ' + deep(950, '"x"') + b"}",
    b'{"command": "health", "x": "' + b"y" * (MAX_REQUEST - 40) + b'"}',
    b"x" * MAX_REQUEST, b"x" * (MAX_REQUEST + 1), b" " * (MAX_REQUEST + 1),
    b'{"command": "health", "x": "' + b"y" * MAX_REQUEST + b'"}',
]


@functools.cache
def requests(served: Served) -> st.SearchStrategy[bytes]:
    """One request line's bytes (it may hold newlines of its own: then it is several)."""
    as_json = st.one_of(command_requests(served), json_values(served)).map(
        lambda v: json.dumps(v).encode())
    # a line about the size limit, built rather than drawn byte by byte (that is slow)
    sized = st.builds(lambda n, fill, head: (head + fill * MAX_REQUEST)[:MAX_REQUEST + n],
                      st.integers(-10, 10), st.sampled_from([b"x", b" ", b"\xff", b"\x00"]),
                      st.sampled_from([b"", b'{"command": "health", "x": "', b"["]))
    return st.one_of(as_json, as_json, as_json, as_json, st.sampled_from(RAW_LINES),
                     st.binary(max_size=80), sized)


# --- the checks ---------------------------------------------------------------------------

NO_ARGUMENTS = {"health", "queue", "tiers", "metrics", "pins"}


def expected(payload: bytes, terminated: bool) -> tuple[list[bytes], bool]:
    """The request lines the server answers, in order, and whether it ends the
    connection at the last one because it is too large."""
    lines = payload.split(b"\n")
    if terminated:
        lines = lines[:-1]
    answered = []
    for line in lines:
        if len(line) > MAX_REQUEST:
            return [*answered, line], True
        if line.strip():
            answered.append(line)
    return answered, False


def check_answer(line: bytes, reply: dict[str, Any] | None, served: Served,
                 too_large: bool) -> None:
    assert reply is not None, f"no answer to {line[:200]!r}"
    assert isinstance(reply.get("ok"), bool), reply
    if too_large:
        assert reply == {"ok": False, "error": f"request too large (more than "
                                                f"{MAX_REQUEST} bytes)"}, reply
        return
    if reply["ok"] is False:
        message = reply.get("error")
        assert isinstance(message, str) and message.strip(), reply
        assert "internal error" not in message and "Traceback" not in message, (
            line[:300], message)
    try:
        request = json.loads(line)
    except RecursionError:  # nested deep: how deep parses depends on the stack's depth,
        return  # here and in the server (an error or, if it is one, the command's answer)
    except ValueError:
        assert reply["ok"] is False and "not a JSON object" in reply["error"], reply
        return
    if not isinstance(request, dict):
        assert reply["ok"] is False and "not a JSON object" in reply["error"], reply
        return
    command = request.get("command")
    if not isinstance(command, str):
        assert reply["ok"] is False and "command" in reply["error"], reply
        return
    if command in NO_ARGUMENTS:
        assert reply["ok"] is True, (request, reply)
    if command == "stats" and isinstance(request.get("reset", False), bool):
        assert reply["ok"] is True, (request, reply)
    if command not in commands.COMMANDS:
        assert reply["ok"] is False and "command" in reply["error"], reply
    if reply["ok"] and isinstance(reply.get("path"), str):  # the path acted on
        path = reply["path"]
        assert path.startswith("/") and ".." not in path.split("/"), reply
        assert "//" not in path and "\x00" not in path, reply


def check_scope(served: Served, before: dict[str, Any]) -> None:
    assert served.host_state() == before, "the store or this host changed"
    known = served.call(served.known_inodes)
    for parent, name in served.dropped_entries:
        assert parent in known, ("a kernel entry dropped under an unknown inode", parent)
        assert name and b"/" not in name and name not in (b".", b".."), name
        name.decode("utf-8", "surrogateescape")
    for ino in served.dropped_inodes:
        assert ino in known, ("a kernel inode dropped that is not the mount's", ino)
    served.dropped_entries.clear()
    served.dropped_inodes.clear()
    for asked in served.unmounts:
        assert set(asked) == {"lazy", "force", "timeout", "progress"}, asked
        assert isinstance(asked["lazy"], bool) and isinstance(asked["force"], bool), asked
        timeout = asked["timeout"]
        # (Infinity: no limit, as for a signal)
        assert isinstance(timeout, float) and not math.isnan(timeout) and timeout >= 0, asked
    served.unmounts.clear()


def still_serving(served: Served, before: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """After an example: a fresh connection is answered, nothing outside the mount's
    scope changed, nothing was logged at ERROR."""
    health_answers(served.socket)
    served.quiet()
    served.call(served.reset)
    check_scope(served, before)
    assert not errors_logged(caplog), errors_logged(caplog)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" + (f" ({r.exc_info[1]!r})" if r.exc_info else "")
            for r in caplog.records if r.levelno >= logging.ERROR]


# --- the fuzz -----------------------------------------------------------------------------


@pytest.fixture
def fuzz_context(served: Served, caplog: pytest.LogCaptureFixture) -> Served:
    caplog.set_level(logging.WARNING)
    health_answers(served.socket)
    return served


@budget(300)
@given(st.data())
def test_fuzz_control_requests(fuzz_context: Served, caplog: pytest.LogCaptureFixture,
                               data: st.DataObject) -> None:
    served = fuzz_context
    caplog.clear()
    before = served.host_state()
    lines = data.draw(st.lists(requests(served), min_size=1, max_size=4), label="requests")
    ending = data.draw(st.sampled_from(["newline", "newline", "half-close", "abandon"]),
                       label="ending")
    payload = b"\n".join(lines) + (b"" if ending == "half-close" else b"\n")
    answered, closed = expected(payload, ending != "half-close")
    c = Conversation(served.socket)
    try:
        c.send(payload, half_close=ending == "half-close")
        if ending == "abandon":  # gone before reading anything (maybe before sending all)
            pass
        else:
            for n, line in enumerate(answered):
                check_answer(line, c.answer(), served, closed and n == len(answered) - 1)
            if closed or ending == "half-close":
                assert c.answer() is None, "the connection was not closed"
            else:  # bad requests do not end the connection
                c.send(b'{"command": "health"}\n')
                reply = c.answer()
                assert reply is not None and reply["ok"] is True, reply
    finally:
        c.close()
    still_serving(served, before, caplog)


@budget(100)
@given(st.lists(st.tuples(st.sampled_from(COMMAND_NAMES), st.data()), min_size=1,
                max_size=3))
def test_fuzz_control_commands_on_one_connection(fuzz_context: Served,
                                                 caplog: pytest.LogCaptureFixture,
                                                 asks: list[tuple[str, st.DataObject]]
                                                 ) -> None:
    """The real commands with arguments of every type, one after the other on one
    connection, each answered before the next is sent."""
    served = fuzz_context
    caplog.clear()
    before = served.host_state()
    c = Conversation(served.socket)
    try:
        for name, data in asks:
            args = {key: data.draw(argument_values(served, key)) for key in data.draw(
                st.lists(st.sampled_from(ARGS_OF.get(name, ["x"])), unique=True))}
            line = json.dumps({"command": name, **args}).encode()
            c.send(line + b"\n")
            check_answer(line, c.answer(), served, False)
    finally:
        c.close()
    still_serving(served, before, caplog)


def test_every_command_with_every_hostile_argument(fuzz_context: Served,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """What the fuzz draws now and then, each once: every raw line above, and every
    argument of every command with each hostile value of its kind, on one connection."""
    served = fuzz_context
    before = served.host_state()
    kinds: dict[str, list[Any]] = {
        "path": [*HOSTILE_TEXT, str(served.mountpoint / ".."), str(served.outside)],
        "tier": [*TIER_TEXT, *NUMBERS, -1, 7],
        "timeout": [n for n in NUMBERS if not (isinstance(n, float) and n > 1e6)
                    and not (isinstance(n, int) and n > 0)] + [None, "1", [], {}],
    }
    flags: list[Any] = [None, 0, 1, "true", "yes", [], {}, math.nan]
    lines = [line for line in RAW_LINES if b"\n" not in line and len(line) <= MAX_REQUEST]
    for name, args in ARGS_OF.items():
        for arg in args:
            for value in kinds.get(arg, flags):
                lines.append(json.dumps({"command": name, arg: value}).encode())
    c = Conversation(served.socket)
    try:
        for line in lines:
            c.send(line + b"\n")
            c.sender.join(ANSWER_TIMEOUT)  # type: ignore[union-attr]
            if line.strip():
                check_answer(line, c.answer(), served, False)
            served.call(served.reset)
    finally:
        c.close()
    served.quiet()
    check_scope(served, before)
    assert not errors_logged(caplog), errors_logged(caplog)


# --- `stormount ctl` ----------------------------------------------------------------------

CTL_COMMANDS = sorted(ctl_command.commands)
CTL_OPTIONS = ["--json", "--timeout", "--socket", "-m", "--mountpoint", "-r", "--recursive",
               "--reset", "--wait", "--help", "-h", "--", "-", "--bogus"]
CTL_VALUES = ["0", "1", "-1", "0.001", "1e9", "86401", "nan", "inf", "-inf", "", " ", "..",
              "../..", "/etc/passwd", "a.txt", "docs/", "\udcff", "é", "x" * 300, "²", "٣",
              "memory://", "/nonexistent/fz.sock"]


def run_main(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """`stormount ARGV` through cli.main (what the console script runs): exit status,
    stdout and stderr. An exception main lets out fails the test (a traceback)."""
    runner = CliRunner()
    with runner.isolation(env=env) as (out, err, _):
        old = sys.argv
        sys.argv = ["stormount", *argv]
        code: int | str | None = 0
        try:
            cli_module.main()
        except SystemExit as e:
            code = e.code
        finally:
            sys.argv = old
        stdout, stderr = out.getvalue(), err.getvalue()
    if isinstance(code, str):  # sys.exit("message"): printed, status 1
        stderr += code
        code = 1
    return int(code or 0), stdout.decode(errors="replace"), stderr.decode(errors="replace")


@budget(150)
@given(st.data())
def test_fuzz_ctl_command_lines(fuzz_context: Served, caplog: pytest.LogCaptureFixture,
                                tmp_path_factory: pytest.TempPathFactory,
                                data: st.DataObject) -> None:
    served = fuzz_context
    caplog.clear()
    before = served.host_state()
    target = data.draw(st.sampled_from(["served", "served", "missing", "not-a-socket"]))
    where = {"served": served.socket, "missing": str(served.root / "missing.sock"),
             "not-a-socket": str(served.outside / "secret")}[target]
    value = st.one_of(st.sampled_from(CTL_VALUES), st.sampled_from(HOSTILE_TEXT),
                      st.text(max_size=10))
    token = st.one_of(st.sampled_from(CTL_COMMANDS), st.sampled_from(CTL_OPTIONS), value)
    # `ctl [GROUP OPTIONS] COMMAND [ARGS]`, each part mostly well-formed, now and then not
    group = data.draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(["--timeout", "-m", "--mountpoint", "--socket"]), value),
        st.tuples(st.sampled_from(["--json", "--bogus", "--"])), st.tuples(token)),
        max_size=2))
    command = data.draw(st.one_of(st.sampled_from(CTL_COMMANDS), st.sampled_from(CTL_COMMANDS),
                                  token))
    args = data.draw(st.lists(st.one_of(
        value, value, st.tuples(st.sampled_from(["--wait", "--timeout"]), value),
        st.sampled_from(["-r", "--recursive", "--reset", "--json", "--", "--help"]), token),
        max_size=3))
    words = [*(w for part in group for w in part), command,
             *(w for a in args for w in (a if isinstance(a, tuple) else (a,)))]
    argv = ["ctl", "--socket", where, *words]
    argv = [a for a in argv if "\x00" not in a]  # an argv cannot hold NUL
    # no other mount of this host (or of this test session) may be found and talked to
    env = {"STORMOUNT_RUNTIME_DIR": str(tmp_path_factory.mktemp("runtime")),
           "STORMOUNT_SOCKET": ""}
    check_command_line(argv, *run_main(argv, env))
    still_serving(served, before, caplog)


# --- a few hostile requests with their exact answers (regressions of what the fuzz
# found are in tests/chain/test_control_commands.py) ---------------------------------------


def ask_raw(served: Served, line: bytes) -> dict[str, Any]:
    c = Conversation(served.socket)
    try:
        c.send(line + b"\n")
        reply = c.answer()
        assert reply is not None
        return reply
    finally:
        c.close()


def test_paths_outside_the_mount_touch_nothing(fuzz_context: Served,
                                               caplog: pytest.LogCaptureFixture) -> None:
    served = fuzz_context
    caplog.clear()
    before = served.host_state()
    for path in ("../../etc", "..", "a/../..", f"{served.mountpoint}/..",
                 str(served.outside), str(served.outside / "secret"), "/etc/passwd"):
        for command in ("invalidate", "flush", "pin", "unpin"):
            reply = ask_raw(served, json.dumps({"command": command, "path": path,
                                                "recursive": True}).encode())
            assert reply["ok"] is False, (command, path, reply)
            assert "leads out of the mount" in reply["error"] or (
                "is not under the mountpoint" in reply["error"]), reply
    assert not served.dropped_entries and not served.dropped_inodes
    check_scope(served, before)
    assert not errors_logged(caplog), errors_logged(caplog)


def check_command_line(argv: list[str], code: int, stdout: str, stderr: str) -> None:
    for text in (stdout, stderr):
        assert "Traceback" not in text, (argv, text)
    assert code in (0, 1, 2, 3, 4), (argv, code, stdout, stderr)
    if code == 2:
        assert "Usage:" in stderr or "Error:" in stderr, (argv, stderr)
    elif code == 1 and stderr:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stormount: error: "), (argv, stderr)
        assert "internal error" not in stderr, (argv, stderr)
    elif code == 1:  # --json: the daemon's error answer on stdout
        reply = json.loads(stdout)
        assert reply["ok"] is False and "internal error" not in reply["error"], (argv, reply)


def test_ctl_options_with_hostile_values(fuzz_context: Served,
                                         caplog: pytest.LogCaptureFixture,
                                         tmp_path: Path) -> None:
    """Each value option of `ctl` with each hostile value, once."""
    served = fuzz_context
    before = served.host_state()
    env = {"STORMOUNT_RUNTIME_DIR": str(tmp_path / "runtime"), "STORMOUNT_SOCKET": ""}
    values = ["nan", "NaN", "inf", "-inf", "infinity", "0", "-0", "-1", "1e-300", "1e400",
              "86400", "86401", "", " ", "x", "\udcff", "²"]
    for value in values:
        for argv in (["--timeout", value, "health"], ["flush", "--wait", value],
                     ["--timeout", value, "flush", "--wait", value, "--json"]):
            argv = ["ctl", "--socket", served.socket, *argv]
            check_command_line(argv, *run_main(argv, env))
            served.call(served.reset)
    for value in ["\udcff", "²", "٣", "9" * 5000, "..", "/etc/passwd", "", "-", "--"]:
        for command in ("invalidate", "pin", "unpin", "drain", "undrain", "flush"):
            argv = ["ctl", "--socket", served.socket, command, value]
            check_command_line(argv, *run_main(argv, env))
            served.call(served.reset)
        for option in ("-m", "--socket"):
            argv = ["ctl", option, value, "health"]
            check_command_line(argv, *run_main(argv, env))
    served.quiet()
    check_scope(served, before)
    assert not errors_logged(caplog), errors_logged(caplog)
