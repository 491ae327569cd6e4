"""Resumable multipart uploads: what a backend is told of an upload that an earlier
attempt began (the record the write-back journal keeps), and what it tells back as the
upload goes, so that a retry, a tier that flapped or a daemon restart continues from
the parts already stored instead of from zero.

The record names the store (its tier URL), the object key, the store's handle of the
upload (an S3 upload id, an Azure block-id prefix), the part size and a `signature` of
what is being uploaded (the staging file's size, mtime and inode, the base version and
the metadata). A backend reuses the record only when all of these are unchanged; even
then it reuses a part only if the store still lists it with the recorded ETag (or block
id) and size, and the local bytes of that part still hash to the MD5 recorded when it
was sent. The signature decides quickly that the content changed; the per-part MD5 is
what proves the staged bytes of a landed part are unchanged (an mtime can miss a write
made within the same clock tick).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from stormount.ranges import Delta


@dataclass(frozen=True, slots=True)
class Part:
    number: int  # 1-based, as S3 numbers parts
    etag: str  # S3: the part's ETag; Azure: the block id
    size: int
    # hex MD5 of the bytes sent, to check the local bytes are unchanged; "" where the
    # store's ETag of a part is that MD5 (S3 without SSE-KMS): not computed at upload
    md5: str


@dataclass(slots=True)
class Recorded:
    """A multipart upload begun by an earlier attempt."""

    url: str  # the tier (backend) it was begun on
    key: str
    ident: str  # S3 upload id; Azure block-id prefix
    part_size: int
    signature: str
    started: float = 0.0  # seconds since the epoch
    parts: dict[int, Part] = field(default_factory=dict)


class Resume:
    """Passed to `put_file(resume=...)`: the recorded upload (if any) and callbacks the
    backend calls from trio: `started` when it begins a new multipart upload, `landed`
    after each part the store took, `dropped` when the recorded upload was aborted or
    can no longer be used. `reused`/`parts` say, after the call, how many of how many
    parts were already stored."""

    def __init__(self, signature: str, recorded: Recorded | None = None, *,
                 on_started: Callable[[Recorded], None] = lambda r: None,
                 on_landed: Callable[[Recorded, Part], None] = lambda r, p: None,
                 on_dropped: Callable[[Recorded], None] = lambda r: None,
                 delta: Delta | None = None) -> None:
        self.signature = signature
        self.recorded = recorded
        # what of the file differs from the stored version it replaces (the object at
        # the same key, version delta.etag): the rest can be copied in the store
        self.delta = delta
        self._on_started = on_started
        self._on_landed = on_landed
        self._on_dropped = on_dropped
        self.reused = 0  # parts found stored, of
        self.copied = 0  # parts copied from the version it replaces, of
        self.parts = 0  # the parts of the upload that completed

    def reusable(self, url: str, key: str) -> Recorded | None:
        """The recorded upload, if it can be continued on this store for this key."""
        r = self.recorded
        if r is not None and r.url == url and r.key == key and r.signature == self.signature:
            return r
        return None

    def stale(self, url: str, key: str) -> Recorded | None:
        """The recorded upload, if it was begun on this store but cannot be continued
        (the content, base, metadata or key changed): the caller discards it."""
        r = self.recorded
        if r is not None and r.url == url and self.reusable(url, key) is None:
            return r
        return None

    def started(self, url: str, key: str, ident: str, part_size: int,
                started: float) -> Recorded:
        """A new upload begun: it replaces the record. One begun on another tier (a
        failover) is left where it is: see docs/SEMANTICS.md."""
        self.recorded = Recorded(url, key, ident, part_size, self.signature, started)
        self._on_started(self.recorded)
        return self.recorded

    def landed(self, part: Part) -> None:
        if self.recorded is not None:
            self.recorded.parts[part.number] = part
            self._on_landed(self.recorded, part)

    def dropped(self) -> None:
        if self.recorded is not None:
            recorded, self.recorded = self.recorded, None
            self._on_dropped(recorded)


def landed_from_thread(resume: Resume, part: Part) -> None:
    """Record a part the store took, from the SDK worker thread that sent it: also when
    its attempt was given up meanwhile (a stall, a cancellation abandons the thread but
    not its request), so a part that lands late is not sent again."""
    with contextlib.suppress(trio.RunFinishedError):  # the daemon is gone: sent again
        trio.from_thread.run_sync(resume.landed, part)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- where each part comes from ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    """The part is in the store already: reused as is."""

    etag: str


@dataclass(frozen=True, slots=True)
class FromFile:
    """The part is sent from the local file."""


@dataclass(frozen=True, slots=True)
class FromBase:
    """The part's bytes are those of the version the upload replaces, at the same
    offsets: copied in the store (S3 UploadPartCopy), none of them sent."""

    etag: str  # the version to copy from: the copy is conditional on it
    start: int
    end: int


Source = Stored | FromFile | FromBase


def source_of(number: int, start: int, size: int, data: bytes | None,
              recorded: Recorded | None, listed: dict[int, tuple[str, int]],
              delta: Delta | None = None) -> Source:
    """The ONE place that decides where part `number` (1-based: bytes [start,
    start + size)) comes from: reused when the store lists it (`listed`: number ->
    (etag, size)) with the recorded ETag and size and the local bytes `data` still hash
    to the recorded MD5; else copied from the version it replaces when none of its bytes
    changed (`delta`); else sent from the file."""
    part = None if recorded is None else recorded.parts.get(number)
    have = listed.get(number)
    if (part is not None and have is not None and data is not None and part.size == size
            and have == (part.etag, size) and md5_hex(data) == (part.md5 or part.etag)):
        return Stored(part.etag)
    if delta is not None and delta.unchanged(start, start + size):
        return FromBase(delta.etag, start, start + size)
    return FromFile()
