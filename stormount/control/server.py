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
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from stormount.errors import StartupError, StormountError
from stormount.registry import runtime_dir

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024  # bytes of one request line
REQUEST_TIMEOUT = 10.0  # from a request's first byte to its newline
IDLE_TIMEOUT = 600.0  # a connection that sends nothing is closed after this
SEND_TIMEOUT = 10.0  # a client that does not read its answers for this long is dropped
MAX_CLIENTS = 64
SUN_PATH_MAX = 107  # bytes of a Unix socket path, without its NUL
PATH_MAX = SUN_PATH_MAX - len(".4194304.tmp")  # room for the temporary name bind() uses

Reply = dict[str, Any]
Progress = Callable[[Reply], Awaitable[None]]
Handler = Callable[[dict[str, Any], Progress], Awaitable[Reply]]


class RequestError(StormountError):
    """A request the server cannot take: answered with its message."""

    errno = errno.EINVAL


class ClientGone(Exception):
    """The client went away (or stopped reading) while a command sent progress."""


def error(message: str) -> Reply:
    return {"ok": False, "error": message}


def encode(reply: Reply) -> bytes:
    return json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a Unix socket, as the kernel says."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    _pid, uid, _gid = struct.unpack("iII", raw)
    return int(uid)


def bind(path: str) -> socket.socket:
    """A listening socket at `path` that only its owner can connect to. A stale socket
    (nothing listens) is replaced; a live one, or anything that is not a socket, is
    refused: the path may be a typo for someone's file."""
    if len(os.fsencode(path)) > PATH_MAX:
        raise StartupError(f"control socket path {path} is too long for a Unix socket "
                           f"(at most {PATH_MAX} bytes; give a shorter one with --socket)")
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory) and directory != runtime_dir():
        # a --socket in a directory that is not there is likely a typo: only the runtime
        # directory of the mount records is made here (the cache directory already is)
        raise StartupError(f"cannot create the control socket {path}: the directory "
                           f"{directory} does not exist (make it first, or give another "
                           "--socket)")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _check_directory(directory)
        if _stale(path):
            os.unlink(path)
    except OSError as e:
        raise StartupError(f"cannot create the control socket {path}: {e.strerror}") from None
    # made under a temporary name, private before it listens, then moved into place:
    # nobody can connect while its mode is still the umask's
    tmp = f"{path}.{os.getpid()}.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(MAX_CLIENTS)
        os.rename(tmp, path)
    except OSError as e:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StartupError(f"cannot create the control socket {path}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def _check_directory(directory: str) -> None:
    """Others must not be able to swap the socket: the directory belongs to us or root,
    and if others may write to it, it is sticky (as /tmp)."""
    st = os.stat(directory)
    if st.st_uid not in (os.getuid(), 0) or (
            st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
        raise StartupError(f"cannot create the control socket in {directory}: it belongs to "
                           "another user or others may write to it")


def _stale(path: str) -> bool:
    """Is there a socket at `path` that nothing listens on (left by a daemon that died)?
    False if nothing is there; StartupError if something else is, or a server answers."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"control socket path {path} exists and is not a socket "
                           "(give another one with --socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        pass  # busy, or not ours to judge: in use
    finally:
        probe.close()
    raise StartupError(f"control socket {path} is in use by another running mount "
                       "(give this one its own with --socket)")


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
        """Accept clients until cancelled. If accepting itself fails for good, the
        socket stops, the mount does not."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        try:
            await trio.serve_listeners(self._client, [listener])
        except Exception as e:
            log.error("control socket %s stopped serving: %s", self.path, e, exc_info=e)

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
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
            pass  # the client went away
        except* Exception as group:  # a bug must not stop the server, let alone the mount
            log.error("control socket: serving a client failed", exc_info=group)
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
                try:
                    sent = await self._send(stream, reply)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    sent = False
                if not sent:
                    raise ClientGone

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
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
            return error(f"not a JSON object: {e} (send one JSON object per line, "
                         'e.g. {"command": "health"})')
        if not isinstance(request, dict):
            return error('not a JSON object (send e.g. {"command": "health"})')
        try:
            reply = await self.handler(request, progress)
        except ClientGone:
            raise
        except RequestError as e:
            return error(str(e))
        except StormountError as e:
            return error(str(e) or type(e).__name__)
        except Exception as e:  # a bug in one command must not stop the server
            if isinstance(e, ExceptionGroup) and e.subgroup(ClientGone) is not None:
                raise ClientGone from None  # a progress line found the client gone
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
