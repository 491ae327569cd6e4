"""Composition: config -> tiers -> chain -> caches -> vfs -> FUSE, in one root nursery.

The only module that knows every layer. It checks what a user can get wrong before
mounting, mounts, reports readiness, serves until unmounted or signalled, and uploads
what is still pending before it exits.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable

import pyfuse3
import trio

from stormount import notify, registry
from stormount.backends import Backend, open_backend
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.chain import Chain, Tier
from stormount.chain.chain import spool_dir
from stormount.chain.repair import RepairJournal
from stormount.config import MountConfig
from stormount.control.commands import Control
from stormount.control.server import PATH_MAX, ControlServer
from stormount.errors import BackendError, StartupError, Transient
from stormount.fuse.ops import Operations
from stormount.vfs.fs import Vfs
from stormount.writeback import Journal, Writeback

log = logging.getLogger(__name__)
CHECK_TIMEOUT = 30.0
READ_AHEAD_KB = 1024


def check_mountpoint(cfg: MountConfig) -> None:
    mp = cfg.mountpoint
    if not os.path.exists("/dev/fuse"):
        raise StartupError("FUSE is not available: /dev/fuse is missing "
                           "(install fuse3 and load the fuse kernel module)")
    if os.getuid() != 0 and not shutil.which("fusermount3"):
        raise StartupError("fusermount3 not found: install the fuse3 package")
    if not os.path.lexists(mp):
        raise StartupError(f"mountpoint {mp} does not exist")
    if registry.mounted_fuse(mp) is not None or os.path.ismount(mp):
        raise StartupError(f"mountpoint {mp} is busy: something is already mounted there")
    if not os.path.isdir(mp):
        raise StartupError(f"mountpoint {mp} is not a directory")
    try:
        entries = os.listdir(mp)
    except OSError as e:
        raise StartupError(f"cannot read mountpoint {mp}: {e.strerror}") from None
    if entries and not cfg.fuse.nonempty:
        raise StartupError(f"mountpoint {mp} is not empty (use -o nonempty to mount over it)")
    cache = os.path.realpath(cfg.cache.dir)
    if cache == os.path.realpath(mp) or cache.startswith(os.path.realpath(mp) + os.sep):
        raise StartupError(f"cache directory {cfg.cache.dir} must not be inside the mountpoint")


def prepare_cache(cfg: MountConfig) -> tuple[int, str]:
    """Create the cache directory, lock it against a second mount, and return
    (lock fd, staging directory)."""
    cache = cfg.cache.dir
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
        lock_fd = os.open(os.path.join(cache, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StartupError(f"cannot use cache directory {cache}: {e.strerror}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise StartupError(f"cache directory {cache} is in use by another running mount") \
            from None
    staging = os.path.join(cache, "staging")
    try:
        os.makedirs(staging, mode=0o700, exist_ok=True)
    except OSError as e:
        os.close(lock_fd)
        raise StartupError(f"cannot use cache directory {cache}: {e.strerror}") from None
    return lock_fd, staging


def keep_unqueued(cache: str, staging: str, queued: set[str]) -> None:
    """Staging files no journal row names were still being written (never closed) when
    an earlier daemon died: not acknowledged, but never deleted either."""
    leftovers = [name for name in os.listdir(staging)
                 if os.path.join(staging, name) not in queued]
    if not leftovers:
        return
    keep = os.path.join(cache, "recovered", time.strftime("%Y%m%dT%H%M%S"))
    os.makedirs(keep, exist_ok=True)
    for name in leftovers:
        os.rename(os.path.join(staging, name), os.path.join(keep, name))
    log.warning("%d file(s) that were still open when an earlier run ended moved to %s",
                len(leftovers), keep)


def fuse_options(cfg: MountConfig) -> set[str]:
    source = redact(cfg.tiers[0].url).replace(",", "_")
    options = {f"fsname={source}", "subtype=stormount", "auto_unmount", "noatime"}
    if cfg.fuse.default_permissions:
        options.add("default_permissions")
    if cfg.fuse.allow_other:
        options.add("allow_other")
    if cfg.fuse.read_only:
        options.add("ro")
    return options


def tune_read_ahead(mountpoint: str) -> None:
    """Raise the kernel's read-ahead for this mount (128 KiB -> 1 MiB) where permitted."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as e:
        log.debug("cannot raise read-ahead via %s: %s", path, e)


