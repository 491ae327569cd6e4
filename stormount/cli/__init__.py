"""The command line: the only place that parses argv. Every error a user can cause ends
in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
import trio

from stormount import __version__, daemon, holders, logs, registry, unmounting
from stormount.config import MountConfig, build_config, mount_path, parse_tier_url
from stormount.control import client
from stormount.errors import StartupError, StormountError
from stormount.manage import gc as orphans
from stormount.manage import lifecycle as rules
from stormount.manage import report, transfer
from stormount.manage import usage as usage_scan
from stormount.manage.store import folder_prefix, open_store
from stormount.stopping import CUT_GRACE
from stormount.writeback import read_pending

READY_TIMEOUT = 120.0
LOG_NAME = "stormount.log"  # in the cache directory, for mounts in the background
EXIT_DEGRADED = 3  # `ctl health` of a mount that serves, with a tier down or uploads failing
EXIT_DOWN = 4  # `ctl health` of a mount none of whose tiers is in service
F = TypeVar("F", bound=Callable[..., Any])


class Seconds(click.FloatRange):
    """A number of seconds within bounds, NaN refused: it compares false with every
    bound, so a FloatRange takes it, and it makes no timeout (a socket refuses it, a
    deadline of NaN is an error)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:  # NaN
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def one_line(message: str) -> str:
    """An error message stays one line whatever it quotes: a line break or another
    character that does not print (in a path or a URL the user gave) is shown escaped."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode()
                   for c in message)


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"stormount: error: {one_line(message)}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stormount")
def cli() -> None:
    """Mount cloud object storage (S3, Azure Blob, a local directory) as a directory."""


@cli.command()
@click.argument("source")
@click.argument("mountpoint")
@click.option("--tier", "tiers", multiple=True, metavar="URL",
              help="A lower-priority storage tier (repeatable).")
@click.option("--config", "config_file", metavar="FILE", help="TOML configuration file.")
@click.option("--cache-dir", metavar="DIR", help="Cache and staging directory.")
@click.option("--socket", metavar="PATH", help="Control socket path.")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground.")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="Mount options, e.g. -o ro,uid=1000,cache_dir=/var/cache/x.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Log verbosity (default: info, or log_level in the config).")
@click.option("--ready-fd", type=int, hidden=True)
@click.option("--sloppy", is_flag=True, hidden=True)  # mount -s: skip unknown -o options
def mount(source: str, mountpoint: str, tiers: tuple[str, ...], config_file: str | None,
          cache_dir: str | None, socket: str | None, foreground: bool, options: tuple[str, ...],
          log_level: str | None, ready_fd: int | None, sloppy: bool) -> None:
    """Mount SOURCE (a storage URL or a TOML config file) at MOUNTPOINT.

    URLs: s3://BUCKET[/PREFIX], az://CONTAINER[/PREFIX], file:///ABS/DIR.
    Without --foreground, returns once the mount is ready.
    """
    def load() -> MountConfig:
        return build_config(source, mountpoint, tier_urls=tiers, config_file=config_file,
                            cache_dir=cache_dir, socket=socket, log_level=log_level,
                            options=options, sloppy=sloppy)

    cfg = load()
    if foreground:
        _mount_foreground(cfg, load, ready_fd)
        return
    daemon.check_mountpoint(cfg)  # the common mistakes, reported before forking
    args = ["mount", source, mountpoint, "--foreground"]
    if log_level:  # else the file's, which SIGHUP may change
        args += ["--log-level", log_level]
    for url in tiers:
        args += ["--tier", url]
    for flag, value in (("--config", config_file), ("--cache-dir", cache_dir),
                        ("--socket", socket)):
        if value:
            args += [flag, value]
    for opt in options:
        args += ["-o", opt]
    if sloppy:
        args.append("--sloppy")
    if cfg.log_file is None:  # a file of its own, which SIGHUP reopens after a rotation
        args += ["-o", f"log_file={os.path.join(cfg.cache.dir, LOG_NAME)}"]
    _mount_background(cfg, args)


def _mount_foreground(cfg: MountConfig, load: Callable[[], MountConfig],
                      ready_fd: int | None) -> None:
    if ready_fd is not None:
        os.set_inheritable(ready_fd, False)  # fusermount3 must not hold the pipe open
    try:
        logs.setup(cfg.log_level, cfg.log_format, file=cfg.log_file)
    except OSError as e:
        error = StartupError(f"cannot open log file {cfg.log_file}: {e.strerror}")
        if ready_fd is not None:
            os.write(ready_fd, f"error: {error}\n".encode())
        raise error from None

    def on_ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)

    # SIGHUP reloads once the mount serves; before that (a start waiting for its tiers,
    # a logrotate run) it must not end the daemon
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        code = trio.run(daemon.run, cfg, on_ready, load)
    except StormountError as e:
        if ready_fd is not None:
            os.write(ready_fd, f"error: {e}\n".encode())
        raise
    sys.exit(code)


def _mount_background(cfg: MountConfig, args: list[str]) -> None:
    daemon.private_cache_dir(cfg.cache.dir)
    log_path = cfg.log_file or os.path.join(cfg.cache.dir, LOG_NAME)
    try:  # the daemon's own crash output, should it have any, goes beside its log
        log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
    except OSError as e:
        what = f"log file {log_path}" if cfg.log_file else f"cache directory {cfg.cache.dir}"
        raise StartupError(f"cannot use {what}: {e.strerror}") from None
    read_end, write_end = os.pipe()
    args += ["--ready-fd", str(write_end)]
    with log:
        proc = subprocess.Popen([sys.executable, "-m", "stormount", *args], pass_fds=(write_end,),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    os.close(write_end)
    # with on_unreachable = "wait" the daemon mounts whenever the tiers answer: the
    # caller asked to wait for that, so no deadline then (the daemon's exit ends it)
    wait = cfg.on_unreachable == "wait"
    deadline = time.monotonic() + READY_TIMEOUT
    message = b""
    try:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while wait or time.monotonic() < deadline:
                left = None if wait else deadline - time.monotonic()
                ready, _, _ = select.select([pipe], [], [], left)
                if not ready:
                    break
                chunk = pipe.read(4096)
                if not chunk:
                    break
                message += chunk
                if message.endswith(b"\n"):
                    break
    except BaseException:  # Ctrl-C on the waiting command: no daemon left behind
        _stop(proc)
        raise
    text = message.decode(errors="replace").strip()
    if text == "ready":
        return
    _stop(proc)
    if text.startswith("error: "):
        raise StartupError(text[len("error: "):])
    raise StartupError(f"the mount did not become ready; see {log_path}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a daemon that did not become ready: SIGTERM (which also ends a wait for the
    tiers, or unmounts a mount that came up just now), then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@cli.command()
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
        _fail(f"{mp} is not mounted{_left_queued(mp)}")
    if fstype != "fuse.stormount":
        _fail(f"{mp} is not a stormount mount ({fstype})")
    record = registry.lookup(mp)
    if record is None:  # no daemon known to us (e.g. it died): detach the mount itself
        try:
            unmounting.unmount(mp, lazy=lazy or force)
        except unmounting.Busy:
            _in_use(mp)
        except unmounting.UnmountError as e:
            _fail(str(e))
    elif registry.stopped(record.pid):
        _fail(f"cannot unmount {mp}: its daemon (pid {record.pid}) is stopped (SIGSTOP) and "
              f"answers nothing; `kill -CONT {record.pid}` resumes it")
    elif force and not lazy:
        os.kill(record.pid, signal.SIGTERM)  # the daemon uploads its queue, then unmounts
        _await_exit(mp, record, time.monotonic() + timeout, timeout)
    elif not record.socket:
        _fail(f"the daemon of {mp} (pid {record.pid}) has no control socket to be asked "
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


ANSWER_TIMEOUT = 60.0  # seconds without a line from the daemon (it sends one each 0.5 s)
ANSWER_SLACK = 5.0  # seconds past --timeout that a silent daemon is waited for
EXIT_GRACE = 30.0  # seconds a daemon told to stop waiting for uploads has to exit


def _in_use(mp: str, found: holders.Scan | None = None) -> NoReturn:
    found = holders.scan(mp) if found is None else found
    _fail(f"cannot unmount {mp}: in use by {holders.describe(found)}; the mount goes on "
          "serving (--lazy detaches it now and serves them until they are done, --force "
          "cuts them off)")


def _ask_daemon(mp: str, socket_path: str, timeout: float, *, lazy: bool = False,
                force: bool = False) -> dict[str, Any]:
    progress = _Progress(sys.stderr.isatty())
    try:
        reply = client.request(
            socket_path, {"command": "unmount", "lazy": lazy, "force": force,
                          "timeout": timeout},
            timeout=min(ANSWER_TIMEOUT, timeout + ANSWER_SLACK),
            on_progress=lambda event: progress.show(
                lambda: f"waiting for {event.get('pending', 0)} upload(s) to finish ..."))
    finally:
        progress.done()
    if not reply.get("ok") and not reply.get("busy"):
        _fail(f"cannot unmount {mp}: {reply.get('error') or 'the daemon refused'}")
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
    progress = _Progress(sys.stderr.isatty())
    try:
        while time.monotonic() < deadline and registry.alive(record.pid):
            progress.show(lambda: "detached; waiting for " + (f"{users} and " if users else "")
                          + f"{len(read_pending(journal))} upload(s) (Ctrl-C stops waiting; "
                          "the daemon goes on) ...")
            time.sleep(0.05)
    finally:
        progress.done()
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
    progress = _Progress(sys.stderr.isatty())
    try:
        while time.monotonic() < deadline and not _gone(mp, record.pid):
            progress.show(lambda: f"waiting for {len(read_pending(journal))} upload(s) to "
                          "finish ...")
            time.sleep(0.05)
    finally:
        progress.done()
    if not _gone(mp, record.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        stop = time.monotonic() + EXIT_GRACE
        while time.monotonic() < stop and not _gone(mp, record.pid):
            time.sleep(0.05)
        if not _gone(mp, record.pid):
            _fail(f"daemon {record.pid} of {mp} did not unmount after {timeout:g} s")
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
    _fail(f"unmounted {mp}{after} with {len(pending)} file(s) still queued; they upload "
          f"at the next mount with cache directory {record.cache_dir}:\n{names}{more}")


def _gone(mountpoint: str, pid: int) -> bool:
    """The mount is gone and its daemon has exited (or left the registry, which it does
    last)."""
    if registry.mounted_fuse(mountpoint) is not None:
        return False
    if not registry.alive(pid):
        return True
    return registry.lookup(mountpoint) is None


class _Progress:
    """What the command waits for, on a terminal, redrawn in place about twice a second."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.shown = False
        self.next = time.monotonic() + 0.5  # a quick unmount prints nothing

    def show(self, text: Callable[[], str]) -> None:
        """Redrawn when due; `text` is asked only then."""
        if self.tty and time.monotonic() >= self.next:
            self.line(text())

    def line(self, text: str) -> None:
        if not self.tty:
            return
        self.next = time.monotonic() + 0.5
        sys.stderr.write(f"\r{text}   ")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False


