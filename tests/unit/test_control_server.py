"""The control server's protocol, kernel-free: a real Unix socket in the test's
directory, a handler standing in for the daemon's commands, trio's autojump clock for
the timeouts."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat

import pytest
import trio
import trio.testing

from stormount.control import server as ctl
from stormount.control.server import ControlServer
from stormount.errors import StartupError

pytestmark = pytest.mark.timeout(30)


async def echo(request, progress):
    if request.get("command") == "big":
        return {"blob": "x" * 8_000_000}
    if request.get("command") == "count":
        for n in range(3):
            await progress({"event": "progress", "n": n})
        return {"counted": 3}
    if request.get("command") == "boom":
        raise RuntimeError("a bug")
    return {"echo": request}


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, path: str) -> Client:
        return cls(await trio.open_unix_socket(path))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> dict | None:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    async def ask(self, request: dict) -> dict | None:
        await self.send(json.dumps(request).encode() + b"\n")
        return await self.line()


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "ctl.sock")


async def serving(nursery, path, handler=echo, **kwargs) -> ControlServer:
    server = ControlServer(path, handler, **kwargs)
    nursery.start_soon(server.serve)
    return server


async def test_socket_is_private_and_answers_one_line_per_request(sock_path):
    async with trio.open_nursery() as nursery:
        server = await serving(nursery, sock_path)
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        c = await Client.connect(sock_path)
        assert await c.ask({"command": "hi", "n": 1}) == {
            "ok": True, "echo": {"command": "hi", "n": 1}}
        # several requests in one write are answered in order
        await c.send(b'{"command": "a"}\n\n{"command": "b"}\n')
        assert (await c.line())["echo"]["command"] == "a"
        assert (await c.line())["echo"]["command"] == "b"
        nursery.cancel_scope.cancel()
    server.close()
    assert not os.path.exists(sock_path)


async def test_bad_requests_get_errors_and_the_connection_goes_on(sock_path):
    async with trio.open_nursery() as nursery:
        await serving(nursery, sock_path)
        c = await Client.connect(sock_path)
        for bad, why in ((b"garbage", "not a JSON object"), (b"[1, 2]", "not a JSON object"),
                         (b"\xff\xfe", "not a JSON object"),
                         (b'{"command": "boom"}', "internal error: RuntimeError: a bug")):
            await c.send(bad + b"\n")
            reply = await c.line()
            assert reply["ok"] is False and why in reply["error"], reply
        assert (await c.ask({"command": "still here"}))["ok"] is True
        nursery.cancel_scope.cancel()


async def test_oversized_request_is_refused_while_others_are_served(sock_path):
    async with trio.open_nursery() as nursery:
        await serving(nursery, sock_path)
        big = await Client.connect(sock_path)
        other = await Client.connect(sock_path)
        await big.send(b'{"command": "' + b"a" * (ctl.MAX_REQUEST + 10))
        assert (await other.ask({"command": "meanwhile"}))["ok"] is True
        reply = await big.line()
        assert reply == {"ok": False, "error": f"request too large (more than "
                                                f"{ctl.MAX_REQUEST} bytes)"}
        assert await big.line() is None  # and that connection is closed
        # a too long line that does end in a newline, too
        again = await Client.connect(sock_path)
        await again.send(b"x" * (ctl.MAX_REQUEST + 1) + b"\n")
        assert "too large" in (await again.line())["error"]
        nursery.cancel_scope.cancel()


async def test_half_sent_requests_get_errors(sock_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        await serving(nursery, sock_path)
        # the client stops sending mid-request: an error once REQUEST_TIMEOUT passed
        stalled = await Client.connect(sock_path)
        await stalled.send(b'{"command": "hea')
        started = trio.current_time()
        other = await Client.connect(sock_path)
        assert (await other.ask({"command": "meanwhile"}))["ok"] is True
        reply = await stalled.line()
        assert "incomplete request" in reply["error"]
        assert trio.current_time() - started == pytest.approx(ctl.REQUEST_TIMEOUT, abs=0.5)
        # the client closes its side mid-request
        cut = await Client.connect(sock_path)
        await cut.send(b'{"command": "hea')
        await cut.stream.send_eof()
        reply = await cut.line()
        assert reply["ok"] is False and "not a JSON object" in reply["error"]
        # a last request without its newline is still answered
        last = await Client.connect(sock_path)
        await last.send(b'{"command": "last"}')
        await last.stream.send_eof()
        assert (await last.line())["echo"] == {"command": "last"}
        nursery.cancel_scope.cancel()


async def test_idle_connections_are_closed(sock_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        server = await serving(nursery, sock_path)
        idle = await Client.connect(sock_path)
        assert await idle.line() is None  # after IDLE_TIMEOUT, without a word
        assert trio.current_time() >= ctl.IDLE_TIMEOUT
        with trio.fail_after(1):
            while server.clients:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_client_that_does_not_read_is_dropped(sock_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        server = await serving(nursery, sock_path)
        slow = await Client.connect(sock_path)
        await slow.send(b'{"command": "big"}\n')  # 8 MB answer, never read
        other = await Client.connect(sock_path)
        assert (await other.ask({"command": "meanwhile"}))["ok"] is True
        with trio.fail_after(ctl.SEND_TIMEOUT + 5):
            while server.clients > 1:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def test_progress_lines_come_before_the_answer(sock_path):
    async with trio.open_nursery() as nursery:
        await serving(nursery, sock_path)
        c = await Client.connect(sock_path)
        await c.send(b'{"command": "count"}\n')
        lines = [await c.line() for _ in range(4)]
        assert [line.get("n") for line in lines[:3]] == [0, 1, 2]
        assert lines[3] == {"ok": True, "counted": 3}
        nursery.cancel_scope.cancel()


async def test_other_uids_are_refused(sock_path):
    async with trio.open_nursery() as nursery:
        # the socket's owner is someone else: this process is not them, and root only
        # if the suite runs as root (tests/fuse/test_control.py tries a real other uid)
        await serving(nursery, sock_path, owner=os.getuid() + 4242)
        c = await Client.connect(sock_path)
        if os.getuid() == 0:
            assert (await c.ask({"command": "root may"}))["ok"] is True
        else:
            reply = await c.line()
            assert reply["ok"] is False and "permission denied" in reply["error"]
        nursery.cancel_scope.cancel()


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is(sock_path):
    live = socket.socket(socket.AF_UNIX)
    live.bind(sock_path)
    live.listen(1)
    try:
        with pytest.raises(StartupError, match="in use by another running mount"):
            ctl.bind(sock_path)
    finally:
        live.close()
    # the listener is gone; its file stays behind, as after a crash
    assert os.path.exists(sock_path)
    sock = ctl.bind(sock_path)
    sock.close()
    long = "/tmp/" + "x" * 120 + ".sock"
    with pytest.raises(StartupError, match="too long"):
        ctl.bind(long)


async def test_many_clients_at_once(sock_path):
    async with trio.open_nursery() as nursery:
        server = await serving(nursery, sock_path)
        answers = []

        async def one(n: int) -> None:
            c = await Client.connect(sock_path)
            for i in range(5):
                answers.append((await c.ask({"command": "n", "n": n, "i": i}))["echo"])
            await c.stream.aclose()

        async with trio.open_nursery() as clients:
            for n in range(ctl.MAX_CLIENTS):
                clients.start_soon(one, n)
        assert len(answers) == ctl.MAX_CLIENTS * 5
        assert {(a["n"], a["i"]) for a in answers} == {
            (n, i) for n in range(ctl.MAX_CLIENTS) for i in range(5)}
        # one more than the limit, while the others are connected, is told so
        held = [await Client.connect(sock_path) for _ in range(ctl.MAX_CLIENTS)]
        with trio.fail_after(5):
            while server.clients < ctl.MAX_CLIENTS:
                await trio.sleep(0.01)
        extra = await Client.connect(sock_path)
        assert "too many clients" in (await extra.line())["error"]
        for c in held:
            await c.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_hostile_json_gets_an_error_not_a_dead_server(sock_path):
    async with trio.open_nursery() as nursery:
        await serving(nursery, sock_path)
        c = await Client.connect(sock_path)
        for bad in (b"[" * 60_000, b'{"command": "health", "n": ' + b"1" * 5000 + b"}"):
            await c.send(bad + b"\n")
            reply = await c.line()
            assert reply["ok"] is False and "not a JSON object" in reply["error"]
        assert (await c.ask({"command": "fine"}))["ok"] is True
        nursery.cancel_scope.cancel()


async def test_a_client_gone_during_progress_is_no_error(sock_path, caplog):
    async def slow_count(request, progress):
        for n in range(1000):
            await progress({"event": "progress", "n": n})
            await trio.sleep(0.01)
        return {}

    async with trio.open_nursery() as nursery:
        server = await serving(nursery, sock_path, slow_count)
        c = await Client.connect(sock_path)
        await c.send(b'{"command": "count"}\n')
        assert (await c.line())["n"] == 0
        await c.stream.aclose()
        with trio.fail_after(5):
            while server.clients:
                await trio.sleep(0.01)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        other = await Client.connect(sock_path)
        await other.send(b'{"command": "count"}\n')
        assert (await other.line())["n"] == 0
        nursery.cancel_scope.cancel()


def test_bind_refuses_what_is_not_a_stale_socket(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(StartupError, match="exists and is not a socket"):
        ctl.bind(str(notes))
    assert notes.read_text() == "keep me"
    with pytest.raises(StartupError, match="is not a socket"):
        ctl.bind(str(tmp_path))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others may write, and it is not sticky
    with pytest.raises(StartupError, match="others may write"):
        ctl.bind(str(shared / "ctl.sock"))
