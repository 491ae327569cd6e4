"""S3 uploads of files: `put_file` in one PUT or in parts, a multipart upload recorded
as it goes and continued from the parts the store lists (see resume.py), unchanged parts
copied in the store (UploadPartCopy), and the abort of what cannot be continued. The half
of S3Backend (s3.py) that writes files; its server-side copies use `_multipart` too."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import io
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions
import trio

from stormount.backends.base import (
    ExactFile,
    ObjectInfo,
    Progress,
    checked_metadata,
    lower_keys,
    read_part,
    strip_etag,
)
from stormount.backends.resume import (
    FromBase,
    Part,
    Recorded,
    Resume,
    Stored,
    landed_from_thread,
    source_of,
)
from stormount.config import TierConfig
from stormount.errors import BackendError, Changed, Conflict, NotFound, Transient

log = logging.getLogger("stormount.backends.s3")  # the backend's name, as before the split
T = TypeVar("T")

GiB = 1024 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on parts in one multipart upload
MAX_PART = 5 * GiB  # largest single PUT, part, or CopyObject source


def _response_time(resp: Mapping[str, Any]) -> float:
    """Server time of a response that carries no LastModified (PUT, CompleteMultipart):
    the HTTP Date header, near the object's Last-Modified but not always equal to it (a
    multipart upload's Last-Modified is when it began)."""
    headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    for name in ("last-modified", "date"):
        text = headers.get(name)
        if text:
            with contextlib.suppress(TypeError, ValueError):
                return email.utils.parsedate_to_datetime(text).timestamp()
    return time.time()


def _multipart_etag(part_etags: list[str]) -> str | None:
    """The ETag S3 gives an object completed from these parts (the MD5 of their MD5s,
    then "-N"), where every part's ETag is its MD5."""
    digests = [strip_etag(e) for e in part_etags]
    if not digests or any(len(d) != 32 or any(c not in "0123456789abcdef" for c in d)
                          for d in digests):
        return None
    joined = b"".join(bytes.fromhex(d) for d in digests)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(digests)}"


def _code_of(e: BaseException) -> str:
    cause = e.__cause__
    if isinstance(cause, botocore.exceptions.ClientError):
        return str(cause.response.get("Error", {}).get("Code", ""))
    return ""


