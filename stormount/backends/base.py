"""The one small async protocol every storage backend implements, and its value types.

Keys are full object keys (the tier's prefix is applied by the backend). A directory
marker is the key ending in "/". Metadata is a flat str -> str mapping with lowercase
keys; what the keys mean (mode, uid, gid, mtime, ...) is the vfs layer's business.
"""

from __future__ import annotations

import builtins
import errno
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, TypeVar

import trio

from stormount.backends.resume import Recorded, Resume
from stormount.errors import Permanent, Transient
from stormount.stats import Rate

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # the store's last-modified time, seconds since the epoch
    etag: str
    # None when the call that produced this (a listing) does not return metadata
    metadata: Mapping[str, str] | None = None
    # the MD5 of the content (hex), where the store vouches for one (a HEAD)
    content_md5: str | None = None
    # `mtime` is the store's Last-Modified to the second (False: an estimate, e.g. the
    # time of the response to an S3 PUT)
    mtime_exact: bool = True


@dataclass(frozen=True, slots=True)
class ListPage:
    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)  # "common prefixes", each ending in "/"
    token: str | None = None  # pass back to get the next page; None when this was the last


@dataclass(frozen=True, slots=True)
class Unfinished:
    """An upload a writer began and never finished (an S3 multipart upload, Azure blocks
    never committed, a local temporary file): it holds storage until it is discarded."""
    key: str  # the object it was to become ("" when the store cannot say)
    ident: str  # the store's handle of it: an upload id, a blob or file name
    started: float  # seconds since the epoch
    size: int | None = None  # bytes held, where the store says


RECENT_RATE = 10.0  # seconds the rate (and so the ETA) of one upload is measured over
# bytes of one request beyond which more going out means the store takes them: more
# than Linux's default socket buffers (send and receive) hold between them
BUFFERED = 8 * 1024 * 1024


class Progress:
    """How far one upload has got. Backends feed it from their SDK worker threads as
    bytes go out (a lock keeps the counts whole); the tier's stall watch and the upload
    queue read it from trio. `moves` counts every sign that the transfer goes on (bytes
    handed to the connection, a request answered): a watcher that saw it change knows
    the upload is not stuck. `answers` counts only signs that the store takes the
    bytes (a request of the upload answered, or bytes still going out after more than a
    socket's buffers hold): the first bytes of a request go out even to a dead
    endpoint, so only these say that the tier is alive."""

    def __init__(self, shared: Rate | None = None) -> None:
        self.total: int | None = None
        self.sent = 0  # bytes of this attempt sent (fewer again when a request is re-sent)
        self.moves = 0
        self.answers = 0
        self.finishing = False  # every byte is sent: the store assembles the object
        self.started = time.monotonic()
        self.rate = Rate(RECENT_RATE)  # this upload's own, for its ETA
        self._shared = shared  # the mount's upload rate, fed by the same bytes
        self._lock = threading.Lock()

    def begin(self, total: int | None) -> None:
        """A new attempt, which sends from the start."""
        with self._lock:
            self.total, self.sent, self.finishing = total, 0, False
            self.started = time.monotonic()
            self.rate = Rate(RECENT_RATE)

    def add(self, nbytes: int, *, taken: bool = False) -> None:
        """`nbytes` more sent (negative when a request goes again from its start);
        `taken`: the store is known to have taken them (see `answers`)."""
        with self._lock:
            self.sent = max(0, self.sent + nbytes)
            self.moves += 1
            if taken:
                self.answers += 1
        self.rate.add(nbytes)
        if self._shared is not None:
            self._shared.add(nbytes)

    def reused(self, nbytes: int) -> None:
        """`nbytes` found stored by an earlier attempt (a resumed upload): sent, for the
        ETA, but not now, so not counted in the rates."""
        with self._lock:
            self.sent += nbytes
            self.moves += 1
            self.answers += 1

    def answered(self) -> None:
        """A request of the upload (a part, a block) was answered."""
        with self._lock:
            self.moves += 1
            self.answers += 1

    def finish(self) -> None:
        """Every byte is sent; the store now assembles the object (S3's
        CompleteMultipartUpload, Azure's Put Block List), which may take minutes."""
        with self._lock:
            self.finishing = True
            self.moves += 1

    def done(self, size: int) -> None:
        """The upload landed: the bytes a backend did not report count now."""
        missing = size - self.sent
        if missing > 0:
            self.add(missing)

    def eta(self) -> float | None:
        """Seconds left at the recent rate; None when that cannot be told (every byte
        is handed to the connection, and the answers are awaited)."""
        rate = self.rate.per_second()
        if self.total is None or rate <= 0 or self.sent >= self.total:
            return None
        return max(0.0, self.total - self.sent) / rate


