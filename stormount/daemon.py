"""Composition: config -> tiers -> chain -> caches -> vfs -> FUSE, in one root nursery.

The only module that knows every layer. It checks what a user can get wrong before
mounting, mounts, reports readiness, serves until unmounted or signalled, and uploads
what is still pending before it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import logging
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import fields, replace
from typing import TypeVar, cast

import pyfuse3
import trio

from stormount import durable, logs, notify, registry, unmounting
from stormount.backends import Backend, ObjectStore, open_backend
from stormount.cache.blocks import BlockCache
from stormount.cache.meta import MetaStore
from stormount.chain import Chain, Tier
from stormount.chain.chain import spool_dir
from stormount.chain.health import RESERVED
from stormount.chain.repair import RepairJournal
from stormount.chain.retry import backoff
from stormount.chain.tier import redact
from stormount.config import MountConfig, live_names
from stormount.control.commands import Control
from stormount.control.server import PATH_MAX, ControlServer
from stormount.errors import BackendError, StartupError, StormountError, Transient
from stormount.fuse.ops import Operations
from stormount.manage import lifecycle
from stormount.manage.store import lifecycle_store
from stormount.stopping import Stopper
from stormount.vfs.fs import Vfs
from stormount.vfs.pages import Bytes, KernelPages
from stormount.vfs.pins import Pins
from stormount.vfs.quota import Quotas
from stormount.writeback import (
    WRITING,
    Journal,
    Writeback,
    recover_reserved,
    recovered_dir,
    reserved_rows,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
CHECK_TIMEOUT = 30.0
READ_AHEAD_KB = 1024


def check_mountpoint(cfg: MountConfig) -> None:
    mp = cfg.mountpoint
    if not os.path.exists("/dev/fuse"):
        raise StartupError("FUSE is not available: /dev/fuse is missing "
                           "(install fuse3 and load the fuse kernel module)")
    if os.getuid() != 0 and not shutil.which("fusermount3"):
        raise StartupError("fusermount3 not found: install the fuse3 package")
    clear_dead_mount(mp)
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
    point, fstype = registry.filesystem_of(cfg.cache.dir)
    if fstype == "fuse.stormount":
        raise StartupError(f"cache directory {cfg.cache.dir} is on the stormount mount "
                           f"{point}: the cache must be on a local disk")


def clear_dead_mount(mp: str) -> None:
    """A FUSE mount left at `mp` by a daemon that ended without unmounting (its
    auto_unmount did not fire) answers every request with ENOTCONN, "Transport endpoint
    is not connected": it is said in the log and detached (lazy unmount), so that the
    new mount goes where it was."""
    try:
        os.lstat(mp)
        return
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
    log.warning("mountpoint %s is a dead FUSE mount (Transport endpoint is not connected: "
                "the daemon that served it ended without unmounting): unmounting it lazily",
                mp)
    try:
        unmounting.unmount(mp, lazy=True)
    except unmounting.UnmountError as e:
        raise StartupError(f"mountpoint {mp} is a dead FUSE mount that cannot be unmounted "
                           f"({e}): run fusermount3 -u -z {mp}") from None


def private_cache_dir(cache: str) -> None:
    """Create the cache directory, or make the one there private: it holds every key,
    size, ETag, owner and mode of the bucket, and the log. A directory made before with
    wider rights (`mkdir -p`, 0755) is set to 0700; one of another user, or one that
    cannot be tightened, is refused."""
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
        st = os.stat(cache)
    except OSError as e:
        raise StartupError(f"cannot use cache directory {cache}: {e.strerror}") from None
    if st.st_uid != os.geteuid():
        raise StartupError(f"cache directory {cache} belongs to uid {st.st_uid}, not to this "
                           f"user (uid {os.geteuid()}): it must be private to the mount's user")
    if st.st_mode & 0o077:
        try:
            os.chmod(cache, 0o700)
        except OSError as e:
            raise StartupError(f"cannot use cache directory {cache}: it is open to others "
                               f"(mode {st.st_mode & 0o777:o}) and cannot be made private: "
                               f"{e.strerror}") from None
        log.warning("cache directory %s was open to others (mode %o): made private (700)",
                    cache, st.st_mode & 0o777)
    tighten_cache_files(cache)


def tighten_cache_files(cache: str) -> None:
    """Take the rights of group and others off the files of the cache directory and of
    its blocks/ (databases, their -wal and -shm, the log), made before with a wider
    umask or by an earlier version."""
    for directory in (cache, os.path.join(cache, "blocks")):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if mode & 0o077:
                        os.chmod(entry.path, mode & 0o700)
            except OSError as e:
                raise StartupError(f"cannot make {entry.path} private: {e.strerror}") from None


def prepare_cache(cfg: MountConfig) -> tuple[int, str]:
    """Create the cache directory (private: see private_cache_dir), lock it against a
    second mount, and return (lock fd, staging directory)."""
    cache = cfg.cache.dir
    private_cache_dir(cache)
    try:
        lock_fd = durable.lock(os.path.join(cache, "lock"), StartupError(
            f"cache directory {cache} is in use by another running mount"))
    except OSError as e:
        raise StartupError(f"cannot use cache directory {cache}: {e.strerror}") from None
    staging = os.path.join(cache, "staging")
    try:
        os.makedirs(staging, mode=0o700, exist_ok=True)
        # a directory that exists but takes no new files fails here, not at the first write
        probe = os.path.join(cache, f".writable-{os.getpid()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.unlink(probe)
    except OSError as e:
        os.close(lock_fd)
        raise StartupError(f"cannot use cache directory {cache}: {e.strerror}") from None
    return lock_fd, staging


def drop_reserved(cache: str, journal: Journal) -> None:
    """Rows under the reserved `.stormount/` an earlier version took in: their uploads
    could never be stored, and kept the queue from draining for ever. Dropped, their
    data moved to recovered/<time>/ (as `gc --cache-dir --apply` does)."""
    reserved = reserved_rows(journal)
    if not reserved:
        return
    keep = recovered_dir(cache)
    for up in reserved:
        dest = recover_reserved(journal, up, keep)
        where = f"its data is in {dest}" if dest is not None else "it has no data to keep"
        log.error("%s was queued by an earlier version, but names under %s are reserved "
                  "and cannot be stored: dropped from the upload queue (%s)", up.path,
                  RESERVED, where, extra={"event": "recovered", "key": up.path})


def recover_held(cache: str, journal: Journal) -> None:
    """Files an earlier daemon died writing (open for writing, written since their last
    close or sync): their content is what a writer had written so far, maybe half a file.
    It is not uploaded under their names: each goes to recovered/<time>/<its path>."""
    held = [up for up in journal.load() if up.held == WRITING]
    if not held:
        return
    keep = os.path.join(cache, "recovered", time.strftime("%Y%m%dT%H%M%S"))
    for up in held:
        dest = os.path.join(keep, up.path)
        while os.path.lexists(dest):
            dest += "~"
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            size = os.stat(up.staging).st_size
            os.rename(up.staging, dest)
        except FileNotFoundError:
            log.error("%s was still being written when an earlier run ended, and its "
                      "staging file %s is gone: nothing to recover", up.path, up.staging)
        else:
            log.warning("%s was still being written when an earlier run ended: what was "
                        "written then (%d bytes, perhaps not all of it) is in %s, and was "
                        "not uploaded", up.path, size, dest,
                        extra={"event": "recovered", "key": up.path, "file": dest})
        journal.remove(up.path)


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
    if cfg.fuse.noexec:
        options.add("noexec")
    return options


M_ARENA_MAX = -8  # glibc's mallopt parameter


def one_heap() -> None:
    """Make glibc's malloc keep one heap for every thread. With one per thread (up to 8
    per core), each worker thread that received a GET kept its own freed 4-8 MiB
    buffers: a 1 GiB sequential read took the daemon's peak RSS up by 97 MiB for 24
    MiB in flight. With one heap, freed buffers are reused by whichever thread comes
    next: 74-90 MiB peak for the whole daemon, at the same CPU per byte (2.0-3.3 s/GiB;
    unmapping every large buffer instead cost 4.3-4.8 s/GiB in page faults)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its allocator, its policy
        return
    if not mallopt(M_ARENA_MAX, 1):
        log.debug("mallopt(M_ARENA_MAX) refused: each thread keeps its own heap")


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


