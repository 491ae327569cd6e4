"""The command line: the only place that parses argv. Every error a user can cause ends
in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time

import click
import trio

from stormount import __version__, daemon, registry
from stormount.config import MountConfig, build_config, mount_path
from stormount.errors import StartupError, StormountError
from stormount.writeback import read_pending

READY_TIMEOUT = 120.0


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"stormount: error: {message}", err=True)
    sys.exit(code)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "azure", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))


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
def mount(source: str, mountpoint: str, tiers: tuple[str, ...], config_file: str | None,
          cache_dir: str | None, socket: str | None, foreground: bool, options: tuple[str, ...],
          log_level: str | None, ready_fd: int | None) -> None:
    """Mount SOURCE (a storage URL or a TOML config file) at MOUNTPOINT.

    URLs: s3://BUCKET[/PREFIX], az://CONTAINER[/PREFIX], file:///ABS/DIR.
    Without --foreground, returns once the mount is ready.
    """
    cfg = build_config(source, mountpoint, tier_urls=tiers, config_file=config_file,
                       cache_dir=cache_dir, socket=socket, options=options)
    level = log_level or cfg.log_level
    if foreground:
        _mount_foreground(cfg, level, ready_fd)
        return
    daemon.check_mountpoint(cfg)  # the common mistakes, reported before forking
    args = ["mount", source, mountpoint, "--foreground", "--log-level", level]
    for url in tiers:
        args += ["--tier", url]
    for flag, value in (("--config", config_file), ("--cache-dir", cache_dir),
                        ("--socket", socket)):
        if value:
            args += [flag, value]
    for opt in options:
        args += ["-o", opt]
    _mount_background(cfg, args)


def _mount_foreground(cfg: MountConfig, level: str, ready_fd: int | None) -> None:
    setup_logging(level)
    if ready_fd is not None:
        os.set_inheritable(ready_fd, False)  # fusermount3 must not hold the pipe open

    def on_ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)

    try:
        code = trio.run(daemon.run, cfg, on_ready)
    except StormountError as e:
        if ready_fd is not None:
            os.write(ready_fd, f"error: {e}\n".encode())
        raise
    sys.exit(code)


def _mount_background(cfg: MountConfig, args: list[str]) -> None:
    try:
        os.makedirs(cfg.cache.dir, mode=0o700, exist_ok=True)
        log = open(os.path.join(cfg.cache.dir, "stormount.log"), "ab")  # noqa: SIM115
    except OSError as e:
        raise StartupError(f"cannot use cache directory {cfg.cache.dir}: {e.strerror}") \
            from None
    read_end, write_end = os.pipe()
    args += ["--ready-fd", str(write_end)]
    with log:
        proc = subprocess.Popen([sys.executable, "-m", "stormount", *args], pass_fds=(write_end,),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    os.close(write_end)
    message = b""
    deadline = time.monotonic() + READY_TIMEOUT
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = pipe.read(4096)
            if not chunk:
                break
            message += chunk
            if message.endswith(b"\n"):
                break
    text = message.decode(errors="replace").strip()
    if text == "ready":
        return
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if text.startswith("error: "):
        raise StartupError(text[len("error: "):])
    raise StartupError(f"the mount did not become ready; see {cfg.cache.dir}/stormount.log")


@cli.command()
@click.argument("mountpoint")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for pending uploads before giving up.")
def unmount(mountpoint: str, timeout: float) -> None:
    """Upload what is pending, then unmount MOUNTPOINT."""
    mp = mount_path(mountpoint)
    fstype = registry.mounted_fuse(mp)
    if fstype is None:
        _fail(f"{mp} is not mounted")
    if fstype != "fuse.stormount":
        _fail(f"{mp} is not a stormount mount ({fstype})")
    record = registry.lookup(mp)
    if record is None:
        # no daemon known to us (e.g. it died): detach the mount itself
        cmd = ["umount", mp] if os.getuid() == 0 else ["fusermount3", "-u", mp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            _fail(f"cannot unmount {mp}: {result.stderr.strip() or result.returncode}")
        return
    journal = os.path.join(record.cache_dir, "journal.sqlite3")
    os.kill(record.pid, signal.SIGTERM)  # the daemon uploads its queue, then unmounts
    progress = _Progress(sys.stderr.isatty())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if _gone(mp, record.pid):
                return
            progress.show(journal)
            time.sleep(0.05)
    finally:
        progress.done()
    # time is up: a second signal makes the daemon unmount now, keeping its queue
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    stop = time.monotonic() + 30
    while time.monotonic() < stop and not _gone(mp, record.pid):
        time.sleep(0.05)
    pending = read_pending(journal)
    if not _gone(mp, record.pid):
        _fail(f"daemon {record.pid} of {mp} did not unmount after {timeout:g} s")
    if pending:
        names = "\n".join(f"  {p['path']} ({p['state']}"
                          + (f": {p['last_error']}" if p["last_error"] else "") + ")"
                          for p in pending[:50])
        more = f"\n  ... and {len(pending) - 50} more" if len(pending) > 50 else ""
        _fail(f"unmounted {mp} after {timeout:g} s with {len(pending)} file(s) still "
              f"queued; they upload at the next mount with cache directory "
              f"{record.cache_dir}:\n{names}{more}")


def _gone(mountpoint: str, pid: int) -> bool:
    if registry.mounted_fuse(mountpoint) is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return registry.lookup(mountpoint) is None


class _Progress:
    """"N uploads to go" on a terminal, redrawn in place about twice a second."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.shown = False
        self.next = time.monotonic() + 0.5  # a quick unmount prints nothing

    def show(self, journal: str) -> None:
        if not self.tty or time.monotonic() < self.next:
            return
        self.next = time.monotonic() + 0.5
        left = len(read_pending(journal))
        sys.stderr.write(f"\rwaiting for {left} upload(s) to finish ...   ")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


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
    except KeyboardInterrupt:
        sys.exit(130)
