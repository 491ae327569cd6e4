"""Configuration: frozen dataclasses per layer, built once at the CLI edge from a TOML
file, command-line flags, `-o` options and the environment, and validated there.
Every option and its default is listed in docs/CONFIGURATION.md."""

from __future__ import annotations

import hashlib
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from stormount.errors import ConfigError

MiB = 1024 * 1024
# the largest uid or gid the kernel takes ((uid_t)-1 means "no change" to it)
ID_MAX = 2**32 - 2
SCHEMES = ("s3", "az", "file", "memory")
Parser = Callable[[object, str], Any]  # (raw value, option name) -> value, or ConfigError


def parse_size(value: object, what: str) -> int:
    """'8MiB', '10MB', '4096' or an int -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{what}: size must not be negative")
        return value
    text = str(value).strip()
    units = {"kib": 1024, "mib": MiB, "gib": 1024 * MiB, "tib": MiB * MiB,
             "kb": 1000, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 1024, "m": MiB,
             "g": 1024 * MiB, "b": 1}
    lower = text.lower()
    for unit in sorted(units, key=len, reverse=True):
        if lower.endswith(unit):
            number = lower[: -len(unit)].strip()
            break
    else:
        unit, number = "b", lower
    try:
        result = int(float(number) * units[unit])
    except (ValueError, OverflowError):  # "inf" overflows int()
        raise ConfigError(f"{what}: {value!r} is not a size (e.g. 8MiB)") from None
    if result < 0:
        raise ConfigError(f"{what}: size must not be negative")
    return result


def _to_int(raw: object, what: str) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"{what}: expected an integer, got {raw!r}")
    try:
        return int(str(raw), 0) if isinstance(raw, str) else int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):  # a TOML inf overflows int()
        raise ConfigError(f"{what}: expected an integer, got {raw!r}") from None


def _to_float(raw: object, what: str) -> float:
    """A finite number: NaN compares false with every bound, so it would pass each
    check and then never fire (debounce=nan never uploads), and infinity is no time."""
    if isinstance(raw, bool):
        raise ConfigError(f"{what}: expected a number, got {raw!r}")
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{what}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what}: expected a finite number, got {raw!r}")
    return value


def _to_bool(raw: object, what: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).lower()
    if text in ("", "1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{what}: expected true or false, got {raw!r}")


def _to_mode(raw: object, what: str) -> int:
    """Modes are octal: '0644', '644', or a TOML integer written 0o644."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        try:
            value = int(str(raw), 8)
        except ValueError:
            raise ConfigError(f"{what}: expected an octal mode such as 0644, got {raw!r}") from None
    if not 0 <= value <= 0o7777:
        raise ConfigError(f"{what}: mode out of range: {raw!r}")
    return value


def _path_text(raw: object, what: str) -> str:
    text = str(raw)
    if "\0" in text:  # only TOML can carry one ("\u0000"); the OS refuses it
        raise ConfigError(f"{what}: a path must not contain a NUL character")
    return text


def _to_fsync(raw: object, what: str) -> str:
    value = str(raw).lower()
    if value not in ("local", "upload"):
        raise ConfigError(f"{what}: expected local or upload, got {raw!r}")
    return value