class Backend(Protocol):
    """A flat key/value object store seen through async calls."""

    url: str  # what the user gave, for messages

    async def check(self) -> None:
        """Verify the bucket/container exists and the credentials work."""

    async def head(self, key: str) -> ObjectInfo:
        """Attributes and metadata of one object; NotFound when absent."""

    async def get_range(self, key: str, offset: int, length: int,
                        version: str | None = None) -> bytes:
        """Up to `length` bytes from `offset`; shorter at the end of the object. With
        `version` (an ETag), Changed when the object is no longer that version."""

    async def put_file(self, key: str, path: str, metadata: Mapping[str, str], *,
                       if_match: str | None = None, if_absent: bool = False,
                       progress: Progress | None = None,
                       resume: Resume | None = None) -> ObjectInfo:
        """Upload a local file as the object (multipart/staged for big files). With
        `if_match`, only while the object is still that version; with `if_absent`, only
        if there is no such object: otherwise Changed, and the store is left as it was.
        `progress` is told of the bytes as they go out (and when the store assembles
        the object), from any thread. With `resume`, a multipart upload is recorded as
        it goes and continued from the parts an earlier attempt stored, and is left in
        the store (not aborted) when the attempt fails transiently or is cancelled;
        stores without multipart uploads ignore it."""

    async def abandon(self, recorded: Recorded) -> None:
        """Give up a recorded resumable upload (abort it, where the store keeps its
        parts); one of another store, or gone already, is ignored."""

    async def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        """Upload a small object from memory (markers, symlinks)."""

    async def delete(self, key: str) -> None:
        """Remove an object; deleting an absent key is not an error."""

    async def list(
        self, prefix: str, delimiter: str = "/", token: str | None = None, limit: int = 1000
    ) -> ListPage:
        """One page of keys under `prefix`, in key order."""

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Server-side copy; with `metadata`, the copy carries it instead of the source's.
        src == dst with metadata replaces the metadata in place."""

    async def aclose(self) -> None:
        """Release connections and threads."""


class ObjectStore(Backend, Protocol):
    """A store itself (what open_backend gives), beyond what the layers above use:
    the leftovers of uploads cut short, for orphan cleanup."""

    async def unfinished(self, prefix: str) -> builtins.list[Unfinished]:
        """Uploads under `prefix` that were begun and never finished."""

    async def discard(self, item: Unfinished) -> None:
        """Free what an unfinished upload holds; one gone already is not an error."""


async def list_pages(
    backend: Backend, prefix: str, delimiter: str = "", *,
    call: Callable[[Callable[[], Awaitable[ListPage]]], Awaitable[ListPage]] | None = None,
) -> AsyncIterator[ListPage]:
    """The pages of the listing of `prefix`, each asked for only when the one before is
    done with; `call` makes each request (to retry it), else it is made once."""
    token: str | None = None
    while True:
        ask = functools.partial(backend.list, prefix, delimiter, token)
        page = await (ask() if call is None else call(ask))
        yield page
        token = page.token
        if token is None:
            return


async def list_all(
    backend: Backend, prefix: str, delimiter: str = "/"
) -> tuple[list[ObjectInfo], list[str]]:
    """Every object and common prefix under `prefix`, following pagination."""
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    async for page in list_pages(backend, prefix, delimiter):
        objects.extend(page.objects)
        prefixes.extend(page.prefixes)
    return objects, prefixes


async def run_blocking(limiter: trio.CapacityLimiter, fn: Callable[..., T], *args: object,
                       **kwargs: object) -> T:
    """Run a blocking SDK call in a worker thread behind the backend's limiter, so the
    trio loop never blocks. A cancelled caller abandons the thread (its result is dropped)."""
    return await trio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs), limiter=limiter, abandon_on_cancel=True
    )


# --- helpers shared by the SDK backends ---------------------------------------------


class ExactFile:
    """An open local file read as exactly `length` bytes from where it stood at open.
    A file that shrinks while it is uploaded fails the upload at once (Transient) where
    the request would otherwise wait for bytes that never come; one that grows is cut at
    `length`. Either way its writer hands it over again and it is uploaded again.

    With `progress`, the bytes read while `transferring` (set by the SDK's hooks once a
    request is signed: signing reads the body too) are counted as sent, and a rewind
    (the SDK sends the request again) takes them back."""

    def __init__(self, f: BinaryIO, length: int, what: str,
                 progress: Progress | None = None) -> None:
        self._f = f
        self._length = length
        self._pos = 0
        self._what = what
        self._progress = progress
        self._counted = 0  # bytes reported since the last rewind
        self.transferring = False

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = self._f.read(size)
        if not data:
            raise Transient(f"{self._what}: the file shrank while it was uploaded")
        self._pos += len(data)
        if self.transferring and self._progress is not None:
            self._counted += len(data)
            self._progress.add(len(data), taken=self._counted > BUFFERED)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(base + offset, self._length))
        self._f.seek(self._pos)
        if self._counted and self._progress is not None:
            self._progress.add(-self._counted)  # what was sent goes again
            self._counted = 0
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length


def strip_etag(value: object) -> str:
    return str(value or "").strip('"')


def lower_keys(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (metadata or {}).items()}


def checked_metadata(metadata: Mapping[str, str], store: str, where: str, url: str,
                     key: str) -> dict[str, str]:
    """Lowercased metadata, refused unless every value is printable ASCII without
    surrounding blanks: HTTP headers carry nothing else faithfully (the store strips
    blanks, the SDK refuses the rest)."""
    meta = lower_keys(metadata)
    for name, value in meta.items():
        if not name or value != value.strip() or not all(" " <= c <= "~" for c in value):
            err = Permanent(f"{store} put {where}: metadata {name}={value!r} cannot be "
                            "stored: values must be printable ASCII without leading or "
                            "trailing blanks", backend=url, key=key)
            err.errno = errno.EINVAL
            raise err
    return meta


def read_part(path: str, start: int, length: int, what: str, url: str, key: str) -> bytes:
    """Bytes [start, start + length) of a file being uploaded in parts; Transient if it
    shrank meanwhile (the attempt fails at once and is retried)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(length)
    if len(data) != length:
        raise Transient(f"{what}: {path} changed size while it was uploaded", backend=url,
                        key=key)
    return data