@dataclass(frozen=True)
class CtlTarget:
    socket: str | None
    mountpoint: str | None
    json: bool
    timeout: float


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the daemon's answer as JSON.")(fn)


@cli.group()
@click.option("--socket", "socket_path", metavar="PATH", envvar="STORMOUNT_SOCKET",
              help="The mount's control socket (or STORMOUNT_SOCKET).")
@click.option("-m", "--mountpoint", metavar="MOUNTPOINT",
              help="The mount to talk to; default: the only one running.")
@_json_option
@click.option("--timeout", type=Seconds(0, 86400, min_open=True),
              default=client.DEFAULT_TIMEOUT, show_default=True,
              help="Seconds to wait for an answer (flush: for each progress report).")
@click.pass_context
def ctl(ctx: click.Context, socket_path: str | None, mountpoint: str | None, as_json: bool,
        timeout: float) -> None:
    """See and steer a running mount through its control socket."""
    from_env = ctx.get_parameter_source("socket_path") == click.core.ParameterSource.ENVIRONMENT
    if socket_path and mountpoint:
        if not from_env:
            raise click.UsageError("give either --socket or -m/--mountpoint, not both")
        socket_path = None  # -m names the mount: STORMOUNT_SOCKET does not apply
    ctx.obj = CtlTarget(socket_path, mountpoint, as_json, timeout)