@dataclass(frozen=True)
class TierConfig:
    """One storage tier: where it is and how to talk to it."""

    url: str
    scheme: str = ""
    container: str = ""  # bucket, container, or absolute directory for file://
    prefix: str = ""  # key prefix inside the container, "" or ending in "/"
    endpoint: str | None = None  # S3-compatible endpoint URL (else AWS_ENDPOINT_URL / AWS)
    region: str | None = None
    profile: str | None = None  # AWS shared-config profile
    connection_string: str | None = None  # Azure (else AZURE_STORAGE_CONNECTION_STRING)
    account_url: str | None = None  # Azure account URL, used with account_key / sas_token
    account_key: str | None = None
    sas_token: str | None = None
    multipart_threshold: int = 8 * MiB  # objects above this upload in parts / staged blocks
    part_size: int = 8 * MiB
    # concurrent SDK calls (thread limiter and connection pool); room for uploads x 4 parts
    # + downloads + deletes, so a health check never waits behind transfers
    max_connections: int = 48
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    sdk_retries: int = 2  # SDK-internal retries; kept low so retries do not multiply
    # role in the chain: a lower tier takes writes only while every tier above is down
    # (spill-over); a mirror also receives a background copy of every write
    mirror: bool = False
    # seconds one attempt of a request may take, by kind of request; an upload of a
    # file is judged by its progress instead (transfer_stall_timeout, complete_timeout)
    upload_timeout: float = 300.0
    download_timeout: float = 600.0
    delete_timeout: float = 30.0
    list_timeout: float = 30.0  # listings, HEADs and the startup check
    # requests in flight at once, by kind; more wait their turn
    uploads: int = 16
    downloads: int = 10
    deletes: int = 10
    # circuit breaker: consecutive failures that open it, seconds before a trial request
    breaker_failures: int = 5
    breaker_open: float = 60.0
    # health probes (a small write/read/delete under .stormount/): how often while the
    # tier is healthy and while it is not; how long one may take
    probe_interval: float = 300.0
    probe_interval_down: float = 5.0
    probe_timeout: float = 2.5
    # requests unanswered this long make a quick check of the tier; if that gets no
    # answer within probe_timeout the tier is marked down and its requests fail over
    stall_timeout: float = 1.5
    # an upload of a file is given up when it moved no bytes (and had no request
    # answered) for this long, however long it has run
    transfer_stall_timeout: float = 60.0
    # how long the store may take to assemble an uploaded object from its parts (S3's
    # CompleteMultipartUpload, Azure's Put Block List), when no bytes move
    complete_timeout: float = 300.0


TIER_OPTIONS = {f.name for f in fields(TierConfig)} - {"url", "scheme", "container", "prefix"}


def option(default: Any, parse: Parser, *, live: bool = False) -> Any:
    """A field of a section ([cache], [fuse], ...) with all that is known of it: its
    default, the parser of what a file or -o gives, and whether SIGHUP puts it in force."""
    return field(default=default, metadata={"parse": parse, "live": live})


def converters(cls: type[Any]) -> dict[str, Parser]:
    """The parser of each option of a section, by name."""
    return {f.name: f.metadata["parse"] for f in fields(cls)}


