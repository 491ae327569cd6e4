"""OutageProxy, the loopback proxy that simulates endpoint outages: it forwards both
ways; stop() refuses and breaks, start() listens again on the same port; hang() accepts
and answers nothing, heal() breaks the held connections and forwards again; close()
leaves no port and no thread behind."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.proxy import OutageProxy

pytestmark = pytest.mark.timeout(30)

SILENCE = 0.5  # how long "no answer" is waited for


class Upstream:
    """A loopback server running `handler(conn, server)` in a thread per connection."""

    def __init__(self, handler: Callable[[socket.socket, Upstream], None]) -> None:
        self.handler = handler
        self.received = bytearray()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handler(conn, self)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in list(self.threads):
            t.join(5)
        self.listener.close()
        for c in conns:
            c.close()


def echo_handler(conn: socket.socket, server: Upstream) -> None:
    while chunk := conn.recv(65536):
        with server.lock:
            server.received += chunk
        conn.sendall(chunk)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream(echo_handler)
    yield server
    server.close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[OutageProxy]:
    with OutageProxy(upstream.port) as p:
        yield p


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def assert_echoes(sock: socket.socket, data: bytes = b"ping") -> None:
    sock.settimeout(5)
    sock.sendall(data)
    assert recv_exactly(sock, len(data)) == data


def assert_silent(sock: socket.socket) -> None:
    """Open, and no byte arrives within SILENCE."""
    sock.settimeout(SILENCE)
    with pytest.raises(TimeoutError):
        sock.recv(1)


def assert_broken(sock: socket.socket) -> None:
    """The peer closed or reset the connection (promptly: a timeout is a failure)."""
    sock.settimeout(5)
    try:
        data = sock.recv(1)
    except ConnectionError:
        return
    assert data == b""


def assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        connect(port).close()


def proxy_threads(port: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"outage-proxy-{port}"]


def test_forwards_both_ways(proxy: OutageProxy) -> None:
    assert proxy.state == "up"
    payload = bytes(range(256)) * 4096  # 1 MiB, more than the socket buffers hold
    with connect(proxy.port) as a, connect(proxy.port) as b:
        sender = threading.Thread(target=a.sendall, args=(payload,))
        sender.start()
        assert_echoes(b, b"concurrent")
        assert recv_exactly(a, len(payload)) == payload
        sender.join()


def test_stop_refuses_new_connections_and_breaks_open_ones(proxy: OutageProxy) -> None:
    with connect(proxy.port) as open_conn:
        assert_echoes(open_conn)
        proxy.stop()
        assert proxy.state == "down"
        assert_broken(open_conn)
    assert_refused(proxy.port)
    proxy.stop()  # idempotent
    assert proxy.state == "down"
    assert_refused(proxy.port)


def test_start_listens_again_on_the_same_port(proxy: OutageProxy) -> None:
    port = proxy.port
    for _ in range(20):  # rebinding right after stop() must work every time
        with connect(port) as conn:
            assert_echoes(conn)
            proxy.stop()
            assert_broken(conn)
        assert_refused(port)
        proxy.start()
        assert proxy.state == "up"
        assert proxy.port == port
    proxy.start()  # idempotent
    with connect(port) as conn:
        assert_echoes(conn)


def test_hang_accepts_and_never_answers(proxy: OutageProxy, upstream: Upstream) -> None:
    with connect(proxy.port) as old:
        assert_echoes(old)
        proxy.hang()
        assert proxy.state == "hung"
        proxy.hang()  # idempotent
        with connect(proxy.port) as new:  # accepted
            new.sendall(b"new-during-hang")
            assert_silent(new)
        old.sendall(b"old-during-hang")
        assert_silent(old)
        assert_silent(old)  # still open after more waiting
    with upstream.lock:
        assert b"during-hang" not in upstream.received  # client bytes not forwarded


def test_hang_withholds_what_the_upstream_sends() -> None:
    asked = threading.Event()
    release = threading.Event()

    def late_answer(conn: socket.socket, server: Upstream) -> None:
        conn.recv(65536)
        asked.set()
        release.wait(10)
        conn.sendall(b"late answer")
        conn.recv(65536)

    server = Upstream(late_answer)
    try:
        with OutageProxy(server.port) as proxy, connect(proxy.port) as conn:
            conn.sendall(b"question")
            assert asked.wait(5)
            proxy.hang()
            release.set()
            assert_silent(conn)
    finally:
        release.set()
        server.close()


def test_heal_breaks_held_connections_and_forwards_again(proxy: OutageProxy) -> None:
    with connect(proxy.port) as old:
        assert_echoes(old)
        proxy.hang()
        with connect(proxy.port) as new:
            new.sendall(b"x")
            assert_silent(new)
            proxy.heal()
            assert proxy.state == "up"
            assert_broken(old)
            assert_broken(new)
    proxy.heal()  # idempotent
    with connect(proxy.port) as fresh:
        assert_echoes(fresh)
        assert_echoes(fresh, b"twice")


def test_any_outage_follows_any_other(proxy: OutageProxy) -> None:
    port = proxy.port
    proxy.stop()
    proxy.hang()  # from down: accepting again, answering nothing
    assert proxy.state == "hung"
    with connect(port) as held:
        held.sendall(b"x")
        assert_silent(held)
        proxy.stop()  # from hung
        assert proxy.state == "down"
        assert_broken(held)
    assert_refused(port)
    proxy.hang()
    with connect(port) as held:
        assert_silent(held)
        proxy.start()  # from hung: same as heal()
        assert proxy.state == "up"
        assert_broken(held)
    proxy.stop()
    proxy.heal()  # from down: same as start()
    assert proxy.state == "up"
    with connect(port) as conn:
        assert_echoes(conn)


@pytest.mark.parametrize("outage", ["up", "down", "hung"])
def test_close_leaves_no_port_and_no_thread(upstream: Upstream, outage: str) -> None:
    with OutageProxy(upstream.port) as proxy:
        port = proxy.port
        with connect(port) as conn:
            assert_echoes(conn)
            if outage == "down":
                proxy.stop()
            elif outage == "hung":
                proxy.hang()
                conn.sendall(b"x")
            other = connect(port) if outage != "down" else None
            try:
                proxy.close()
                assert_broken(conn)
                if other is not None:
                    assert_broken(other)
            finally:
                if other is not None:
                    other.close()
        proxy.close()  # idempotent, and __exit__ closes again
    assert_refused(port)
    assert proxy_threads(port) == []
    with pytest.raises(RuntimeError):
        proxy.start()
