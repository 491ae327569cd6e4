"""Amazon S3 and S3-compatible stores through boto3, each blocking call in a trio worker
thread behind one CapacityLimiter (the connection pool is at least as large).

Keys given to and returned from this backend are relative to the tier's prefix.
Endpoint and credentials: the tier's `endpoint`/`region`/`profile` when given, else
boto3's own sources (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws/config, ...).
"""

from __future__ import annotations

import builtins
import contextlib
import email.utils
import errno
import hashlib
import io
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import boto3
import botocore.exceptions
import trio
from botocore.config import Config

from stormount.backends.base import (
    ExactFile,
    ListPage,
    ObjectInfo,
    Progress,
    Unfinished,
    checked_metadata,
    lower_keys,
    read_part,
    run_blocking,
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
from stormount.errors import (
    BackendError,
    Changed,
    ConfigError,
    Conflict,
    ContainerMissing,
    NotFound,
    Permanent,
    PermissionDenied,
    Throttled,
    Transient,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

GiB = 1024 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on parts in one multipart upload
MAX_PART = 5 * GiB  # largest single PUT, part, or CopyObject source
COPY_PART = 512 * 1024 * 1024  # part size of server-side multipart copies
_CONTENT_HEADERS = ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding",
                    "ContentLanguage", "StorageClass")

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AccountProblem",
           "AllAccessDisabled", "InvalidSecurity", "NotSignedUp"}
_CONFLICT = {"412", "PreconditionFailed", "409"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
              "RequestLimitExceeded", "RequestThrottled", "ProvisionedThroughputExceededException",
              "429", "503", "ServiceUnavailable"}
_TRANSIENT = {"408", "RequestTimeout", "500", "502", "504", "InternalError",
              # 409s that mean "a conflicting operation is in progress: try again"
              "OperationAborted", "ConditionalRequestConflict",
              "RequestTimeoutException", "IncompleteBody", "BadDigest", "NoSuchUpload"}
_TRANSIENT_SDK = (botocore.exceptions.EndpointConnectionError,
                  botocore.exceptions.ConnectTimeoutError,
                  botocore.exceptions.ReadTimeoutError,
                  botocore.exceptions.ConnectionClosedError,
                  botocore.exceptions.ProxyConnectionError,
                  botocore.exceptions.ResponseStreamingError,
                  botocore.exceptions.IncompleteReadError,
                  botocore.exceptions.CredentialRetrievalError)