def live_names(cls: type[Any]) -> tuple[str, ...]:
    """The fields of `cls` that SIGHUP changes in a running mount."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("live"))


@dataclass(frozen=True)
class CacheConfig:
    dir: str = option("", _path_text)  # filled from the source and mountpoint when not given
    # how long attributes learnt from the store, a directory listing and "no such file"
    # are trusted
    metadata_ttl: float = option(60.0, _to_float, live=True)
    listing_ttl: float = option(300.0, _to_float, live=True)
    negative_ttl: float = option(5.0, _to_float, live=True)
    # listings of S3 carry no metadata: the attributes of what they introduce are fetched
    # (HEAD) before anything relies on them, this many at once in the background right
    # after a listing; trust_listings shows listed objects with the mount's defaults
    # instead (for buckets known to carry no metadata: symlinks then show as files)
    head_parallel: int = option(32, _to_int)
    trust_listings: bool = option(False, _to_bool)
    block_size: int = option(4 * MiB, parse_size)  # unit of object data fetched and cached
    max_size: int = option(10 * 1024 * MiB, parse_size, live=True)  # cap of the block cache
    # free disk space the block cache always leaves
    min_free: int = option(1024 * MiB, parse_size, live=True)
    # largest read-ahead window of a sequential reader
    read_ahead_max: int = option(64 * MiB, parse_size)


@dataclass(frozen=True)
class WritebackConfig:
    # seconds a closed file is left alone before it uploads: long enough for what
    # follows a close at once (the rename of a temp file, tar's chmod and utime)
    debounce: float = option(0.5, _to_float, live=True)
    parallel: int = option(16, _to_int, live=True)  # uploads at once
    # of them, files above 8 MiB (sent in parts, several at once)
    parallel_large: int = option(4, _to_int, live=True)
    # attempts with backoff before an upload is reported failing
    retries: int = option(4, _to_int, live=True)
    retry_delay: float = option(1.0, _to_float, live=True)  # first backoff; doubles per attempt
    retry_max_delay: float = option(10.0, _to_float, live=True)  # cap of the backoff
    # how often a failing upload is tried again
    failing_retry_delay: float = option(60.0, _to_float, live=True)
    # "local": fsync makes data durable on local disk; "upload": in the store
    fsync: str = option("local", _to_fsync, live=True)


@dataclass(frozen=True)
class ChainConfig:
    # attempts of a read, listing, delete or copy when tiers fail
    retries: int = option(4, _to_int, live=True)
    retry_delay: float = option(1.0, _to_float, live=True)  # first backoff; doubles per attempt
    retry_max_delay: float = option(10.0, _to_float, live=True)  # cap of the backoff
    # spilled objects copied up (and mirror copies made) at once
    repair_parallel: int = option(4, _to_int)


@dataclass(frozen=True)
class FuseConfig:
    entry_timeout: float = option(1.0, _to_float, live=True)  # kernel dentry cache
    attr_timeout: float = option(1.0, _to_float, live=True)  # kernel attribute cache
    # ownership and modes: when given, every entry shows them (whatever the objects
    # carry); when not, stored values show, and objects that carry none get the mounting
    # user, 0644 files and 0755 directories (umask 022)
    uid: int | None = option(None, _to_int)
    gid: int | None = option(None, _to_int)
    umask: int | None = option(None, _to_mode)
    file_mode: int | None = option(None, _to_mode)  # before umask
    dir_mode: int | None = option(None, _to_mode)
    allow_other: bool = option(False, _to_bool)
    # the kernel checks modes against uid/gid
    default_permissions: bool = option(True, _to_bool)
    read_only: bool = option(False, _to_bool)
    noexec: bool = option(False, _to_bool)  # programs on the mount cannot be executed
    nonempty: bool = option(False, _to_bool)  # allow mounting over a non-empty directory


@dataclass(frozen=True)
class QuotaConfig:
    """A limit on what a folder of the mount (and everything below it) may hold."""
    path: str  # "" for the whole mount, else "a/b"
    max_bytes: int | None = None
    max_files: int | None = None


@dataclass(frozen=True)
class LifecycleRule:
    """What to do with files of a folder once they are older than an age (by mtime)."""
    prefix: str  # "" for the whole mount, else "a/b/"
    older_than: float  # seconds
    action: str  # "delete", "move" or "warn"
    to: str | None = None  # move: a tier index ("1") or the URL of the archive


LIFECYCLE_ACTIONS = ("delete", "move", "warn")


@dataclass(frozen=True)
class MountConfig:
    source: str
    mountpoint: str
    tiers: tuple[TierConfig, ...]
    cache: CacheConfig = CacheConfig()
    fuse: FuseConfig = field(default_factory=FuseConfig)
    writeback: WritebackConfig = WritebackConfig()
    chain: ChainConfig = ChainConfig()
    socket: str | None = None  # control socket; None: the default place (CONTROL.md)
    # live=True: what SIGHUP changes (with the live options of the sections)
    log_level: str = field(default="info", metadata={"live": True})
    # or "json": one JSON object per line
    log_format: str = field(default="text", metadata={"live": True})
    metrics_listen: str | None = None  # "HOST:PORT" serves Prometheus /metrics; None: off
    # log here instead of stderr; SIGHUP reopens it
    log_file: str | None = field(default=None, metadata={"live": True})
    # a tier that cannot be reached at start: "degraded" starts without it (from the warm
    # cache when none answers), "wait" waits until every tier answers, "refuse" exits
    on_unreachable: str = "degraded"
    quotas: tuple[QuotaConfig, ...] = field(default=(), metadata={"live": True})
    # how often quota usage is counted again from the store (between, writes count it)
    quota_interval: float = 300.0
    lifecycle: tuple[LifecycleRule, ...] = ()
    # how often the daemon applies the lifecycle rules; 0: only `stormount lifecycle` does
    lifecycle_interval: float = 0.0


S3_BUCKET = re.compile(r"[a-z0-9.-]{3,63}")


def parse_tier_url(url: str, options: Mapping[str, Any] | None = None) -> TierConfig:
    """s3://BUCKET[/PREFIX], az://CONTAINER[/PREFIX], file:///ABS/DIR, memory://[NAME];
    query parameters and `options` set the TierConfig fields of the same name."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as e:  # "s3://[x": an unclosed IPv6 bracket, a bad port
        raise ConfigError(f"not a storage URL: {url!r}: {e}") from None
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise ConfigError(
            f"not a storage URL: {url!r} (expected s3://BUCKET[/PREFIX], "
            "az://CONTAINER[/PREFIX], file:///DIR or a .toml config file)")
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown storage scheme {scheme!r} in {url!r} "
                          f"(supported: {', '.join(s + '://' for s in SCHEMES)})")
    values: dict[str, Any] = {}
    for key, vals in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        values[key] = vals[-1]
    values.update(options or {})
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"file URLs need an absolute path: file:///DIR, got {url!r}")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError(f"file URLs need an absolute path: file:///DIR, got {url!r}")
        container, prefix = os.path.normpath(path), ""
    else:
        container = parts.netloc
        if scheme in ("s3", "az") and not container:
            raise ConfigError(f"{url!r} names no bucket or container")
        if scheme == "s3" and not S3_BUCKET.fullmatch(container):
            raise ConfigError(f'invalid bucket name "{container}" (S3 bucket names are 3-63 '
                              "characters of a-z, 0-9, . and -)")
        prefix = urllib.parse.unquote(parts.path).strip("/")
        if "//" in prefix:
            raise ConfigError(f"empty path segment in prefix of {url!r}")
        prefix = prefix + "/" if prefix else ""
    kwargs: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(TierConfig)}
    for key, raw in values.items():
        if key not in TIER_OPTIONS:
            raise ConfigError(f"unknown tier option {key!r} in {url!r} "
                              f"(known: {', '.join(sorted(TIER_OPTIONS))})")
        if key in ("multipart_threshold", "part_size"):
            kwargs[key] = parse_size(raw, key)
        elif types[key] in ("int",):
            kwargs[key] = _to_int(raw, key)
        elif types[key] in ("bool",):
            kwargs[key] = _to_bool(raw, key)
        elif types[key] in ("float",):
            kwargs[key] = _to_float(raw, key)
        else:
            kwargs[key] = None if raw is None else str(raw)
    tier = TierConfig(url=url, scheme=scheme, container=container, prefix=prefix, **kwargs)
    if tier.part_size < 5 * MiB and scheme == "s3":
        raise ConfigError("part_size must be at least 5MiB for S3")
    for name in ("max_connections", "uploads", "downloads", "deletes", "breaker_failures"):
        if getattr(tier, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    for name in ("connect_timeout", "read_timeout", "upload_timeout", "download_timeout",
                 "delete_timeout", "list_timeout", "probe_timeout", "stall_timeout",
                 "transfer_stall_timeout", "complete_timeout",
                 "breaker_open", "probe_interval", "probe_interval_down"):
        value = getattr(tier, name)
        if not value >= 0.1:  # NaN compares false too
            raise ConfigError(f"{name} must be a number of seconds, at least 0.1 "
                              f"(got {value!r})")
    return tier


# -o spellings that mount(8) users expect, mapped onto config keys
_O_ALIASES = {"ro": "read_only", "rw": "read_only", "cache_dir": "cache.dir"}


def _apply(obj: Any, table: Mapping[str, Any], values: Mapping[str, Any], section: str) -> Any:
    changes = {}
    for key, raw in values.items():
        if key not in table:
            raise ConfigError(f"unknown option {key!r} in [{section}] "
                              f"(known: {', '.join(sorted(table))})")
        changes[key] = table[key](raw, key)
        if isinstance(changes[key], float) and changes[key] < 0:
            raise ConfigError(f"{key} must not be negative")
    return replace(obj, **changes)


def _printable(text: str) -> str:
    """Text given by the user as an error message shows it: as it is, or quoted and
    escaped when it holds a newline, a control character or bytes that are not UTF-8
    (a message is one line)."""
    return text if text.isprintable() else repr(text)


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {_printable(path)}: "
                          f"{e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {_printable(path)} is not valid TOML: {e}") from None
    except (UnicodeDecodeError, ValueError) as e:  # not UTF-8; a NUL in the path
        raise ConfigError(f"cannot read config file {_printable(path)}: {e}") from None


