"""The client side of the control socket (`stormount ctl`): find a mount's socket, send
one request, read its answer (and the progress lines before it, if asked for)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from stormount import registry
from stormount.config import mount_path
from stormount.errors import StormountError

DEFAULT_TIMEOUT = 30.0


class CtlError(StormountError):
    """The mount cannot be reached or asked (a message for the operator)."""


def find_socket(socket_path: str | None, mountpoint: str | None) -> str:
    """The control socket to use: the one given, that of the mount at `mountpoint`, or,
    with neither, that of the only running mount."""
    if socket_path:
        return socket_path
    if mountpoint:
        mp = mount_path(mountpoint)
        record = registry.lookup(mp)
        if record is not None and record.socket:
            return record.socket
        fstype = registry.mounted_fuse(mp)
        if fstype is None:
            raise CtlError(f"{mp} is not mounted")
        if fstype != "fuse.stormount":
            raise CtlError(f"{mp} is not a stormount mount ({fstype})")
        raise CtlError(f"no record of the daemon serving {mp} in {registry.runtime_dir()} "
                       "(started by another user?): give its socket with --socket PATH")
    records = registry.all_records()
    if not records:
        raise CtlError(f"no stormount mount is running (none recorded in "
                       f"{registry.runtime_dir()}): give -m MOUNTPOINT or --socket PATH")
    if len(records) > 1:
        raise CtlError(f"{len(records)} stormount mounts are running ("
                       + ", ".join(r.mountpoint for r in records)
                       + "): choose one with -m MOUNTPOINT")
    record = records[0]
    if not record.socket:
        raise CtlError(f"the mount at {record.mountpoint} has no control socket")
    return record.socket


def request(path: str, command: dict[str, Any], *, timeout: float | None = DEFAULT_TIMEOUT,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Send one request and return the final answer. `timeout` bounds the wait for each
    line of the answer (None: wait as long as it takes)."""
    if on_progress is not None:
        command = {**command, "progress": True}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise CtlError(f"no control socket at {path} (is the mount running?)") from None
        except ConnectionRefusedError:
            raise CtlError(f"nothing answers at {path}: the mount is not running") from None
        except PermissionError:
            raise CtlError(f"permission denied on {path}: run as the mount's user or "
                           "as root") from None
        except OSError as e:
            raise CtlError(f"cannot connect to {path}: {e.strerror or e}") from None
        started = time.monotonic()
        try:
            sock.sendall(json.dumps(command).encode() + b"\n")
            reader = sock.makefile("rb")
            while True:
                started = time.monotonic()
                line = reader.readline()
                if not line:
                    raise CtlError(f"the mount closed the control connection at {path} "
                                   "without an answer")
                try:
                    reply = json.loads(line)
                except (ValueError, RecursionError):  # not JSON, not UTF-8
                    raise CtlError(f"not an answer from a stormount mount at {path}: "
                                   f"{line[:80]!r}") from None
                if not isinstance(reply, dict):
                    raise CtlError(f"not an answer from a stormount mount at {path}")
                if reply.get("event") == "progress":
                    if on_progress is not None:
                        on_progress(reply)
                    continue
                return reply
        except TimeoutError:
            raise CtlError(f"no answer from {path} within "
                           f"{time.monotonic() - started:.0f} s") from None
        except OSError as e:
            raise CtlError(f"the control connection to {path} failed: "
                           f"{e.strerror or e}") from None
    finally:
        sock.close()