def _is_aws_host(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def _epoch(value: object) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return time.time()


def _md5_of(resp: Mapping[str, Any], etag: str) -> str | None:
    """The ETag of a single-part upload is the MD5 of the content, unless the object is
    encrypted with KMS or a customer key (then it is not)."""
    if len(etag) != 32 or any(c not in "0123456789abcdef" for c in etag):
        return None  # a multipart ETag ("...-N"), or not S3's
    if str(resp.get("ServerSideEncryption", "")).startswith("aws:kms") or \
            resp.get("SSECustomerAlgorithm"):
        return None
    return etag


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


def _counting(request: Any, transferring: bool) -> None:
    """botocore hook: the body of a PUT or part counts its bytes as sent only once the
    request is signed (signing reads the whole body first)."""
    body = getattr(request, "body", None)
    if isinstance(body, ExactFile):
        body.transferring = transferring


def _not_transferring(request: Any, **kwargs: Any) -> None:
    _counting(request, False)


def _transferring(request: Any, **kwargs: Any) -> None:
    _counting(request, True)


class S3Backend:
    """A bucket (and optional key prefix) of an S3-compatible store."""

    def __init__(self, tier: TierConfig) -> None:
        self.url = tier.url
        self.bucket = tier.container
        self._prefix = tier.prefix
        self._tier = tier
        self._limiter = trio.CapacityLimiter(tier.max_connections)
        # concurrent parts of one upload: memory held is about this many parts
        self._part_concurrency = max(1, min(4, tier.max_connections))
        # objects above this limit copy in parts of copy_part_size (tests lower both)
        self.copy_part_limit = MAX_PART
        self.copy_part_size = COPY_PART
        try:
            session = boto3.session.Session(profile_name=tier.profile)
        except botocore.exceptions.ProfileNotFound as e:
            raise ConfigError(f"{tier.url}: AWS profile {tier.profile!r} not found "
                              "in ~/.aws/config or ~/.aws/credentials") from e
        path_style = bool(tier.endpoint) and not _is_aws_host(tier.endpoint or "")
        self._client = self._make_client(session, path_style)
        self.endpoint: str = self._client.meta.endpoint_url
        if not tier.endpoint and not _is_aws_host(self.endpoint):
            # an endpoint from AWS_ENDPOINT_URL or the shared config: an S3-compatible
            # store, which rarely serves virtual-hosted bucket names
            self._client.close()
            path_style = True
            self._client = self._make_client(session, path_style)
        # CompleteMultipartUpload of a big object may keep a busy store silent for
        # minutes: its own client waits up to complete_timeout for the answer, where a
        # read timeout would only send it again (and find the upload gone)
        self._completer = self._make_client(
            session, path_style, read_timeout=max(tier.read_timeout, tier.complete_timeout),
            pool=4)

    def _make_client(self, session: boto3.session.Session, path_style: bool,
                     read_timeout: float | None = None, pool: int | None = None) -> Any:
        tier = self._tier
        config = Config(
            max_pool_connections=pool or max(10, tier.max_connections),
            retries={"max_attempts": tier.sdk_retries + 1, "mode": "standard"},
            connect_timeout=tier.connect_timeout,
            read_timeout=read_timeout or tier.read_timeout,
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path" if path_style else "auto"},
        )
        try:
            client = session.client("s3", endpoint_url=tier.endpoint or None,
                                    region_name=tier.region or None, config=config)
        except (ValueError, botocore.exceptions.BotoCoreError) as e:
            raise ConfigError(f"{tier.url}: cannot set up the S3 client: {e}") from e
        # as s3transfer does: bytes count as sent between signing and the response
        client.meta.events.register_first("request-created.s3", _not_transferring,
                                          unique_id="stormount-not-transferring")
        client.meta.events.register_last("request-created.s3", _transferring,
                                         unique_id="stormount-transferring")
        return client

    # --- plumbing -------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self._prefix + key

    def _rel(self, full: str) -> str:
        return full[len(self._prefix):] if full.startswith(self._prefix) else full

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self._full(key)}" if key is not None else (
            f"bucket {self.bucket}")

    async def _call(self, op: str, key: str | None, fn: Callable[..., T], *args: object,
                    **kwargs: object) -> T:
        try:
            return await run_blocking(self._limiter, fn, *args, **kwargs)
        except BackendError:
            raise
        except Exception as e:
            if isinstance(e, (botocore.exceptions.BotoCoreError,
                              botocore.exceptions.ClientError)):
                raise self._map(e, op, key) from e
            raise

    def _map(self, e: Exception, op: str, key: str | None) -> BackendError:
        """The one place S3/botocore errors become stormount errors."""
        rel = key or ""
        where = self._where(key)
        if isinstance(e, botocore.exceptions.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            meta = e.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            detail = err.get("Message") or ""
            msg = f"S3 {op} {where} failed: {code or status}" + (f" ({detail})" if detail else "")
            if code == "NoSuchBucket":
                return ContainerMissing(f"S3 {op} {where} failed: bucket {self.bucket} does not "
                                        f"exist at {self.endpoint}", backend=self.url, key=rel)
            if code == "InvalidObjectState":
                return Permanent(f"S3 {op} {where} failed: the object is archived (e.g. "
                                 "GLACIER); restore it first", backend=self.url, key=rel)
            if code in ("KeyTooLongError",):
                perm = Permanent(msg, backend=self.url, key=rel)
                perm.errno = errno.ENAMETOOLONG
                return perm
            if code in ("EntityTooLarge",):
                perm = Permanent(msg, backend=self.url, key=rel)
                perm.errno = errno.EFBIG
                return perm
            if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301") or (
                    status == 301):
                region = meta.get("HTTPHeaders", {}).get("x-amz-bucket-region") or err.get(
                    "Region")
                hint = f": the bucket is in region {region}, set region={region}" if region \
                    else ": wrong region for this bucket"
                return Permanent(msg + hint, backend=self.url, key=rel)
            if code in _NOT_FOUND:
                return NotFound(f"S3 {op} {where}: no such object ({code})", backend=self.url,
                                key=rel)
            if code in _DENIED or status == 403:
                return PermissionDenied(msg, backend=self.url, key=rel)
            if code in _CONFLICT or (status in (409, 412) and code not in _TRANSIENT):
                return Conflict(msg, backend=self.url, key=rel)
            if code in _THROTTLED or status in (429, 503):
                return Throttled(msg, backend=self.url, key=rel)
            if code in _TRANSIENT or status in (408, 500, 502, 504) or status >= 500:
                return Transient(msg, backend=self.url, key=rel)
            if status == 404:
                return NotFound(msg, backend=self.url, key=rel)
            return Permanent(msg, backend=self.url, key=rel)
        if isinstance(e, botocore.exceptions.SSLError):
            return Permanent(f"S3 {op} {where}: TLS failure talking to {self.endpoint}: {e}",
                             backend=self.url, key=rel)
        if isinstance(e, (botocore.exceptions.EndpointConnectionError,
                          botocore.exceptions.ConnectTimeoutError,
                          botocore.exceptions.ProxyConnectionError)):
            return Transient(f"S3 {op} {where}: cannot reach {self.endpoint}: {e}",
                             backend=self.url, key=rel)
        if isinstance(e, (*_TRANSIENT_SDK, botocore.exceptions.HTTPClientError)):
            return Transient(f"S3 {op} {where}: {e}", backend=self.url, key=rel)
        if isinstance(e, (botocore.exceptions.NoCredentialsError,
                          botocore.exceptions.PartialCredentialsError)):
            return PermissionDenied(
                f"S3 {op} {where}: no usable AWS credentials ({e}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or an instance role", backend=self.url, key=rel)
        return Permanent(f"S3 {op} {where}: {e}", backend=self.url, key=rel)

    # --- protocol -------------------------------------------------------------------

    async def check(self) -> None:
        try:
            await self._call("check", None, self._client.head_bucket, Bucket=self.bucket)
        except BackendError as e:
            cause = e.__cause__
            if isinstance(e, NotFound | ContainerMissing):
                raise ContainerMissing(f"bucket {self.bucket} does not exist at {self.endpoint}",
                                       backend=self.url) from cause
            if isinstance(e, PermissionDenied):
                raise PermissionDenied(f"access denied to bucket {self.bucket}: check "
                                       f"credentials ({e})", backend=self.url) from cause
            if isinstance(e, Transient) and not isinstance(
                    cause, botocore.exceptions.ClientError):
                raise Transient(f"cannot reach {self.endpoint}: {cause}",
                                backend=self.url) from cause
            raise

    async def head(self, key: str) -> ObjectInfo:
        resp = await self._call("head", key, self._client.head_object, Bucket=self.bucket,
                                Key=self._full(key))
        etag = strip_etag(resp.get("ETag"))
        return ObjectInfo(key=key, size=int(resp.get("ContentLength", 0)),
                          mtime=_epoch(resp.get("LastModified")), etag=etag,
                          metadata=lower_keys(resp.get("Metadata")),
                          content_md5=_md5_of(resp, etag))

    async def get_range(self, key: str, offset: int, length: int,
                        version: str | None = None) -> bytes:
        if length <= 0:
            await trio.lowlevel.checkpoint()
            return b""
        if offset < 0:
            raise ValueError("negative offset")
        full = self._full(key)

        def _get() -> bytes:
            condition = {} if version is None else {"IfMatch": f'"{version}"'}
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=full,
                                               Range=f"bytes={offset}-{offset + length - 1}",
                                               **condition)
            except botocore.exceptions.ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code == "InvalidRange" or status == 416:
                    return b""  # offset at or past the end (or an empty object)
                if version is not None and (status == 412 or code == "PreconditionFailed"):
                    raise Changed(f"S3 get {self._where(key)}: no longer version {version}",
                                  backend=self.url, key=key) from None
                raise
            body = resp["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            expected = self._expected_length(resp, offset, length)
            if expected is not None and len(data) != expected:
                raise Transient(f"S3 get {self._where(key)}: short read ({len(data)} of "
                                f"{expected} bytes)", backend=self.url, key=key)
            return data
        return await self._call("get", key, _get)

    @staticmethod
    def _expected_length(resp: Mapping[str, Any], offset: int, length: int) -> int | None:
        content_range = str(resp.get("ContentRange") or "")  # "bytes 0-99/1234"
        _, _, total = content_range.rpartition("/")
        if total.isdigit():
            return max(0, min(length, int(total) - offset))
        if resp.get("ContentLength") is not None:
            return int(resp["ContentLength"])
        return None

    async def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        meta = checked_metadata(metadata, "S3", self._where(key), self.url, key)
        body = bytes(data)
        resp = await self._call("put", key, self._client.put_object, Bucket=self.bucket,
                                Key=self._full(key), Body=body, Metadata=meta)
        return ObjectInfo(key=key, size=len(body), mtime=_response_time(resp),
                          mtime_exact=False,
                          etag=strip_etag(resp.get("ETag")), metadata=meta)

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

    async def delete(self, key: str) -> None:
        await self._call("delete", key, self._client.delete_object, Bucket=self.bucket,
                         Key=self._full(key))

    async def list(self, prefix: str, delimiter: str = "/", token: str | None = None,
                   limit: int = 1000) -> ListPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix),
                                  "MaxKeys": max(1, min(limit, 1000))}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        resp = await self._call("list", prefix, self._client.list_objects_v2, **kwargs)
        objects = []
        for item in resp.get("Contents", []):
            rel = self._rel(item["Key"])
            if not rel:
                continue  # the marker of the tier's own prefix
            objects.append(ObjectInfo(key=rel, size=int(item.get("Size", 0)),
                                      mtime=_epoch(item.get("LastModified")),
                                      etag=strip_etag(item.get("ETag")), metadata=None))
        prefixes = [self._rel(p["Prefix"]) for p in resp.get("CommonPrefixes", [])]
        next_token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
        return ListPage(objects, prefixes, next_token or None)

    async def copy(self, src: str, dst: str,
                   metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        head = await self._call("copy", src, self._client.head_object, Bucket=self.bucket,
                                Key=self._full(src))
        size = int(head.get("ContentLength", 0))
        etag = strip_etag(head.get("ETag"))
        if src == dst and metadata is None:
            # S3 refuses a copy onto itself that changes nothing; nothing to do
            return ObjectInfo(key=src, size=size, mtime=_epoch(head.get("LastModified")),
                              etag=etag, metadata=lower_keys(head.get("Metadata")))
        meta = (lower_keys(head.get("Metadata")) if metadata is None
                else checked_metadata(metadata, "S3", self._where(dst), self.url, dst))
        # what a REPLACE copy (and a multipart copy) would otherwise drop
        extra = {name: head[name] for name in _CONTENT_HEADERS if head.get(name)}
        copy_source = {"Bucket": self.bucket, "Key": self._full(src)}
        # copy exactly the version we looked at: a concurrent change is a Conflict
        if_match = f'"{etag}"'
        if size > self.copy_part_limit:
            part_size = min(self._part_size(size, self.copy_part_size),
                            MAX_PART)
            full = self._full(dst)

            def _part(upload_id: str, n: int) -> str:
                start = n * part_size
                end = min(size, start + part_size) - 1
                resp = self._client.upload_part_copy(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=n + 1,
                    CopySource=copy_source, CopySourceRange=f"bytes={start}-{end}",
                    CopySourceIfMatch=if_match)
                return str(resp["CopyPartResult"]["ETag"])

            return await self._multipart("copy", dst, meta, size,
                                         math.ceil(size / part_size), _part, extra)
        if metadata is None:
            directive: dict[str, Any] = {"MetadataDirective": "COPY"}
        else:
            directive = {"MetadataDirective": "REPLACE", "Metadata": meta, **extra}
        resp = await self._call("copy", src, self._client.copy_object, Bucket=self.bucket,
                                Key=self._full(dst), CopySource=copy_source,
                                CopySourceIfMatch=if_match, **directive)
        result = resp.get("CopyObjectResult", {})
        exact = bool(result.get("LastModified"))
        mtime = _epoch(result["LastModified"]) if exact else _response_time(resp)
        return ObjectInfo(key=dst, size=size, mtime=mtime, etag=strip_etag(result.get("ETag")),
                          metadata=meta, mtime_exact=exact)

    async def unfinished(self, prefix: str) -> builtins.list[Unfinished]:
        """Multipart uploads never completed or aborted (a writer that died mid-upload):
        S3 keeps, and bills, their parts until they are aborted."""
        def _list() -> builtins.list[Unfinished]:
            out: builtins.list[Unfinished] = []
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix)}
            while True:
                resp = self._client.list_multipart_uploads(**kwargs)
                for up in resp.get("Uploads", []):
                    out.append(Unfinished(key=self._rel(up["Key"]), ident=up["UploadId"],
                                          started=_epoch(up.get("Initiated"))))
                if not resp.get("IsTruncated"):
                    return out
                kwargs["KeyMarker"] = resp.get("NextKeyMarker")
                kwargs["UploadIdMarker"] = resp.get("NextUploadIdMarker")
        return await self._call("list uploads", prefix, _list)

    async def discard(self, item: Unfinished) -> None:
        with contextlib.suppress(NotFound):  # aborted or completed meanwhile
            await self._call("abort upload", item.key, self._client.abort_multipart_upload,
                             Bucket=self.bucket, Key=self._full(item.key), UploadId=item.ident)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._client.close()
        self._completer.close()