def _ask(ctx: click.Context, request: dict[str, Any], as_json: bool, *,
         timeout: float | None = None, progress: Callable[[dict[str, Any]], None] | None = None
         ) -> dict[str, Any]:
    """Send a request to the mount; print its answer; exit non-zero on an error."""
    target: CtlTarget = ctx.obj
    as_json = as_json or target.json
    path = client.find_socket(target.socket, target.mountpoint)
    if progress is not None and as_json:
        progress = lambda event: None  # noqa: E731 - still asked for: lines keep coming
    reply = client.request(path, request, timeout=timeout or target.timeout,
                           on_progress=progress)
    if as_json:
        click.echo(json.dumps(reply, indent=2, sort_keys=True))
        if not reply.get("ok"):
            sys.exit(1)
    elif not reply.get("ok"):
        _fail(str(reply.get("error") or "the mount reported an error"))
    else:
        from stormount.control import render

        render.show(render.console(), str(request["command"]), reply)
    return reply


@ctl.command("health")
@_json_option
@click.pass_context
def ctl_health(ctx: click.Context, as_json: bool) -> None:
    """Overall state (ok, degraded, down), tiers, queue. Exit 3 if degraded, 4 if down."""
    reply = _ask(ctx, {"command": "health"}, as_json)
    sys.exit({"degraded": EXIT_DEGRADED, "down": EXIT_DOWN}.get(reply.get("state", ""), 0))


