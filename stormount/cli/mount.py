"""`stormount mount`: the daemon run in the foreground, or started in the background and
waited for through the ready pipe."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import click
import trio

from stormount import daemon, logs
from stormount.config import MountConfig, build_config
from stormount.errors import StartupError, StormountError

READY_TIMEOUT = 120.0
LOG_NAME = "stormount.log"  # in the cache directory, for mounts in the background


@click.command()
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