def parse_o_options(opts: tuple[str, ...]) -> list[tuple[str, str]]:
    """'-o a=1,b' (repeatable) -> [('a', '1'), ('b', '')], in order (`tier` repeats)."""
    out: list[tuple[str, str]] = []
    for group in opts:
        for item in group.split(","):
            item = item.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            key = key.strip()
            if not key.startswith("x-"):  # x-systemd.* and friends keep their spelling
                key = key.replace("-", "_")
            if key == "rw":
                key, value = "ro", "false"
            elif key == "exec":
                key, value = "noexec", "false"
            out.append((key, value))
    return out


def mount_path(mountpoint: str) -> str:
    """The canonical path of a mountpoint: absolute, with symlinks in its parents
    resolved. The mountpoint itself is never touched, since it may be our own mount and
    a stat from the daemon's event loop would wait on itself."""
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def cache_base() -> str:
    """Where stormount keeps what it caches for this user: BASE/stormount."""
    base = os.environ.get("XDG_CACHE_HOME") or (
        "/var/cache" if os.getuid() == 0 else os.path.expanduser("~/.cache"))
    return os.path.join(base, "stormount")


def default_cache_dir(source: str, mountpoint: str) -> str:
    digest = hashlib.sha256(f"{source}\0{mountpoint}".encode()).hexdigest()[:16]
    return os.path.join(cache_base(), digest)