async def check_backend(backend: Backend, *, warm_cache: bool) -> None:
    """Refuse to mount a store that is missing or refuses us. One that cannot be reached
    is mounted degraded when the cache knows its tree: reads are served from the cache."""
    try:
        with trio.fail_after(CHECK_TIMEOUT):
            await backend.check()
    except trio.TooSlowError:
        if warm_cache:
            log.warning("%s: no answer within %.0f s; starting from the warm cache",
                        redact(backend.url), CHECK_TIMEOUT)
            return
        raise StartupError(f"{redact(backend.url)}: no answer within {CHECK_TIMEOUT:.0f} s") \
            from None
    except Transient as e:
        if warm_cache:
            log.warning("%s unreachable (%s); starting from the warm cache",
                        redact(backend.url), e)
            return
        raise StartupError(f"cannot use {redact(backend.url)}: {e}") from None
    except BackendError as e:
        raise StartupError(f"cannot use {redact(backend.url)}: {e}") from None


def socket_path(cfg: MountConfig) -> str:
    """Where the control socket goes: --socket; else systemd's RuntimeDirectory; else
    the cache directory; else, when that path is too long for a Unix socket, the
    directory of the mount records."""
    if cfg.socket:
        return cfg.socket
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, "control.sock")
    path = os.path.join(cfg.cache.dir, "control.sock")
    if len(os.fsencode(path)) <= PATH_MAX:
        return path
    return os.path.join(registry.runtime_dir(), registry.record_name(cfg.mountpoint, ".sock"))


def redact(url: str) -> str:
    """A URL without its query, which may hold credentials."""
    return url.split("?", 1)[0]


async def run(cfg: MountConfig, on_ready: Callable[[], None] = lambda: None) -> int:
    """Mount and serve until unmounted or signalled; the exit status."""
    check_mountpoint(cfg)
    lock_fd, staging = prepare_cache(cfg)
    backends: list[Backend] = []
    try:
        for tier_cfg in cfg.tiers:
            backends.append(open_backend(tier_cfg))
        try:
            journal = Journal(os.path.join(cfg.cache.dir, "journal.sqlite3"))
            repair = RepairJournal(os.path.join(cfg.cache.dir, "repair.sqlite3"))
            meta = MetaStore(os.path.join(cfg.cache.dir, "meta.sqlite3"))
            blocks = BlockCache(os.path.join(cfg.cache.dir, "blocks"),
                                block_size=cfg.cache.block_size, max_bytes=cfg.cache.max_size,
                                min_free_bytes=cfg.cache.min_free)
            spool = spool_dir(cfg.cache.dir)
            shutil.rmtree(spool, ignore_errors=True)  # copies between tiers cut short
        except (OSError, sqlite3.Error) as e:
            raise StartupError(f"cannot open the caches in {cfg.cache.dir}: {e}") from None
        try:
            tiers = [Tier(i, backend, tier_cfg)
                     for i, (backend, tier_cfg) in enumerate(zip(backends, cfg.tiers, strict=True))]
            chain = Chain(tiers, repair, cfg.chain, spool)
            writeback = Writeback(chain, journal, cfg.writeback)
            vfs = Vfs(chain, cfg.fuse, cfg.cache, staging, writeback, blocks, meta)
            restored = vfs.restore()
            try:
                keep_unqueued(cfg.cache.dir, staging, {up.staging for up in restored})
            except OSError as e:
                raise StartupError(f"cannot use cache directory {cfg.cache.dir}: {e}") from None
            await check_backend(chain, warm_cache=not meta.is_empty() or bool(restored))
            ops = Operations(vfs, cfg.fuse)
            control = Control(cfg, vfs, ops, chain)
            server = ControlServer(socket_path(cfg), control.handle)
            metrics = None
            try:
                if cfg.metrics_listen is not None:
                    from stormount.control.metrics import MetricsServer  # only when asked

                    metrics = MetricsServer(control, cfg.metrics_listen)
                try:
                    pyfuse3.init(ops, cfg.mountpoint, fuse_options(cfg))
                except RuntimeError as e:
                    raise StartupError(f"cannot mount at {cfg.mountpoint}: {e}") from None
                try:
                    pending = await _serve(cfg, vfs, chain, server, on_ready)
                finally:
                    pyfuse3.close(unmount=True)
                    registry.unregister(cfg.mountpoint)
            finally:
                server.close()
                if metrics is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(metrics.close)
            owed = chain.pending.counts()
            if any(owed.values()):
                log.info("tier repairs still queued, resumed at the next mount: %s",
                         ", ".join(f"{n} {what}" for what, n in owed.items() if n))
        finally:
            blocks.close()
            meta.close()
            repair.close()
            journal.close()
        if pending:
            log.error("unmounted with %d file(s) not uploaded yet; they stay queued in %s "
                      "and upload at the next mount: %s", len(pending), cfg.cache.dir,
                      ", ".join(pending[:20]) + (" ..." if len(pending) > 20 else ""))
            return 1
        log.info("unmounted %s", cfg.mountpoint)
        return 0
    finally:
        with trio.CancelScope(shield=True):
            for backend in backends:
                await backend.aclose()
        os.close(lock_fd)