async def _unreachable(tier: Tier) -> str | None:
    """Why the tier cannot be reached now, or None if it answers. One that refuses us
    (bad credentials, a missing bucket) is a StartupError: that needs fixing."""
    timeout = min(tier.cfg.list_timeout, CHECK_TIMEOUT)
    try:
        with trio.fail_after(timeout):
            await tier.backend.check()
    except trio.TooSlowError:
        return f"no answer within {timeout:g} s"
    except Transient as e:
        return str(e)
    except BackendError as e:  # a missing bucket too: most likely a typo, never waited for
        raise StartupError(f"cannot use {tier.url}: {e}") from None
    return None


async def wait_for_tiers(tiers: list[Tier]) -> None:
    """Until every tier answers (on_unreachable = "wait")."""
    said = ""
    for attempt in itertools.count(1):
        missing = {tier.index: why for tier in tiers
                   if (why := await _unreachable(tier)) is not None}
        if not missing:
            if said:
                log.info("every tier answers now; mounting")
            return
        text = "; ".join(f"tier {i} ({tiers[i].url}): {e}" for i, e in sorted(missing.items()))
        if text != said:
            log.warning("waiting for unreachable tier(s) before mounting (on_unreachable = "
                        "wait): %s", text, extra={"event": "waiting_for_tier"})
            said = text
        notify.notify(STATUS=f"waiting for unreachable tier(s): {text}")
        await trio.sleep(backoff(attempt, 1.0, 30.0))  # 1, 2, 4 ... 30 s, as documented