def folder_path(raw: object, what: str) -> str:
    """A folder of the mount as "a/b" ("" for all of it, given as "" or "/")."""
    path = str(raw).strip("/")
    if path and any(part in ("", ".", "..") for part in path.split("/")):
        raise ConfigError(f"{what} {raw!r} is not a folder of the mount")
    return path


# -o options that mount(8) and fstab use for themselves, or that are always on
_O_IGNORED = frozenset({"auto_unmount", "_netdev", "nofail", "noauto", "user", "users",
                        "nouser", "owner", "group", "auto", "defaults",
                        "suid", "nosuid", "dev", "nodev", "noatime", "relatime", "atime",
                        "nodiratime", "sync", "async", "loop"})
TOP_LEVEL = ("socket", "log_level", "log_format", "log_file", "metrics_listen",
             "on_unreachable", "quota_interval", "lifecycle_interval")
UNREACHABLE = ("degraded", "wait", "refuse")


def build_config(
    source: str,
    mountpoint: str,
    *,
    tier_urls: tuple[str, ...] = (),
    config_file: str | None = None,
    cache_dir: str | None = None,
    socket: str | None = None,
    log_level: str | None = None,
    options: tuple[str, ...] = (),
    sloppy: bool = False,
) -> MountConfig:
    """Merge, in rising priority: defaults, config file, flags, -o options. Every flag
    of `stormount mount` has an -o spelling (config=, tier=, cache_dir=, socket=, ...),
    so that mount(8) and fstab can say everything; `sloppy` (mount -s) skips unknown
    -o options instead of refusing them."""
    o_values = parse_o_options(options)
    o_tiers = tuple(value for key, value in o_values if key == "tier")
    for key, value in o_values:
        if key == "config":
            config_file = value
    source_url: str | None = source
    if "://" not in source and (source.endswith(".toml") or os.path.isfile(source)):
        if config_file:
            raise ConfigError("give the config file either as SOURCE or with --config, not both")
        config_file, source_url = source, None
    data: dict[str, Any] = load_toml(config_file) if config_file else {}
    known_top = {"tier", "cache", "fuse", "writeback", "chain", "quota", "lifecycle",
                 *TOP_LEVEL}
    for key in data:
        if key not in known_top:
            raise ConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(known_top))})")

    # tier options given with -o apply to the primary tier, the first one named
    primary_o = {key: value for key, value in o_values if key in TIER_OPTIONS}
    tiers: list[TierConfig] = []
    if source_url is not None:
        tiers.append(parse_tier_url(source_url, primary_o))
    raw_tiers = data.get("tier", [])
    if not isinstance(raw_tiers, list):
        raise ConfigError("[[tier]] must be an array of tables")
    for raw in raw_tiers:
        if not isinstance(raw, dict) or "url" not in raw:
            raise ConfigError("every [[tier]] needs a url")
        opts = {k: v for k, v in raw.items() if k != "url"}
        if not tiers:
            opts.update(primary_o)
        tiers.append(parse_tier_url(str(raw["url"]), opts))
    tiers.extend(parse_tier_url(url, None if tiers else primary_o)
                 for url in (*tier_urls, *o_tiers))
    if not tiers:
        raise ConfigError("no storage tier given: pass a URL or a config file with [[tier]]")

    cache_opts, fuse_opts = converters(CacheConfig), converters(FuseConfig)
    writeback_opts, chain_opts = converters(WritebackConfig), converters(ChainConfig)
    cache = _apply(CacheConfig(), cache_opts, _section(data, "cache"), "cache")
    fuse = _apply(FuseConfig(), fuse_opts, _section(data, "fuse"), "fuse")
    writeback = _apply(WritebackConfig(), writeback_opts, _section(data, "writeback"),
                       "writeback")
    chain = _apply(ChainConfig(), chain_opts, _section(data, "chain"), "chain")
    # the daemon-wide settings, from the file, then flags, then -o
    top: dict[str, Any] = {key: data.get(key) for key in TOP_LEVEL}
    top["log_level"] = top["log_level"] or "info"
    top["log_format"] = top["log_format"] or "text"
    top["on_unreachable"] = top["on_unreachable"] or "degraded"

    if cache_dir:
        cache = replace(cache, dir=cache_dir)
    if socket:
        top["socket"] = socket
    if log_level:
        top["log_level"] = log_level
    fuse_o: dict[str, Any] = {}
    for key, value in o_values:
        key = _O_ALIASES.get(key, key)
        if key == "cache.dir":
            cache = replace(cache, dir=value)
        elif key in cache_opts:
            cache = _apply(cache, cache_opts, {key: value}, "cache")
        elif key in fuse_opts:
            fuse_o[key] = value
        elif key in writeback_opts:
            writeback = _apply(writeback, writeback_opts, {key: value}, "writeback")
        elif key.startswith("chain.") and key[6:] in chain_opts:
            chain = _apply(chain, chain_opts, {key[6:]: value}, "chain")
        elif key in top:
            top[key] = value
        elif key in ("config", "tier") or key in TIER_OPTIONS:
            continue  # taken above
        elif key in _O_IGNORED or key.startswith("x-") or sloppy:
            continue  # mount(8)/fstab options meant for other programs
        else:
            raise ConfigError(f"unknown mount option -o {_printable(key)}")
    fuse = _apply(fuse, fuse_opts, fuse_o, "-o")
    for name in ("uid", "gid"):
        value = getattr(fuse, name)
        if value is not None and not 0 <= value <= ID_MAX:
            raise ConfigError(f"{name} must be between 0 and {ID_MAX}, not {value}")
    log_level, log_format = str(top["log_level"]), str(top["log_format"])
    on_unreachable = str(top["on_unreachable"]).lower()

    mountpoint = mount_path(mountpoint)
    if not cache.dir:
        cache = replace(cache, dir=default_cache_dir(source, mountpoint))
    cache = replace(cache, dir=os.path.abspath(os.path.expanduser(cache.dir)))
    if cache.head_parallel < 1:
        raise ConfigError("head_parallel must be at least 1")
    if not 64 * 1024 <= cache.block_size <= 64 * MiB:
        raise ConfigError("block_size must be between 64KiB and 64MiB")
    if cache.read_ahead_max > 1024 * MiB:
        raise ConfigError("read_ahead_max must be at most 1GiB (0 turns read-ahead off)")
    if writeback.parallel < 1:
        raise ConfigError("writeback parallel must be at least 1")
    if writeback.parallel_large < 1:
        raise ConfigError("writeback parallel_large must be at least 1")
    if writeback.retries < 1:
        raise ConfigError("writeback retries must be at least 1")
    for name in ("retry_delay", "retry_max_delay", "failing_retry_delay"):
        if getattr(writeback, name) < 0.1:
            raise ConfigError(f"writeback {name} must be at least 0.1 s (no retrying in a "
                              "tight loop)")
    if chain.retries < 1 or chain.repair_parallel < 1:
        raise ConfigError("chain retries and repair_parallel must be at least 1")
    if chain.retry_delay < 0.1 or chain.retry_max_delay < 0.1:
        raise ConfigError("chain retry delays must be at least 0.1 s (no retrying in a "
                          "tight loop)")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, not {log_level!r}")
    if log_format.lower() not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, not {log_format!r}")
    if on_unreachable not in UNREACHABLE:
        raise ConfigError(f"on_unreachable must be {', '.join(UNREACHABLE[:-1])} or "
                          f"{UNREACHABLE[-1]}, not {top['on_unreachable']!r}")
    lifecycle_interval = 0.0 if top["lifecycle_interval"] is None else parse_age(
        top["lifecycle_interval"], "lifecycle_interval")
    quota_interval = 300.0 if top["quota_interval"] is None else _to_float(
        top["quota_interval"], "quota_interval")
    if quota_interval < 1:
        raise ConfigError("quota_interval must be at least 1 s")
    return MountConfig(source=source, mountpoint=mountpoint, tiers=tuple(tiers), cache=cache,
                       fuse=fuse, writeback=writeback, chain=chain,
                       socket=_abs_path(top["socket"], "socket"),
                       log_level=log_level.lower(), log_format=log_format.lower(),
                       log_file=_abs_path(top["log_file"], "log_file"),
                       metrics_listen=_listen_address(top["metrics_listen"]),
                       on_unreachable=on_unreachable, quotas=_quotas(data.get("quota", [])),
                       quota_interval=quota_interval,
                       lifecycle=_lifecycle(data.get("lifecycle", []), len(tiers)),
                       lifecycle_interval=lifecycle_interval)


