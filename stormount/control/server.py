"""The control socket: a Unix socket of the mount's owner, one JSON object per line each
way (docs/CONTROL.md).

The socket file is made with mode 0600, and a client is served only if the kernel says
it runs as the mount's user or as root (SO_PEERCRED). Each client has its own task:
a request is bounded in size and in time from its first byte, an answer that the client
does not read within SEND_TIMEOUT drops the client, so neither a slow nor a broken
client can hold up the filesystem or the other clients. A request that is not JSON, not
an object, or names no known command gets an error answer and the connection stays
open; only an oversized or unfinished request closes it (its end cannot be found).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from stormount.errors import StartupError, StormountError

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024  # bytes of one request line
REQUEST_TIMEOUT = 10.0  # from a request's first byte to its newline
IDLE_TIMEOUT = 600.0  # a connection that sends nothing is closed after this
SEND_TIMEOUT = 10.0  # a client that does not read its answers for this long is dropped
MAX_CLIENTS = 64
SUN_PATH_MAX = 107  # bytes of a Unix socket path, without its NUL

Reply = dict[str, Any]
Progress = Callable[[Reply], Awaitable[None]]
Handler = Callable[[dict[str, Any], Progress], Awaitable[Reply]]


class RequestError(StormountError):
    """A request the server cannot take: answered with its message."""

    errno = errno.EINVAL


def error(message: str) -> Reply:
    return {"ok": False, "error": message}


def encode(reply: Reply) -> bytes:
    return json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a Unix socket, as the kernel says."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def bind(path: str) -> socket.socket:
    """A listening socket at `path`, mode 0600 from the start. A stale socket file (no
    server answers) is replaced; a live one is refused."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise StartupError(f"control socket path {path} is longer than {SUN_PATH_MAX} bytes "
                           "(give a shorter one with --socket)")
    if os.path.lexists(path):
        if _answers(path):
            raise StartupError(f"control socket {path} is in use by another running mount "
                               "(give this one its own with --socket)")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create the control socket {path}: {e.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the file is born 0600: no window in which others may connect
    try:
        sock.bind(path)
        sock.listen(MAX_CLIENTS)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot create the control socket {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlServer:
    """Serves `handler` on a socket made by `bind`, for the mount's owner and root."""

    def __init__(self, path: str, handler: Handler, *, owner: int | None = None) -> None:
        self.path = path
        self.handler = handler
        self.owner = os.getuid() if owner is None else owner
        self._sock = bind(path)
        self._inode = os.stat(path).st_ino
        self.clients = 0

    async def serve(self) -> None:
        """Accept clients until cancelled."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        await trio.serve_listeners(self._client, [listener])

    def close(self) -> None:
        """Remove the socket file, unless another mount has taken the path since."""
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._sock.close()

    async def _client(self, stream: trio.SocketStream) -> None:
        self.clients += 1
        try:
            async with stream:
                await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            self.clients -= 1

    async def _converse(self, stream: trio.SocketStream) -> None:
        uid = peer_uid(stream.socket)
        if uid not in (0, self.owner):
            log.warning("control socket: refused a client running as uid %d", uid)
            await self._refuse(stream, f"permission denied: uid {uid} may not control this "
                               f"mount (only uid {self.owner} and root may)")
            return
        if self.clients > MAX_CLIENTS:
            await self._refuse(stream, f"too many clients (at most {MAX_CLIENTS})")
            return
        buffer = bytearray()
        while True:
            try:
                line = await self._receive_line(stream, buffer)
            except RequestError as e:
                await self._refuse(stream, str(e))
                return
            if line is None:
                return
            if not line.strip():
                continue

            async def progress(reply: Reply) -> None:
                await self._send(stream, reply)

            if not await self._send(stream, await self._answer(line, progress)):
                return

    async def _receive_line(self, stream: trio.SocketStream,
                            buffer: bytearray) -> bytes | None:
        """The next request line; None once the client is done (or idle too long)."""
        deadline = trio.current_time() + (REQUEST_TIMEOUT if buffer else IDLE_TIMEOUT)
        while (end := buffer.find(b"\n")) < 0:
            if len(buffer) > MAX_REQUEST:
                raise RequestError(f"request too large (more than {MAX_REQUEST} bytes)")
            chunk = None
            with trio.move_on_at(deadline):
                chunk = await stream.receive_some(MAX_REQUEST + 1)
            if chunk is None:  # out of time
                if buffer.strip():
                    raise RequestError("incomplete request: no end of line within "
                                       f"{REQUEST_TIMEOUT:g} s")
                return None
            if not chunk:  # the client closed its side: a last line without newline
                line = bytes(buffer)
                buffer.clear()
                return line if line.strip() else None
            if not buffer:
                deadline = trio.current_time() + REQUEST_TIMEOUT
            buffer += chunk
        if end > MAX_REQUEST:
            raise RequestError(f"request too large (more than {MAX_REQUEST} bytes)")
        line = bytes(buffer[:end])
        del buffer[:end + 1]
        return line

    async def _answer(self, line: bytes, progress: Progress) -> Reply:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return error(f"not a JSON object: {e} (send one JSON object per line, "
                         'e.g. {"command": "health"})')
        if not isinstance(request, dict):
            return error('not a JSON object (send e.g. {"command": "health"})')
        try:
            reply = await self.handler(request, progress)
        except RequestError as e:
            return error(str(e))
        except StormountError as e:
            return error(str(e) or type(e).__name__)
        except Exception as e:  # a bug in one command must not stop the server
            log.exception("control command %r failed", request.get("command"))
            return error(f"internal error: {type(e).__name__}: {e}")
        return {"ok": True, **reply}

    async def _refuse(self, stream: trio.SocketStream, message: str) -> None:
        """Answer with an error, then close gracefully: unread bytes left at close would
        reset the connection, and the client might lose the error it was sent."""
        if not await self._send(stream, error(message)):
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_eof()
            with trio.move_on_after(1.0):
                while await stream.receive_some(MAX_REQUEST):
                    pass

    async def _send(self, stream: trio.SocketStream, reply: Reply) -> bool:
        """False if the client did not take the answer in time (it is dropped)."""
        with trio.move_on_after(SEND_TIMEOUT):
            await stream.send_all(encode(reply))
            return True
        log.warning("control socket: dropped a client that did not read its answer")
        return False