async def check_tiers(cfg: MountConfig, chain: Chain, *, warm_cache: bool) -> None:
    """The start-up check of the tiers, as on_unreachable says."""
    if cfg.on_unreachable == "wait":
        await wait_for_tiers(chain.tiers)
    elif cfg.on_unreachable == "refuse":
        down = [(tier, why) for tier in chain.tiers
                if (why := await _unreachable(tier)) is not None]
        if down:
            raise StartupError("not mounting (on_unreachable = refuse): " + "; ".join(
                f"tier {t.index} ({t.url}) cannot be reached: {why}" for t, why in down))
    await check_backend(chain, warm_cache=warm_cache and cfg.on_unreachable == "degraded")


async def until_signalled(step: Callable[[], Awaitable[None]],
                          signals: AsyncIterator[int]) -> bool:
    """Run a start-up step that may take long; SIGINT or SIGTERM gives it up. True if it
    finished."""
    finished = False
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:

        async def body() -> None:
            nonlocal finished, failure
            try:
                await step()
                finished = True
            except StormountError as e:
                failure = e
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: nothing to re-read before the mount serves")
                    continue
                log.info("%s: stopped before mounting", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                return

        nursery.start_soon(body)
        nursery.start_soon(watch)
    if failure is not None:
        raise failure
    return finished


# the sections of MountConfig whose live options (config.live_names) SIGHUP changes in a
# running mount; anything else waits for the next mount
SECTIONS = ("cache", "chain", "fuse", "writeback")


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    out = []
    for f in fields(old):  # type: ignore[arg-type]
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if hasattr(a, "__dataclass_fields__"):
            out += _differences(a, b, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _live(old: T, new: T) -> T:
    names = live_names(type(old))
    return replace(old, **{name: getattr(new, name) for name in names})  # type: ignore[type-var]


def reload_config(old: MountConfig, new: MountConfig, vfs: Vfs, ops: Operations,
                  chain: Chain, blocks: BlockCache) -> MountConfig:
    """Put what can change at run time into force (SIGHUP); the config now in force."""
    changed = _differences(old, new)
    top = live_names(MountConfig)
    live = {*top, *(f"{s}.{n}" for s in SECTIONS for n in live_names(type(getattr(old, s))))}
    later = [name for name in changed if name not in live]
    now = [name for name in changed if name in live]
    cfg = replace(old, **{s: _live(getattr(old, s), getattr(new, s)) for s in SECTIONS},
                  **{name: getattr(new, name) for name in top})
    try:
        logs.setup(cfg.log_level, cfg.log_format, file=cfg.log_file)
    except OSError as e:  # the log stays where it was
        log.error("SIGHUP: cannot open log file %s: %s", cfg.log_file, e.strerror)
        cfg = replace(cfg, log_file=old.log_file)
    vfs.reconfigure(cfg.fuse, cfg.cache, cfg.writeback, cfg.quotas)  # quotas: recounted
    ops.reconfigure(cfg.fuse)
    blocks.reconfigure(cfg.cache.max_size, cfg.cache.min_free)
    chain.reconfigure(cfg.chain)
    log.info("SIGHUP: log reopened; configuration re-read: %s%s",
             "changed now: " + ", ".join(now) if now else "nothing changed that applies now",
             "; takes a new mount to change: " + ", ".join(later) if later else "",
             extra={"event": "reloaded"})
    return cfg


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


async def run(cfg: MountConfig, on_ready: Callable[[], None] = lambda: None,
              load: Callable[[], MountConfig] | None = None) -> int:
    """Mount and serve until unmounted or signalled; the exit status. `load` builds the
    configuration anew, for SIGHUP."""
    check_mountpoint(cfg)
    one_heap()
    # one receiver from here to the exit: a signal at any moment of the start is seen
    # (and acted on once the mount serves), never the default action that kills
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        return await _run(cfg, on_ready, load, signals)


async def _run(cfg: MountConfig, on_ready: Callable[[], None],
               load: Callable[[], MountConfig] | None, signals: AsyncIterator[int]) -> int:
    # each part is closed by the stack, in the reverse order of its opening, however
    # the start or the serving ends
    async with contextlib.AsyncExitStack() as stack:
        lock_fd, staging = prepare_cache(cfg)
        stack.callback(os.close, lock_fd)
        backends: list[ObjectStore] = []
        stack.push_async_callback(_close_backends, backends)
        for tier_cfg in cfg.tiers:
            backends.append(open_backend(tier_cfg))
        journal, repair, meta, blocks = _open_caches(cfg, stack)
        tiers = [Tier(i, backend, tier_cfg)
                 for i, (backend, tier_cfg) in enumerate(zip(backends, cfg.tiers, strict=True))]
        chain = Chain(tiers, repair, cfg.chain, spool_dir(cfg.cache.dir))
        writeback = Writeback(chain, journal, cfg.writeback)
        chain.on_tier_up = writeback.retry_now
        vfs = Vfs(chain, cfg.fuse, cfg.cache, staging, writeback, blocks, meta,
                  quotas=Quotas(cfg.quotas) if cfg.quotas else None)
        if vfs.reader is not None:  # blocks fetched go to the kernel's page cache too
            # (it takes any buffer, PyObject_GetBuffer, though typed as bytes)
            vfs.pages = KernelPages(cast(Callable[[int, int, Bytes], None],
                                         pyfuse3.notify_store), vfs.reader, vfs.inodes.at)
        try:
            drop_reserved(cfg.cache.dir, journal)
            recover_held(cfg.cache.dir, journal)
            restored = vfs.restore()
            keep_unqueued(cfg.cache.dir, staging, {up.staging for up in restored})
        except OSError as e:
            raise StartupError(f"cannot use cache directory {cfg.cache.dir}: {e}") from None
        warm = not meta.is_empty() or bool(restored)
        if not await until_signalled(lambda: check_tiers(cfg, chain, warm_cache=warm),
                                     signals):
            return 0
        # before the first write can be refused; a bucket too big to count in time is
        # counted on in the background (until then nothing is refused)
        with trio.move_on_after(QUOTA_FIRST_COUNT):
            await _recount_quotas(vfs)
        ops = Operations(vfs, cfg.fuse)
        in_force = cfg

        async def reload() -> None:
            nonlocal in_force
            try:
                new = in_force if load is None else await trio.to_thread.run_sync(load)
            except StormountError as e:
                log.error("SIGHUP: configuration not re-read, nothing changed: %s", e)
                return
            except Exception as e:  # a reload must never end the mount
                log.exception("SIGHUP: configuration not re-read, nothing changed: %r", e)
                return
            before = in_force
            try:
                in_force = reload_config(in_force, new, vfs, ops, chain, blocks)
            except Exception as e:
                log.exception("SIGHUP: the new configuration was applied only in part; "
                              "restart the mount to apply all of it: %r", e)
            if before.quotas != in_force.quotas:
                with trio.move_on_after(QUOTA_FIRST_COUNT):
                    await _recount_quotas(vfs)

        pins = None if vfs.reader is None else Pins(vfs, blocks, cfg.cache.listing_ttl)
        pid = os.getpid()

        def ready_status() -> str:
            return (f"mounted {redact(cfg.tiers[0].url)} at {cfg.mountpoint}; control "
                    f"socket {server.path}")

        stopper = Stopper(cfg.mountpoint, vfs, status=ready_status)
        control = Control(cfg, vfs, ops, chain, pins=pins, unmount=stopper.request)
        server = ControlServer(socket_path(cfg), control.handle)
        stack.callback(server.close)
        if cfg.metrics_listen is not None:
            from stormount.control.metrics import MetricsServer  # only when asked

            metrics = MetricsServer(control.snapshot, cfg.metrics_listen)
            stack.push_async_callback(_shielded, trio.to_thread.run_sync, metrics.close)
        try:
            pyfuse3.init(ops, cfg.mountpoint, fuse_options(cfg))
        except RuntimeError as e:
            raise StartupError(f"cannot mount at {cfg.mountpoint}: {e}") from None
        # once detached, the mountpoint may hold someone else's mount (and record) by now
        stack.callback(registry.unregister, cfg.mountpoint, pid)
        stack.callback(lambda: pyfuse3.close(unmount=stopper.attached))
        tasks = []
        if pins is not None:
            tasks.append(pins.run)
        if cfg.lifecycle and cfg.lifecycle_interval > 0:
            tasks.append(functools.partial(_lifecycle_every, cfg, backends, vfs, ops))
        pending = await _serve(cfg, vfs, chain, server, stopper, on_ready, reload, signals,
                               tasks)
        owed = chain.pending.counts()
        if any(owed.values()):
            log.info("tier repairs still queued, resumed at the next mount: %s",
                     ", ".join(f"{n} {what}" for what, n in owed.items() if n))
    if pending:
        log.error("unmounted with %d file(s) not uploaded yet; they stay queued in %s "
                  "and upload at the next mount: %s", len(pending), cfg.cache.dir,
                  ", ".join(pending[:20]) + (" ..." if len(pending) > 20 else ""))
        return 1
    log.info("unmounted %s", cfg.mountpoint)
    return 0


def _open_caches(cfg: MountConfig, stack: contextlib.AsyncExitStack
                 ) -> tuple[Journal, RepairJournal, MetaStore, BlockCache]:
    """The journals and caches of the cache directory, each closed by the stack."""
    try:
        journal = Journal(os.path.join(cfg.cache.dir, "journal.sqlite3"))
        stack.callback(journal.close)
        repair = RepairJournal(os.path.join(cfg.cache.dir, "repair.sqlite3"))
        stack.callback(repair.close)
        meta = MetaStore(os.path.join(cfg.cache.dir, "meta.sqlite3"))
        stack.callback(meta.close)
        blocks = BlockCache(os.path.join(cfg.cache.dir, "blocks"),
                            block_size=cfg.cache.block_size, max_bytes=cfg.cache.max_size,
                            min_free_bytes=cfg.cache.min_free)
        stack.callback(blocks.close)
        shutil.rmtree(spool_dir(cfg.cache.dir), ignore_errors=True)  # copies cut short
        tighten_cache_files(cfg.cache.dir)  # the databases just made, and their -wal
    except (OSError, sqlite3.Error) as e:
        raise StartupError(f"cannot open the caches in {cfg.cache.dir}: {e}") from None
    return journal, repair, meta, blocks


async def _shielded(fn: Callable[..., Awaitable[object]], *args: object) -> None:
    with trio.CancelScope(shield=True):
        await fn(*args)


async def _close_backends(backends: list[ObjectStore]) -> None:
    with trio.CancelScope(shield=True):  # (also when the start is cancelled)
        for backend in backends:
            await backend.aclose()


QUOTA_FIRST_COUNT = 60.0  # seconds the start waits for the first count of quota usage


async def _recount_quotas(vfs: Vfs, level: int = logging.INFO) -> None:
    if vfs.quotas is None:
        return
    try:
        await vfs.recount_quotas()
    except BackendError as e:  # counted from the mount's own changes until the next try
        log.warning("cannot count quota usage in the store now: %s", e)
        return
    for row in vfs.quotas.report():
        log.log(level, "quota %s: %s of %s bytes, %s of %s files", row["path"], row["bytes"],
                row["max_bytes"] or "unlimited", row["files"], row["max_files"] or "unlimited")


async def _recount_quotas_every(vfs: Vfs, interval: float) -> None:
    """Usage counted anew from the store now and then: what other clients changed, and
    any drift of the counts kept between, are caught up."""
    while True:
        if vfs.quotas is None or vfs.quotas.counted:  # (a SIGHUP may bring quotas)
            await trio.sleep(interval)
            if vfs.quotas is None:
                continue
        else:
            log.debug("quota usage not counted yet: counting it now")
        await _recount_quotas(vfs, logging.DEBUG)
        if vfs.quotas is not None and not vfs.quotas.counted:
            await trio.sleep(min(interval, 30.0))  # the store did not answer: try again


async def _lifecycle_every(cfg: MountConfig, backends: list[ObjectStore], vfs: Vfs,
                           ops: Operations) -> None:
    """The [[lifecycle]] rules, every lifecycle_interval, on the mount's own tiers; what
    this mount has not uploaded yet, or has open, is left alone."""
    store = lifecycle_store(cfg, backends)

    def busy() -> set[str]:
        return {up.path for up in vfs.writeback.pending()} | {
            node.key for node in vfs.inodes.all()
            if node.opens > 0 or node.staging is not None}

    while True:
        await trio.sleep(cfg.lifecycle_interval)
        try:
            decisions = await lifecycle.plan(store, cfg.lifecycle, "", busy())
            await lifecycle.apply(store, cfg.lifecycle, decisions, lambda key: key in busy())
        except StormountError as e:
            log.warning("lifecycle rules not applied now: %s", e)
            continue
        for decision in decisions:
            if decision.done:
                await ops.invalidate(decision.key)  # the mount shows it gone at once
        if decisions:
            log.info("lifecycle: %d file(s) matched, %d done", len(decisions),
                     sum(d.done for d in decisions))


async def _watchdog(interval: float) -> None:
    """Ping systemd's watchdog from the event loop: a loop that stops turning (a hang)
    stops the pings, and systemd restarts the mount."""
    while True:
        notify.notify(WATCHDOG=1)
        await trio.sleep(interval)


async def _serve(cfg: MountConfig, vfs: Vfs, chain: Chain, server: ControlServer,
                 stopper: Stopper, on_ready: Callable[[], None],
                 reload: Callable[[], Awaitable[None]], signals: AsyncIterator[int],
                 tasks: Sequence[Callable[[], Awaitable[None]]] = ()) -> list[str]:
    """Serve until unmounted, then upload what is queued. How the end comes (signals,
    `stormount unmount`, an unmount from outside) is the stopper's business. Returns
    the paths still pending."""
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
            notify.notify(READY=1, STATUS=stopper.status())

        async def on_signals() -> None:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await reload()
                else:
                    stopper.signalled(signal.Signals(signum).name)

        stopper.serve_in(nursery)
        vfs.background = nursery  # refreshes, read-ahead, pages run beside the requests
        nursery.start_soon(when_ready)
        nursery.start_soon(on_signals)
        nursery.start_soon(vfs.writeback.run)
        nursery.start_soon(chain.run)
        nursery.start_soon(server.serve)
        nursery.start_soon(_recount_quotas_every, vfs, cfg.quota_interval)
        for task in tasks:
            nursery.start_soon(task)
        interval = notify.watchdog_interval()
        if interval is not None:
            nursery.start_soon(_watchdog, interval)
        try:
            await pyfuse3.main()
            # unmounted (by the stopper, from outside, or the last user of a detached
            # mount let go): the uploader goes on until the queue is empty or a signal
            # says stop
            pending = await stopper.finish()
        finally:
            vfs.background = None  # the nursery closes with this block
            nursery.cancel_scope.cancel()
    return pending
