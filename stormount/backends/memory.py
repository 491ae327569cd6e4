"""An in-process object store for tests: S3 semantics, no network."""

from __future__ import annotations

import bisect
import builtins
import hashlib
import time
from collections.abc import Mapping
from dataclasses import replace

import trio

from stormount.backends.base import ListPage, ObjectInfo, Progress, Unfinished
from stormount.backends.resume import Recorded, Resume
from stormount.config import TierConfig
from stormount.errors import Changed, NotFound

# memory://NAME stores are shared by name within a process, so two mounts or a test and
# a mount can see the same data
_STORES: dict[str, dict[str, tuple[bytes, ObjectInfo]]] = {}


def etag_of(store: str, data: bytes) -> str:
    """Like S3's, but differing between stores for the same bytes, as real stores do
    (so the chain's tests see that a copy on another tier is another etag)."""
    return hashlib.md5(store.encode() + b"\0" + data).hexdigest()


class MemoryBackend:
    def __init__(self, tier: TierConfig) -> None:
        self.url = tier.url
        self._prefix = tier.prefix
        self._store = tier.container
        self._objects = _STORES.setdefault(tier.container, {})

    async def check(self) -> None:
        await trio.lowlevel.checkpoint()

    def _info(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        return ObjectInfo(key=key, size=len(data), mtime=time.time(),
                          etag=etag_of(self._store, data),
                          metadata={k.lower(): v for k, v in metadata.items()})

    def _get(self, key: str) -> tuple[bytes, ObjectInfo]:
        try:
            return self._objects[self._prefix + key]
        except KeyError:
            raise NotFound(f"no such object: {key}", backend=self.url, key=key) from None

    async def head(self, key: str) -> ObjectInfo:
        await trio.lowlevel.checkpoint()
        # the stored info carries the key as its writer saw it (maybe under another prefix)
        return replace(self._get(key)[1], key=key)

    async def get_range(self, key: str, offset: int, length: int,
                        version: str | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        data, info = self._get(key)
        if version is not None and info.etag != version:
            raise Changed(f"{key} is no longer version {version}", backend=self.url, key=key)
        return data[offset:offset + length]

    async def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        await trio.lowlevel.checkpoint()
        info = self._info(key, bytes(data), metadata)
        self._objects[self._prefix + key] = (bytes(data), info)
        return info

    async def put_file(self, key: str, path: str, metadata: Mapping[str, str], *,
                       if_match: str | None = None, if_absent: bool = False,
                       progress: Progress | None = None,
                       resume: Resume | None = None) -> ObjectInfo:
        # one request (or a local file) per upload: nothing to resume
        with open(path, "rb") as f:
            data = f.read()
        if progress is not None:
            progress.add(len(data), taken=True)
        current = self._objects.get(self._prefix + key)
        if (if_absent and current is not None) or (
                if_match is not None and (current is None or current[1].etag != if_match)):
            await trio.lowlevel.checkpoint()
            raise Changed(f"memory put {key}: the object is not the version expected",
                          backend=self.url, key=key)
        return await self.put_bytes(key, data, metadata)

    async def abandon(self, recorded: Recorded) -> None:
        await trio.lowlevel.checkpoint()  # never records an upload

    async def delete(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._objects.pop(self._prefix + key, None)

    async def list(self, prefix: str, delimiter: str = "/", token: str | None = None,
                   limit: int = 1000) -> ListPage:
        await trio.lowlevel.checkpoint()
        full = self._prefix + prefix
        keys = sorted(k for k in self._objects if k.startswith(full))
        start = bisect.bisect_right(keys, self._prefix + token) if token else 0
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last = None
        for k in keys[start:]:
            if len(objects) + len(prefixes) >= limit:
                return ListPage(objects, prefixes, last[len(self._prefix):] if last else None)
            rest = k[len(full):]
            if delimiter and delimiter in rest:
                common = full + rest[: rest.index(delimiter) + 1]
                if prefixes and prefixes[-1] == common[len(self._prefix):]:
                    last = k
                    continue
                if token and common <= self._prefix + token:
                    continue
                prefixes.append(common[len(self._prefix):])
                # skip past everything under this prefix on the next page
                last = common + "\U0010ffff"
            else:
                objects.append(replace(self._objects[k][1], key=k[len(self._prefix):]))
                last = k
        return ListPage(objects, prefixes, None)

    async def copy(self, src: str, dst: str,
                   metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        data, info = self._get(src)
        return await self.put_bytes(dst, data, info.metadata or {} if metadata is None
                                    else metadata)

    async def unfinished(self, prefix: str) -> builtins.list[Unfinished]:
        await trio.lowlevel.checkpoint()
        return []  # every write lands whole or not at all

    async def discard(self, item: Unfinished) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