@ctl.command("stats")
@click.option("--reset", is_flag=True, help="Then start counting again from zero.")
@_json_option
@click.pass_context
def ctl_stats(ctx: click.Context, reset: bool, as_json: bool) -> None:
    """Operations, latencies, cache hit ratios and uploads since the last reset."""
    _ask(ctx, {"command": "stats", "reset": reset}, as_json)


@ctl.command("invalidate")
@click.argument("path")
@click.option("-r", "--recursive", is_flag=True, help="The whole subtree under PATH.")
@_json_option
@click.pass_context
def ctl_invalidate(ctx: click.Context, path: str, recursive: bool, as_json: bool) -> None:
    """Drop cached metadata and data of PATH (inside the mount, or absolute under it)."""
    _ask(ctx, {"command": "invalidate", "path": path, "recursive": recursive}, as_json)


@ctl.command("flush")
@click.argument("path", required=False, default="")
@click.option("--wait", "wait", type=Seconds(0, min_open=True), metavar="SECONDS",
              help="Give up waiting after this long (default: until done or failing).")
@_json_option
@click.pass_context
def ctl_flush(ctx: click.Context, path: str, wait: float | None, as_json: bool) -> None:
    """Upload what is pending (under PATH) now, and wait."""
    progress = _Progress(sys.stderr.isatty())
    request: dict[str, Any] = {"command": "flush", "path": path}
    if wait is not None:
        request["timeout"] = wait
    try:
        _ask(ctx, request, as_json, progress=lambda event: progress.line(
            f"{event['remaining']} of {event['total']} upload(s) to go ..."))
    finally:
        progress.done()


def _plain_command(name: str, doc: str) -> None:
    """`ctl NAME [--json]`: a request without arguments."""
    @ctl.command(name, help=doc)
    @_json_option
    @click.pass_context
    def command(ctx: click.Context, as_json: bool) -> None:
        _ask(ctx, {"command": name}, as_json)


def _arg_command(name: str, arg: str, doc: str) -> None:
    """`ctl NAME ARG [--json]`: a request with one argument (`tier` or `path`)."""
    @ctl.command(name, help=doc)
    @click.argument("value", metavar=arg.upper())
    @_json_option
    @click.pass_context
    def command(ctx: click.Context, value: str, as_json: bool) -> None:
        _ask(ctx, {"command": name, arg: value}, as_json)


_plain_command("queue", "Pending uploads and tier repairs, with state, attempts and last error.")
_plain_command("tiers", "The tiers with their roles and health.")
_arg_command("drain", "tier",
             "Take TIER (number or URL) out of service: writes spill as in an outage.")
_arg_command("undrain", "tier", "Put a drained TIER back in service.")
_plain_command("metrics", "The figures in Prometheus text format.")
_plain_command("pins", "The pinned paths: files, bytes cached, state of their fetch.")


_arg_command("pin", "path", "Keep PATH (a file or folder) whole in the cache, exempt from "
             "eviction, so it reads offline; it is fetched in the background.")
_arg_command("unpin", "path", "Let the cached data of PATH be evicted again.")