def _drain_status(vfs: Vfs) -> str:
    return (f"uploading {len(vfs.writeback.pending())} queued file(s), then unmounting "
            "(stop again to unmount at once: they stay queued)")


async def _report_drain(vfs: Vfs) -> None:
    """systemd's STATUS= follows the queue while it drains (systemctl status shows it)."""
    while True:
        await trio.sleep(1.0)
        notify.notify(STATUS=_drain_status(vfs))


async def _watchdog(interval: float) -> None:
    """Ping systemd's watchdog from the event loop: a loop that stops turning (a hang)
    stops the pings, and systemd restarts the mount."""
    while True:
        notify.notify(WATCHDOG=1)
        await trio.sleep(interval)


async def _serve(cfg: MountConfig, vfs: Vfs, chain: Chain, server: ControlServer,
                 on_ready: Callable[[], None]) -> list[str]:
    """Serve until unmounted, then upload what is queued: a signal starts that at once
    and unmounts after it; a second signal stops waiting (the queue stays journaled).
    Returns the paths still pending."""
    draining: list[trio.CancelScope] = []  # the wait for the queue, once it began
    drained = trio.Event()

    async def drain() -> None:
        scope = trio.CancelScope()
        draining.append(scope)
        notify.notify(STOPPING=1, STATUS=_drain_status(vfs))
        try:
            with scope:
                async with trio.open_nursery() as status:
                    status.start_soon(_report_drain, vfs)
                    await vfs.shutdown()
                    status.cancel_scope.cancel()
        finally:
            drained.set()

    async with trio.open_nursery() as nursery:

        async def when_ready() -> None:
            # the kernel queues requests until pyfuse3.main runs; this stat goes through it
            await trio.to_thread.run_sync(tune_read_ahead, cfg.mountpoint)
            try:
                registry.register(registry.MountRecord(
                    mountpoint=cfg.mountpoint, pid=os.getpid(), source=redact(cfg.source),
                    cache_dir=cfg.cache.dir, socket=server.path))
            except OSError as e:  # the mount works; only `unmount` by name will not find it
                log.warning("cannot record the mount in %s: %s", registry.runtime_dir(), e)
            log.info("mounted %s at %s", redact(cfg.tiers[0].url), cfg.mountpoint)
            on_ready()
            notify.notify(READY=1, STATUS=f"mounted {redact(cfg.tiers[0].url)} at "
                          f"{cfg.mountpoint}; control socket {server.path}")

        async def drain_then_unmount() -> None:
            await drain()
            pyfuse3.terminate()

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not draining:
                        log.info("%s: uploading %d queued file(s), then unmounting (signal "
                                 "again to unmount at once: they stay queued)", name,
                                 len(vfs.writeback.pending()))
                        nursery.start_soon(drain_then_unmount)
                    else:
                        log.info("%s: unmounting now", name)
                        draining[-1].cancel()

        vfs.background = nursery  # listing refreshes run beside the requests
        if vfs.reader is not None:
            vfs.reader.background = nursery  # and so does read-ahead
        nursery.start_soon(when_ready)
        nursery.start_soon(on_signals)
        nursery.start_soon(vfs.writeback.run)
        nursery.start_soon(chain.run)
        nursery.start_soon(server.serve)
        interval = notify.watchdog_interval()
        if interval is not None:
            nursery.start_soon(_watchdog, interval)
        try:
            await pyfuse3.main()
            if not draining:
                # unmounted from outside (`fusermount3 -u`, `umount`): the uploader goes
                # on until the queue is empty or a signal says stop
                await drain()
            else:
                await drained.wait()  # a signal's drain, also if the mount went meanwhile
        finally:
            vfs.background = None  # the nursery closes with this block
            if vfs.reader is not None:
                vfs.reader.background = None
            nursery.cancel_scope.cancel()
    return [up.path for up in vfs.writeback.pending()]
