"""`stormount unmount`: through the daemon (its control socket, or a signal), waiting
for its uploads and saying what is left queued."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, NoReturn

import click

from stormount import holders, registry, unmounting
from stormount.cli.progress import WaitLine
from stormount.cli.shared import Seconds, fail
from stormount.config import mount_path
from stormount.control import client
from stormount.stopping import CUT_GRACE
from stormount.writeback import read_pending

ANSWER_TIMEOUT = 60.0  # seconds without a line from the daemon (it sends one each 0.5 s)
ANSWER_SLACK = 5.0  # seconds past --timeout that a silent daemon is waited for
EXIT_GRACE = 30.0  # seconds a daemon told to stop waiting for uploads has to exit


@click.command()
@click.argument("mountpoint")
@click.option("--timeout", type=Seconds(min=0), default=300.0, show_default=True,
              metavar="SECONDS",
              help="Seconds to wait for pending uploads (with --lazy: for the daemon to "
                   "finish) before giving up.")
@click.option("--lazy", is_flag=True,
              help="Detach now even if in use: the daemon serves the processes still "
                   "using the mount until they let go, uploads everything, then exits.")
@click.option("--force", is_flag=True,
              help="Unmount once the queue is uploaded even if in use: processes still "
                   "using the mount get 'Transport endpoint is not connected'. With "
                   "--lazy: cut them off when the timeout is up.")
def unmount(mountpoint: str, timeout: float, lazy: bool, force: bool) -> None:
    """Upload what is pending, then unmount MOUNTPOINT.

    A mount in use (a process has its working directory, an open file or a mapped file
    in it) is not unmounted: the command names those processes and fails, and the mount
    goes on serving. --lazy or --force unmount it all the same.
    """
    mp = mount_path(mountpoint)
    fstype = registry.mounted_fuse(mp)
    if fstype is None:
        fail(f"{mp} is not mounted{_left_queued(mp)}")
    if fstype != "fuse.stormount":
        fail(f"{mp} is not a stormount mount ({fstype})")
    record = registry.lookup(mp)
    if record is None:  # no daemon known to us (e.g. it died): detach the mount itself
        try:
            unmounting.unmount(mp, lazy=lazy or force)
        except unmounting.Busy:
            _in_use(mp)
        except unmounting.UnmountError as e:
            fail(str(e))
    elif registry.stopped(record.pid):
        fail(f"cannot unmount {mp}: its daemon (pid {record.pid}) is stopped (SIGSTOP) and "
             f"answers nothing; `kill -CONT {record.pid}` resumes it")
    elif force and not lazy:
        os.kill(record.pid, signal.SIGTERM)  # the daemon uploads its queue, then unmounts
        _await_exit(mp, record, time.monotonic() + timeout, timeout)
    elif not record.socket:
        fail(f"the daemon of {mp} (pid {record.pid}) has no control socket to be asked "
             "through: --force stops it by a signal")
    elif lazy:
        _detach(mp, record, timeout, cut=force)
    else:
        _unmount_unless_busy(mp, record, timeout)


def _left_queued(mp: str) -> str:
    """What a daemon of `mp` that died left queued in its journal, as the rest of a
    line: those files upload at the next mount of it with the same cache directory."""
    record = registry.last_record(mp)
    if record is None or registry.alive(record.pid):
        return ""
    pending = read_pending(os.path.join(record.cache_dir, "journal.sqlite3"))
    if not pending:
        return ""
    names = ", ".join(str(p["path"]) for p in pending[:5])
    more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
    return (f"; its daemon (pid {record.pid}) died with {len(pending)} file(s) queued "
            f"({names}{more}): they upload at the next mount of it with the cache "
            f"directory {record.cache_dir}")


def _in_use(mp: str, found: holders.Scan | None = None) -> NoReturn:
    found = holders.scan(mp) if found is None else found
    fail(f"cannot unmount {mp}: in use by {holders.describe(found)}; the mount goes on "
         "serving (--lazy detaches it now and serves them until they are done, --force "
         "cuts them off)")


def _ask_daemon(mp: str, socket_path: str, timeout: float, *, lazy: bool = False,
                force: bool = False) -> dict[str, Any]:
    with WaitLine() as waiting:
        reply = client.request(
            socket_path, {"command": "unmount", "lazy": lazy, "force": force,
                          "timeout": timeout},
            timeout=min(ANSWER_TIMEOUT, timeout + ANSWER_SLACK),
            on_progress=lambda event: waiting.show(
                lambda: f"waiting for {event.get('pending', 0)} upload(s) to finish ..."))
    if not reply.get("ok") and not reply.get("busy"):
        fail(f"cannot unmount {mp}: {reply.get('error') or 'the daemon refused'}")
    return reply


def _unmount_unless_busy(mp: str, record: registry.MountRecord, timeout: float) -> None:
    """Refused at once when something holds the mount. Else the daemon uploads its queue
    and unmounts plainly, not lazily: whatever came to hold the mount meanwhile makes
    that fail, and then the mount goes on serving."""
    found = holders.scan(mp)
    if found:
        _in_use(mp, found)
    deadline = time.monotonic() + timeout
    assert record.socket is not None
    if _ask_daemon(mp, record.socket, timeout).get("busy"):
        _in_use(mp)
    # unmounted: the daemon uploads what came in meanwhile, within the same time
    _await_exit(mp, record, deadline + EXIT_GRACE, timeout)


def _detach(mp: str, record: registry.MountRecord, timeout: float, cut: bool) -> None:
    """Lazily; then wait for the daemon to finish: for the processes that hold the
    mount to let go, and for the uploads. When time is up it is left to finish by
    itself, or with `cut` it cuts them off and exits (what is left stays queued)."""
    # before: a detached mount's paths no longer start with the mountpoint in /proc
    found = holders.scan(mp)
    assert record.socket is not None
    _ask_daemon(mp, record.socket, timeout, lazy=True, force=cut)
    if cut:  # the daemon keeps the time itself
        _await_exit(mp, record, time.monotonic() + timeout + CUT_GRACE + EXIT_GRACE, timeout)
        return
    journal = os.path.join(record.cache_dir, "journal.sqlite3")
    users = holders.describe(found) if found else ""
    deadline = time.monotonic() + timeout
    with WaitLine() as waiting:
        while time.monotonic() < deadline and registry.alive(record.pid):
            waiting.show(lambda: "detached; waiting for " + (f"{users} and " if users else "")
                         + f"{len(read_pending(journal))} upload(s) (Ctrl-C stops waiting; "
                         "the daemon goes on) ...")
            time.sleep(0.05)
    if not registry.alive(record.pid):
        _report_queued(mp, record, timeout=None)
        return
    if users:
        click.echo(f"stormount: {mp} detached; still in use by {users}: the daemon (pid "
                   f"{record.pid}) serves them until they let go, uploads what they wrote, "
                   "then exits", err=True)
    else:
        click.echo(f"stormount: {mp} detached; the daemon (pid {record.pid}) goes on with "
                   f"{len(read_pending(journal))} upload(s) and exits once they are done "
                   "(or once what still uses the mount lets go)", err=True)


def _await_exit(mp: str, record: registry.MountRecord, deadline: float,
                timeout: float) -> None:
    """Until the daemon has uploaded its queue and left; at the deadline a signal makes
    it stop waiting (the queue stays journaled), and what is left is listed."""
    journal = os.path.join(record.cache_dir, "journal.sqlite3")
    with WaitLine() as waiting:
        while time.monotonic() < deadline and not _gone(mp, record.pid):
            waiting.show(lambda: f"waiting for {len(read_pending(journal))} upload(s) to "
                         "finish ...")
            time.sleep(0.05)
    if not _gone(mp, record.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        stop = time.monotonic() + EXIT_GRACE
        while time.monotonic() < stop and not _gone(mp, record.pid):
            time.sleep(0.05)
        if not _gone(mp, record.pid):
            fail(f"daemon {record.pid} of {mp} did not unmount after {timeout:g} s")
    _report_queued(mp, record, timeout)


def _report_queued(mp: str, record: registry.MountRecord, timeout: float | None) -> None:
    """Fail, listing them, if files are still queued now that the daemon has left."""
    pending = read_pending(os.path.join(record.cache_dir, "journal.sqlite3"))
    if not pending:
        return
    names = "\n".join(f"  {p['path']} ({p['state']}"
                      + (f": {p['last_error']}" if p["last_error"] else "") + ")"
                      for p in pending[:50])
    more = f"\n  ... and {len(pending) - 50} more" if len(pending) > 50 else ""
    after = f" after {timeout:g} s" if timeout is not None else ""
    fail(f"unmounted {mp}{after} with {len(pending)} file(s) still queued; they upload "
         f"at the next mount with cache directory {record.cache_dir}:\n{names}{more}")


def _gone(mountpoint: str, pid: int) -> bool:
    """The mount is gone and its daemon has exited (or left the registry, which it does
    last)."""
    if registry.mounted_fuse(mountpoint) is not None:
        return False
    if not registry.alive(pid):
        return True
    return registry.lookup(mountpoint) is None