# mount(8)'s helper convention: 1 for a wrong invocation, 32 for a mount that failed
HELPER_USAGE, HELPER_FAILED = 1, 32
HELPER_TYPES = ("stormount", "fuse.stormount")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.argument("mountpoint")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]")
@click.option("-s", "sloppy", is_flag=True, help="Ignore mount options not known.")
@click.option("-f", "fake", is_flag=True, help="Check everything, but do not mount.")
@click.option("-n", "no_mtab", is_flag=True, help="Accepted (there is no mtab to write).")
@click.option("-v", "verbose", is_flag=True, help="Say what was mounted.")
@click.option("-r", "read_only", is_flag=True, help="Mount read-only (-o ro).")
@click.option("-w", "read_write", is_flag=True, help="Mount read-write (-o rw).")
@click.option("-t", "fstype", metavar="TYPE", help="stormount or fuse.stormount.")
@click.option("-N", "namespace", metavar="NS", hidden=True)
def mount_helper(source: str, mountpoint: str, options: tuple[str, ...], sloppy: bool,
                 fake: bool, no_mtab: bool, verbose: bool, read_only: bool, read_write: bool,
                 fstype: str | None, namespace: str | None) -> None:
    """mount.stormount: what mount(8) runs for `mount -t stormount SOURCE MOUNTPOINT
    -o OPTIONS` and for fstab lines of type stormount. Returns once the mount is ready."""
    if fstype is not None and fstype not in HELPER_TYPES:
        raise click.UsageError(f"filesystem type {fstype!r} is not stormount")
    if namespace is not None:
        raise click.UsageError("mounting in another mount namespace (-N) is not supported")
    opts = options + (("ro",) if read_only else ()) + (("rw",) if read_write else ())
    args = [source, mountpoint, *(f"-o{opt}" for opt in opts)]
    if sloppy:
        args.append("--sloppy")
    if fake:
        cfg = build_config(source, mountpoint, options=opts, sloppy=sloppy)
        daemon.check_mountpoint(cfg)
        return
    mount.main(args, prog_name="mount.stormount", standalone_mode=False)
    if verbose:
        click.echo(f"mount.stormount: {source} mounted at {mount_path(mountpoint)}")


# --- storage management: commands on the store itself ---------------------------------


def _store_options(fn: F) -> F:
    """The ways to name the store's tiers beyond SOURCE, as `mount` has them."""
    fn = click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
                      help="Tier options for the primary tier (region=, endpoint=, ...).")(fn)
    fn = click.option("--config", "config_file", metavar="FILE",
                      help="A TOML configuration to read beside a URL SOURCE.")(fn)
    fn = click.option("--tier", "tiers", multiple=True, metavar="URL",
                      help="A lower-priority tier (repeatable).")(fn)
    return fn


def split_source(arg: str) -> tuple[str, str]:
    """SOURCE[/PATH] -> (SOURCE, PATH): for a URL the path is part of its prefix; a
    config file may be followed by /PATH inside the tree it names."""
    if "://" not in arg:
        head, sep, rest = arg.partition(".toml/")
        if sep:
            return head + ".toml", rest.strip("/")
    return arg, ""


def _store_config(source: str, tiers: tuple[str, ...], config_file: str | None,
                  options: tuple[str, ...]) -> MountConfig:
    # a configuration of the store alone: there is no mountpoint for these commands
    return build_config(source, "/", tier_urls=tiers, config_file=config_file,
                        options=options)


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2))