def parse_age(raw: object, what: str) -> float:
    """'90s', '30m', '12h', '7d', '2w', '1y' (365 days), or seconds."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdwy]?)\s*", str(raw).lower())
        if match is None:
            raise ConfigError(f"{what}: expected an age such as 30m, 12h or 7d, got {raw!r}")
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ConfigError(f"{what}: expected a finite age, got {raw!r}")
    if seconds < 0:
        raise ConfigError(f"{what}: an age must not be negative")
    return seconds


_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def _lifecycle(raw: object, ntiers: int) -> tuple[LifecycleRule, ...]:
    """[[lifecycle]] tables: prefix, older_than, action (delete | move | warn), and for
    move, `to`: a tier index or an archive URL."""
    if not isinstance(raw, list):
        raise ConfigError("[[lifecycle]] must be an array of tables")
    rules = []
    for n, item in enumerate(raw, 1):
        what = f"[[lifecycle]] rule {n}"
        if not isinstance(item, dict):
            raise ConfigError("[[lifecycle]] must be an array of tables")
        unknown = set(item) - {"prefix", "older_than", "action", "to"}
        if unknown:
            raise ConfigError(f"{what}: unknown option {sorted(unknown)[0]!r} (known: action, "
                              "older_than, prefix, to)")
        if "older_than" not in item or "action" not in item:
            raise ConfigError(f"{what}: give older_than and action")
        action = str(item["action"]).lower()
        if action not in LIFECYCLE_ACTIONS:
            raise ConfigError(f"{what}: action must be delete, move or warn, not {action!r}")
        prefix = folder_path(item.get("prefix", ""), f"{what}: prefix")
        to = item.get("to")
        if action == "move":
            if to is None:
                raise ConfigError(f"{what}: move needs `to`: a tier index or an archive URL")
            if isinstance(to, int) and not isinstance(to, bool):
                if not 0 < to < ntiers:
                    raise ConfigError(f"{what}: to = {to} is not a lower tier (1 to "
                                      f"{ntiers - 1})")
            else:
                parse_tier_url(str(to))  # refused here if it is not a storage URL
            to = str(to)
        elif to is not None:
            raise ConfigError(f"{what}: `to` is only for action = \"move\"")
        rules.append(LifecycleRule(prefix + "/" if prefix else "",
                                   parse_age(item["older_than"], f"{what} older_than"),
                                   action, to))
    return tuple(rules)


def _quotas(raw: object) -> tuple[QuotaConfig, ...]:
    """[[quota]] tables: path (a folder of the mount, "/" for all of it) and max_bytes
    and/or max_files."""
    if not isinstance(raw, list):
        raise ConfigError("[[quota]] must be an array of tables")
    out: dict[str, QuotaConfig] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise ConfigError("[[quota]] must be an array of tables")
        unknown = set(item) - {"path", "max_bytes", "max_files"}
        if unknown:
            raise ConfigError(f"unknown option {sorted(unknown)[0]!r} in [[quota]] "
                              "(known: max_bytes, max_files, path)")
        path = folder_path(item.get("path", "/"), "[[quota]] path")
        label = _printable(path or "/")
        max_bytes = None if item.get("max_bytes") is None else parse_size(
            item["max_bytes"], f"[[quota]] {label} max_bytes")
        max_files = None if item.get("max_files") is None else _to_int(
            item["max_files"], f"[[quota]] {label} max_files")
        if max_bytes is None and max_files is None:
            raise ConfigError(f"[[quota]] {label}: give max_bytes, max_files or both")
        if (max_files or 0) < 0:
            raise ConfigError(f"[[quota]] {label}: max_files must not be negative")
        if path in out:
            raise ConfigError(f"[[quota]] {label} is given twice")
        out[path] = QuotaConfig(path, max_bytes, max_files)
    return tuple(out.values())


def _abs_path(raw: object, what: str = "path") -> str | None:
    if raw is None or raw == "":
        return None
    return os.path.abspath(os.path.expanduser(_path_text(raw, what)))



def _listen_address(raw: object) -> str | None:
    """'HOST:PORT' (an IPv6 host in brackets) or None; port 0 picks a free one."""
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics_listen: expected HOST:PORT such as 127.0.0.1:9464, "
                          f"got {raw!r}")
    return text


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value
