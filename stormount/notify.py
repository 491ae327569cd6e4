"""systemd's notification protocol (sd_notify): a datagram of `KEY=VALUE` lines to the
socket in $NOTIFY_SOCKET. Without that variable (not run by systemd with Type=notify)
every call does nothing. The protocol is a few lines; libsystemd's bindings would need
its headers to build."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or path[0] not in "/@":
        return None
    return "\0" + path[1:] if path[0] == "@" else path  # '@': the abstract namespace


def enabled() -> bool:
    return _address() is not None


def notify(**fields: object) -> None:
    """Send e.g. notify(READY=1, STATUS="mounted"); never raises."""
    address = _address()
    if address is None:
        return
    message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message)
    except OSError as e:  # systemd went away: nothing we can tell it
        log.debug("cannot notify systemd at %s: %s", address, e)


def watchdog_interval() -> float | None:
    """How often to ping the watchdog (half of WatchdogSec), if systemd asks for it."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not enabled() or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.05)
    except ValueError:
        return None