class S3Uploads:
    """S3Backend's uploads: a base of it (s3.py has the clients and `_call`)."""

    # S3Backend's state (set in its __init__) and methods that this half uses
    url: str
    bucket: str
    _tier: TierConfig
    _client: Any
    _completer: Any
    _part_concurrency: int

    if TYPE_CHECKING:
        def _full(self, key: str) -> str: ...
        def _where(self, key: str | None) -> str: ...
        async def _call(self, op: str, key: str | None, fn: Callable[..., T], *args: object,
                        **kwargs: object) -> T: ...
        async def head(self, key: str) -> ObjectInfo: ...

    async def put_file(self, key: str, path: str, metadata: Mapping[str, str], *,
                       if_match: str | None = None, if_absent: bool = False,
                       progress: Progress | None = None,
                       resume: Resume | None = None) -> ObjectInfo:
        meta = checked_metadata(metadata, "S3", self._where(key), self.url, key)
        size = os.stat(path).st_size  # a local stat: cheaper than a thread hop
        cond: dict[str, str] = {}
        if if_match is not None:
            cond["IfMatch"] = f'"{if_match}"'
        elif if_absent:
            cond["IfNoneMatch"] = "*"
        try:
            if size <= max(self._tier.multipart_threshold, 0) and size <= MAX_PART:
                full = self._full(key)

                def _put() -> tuple[int, Any]:
                    with open(path, "rb") as f:
                        length = os.fstat(f.fileno()).st_size
                        body = ExactFile(f, length, f"S3 put {self._where(key)}", progress)
                        return length, self._client.put_object(
                            Bucket=self.bucket, Key=full, Body=body, ContentLength=length,
                            Metadata=meta, **cond)
                size, resp = await self._call("put", key, _put)
                return ObjectInfo(key=key, size=size, mtime=_response_time(resp),
                                  mtime_exact=False,
                                  etag=strip_etag(resp.get("ETag")), metadata=meta)
            if if_match is not None:
                # checked first too: some S3-compatible stores ignore If-Match when
                # completing a multipart upload, and a doomed upload is not worth sending
                try:
                    current = await self.head(key)
                except NotFound:
                    current = None
                if current is None or current.etag != if_match:
                    raise Conflict(f"S3 put {self._where(key)}: changed", backend=self.url,
                                   key=key)
            if resume is not None:
                return await self._put_resumable(key, path, size, meta, cond, progress,
                                                 resume)
            return await self._put_multipart(key, path, size, meta, cond, progress)
        except (Conflict, NotFound) as e:
            if not cond:
                raise
            raise Changed(f"S3 put {self._where(key)}: the object is not the version this "
                          f"upload was based on ({e})", backend=self.url, key=key) from None

    def _part_size(self, size: int, preferred: int) -> int:
        part = max(preferred, 5 * 1024 * 1024)
        if math.ceil(size / part) > MAX_PARTS:
            mib = 1024 * 1024
            part = math.ceil(size / MAX_PARTS / mib) * mib
        return part

    async def _multipart(self, op: str, key: str, meta: Mapping[str, str], size: int,
                         nparts: int, part: Callable[[str, int], Any],
                         extra: Mapping[str, Any], cond: Mapping[str, str] | None = None,
                         progress: Progress | None = None) -> ObjectInfo:
        """Create a multipart upload, run `part(upload_id, n)` (blocking, returns the
        part's ETag) for parts 0..nparts-1 in a few concurrent tasks, complete it, and
        abort it on any failure or cancellation. An upload that turns out to have been
        completed after all (the store finished it, and then a retry or the abort found
        it gone) is this object if the store holds its size, metadata and ETag."""
        full = self._full(key)
        created = await self._call(op, key, self._client.create_multipart_upload,
                                   Bucket=self.bucket, Key=full, Metadata=dict(meta), **extra)
        upload_id = created["UploadId"]
        etags: list[str | None] = [None] * nparts
        failures: list[BaseException] = []
        todo = iter(range(nparts))
        try:
            async with trio.open_nursery() as nursery:
                async def worker() -> None:
                    for n in todo:
                        try:
                            etags[n] = await self._call(op, key, part, upload_id, n)
                        except Exception as e:
                            failures.append(e)
                            nursery.cancel_scope.cancel()
                            return
                for _ in range(min(self._part_concurrency, nparts)):
                    nursery.start_soon(worker)
            if failures:
                raise failures[0]
            parts = [{"ETag": etag, "PartNumber": n + 1} for n, etag in enumerate(etags)]
            if progress is not None:
                progress.finish()  # the store now assembles the object: no bytes move
            resp = await self._call(op, key, self._completer.complete_multipart_upload,
                                    Bucket=self.bucket, Key=full, UploadId=upload_id,
                                    MultipartUpload={"Parts": parts}, **(cond or {}))
            return ObjectInfo(key=key, size=size, mtime=_response_time(resp),
                              mtime_exact=False, etag=strip_etag(resp.get("ETag")),
                              metadata=dict(meta))
        except Exception as e:
            if await self._abort(key, upload_id) and None not in etags:
                landed = await self._landed(key, size, meta, [str(t) for t in etags])
                if landed is not None:
                    log.info("%s: multipart upload %s of %s had completed after all (%s); "
                             "the store holds it", self.url, upload_id, full, e)
                    return landed
            raise
        except BaseException:  # cancelled: the upload must not linger, billed
            with trio.CancelScope(shield=True):
                await self._abort(key, upload_id)
            raise

    async def _abort(self, key: str, upload_id: str) -> bool:
        """Abort a multipart upload (for at most 30 s); True if the store no longer
        knows it: completed, or aborted before."""
        full = self._full(key)
        with trio.move_on_after(30):
            try:
                await self._call("abort upload", key, self._client.abort_multipart_upload,
                                 Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception as e:
                if _code_of(e) == "NoSuchUpload":
                    return True
                log.warning("%s: could not abort multipart upload %s of %s: %s",
                            self.url, upload_id, full, e)
        return False

    async def _landed(self, key: str, size: int, meta: Mapping[str, str],
                      part_etags: list[str]) -> ObjectInfo | None:
        """The object under `key`, if it is the one these parts make."""
        try:
            info = await self.head(key)
        except NotFound:
            return None
        expected = _multipart_etag(part_etags)
        if info.size != size or dict(info.metadata or {}) != lower_keys(meta) or (
                expected is not None and info.etag != expected):
            return None
        return info

    async def _put_multipart(self, key: str, path: str, size: int, meta: Mapping[str, str],
                             cond: Mapping[str, str],
                             progress: Progress | None = None) -> ObjectInfo:
        part_size = self._part_size(size, self._tier.part_size)
        nparts = math.ceil(size / part_size)
        full = self._full(key)

        def _part(upload_id: str, n: int) -> str:
            start = n * part_size
            want = min(part_size, size - start)
            data = read_part(path, start, want, f"S3 put {self._where(key)}", self.url, key)
            body = ExactFile(io.BytesIO(data), want, f"S3 put {self._where(key)}", progress)
            resp = self._client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                            PartNumber=n + 1, Body=body, ContentLength=want)
            if progress is not None:
                progress.answered()
            return str(resp["ETag"])

        return await self._multipart("put", key, meta, size, nparts, _part, {}, cond,
                                     progress)

    async def _put_resumable(self, key: str, path: str, size: int, meta: Mapping[str, str],
                             cond: Mapping[str, str], progress: Progress | None,
                             resume: Resume) -> ObjectInfo:
        """A multipart upload recorded in `resume` as it goes, continued from the parts
        the store lists for the recorded upload. A transient failure or a cancellation
        leaves it in the store for the next attempt; it is aborted only when it can no
        longer be continued (content changed, a conflict, a permanent error)."""
        stale = resume.stale(self.url, key)
        if stale is not None:  # begun here for other content (or another key)
            await self._abort(stale.key, stale.ident)
            resume.dropped()
        recorded = resume.reusable(self.url, key)
        listed: dict[int, tuple[str, int]] = {}
        if recorded is not None:
            found = await self._call("list parts", key, self._list_parts, recorded)
            if progress is not None:
                progress.answered()
            if found is None:  # gone: completed after all, or aborted (gc, a lifecycle rule)
                etags = [recorded.parts[n].etag for n in sorted(recorded.parts)]
                landed = await self._landed(key, size, meta, etags) if len(etags) == \
                    math.ceil(size / recorded.part_size) else None
                resume.dropped()
                if landed is not None:
                    return landed
                recorded = None
            else:
                listed = found
        if recorded is None:
            created = await self._call("put", key, self._client.create_multipart_upload,
                                       Bucket=self.bucket, Key=self._full(key),
                                       Metadata=dict(meta))
            recorded = resume.started(self.url, key, created["UploadId"],
                                      self._part_size(size, self._tier.part_size), time.time())
        return await self._send_parts(key, path, size, meta, cond, progress, resume,
                                      recorded, listed)

    def _list_parts(self, recorded: Recorded) -> dict[int, tuple[str, int]] | None:
        """Part number -> (ETag, size) of the parts the store holds for the upload;
        None when it no longer knows the upload."""
        out: dict[int, tuple[str, int]] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(recorded.key),
                                  "UploadId": recorded.ident}
        while True:
            try:
                resp = self._client.list_parts(**kwargs)
            except botocore.exceptions.ClientError as e:
                if str(e.response.get("Error", {}).get("Code", "")) in ("NoSuchUpload",
                                                                         "404"):
                    return None
                raise
            for p in resp.get("Parts", []):
                out[int(p["PartNumber"])] = (strip_etag(p.get("ETag")), int(p.get("Size", 0)))
            if not resp.get("IsTruncated"):
                return out
            kwargs["PartNumberMarker"] = resp.get("NextPartNumberMarker")

    async def _send_parts(self, key: str, path: str, size: int, meta: Mapping[str, str],
                          cond: Mapping[str, str], progress: Progress | None, resume: Resume,
                          recorded: Recorded, listed: dict[int, tuple[str, int]]) -> ObjectInfo:
        part_size = recorded.part_size
        nparts = math.ceil(size / part_size)
        full = self._full(key)
        etags: list[str | None] = [None] * nparts
        reused = 0

        def _part(n: int) -> tuple[str, Part | None]:
            """Part n (0-based) stored: its ETag, and the Part if it was sent now."""
            start = n * part_size
            want = min(part_size, size - start)
            data = read_part(path, start, want, f"S3 put {self._where(key)}", self.url, key)
            source = source_of(n + 1, start, want, data, recorded, listed, resume.delta)
            if isinstance(source, Stored):
                if progress is not None:
                    progress.reused(want)
                return source.etag, None
            if isinstance(source, FromBase):
                etag = self._copy_part(full, recorded.ident, n + 1, source)
                if etag is not None:  # none of its bytes sent
                    if progress is not None:
                        progress.reused(want)
                        progress.answered()
                    part = Part(n + 1, etag, want, "")  # the ETag is its MD5
                    landed_from_thread(resume, part)
                    return etag, part
            body = ExactFile(io.BytesIO(data), want, f"S3 put {self._where(key)}", progress)
            resp = self._client.upload_part(Bucket=self.bucket, Key=full,
                                            UploadId=recorded.ident, PartNumber=n + 1,
                                            Body=body, ContentLength=want)
            if progress is not None:
                progress.answered()
            etag = strip_etag(resp["ETag"])
            part = Part(n + 1, etag, want, "")  # the ETag is its MD5
            landed_from_thread(resume, part)  # committed to the journal as each part lands
            return etag, part

        todo = iter(range(nparts))
        failures: list[Exception] = []
        async with trio.open_nursery() as nursery:
            async def worker() -> None:
                nonlocal reused
                for n in todo:
                    try:
                        etags[n], part = await self._call("put", key, _part, n)
                    except Exception as e:
                        failures.append(e)
                        nursery.cancel_scope.cancel()
                        return
                    if part is None:
                        reused += 1
            for _ in range(min(self._part_concurrency, nparts)):
                nursery.start_soon(worker)
        try:
            if failures:
                raise failures[0]
            if progress is not None:
                progress.finish()  # the store now assembles the object: no bytes move
            parts = [{"ETag": f'"{etag}"', "PartNumber": n + 1} for n, etag in enumerate(etags)]
            resp = await self._call("put", key, self._completer.complete_multipart_upload,
                                    Bucket=self.bucket, Key=full, UploadId=recorded.ident,
                                    MultipartUpload={"Parts": parts}, **cond)
        except Transient as e:
            if None not in etags:  # completed after all (a lost answer)?
                landed = await self._landed(key, size, meta, [str(t) for t in etags])
                if landed is not None:
                    resume.dropped()
                    log.info("%s: multipart upload %s of %s had completed after all (%s)",
                             self.url, recorded.ident, full, e)
                    return landed
            raise  # left in the store: the next attempt continues it
        except BackendError:  # a conflict, a permanent error: it cannot be continued
            await self._abort(key, recorded.ident)
            resume.dropped()
            raise
        resume.dropped()  # completed: the store no longer knows the upload
        resume.reused, resume.parts = reused, nparts
        if reused:
            log.info("%s: resumed multipart upload of %s: %d of %d parts were already "
                     "stored", self.url, full, reused, nparts)
        return ObjectInfo(key=key, size=size, mtime=_response_time(resp), mtime_exact=False,
                          etag=strip_etag(resp.get("ETag")), metadata=dict(meta))

    def _copy_part(self, full: str, upload_id: str, number: int, source: FromBase
                   ) -> str | None:
        """Part `number` copied from the version it replaces (UploadPartCopy, only if
        that version is still the object's): its ETag, or None when the store cannot
        (the version changed or is elsewhere, e.g. a spill-over tier): the part is then
        sent, and the completion's condition decides whether the upload may land."""
        try:
            resp = self._client.upload_part_copy(
                Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": full},
                CopySourceRange=f"bytes={source.start}-{source.end - 1}",
                CopySourceIfMatch=f'"{source.etag}"')
        except botocore.exceptions.ClientError as e:
            log.debug("%s: part %d of %s not copied, sent instead: %s", self.url, number,
                      full, e)
            return None
        return strip_etag(resp["CopyPartResult"]["ETag"])

    async def abandon(self, recorded: Recorded) -> None:
        if recorded.url == self.url:
            await self._abort(recorded.key, recorded.ident)
        else:
            await trio.lowlevel.checkpoint()
