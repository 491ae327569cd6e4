"""The one small async protocol every storage backend implements, and its value types.

Keys are full object keys (the tier's prefix is applied by the backend). A directory
marker is the key ending in "/". Metadata is a flat str -> str mapping with lowercase
keys; what the keys mean (mode, uid, gid, mtime, ...) is the vfs layer's business.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import trio

from stormount.errors import Permanent

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # the store's last-modified time, seconds since the epoch
    etag: str
    # None when the call that produced this (a listing) does not return metadata
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ListPage:
    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)  # "common prefixes", each ending in "/"
    token: str | None = None  # pass back to get the next page; None when this was the last


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

    async def put_file(self, key: str, path: str, metadata: Mapping[str, str]) -> ObjectInfo:
        """Upload a local file as the object (multipart/staged for big files)."""

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


async def list_all(
    backend: Backend, prefix: str, delimiter: str = "/"
) -> tuple[list[ObjectInfo], list[str]]:
    """Every object and common prefix under `prefix`, following pagination."""
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    token: str | None = None
    while True:
        page = await backend.list(prefix, delimiter, token)
        objects.extend(page.objects)
        prefixes.extend(page.prefixes)
        token = page.token
        if token is None:
            return objects, prefixes


async def run_blocking(limiter: trio.CapacityLimiter, fn: Callable[..., T], *args: object,
                       **kwargs: object) -> T:
    """Run a blocking SDK call in a worker thread behind the backend's limiter, so the
    trio loop never blocks. A cancelled caller abandons the thread (its result is dropped)."""
    return await trio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs), limiter=limiter, abandon_on_cancel=True
    )


# --- helpers shared by the SDK backends ---------------------------------------------


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