@cli.command()
@click.argument("target", metavar="SOURCE|MOUNTPOINT")
@click.option("--depth", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Folder levels to total separately.")
@click.option("--by", type=click.Choice(["folder", "tier"]), default="folder",
              show_default=True, help="Group the table by folder, or by tier and folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_options
def usage(target: str, depth: int, by: str, as_json: bool, tiers: tuple[str, ...],
          config_file: str | None, options: tuple[str, ...]) -> None:
    """Files and bytes per folder and per tier, of a store or a running mount."""
    if "://" not in target and os.path.isdir(target) and registry.filesystem_of(
            os.path.abspath(target))[1] == "fuse.stormount":
        if by == "tier":
            raise StormountError(
                "--by tier needs the store (a URL or config file) as SOURCE: a mountpoint "
                "shows one merged tree")
        with report.scan_progress() as progress:
            result = usage_scan.of_mount(os.path.abspath(target), depth, progress)
    else:
        source, path = split_source(target)
        cfg = _store_config(source, tiers, config_file, options)
        prefix = folder_prefix(path)

        async def scan() -> dict[str, Any]:
            async with open_store(cfg) as store:
                return await usage_scan.of_store(store, prefix, depth, progress)

        with report.scan_progress() as progress:
            result = trio.run(scan)
    if as_json:
        _print_json(result)
    else:
        report.print_tables(report.usage_tables(result, by))


def _short(path: str, most: int = 160) -> str:
    """A path for a one-line message: a very long one (a key thousands of folders deep)
    as its start and end."""
    return path if len(path) <= most else f"{path[:most // 2]}...{path[-most // 2:]}"


def _transfer(verb: str, run_it: Callable[[Any, Any], Any], cfg: MountConfig,
              as_json: bool) -> None:
    async def go() -> transfer.Summary:
        async with open_store(cfg) as store:
            return await run_it(store, progress)

    with report.transfer_progress(verb) as progress:
        summary = trio.run(go)
    result = summary.as_dict()
    if as_json:
        _print_json(result)
    else:
        click.echo(report.transfer_line(result, summary.verb))
    if summary.failed:
        shown = "; ".join(f"{_short(f['path'])}: {f['error']}" for f in summary.failed[:10])
        more = f" (and {len(summary.failed) - 10} more)" if len(summary.failed) > 10 else ""
        again = sum(1 for f in summary.failed if f.get("retry", True))
        hint = ("run the command again to retry them" if again == len(summary.failed) else
                f"running the command again may bring {again} of them; the others can "
                "never be files here" if again else "they can never be files here")
        _fail(f"{len(summary.failed)} of {summary.files} file(s) failed: {shown}{more}; "
              f"{hint}")


@cli.command()
@click.argument("source", metavar="SOURCE[/PATH]")
@click.argument("local_dir")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Files fetched at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_store_options
def pull(source: str, local_dir: str, parallel: int, as_json: bool, tiers: tuple[str, ...],
         config_file: str | None, options: tuple[str, ...]) -> None:
    """Download a folder of the store into LOCAL_DIR; run again, it resumes."""
    source, path = split_source(source)
    cfg = _store_config(source, tiers, config_file, options)
    prefix = folder_prefix(path)
    _transfer("pulling", lambda store, progress: transfer.pull(
        store, prefix, local_dir, parallel=parallel, progress=progress), cfg, as_json)


@cli.command()
@click.argument("local_dir")
@click.argument("source", metavar="SOURCE[/PATH]")
@click.option("--parallel", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Files sent at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_store_options
def push(local_dir: str, source: str, parallel: int, as_json: bool, tiers: tuple[str, ...],
         config_file: str | None, options: tuple[str, ...]) -> None:
    """Upload LOCAL_DIR into a folder of the store; run again, it sends what is missing."""
    source, path = split_source(source)
    cfg = _store_config(source, tiers, config_file, options)
    prefix = folder_prefix(path)
    _transfer("pushing", lambda store, progress: transfer.push(
        store, local_dir, prefix, parallel=parallel, progress=progress), cfg, as_json)


@cli.command()
@click.argument("source", metavar="SOURCE[/PATH]")
@click.option("--dry-run", "apply", flag_value=False, default=False,
              help="Only list what would be removed (the default).")
@click.option("--apply", "apply", flag_value=True, help="Remove what is listed.")
@click.option("--older-than", "older_than", default="1d", show_default=True, metavar="AGE",
              help="Leave alone what is younger (30m, 12h, 7d, 2w, or seconds).")
@click.option("--cache-dir", metavar="DIR",
              help="Also check a mount's cache directory (with that mount stopped).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_options
def gc(source: str, apply: bool, older_than: str, cache_dir: str | None, as_json: bool,
       tiers: tuple[str, ...], config_file: str | None, options: tuple[str, ...]) -> None:
    """Find what crashes and failed uploads left behind; --apply removes it."""
    age = orphans.parse_age(older_than)
    source, path = split_source(source)
    cfg = _store_config(source, tiers, config_file, options)
    prefix = folder_prefix(path)

    # uploads a queue will continue are not orphans: the running mounts' journals
    # (read-only, beside them) and the cache directory given say which
    journals = [r.cache_dir for r in registry.all_records()] + ([cache_dir] if cache_dir else [])
    resumable = orphans.resumable_uploads(journals)

    async def run_gc() -> list[orphans.Finding]:
        async with open_store(cfg) as store:
            sweep = orphans.Gc(store, prefix, age, resumable)
            await sweep.scan()
            if apply:
                await sweep.apply()
            return sweep.findings

    with report.scan_progress() as progress:
        progress("the store", 0, 0)
        findings = trio.run(run_gc)
    if cache_dir:
        findings += orphans.scan_cache(cache_dir, age, apply)
    _review([f.as_dict() for f in findings], "findings", "what", apply, as_json,
            report.gc_table, report.gc_line, {"older_than": age})


def _review(rows: list[dict[str, Any]], name: str, label: str, applied: bool,
            as_json: bool, table: Callable[[list[dict[str, Any]], bool], Any],
            line: Callable[[list[dict[str, Any]], bool], str],
            extra: dict[str, Any] | None = None) -> None:
    """What gc and lifecycle print: the rows and a summary (or JSON); exit 1 when an
    applied step failed."""
    failed = [r for r in rows if r["error"]]
    if as_json:
        _print_json({"apply": applied, **(extra or {}), name: rows,
                     "done": sum(bool(r["done"]) for r in rows), "failed": len(failed)})
    else:
        report.print_tables([table(rows, applied)])
        click.echo(line(rows, applied))
    if failed:
        _fail(f"{len(failed)} could not be done: " + "; ".join(
            f"{r[label]}: {r['error']}" for r in failed[:10]))


def _busy_keys(cfg: MountConfig, cache_dirs: tuple[str, ...]) -> set[str]:
    """Keys with changes not uploaded yet: in the journals of the cache directories
    given, and in the queue of every running mount (this user's, or all for root) of the
    same bucket or container, asked through its control socket."""
    ours = cfg.tiers[0]
    keys = {str(row["path"]) for d in cache_dirs
            for row in read_pending(os.path.join(d, "journal.sqlite3"))}
    for record in registry.all_records():
        if not record.socket:
            continue
        try:
            listed = client.request(record.socket, {"command": "tiers"}, timeout=10)
            theirs = parse_tier_url(str(listed["tiers"][0]["url"]))
            if (theirs.scheme, theirs.container) != (ours.scheme, ours.container):
                continue
            queue = client.request(record.socket, {"command": "queue"}, timeout=30)
        except (StormountError, KeyError, IndexError, TypeError) as e:
            raise StormountError(f"cannot ask the mount at {record.mountpoint} which files "
                                 f"it has not uploaded yet ({e}); not applying rules "
                                 "without knowing") from None
        for upload in queue.get("uploads", []):
            full = theirs.prefix + str(upload["path"])
            if full.startswith(ours.prefix):
                keys.add(full[len(ours.prefix):])
    return keys


@cli.command()
@click.argument("source", metavar="SOURCE[/PATH]")
@click.option("--dry-run", "apply", flag_value=False, default=False,
              help="Only list what the rules would do (the default).")
@click.option("--apply", "apply", flag_value=True, help="Do it.")
@click.option("--cache-dir", "cache_dirs", multiple=True, metavar="DIR",
              help="A mount's cache directory whose pending files must be left alone "
                   "(running mounts of SOURCE are found by themselves).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_options
def lifecycle(source: str, apply: bool, cache_dirs: tuple[str, ...], as_json: bool,
              tiers: tuple[str, ...], config_file: str | None, options: tuple[str, ...]) -> None:
    """Apply the [[lifecycle]] rules of the configuration: delete, archive or report old
    files."""
    source, path = split_source(source)
    cfg = _store_config(source, tiers, config_file, options)
    if not cfg.lifecycle:
        raise StormountError("the configuration has no [[lifecycle]] rules")
    prefix = folder_prefix(path)
    busy = _busy_keys(cfg, cache_dirs)

    async def run_rules() -> list[rules.Decision]:
        async with open_store(cfg) as store:
            decisions = await rules.plan(store, cfg.lifecycle, prefix, busy)
            if apply:
                await rules.apply(store, cfg.lifecycle, decisions)
            return decisions

    with report.scan_progress() as progress:
        progress("the rules", 0, 0)
        decisions = trio.run(run_rules)
    _review([d.as_dict() for d in decisions], "decisions", "key", apply, as_json,
            report.lifecycle_table, report.lifecycle_line)


def mount_helper_main() -> None:
    """The entry point of mount.stormount, with mount(8)'s exit codes."""
    try:
        mount_helper.main(prog_name="mount.stormount", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(HELPER_USAGE)
    except StormountError as e:
        click.echo(f"mount.stormount: {one_line(str(e))}", err=True)
        sys.exit(HELPER_FAILED)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(HELPER_FAILED)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except StormountError as e:
        _fail(str(e))
    except OSError as e:  # a local file or folder a command was given (or needs)
        where = f"{e.filename}: " if e.filename else ""
        _fail(f"{where}{e.strerror or e}")
    except sqlite3.Error as e:
        _fail(f"a state or journal database: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
