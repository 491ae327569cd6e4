"""Loopback TCP proxies between a mount and its storage endpoint.

`CountingProxy` counts the bytes each way, to measure how much data a mount really
transfers from (and to) the store; with `upload_rate` it is also a slow uplink, and
`cut_response` breaks one response mid-body.
`OutageProxy` simulates endpoint outages on a fixed port: refused connections
(`stop`/`start`) and an endpoint that accepts but never answers (`hang`/`heal`)."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tests.stores import S3Store


class CountingProxy:
    def __init__(self, target_port: int, upload_rate: float | None = None) -> None:
        self.target_port = target_port
        self.upload_rate = upload_rate  # bytes/s of each connection, client -> upstream
        self.downstream_bytes = 0  # upstream -> client
        self.upstream_bytes = 0  # client -> upstream: what an upload really sends
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        if upload_rate is not None:
            # a small window: the client's bytes wait in its own socket, not in ours
            self._server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._cut: tuple[bytes, bytes, int, Callable[[], None]] | None = None

    def cut_response(self, method: str, key: str, after: int,
                     then: Callable[[], None] = lambda: None) -> None:
        """Once: the response to the next `method` request whose path ends in `key` is
        broken off after `after` bytes of its body; `then()` runs before the connection
        closes (the client is still waiting for the rest)."""
        with self._lock:
            self._cut = (method.encode() + b" ", b"/" + key.encode(), after, then)

    def __enter__(self) -> CountingProxy:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def cut(self) -> None:
        """An outage: refuse new connections and break the open ones."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._server.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        with self._lock:
            self.downstream_bytes = 0
            self.upstream_bytes = 0

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._closed:
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets.update((client, upstream))
            armed: list[tuple[int, Callable[[], None]]] = []  # this connection's cut
            for src, dst, count in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(src, dst, count, armed),
                                 daemon=True).start()

    def _arm(self, chunk: bytes, armed: list[tuple[int, Callable[[], None]]]) -> None:
        with self._lock:
            if self._cut is None:
                return
            method, key, after, then = self._cut
            line = chunk.split(b"\r\n", 1)[0]  # "GET /bucket/key?query HTTP/1.1"
            if line.startswith(method) and line[len(method):].split(b"?")[0].split(b" ")[
                    0].endswith(key):
                self._cut = None
                armed.append((after, then))

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool,
              armed: list[tuple[int, Callable[[], None]]]) -> None:
        rate = None if count else self.upload_rate
        body: int | None = None  # body bytes of the response being cut, once its head is by
        try:
            while chunk := src.recv(65536 if rate is None else 16384):
                with self._lock:
                    if count:
                        self.downstream_bytes += len(chunk)
                    else:
                        self.upstream_bytes += len(chunk)
                if not count:
                    self._arm(chunk, armed)
                elif armed:
                    after, then = armed[0]
                    if body is None and (end := chunk.find(b"\r\n\r\n")) >= 0:
                        body = -(end + 4)
                    if body is not None and body + len(chunk) >= after:
                        dst.sendall(chunk[:after - body])
                        then()
                        return  # the finally breaks both sides
                    if body is not None:
                        body += len(chunk)
                dst.sendall(chunk)
                if rate is not None:
                    time.sleep(len(chunk) / rate)  # the proxy's own thread: a slow link
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


OutageState = Literal["up", "down", "hung"]

_BIND_DEADLINE = 5.0  # seconds to retry rebinding the same port after stop()
_JOIN_TIMEOUT = 5.0


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Conn:
    """One client connection and, once connected and not held, its upstream."""

    def __init__(self, client: socket.socket, held: bool) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.held = held  # accepted or caught by a hang: read and discard, forward nothing
        self.broken = False
        self.live = 1  # worker threads using the sockets; the last one closes them


class OutageProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` and simulates outages.

    - `stop()`: refused. The port stops listening and open connections are shut down.
    - `start()`: listening again on the same port, forwarding as before.
    - `hang()`: the endpoint accepts and never answers. Connections (old and new) stay
      open, client bytes are read and discarded, nothing reaches either side. Bytes
      already in flight when `hang()` is called (at most one chunk per direction) may
      still be delivered.
    - `heal()`: the connections held during the hang are shut down and new ones are
      forwarded again.

    Any transition is allowed from any state: `start()` and `heal()` both bring the
    proxy back "up" from "down" or "hung", and `hang()` from "down" listens again.
    All methods are idempotent. Use it as a context manager; `close()` ends everything.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        # _control serialises the public transitions (they join threads, so they must not
        # hold _lock, which the worker threads take); _lock guards the shared state.
        self._control = threading.RLock()
        self._lock = threading.Lock()
        self._state: OutageState = "up"
        self._closed = False
        self._conns: set[_Conn] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._acceptor: threading.Thread | None = None

    def __enter__(self) -> OutageProxy:
        with self._control, self._lock:
            if self._listener is not None and self._acceptor is None:
                self._acceptor = self._spawn(self._accept, self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> OutageState:
        with self._lock:
            return self._state

    # --- transitions ------------------------------------------------------------------

    def stop(self) -> None:
        """Refuse new connections and break the open ones."""
        with self._control:
            with self._lock:
                if self._state == "down":
                    return
                self._state = "down"
                listener, self._listener = self._listener, None
                acceptor, self._acceptor = self._acceptor, None
                for conn in self._conns:
                    self._break(conn)
            if listener is not None:
                _shutdown(listener)  # wakes the accepting thread
                if acceptor is not None:
                    acceptor.join(_JOIN_TIMEOUT)
                # closed only now, so that accept() never runs on a reused descriptor;
                # the port must be free before start() binds it again
                listener.close()

    def start(self) -> None:
        """End an outage: listen on the same port and forward again."""
        self._up()

    def hang(self) -> None:
        """Accept connections but answer nothing, and stop answering on open ones."""
        with self._control:
            self._check_open()
            with self._lock:
                if self._state == "hung":
                    return
            listener = self._bind() if self.state == "down" else None
            with self._lock:
                self._state = "hung"
                if listener is not None:
                    self._listen(listener)
                for conn in self._conns:
                    conn.held = True
                    # the endpoint gets nothing more, and its answers stop at once
                    _shutdown(conn.upstream)

    def heal(self) -> None:
        """End a hang: break the connections held during it and forward new ones."""
        self._up()

    def close(self) -> None:
        """Close the listener and every connection, and wait for the threads to end."""
        with self._control:
            if self._closed:
                return
            self.stop()
            with self._lock:
                self._closed = True
                threads = list(self._threads)
            for t in threads:
                t.join(_JOIN_TIMEOUT)

    # --- internals --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("OutageProxy is closed")

    def _up(self) -> None:
        with self._control:
            self._check_open()
            with self._lock:
                previous = self._state
            if previous == "up":
                return
            listener = self._bind() if previous == "down" else None
            with self._lock:
                self._state = "up"
                if listener is not None:
                    self._listen(listener)
                # after a hang every open connection is a held one: the client must see
                # it break and reconnect, since it has no upstream to resume
                for conn in self._conns:
                    self._break(conn)

    def _bind(self) -> socket.socket:
        # create_server sets SO_REUSEADDR, so lingering TIME_WAIT connections on the port
        # do not block the bind; retry briefly in case the old socket is still going away
        deadline = time.monotonic() + _BIND_DEADLINE
        while True:
            try:
                return socket.create_server(("127.0.0.1", self.port), reuse_port=False)
            except OSError as e:
                if e.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _listen(self, listener: socket.socket) -> None:
        """Install a new listener; called with _lock held."""
        self._listener = listener
        self._acceptor = self._spawn(self._accept, listener)

    def _spawn(self, target: Callable[..., None], *args: object) -> threading.Thread:
        """Start a tracked daemon thread; called with _lock held."""
        t = threading.Thread(
            target=self._run, args=(target, *args), daemon=True, name=f"outage-proxy-{self.port}"
        )
        self._threads.add(t)
        t.start()
        return t

    def _run(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _break(self, conn: _Conn) -> None:
        """Shut both sockets down, which wakes their threads; called with _lock held."""
        conn.broken = True
        _shutdown(conn.client)
        _shutdown(conn.upstream)

    def _release(self, conn: _Conn) -> None:
        with self._lock:
            conn.live -= 1
            if conn.live:
                return
            self._conns.discard(conn)
        conn.client.close()
        if conn.upstream is not None:
            conn.upstream.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    return
                conn = _Conn(client, held=self._state == "hung")
                self._conns.add(conn)
                self._spawn(self._from_client, conn)

    def _connect(self, conn: _Conn) -> None:
        # connecting here, not in the accept loop, keeps stop() from waiting on it
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            with self._lock:
                self._break(conn)
            return
        upstream.settimeout(None)
        with self._lock:
            if conn.broken or conn.held:  # stopped, healed or hung while connecting
                upstream.close()
                return
            conn.upstream = upstream
            conn.live += 1
            self._spawn(self._from_upstream, conn)

    def _from_client(self, conn: _Conn) -> None:
        try:
            if not conn.held:
                self._connect(conn)
            while chunk := conn.client.recv(65536):
                with self._lock:
                    upstream = None if conn.held or conn.broken else conn.upstream
                if upstream is None:
                    continue  # held: discard
                try:
                    upstream.sendall(chunk)
                except OSError:
                    with self._lock:
                        if not conn.held:  # a hang shuts the upstream down; stay open
                            raise
        except OSError:
            pass
        finally:
            with self._lock:
                self._break(conn)
            self._release(conn)

    def _from_upstream(self, conn: _Conn) -> None:
        upstream = conn.upstream
        assert upstream is not None
        try:
            while chunk := upstream.recv(65536):
                with self._lock:
                    held = conn.held
                if not held:
                    conn.client.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                # a held client stays open whatever happens upstream, until heal()
                if not conn.held:
                    self._break(conn)
            self._release(conn)


def proxied(store: S3Store, proxy: OutageProxy, **options: object) -> str:
    """The store through `proxy`, with short SDK timeouts and probes every second."""
    opts = {"connect_timeout": 1, "read_timeout": 2, "sdk_retries": 0, "probe_interval": 1,
            "probe_interval_down": 1, **options}
    query = "&".join(f"{k}={v}" for k, v in opts.items())
    port = urllib.parse.urlsplit(store.endpoint).port
    return store.url.replace(f":{port}", f":{proxy.port}") + "&" + query
