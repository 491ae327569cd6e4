"""Amazon S3 and S3-compatible stores through boto3, each blocking call in a trio worker
thread behind one CapacityLimiter (the connection pool is at least as large).

Keys given to and returned from this backend are relative to the tier's prefix.
Endpoint and credentials: the tier's `endpoint`/`region`/`profile` when given, else
boto3's own sources (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws/config, ...).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import math
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
    Unfinished,
    checked_metadata,
    lower_keys,
    run_blocking,
    strip_etag,
)
from stormount.backends.s3_upload import MAX_PART, S3Uploads, _response_time
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


class S3Backend(S3Uploads):
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
