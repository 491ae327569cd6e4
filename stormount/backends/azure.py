"""Azure Blob Storage through azure-storage-blob's sync client, each blocking call in a
trio worker thread behind one CapacityLimiter (the connection pool is at least as large).

Keys given to and returned from this backend are relative to the tier's prefix.
Credentials: see choose_auth (and docs/CONFIGURATION.md, "Azure credentials").
"""

from __future__ import annotations

import builtins
import contextlib
import ipaddress
import logging
import math
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
import trio
from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobBlock, BlobPrefix, BlobServiceClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

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
    Part,
    Recorded,
    Resume,
    Stored,
    landed_from_thread,
    md5_hex,
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

_NOT_FOUND = {"BlobNotFound", "ResourceNotFound"}
_DENIED = {"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
           "AuthorizationSourceIPMismatch", "AuthorizationProtocolMismatch",
           "AuthorizationResourceTypeMismatch", "AuthorizationServiceMismatch",
           "InsufficientAccountPermissions", "InvalidAuthenticationInfo", "AccountIsDisabled"}
_CONFLICT = {"ConditionNotMet", "TargetConditionNotMet", "SourceConditionNotMet",
             "BlobOverwritten", "LeaseIdMissing", "LeaseIdMismatchWithBlobOperation",
             "LeaseIdMismatchWithContainerOperation", "LeaseLost",
             "LeaseNotPresentWithBlobOperation", "PendingCopyOperation", "BlobAlreadyExists",
             "ContainerBeingDeleted"}
_THROTTLED = {"ServerBusy", "TooManyRequests"}
_TRANSIENT = {"OperationTimedOut", "InternalError", "ServiceUnavailable"}

COPY_POLL_MAX = 2.0  # seconds between polls of a pending server-side copy


def _code(e: HttpResponseError) -> str:
    code = getattr(e, "error_code", None)
    code = getattr(code, "value", code)
    response: Any = e.response
    if not code and response is not None:
        code = response.headers.get("x-ms-error-code")
    return str(code or "")


def _status(e: HttpResponseError) -> int:
    status = getattr(e, "status_code", None)
    if status is None and e.response is not None:
        status = e.response.status_code
    return int(status or 0)


def _epoch(value: object) -> float:
    return value.timestamp() if isinstance(value, datetime) else time.time()








def _account_name(url: str) -> str:
    """The account of https://ACCOUNT.blob.core.windows.net or of an emulator's
    http://127.0.0.1:10000/ACCOUNT (path-style) URL."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        path_style = True
    except ValueError:
        path_style = host == "localhost" or "." not in host
    if path_style:
        return parts.path.strip("/").split("/")[0]
    return host.split(".")[0]


class AzureBackend:
    """A container (and optional blob-name prefix) of an Azure storage account."""

    def __init__(self, tier: TierConfig) -> None:
        self.url = _redact_url(tier.url)  # goes into every message: no secrets
        self.container = tier.container
        self._prefix = tier.prefix
        self._tier = tier
        self._limiter = trio.CapacityLimiter(tier.max_connections)
        self._sas: str | None = None  # a SAS credential also authorises copy sources
        self._owned_credential: Any = None  # one we made, with connections to close
        self._service = self._make_service(tier)
        self._container = self._service.get_container_client(tier.container)
        self.account_url: str = self._service.url.split("?")[0].rstrip("/")

    @staticmethod
    def _client_kwargs(tier: TierConfig) -> dict[str, Any]:
        pool = max(10, tier.max_connections * 2)  # upload_blob runs a few workers per call
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool,
                              max_retries=Retry(total=False, redirect=False,
                                                raise_on_status=False))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        transport = RequestsTransport(session=session, session_owner=True,
                                      connection_timeout=tier.connect_timeout,
                                      read_timeout=tier.read_timeout)
        return {
            "transport": transport,
            "retry_total": max(0, tier.sdk_retries),
            # the SDK's default back-off starts at 15 s; the chain retries on top of this
            "initial_backoff": 1,
            "increment_base": 2,
            "random_jitter_range": 1,
            "connection_timeout": tier.connect_timeout,
            "read_timeout": tier.read_timeout,
            "max_single_put_size": max(1, tier.multipart_threshold),
            "max_block_size": max(1, tier.part_size),
        }

    def _make_service(self, tier: TierConfig) -> BlobServiceClient:
        auth = choose_auth(tier, os.environ)
        kwargs = self._client_kwargs(tier)
        try:
            if auth.connection_string is not None:
                return BlobServiceClient.from_connection_string(auth.connection_string,
                                                                **kwargs)
            assert auth.account_url is not None
            credential: Any = None  # "url_sas": the SAS is in the URL itself
            if auth.kind == "shared_key":
                credential = AzureNamedKeyCredential(auth.account_name, str(auth.key))
            elif auth.kind == "sas":
                self._sas = auth.sas
                credential = AzureSasCredential(str(auth.sas))
            elif auth.kind == "entra_id":
                credential = self._owned_credential = default_credential(self.url)
            return BlobServiceClient(auth.account_url, credential=credential, **kwargs)
        except ConfigError:
            raise
        except (ValueError, TypeError, AzureError) as e:
            raise ConfigError(f"{tier.url}: bad Azure storage settings: {e}") from e

    # --- plumbing -------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self._prefix + key

    def _rel(self, full: str) -> str:
        return full[len(self._prefix):] if full.startswith(self._prefix) else full

    def _where(self, key: str | None) -> str:
        return (f"az://{self.container}/{self._full(key)}" if key is not None
                else f"container {self.container}")

    def _blob(self, key: str) -> Any:
        return self._container.get_blob_client(self._full(key))

    async def _call(self, op: str, key: str | None, fn: Callable[..., T], *args: object,
                    **kwargs: object) -> T:
        try:
            return await run_blocking(self._limiter, fn, *args, **kwargs)
        except BackendError:
            raise
        except AzureError as e:
            raise self._map(e, op, key) from e

    def _map(self, e: AzureError, op: str, key: str | None) -> BackendError:
        """The one place Azure SDK errors become stormount errors."""
        rel = key or ""
        where = self._where(key)
        if isinstance(e, HttpResponseError) and (
                e.response is not None or getattr(e, "status_code", None)):
            code, status = _code(e), _status(e)
            reason = (e.reason or "") if hasattr(e, "reason") else ""
            msg = f"Azure {op} {where} failed: {code or status}" + (
                f" ({reason})" if reason and reason != code else "")
            if code == "ContainerNotFound":
                return ContainerMissing(
                    f"Azure {op} {where} failed: container {self.container} does not exist "
                    f"in {self.account_url}", backend=self.url, key=rel)
            if code == "SnapshotsPresent":
                return Permanent(msg + ": the blob has snapshots; delete them first",
                                 backend=self.url, key=rel)
            if code in _NOT_FOUND:
                return NotFound(msg, backend=self.url, key=rel)
            if code in _DENIED or isinstance(e, ClientAuthenticationError) or status in (
                    401, 403):
                return PermissionDenied(msg, backend=self.url, key=rel)
            if code in _CONFLICT or status in (409, 412):
                return Conflict(msg, backend=self.url, key=rel)
            if code in _THROTTLED or status in (429, 503):
                return Throttled(msg, backend=self.url, key=rel)
            if code in _TRANSIENT or status in (408, 500, 502, 504) or status >= 500:
                return Transient(msg, backend=self.url, key=rel)
            if status == 404:
                return NotFound(msg, backend=self.url, key=rel)
            return Permanent(msg, backend=self.url, key=rel)
        if isinstance(e, ClientAuthenticationError):
            # DefaultAzureCredential's message lists every source it tried, ~20 lines
            log.debug("%s: Azure authentication failed: %s", self.url, e)
            return PermissionDenied(f"Azure {op} {where}: authentication failed: "
                                    f"{_first_line(e)}", backend=self.url, key=rel)
        if isinstance(e, ServiceRequestError):
            return Transient(f"Azure {op} {where}: cannot reach {self.account_url}: "
                             f"{_first_line(e)}", backend=self.url, key=rel)
        if isinstance(e, ServiceResponseError):
            return Transient(f"Azure {op} {where}: no valid response from "
                             f"{self.account_url}: {_first_line(e)}", backend=self.url, key=rel)
        return Transient(f"Azure {op} {where}: {_first_line(e)}", backend=self.url, key=rel)

    def _info(self, key: str, props: Any, metadata: bool = True) -> ObjectInfo:
        settings = getattr(props, "content_settings", None)
        md5 = getattr(settings, "content_md5", None)  # set for blobs uploaded in one go
        return ObjectInfo(key=key, size=int(props.size or 0), mtime=_epoch(props.last_modified),
                          etag=strip_etag(props.etag),
                          metadata=lower_keys(props.metadata) if metadata else None,
                          content_md5=bytes(md5).hex() if md5 else None)

    # --- protocol -------------------------------------------------------------------

    async def check(self) -> None:
        # a one-blob listing rather than Get Container Properties: a container-scoped SAS
        # may list (which a mount needs) but never read container properties
        def _probe() -> None:
            pages = self._container.list_blobs(name_starts_with=self._prefix or None,
                                               results_per_page=1).by_page()
            next(pages, None)
        try:
            await self._call("check", None, _probe)
        except BackendError as e:
            cause = e.__cause__
            if isinstance(e, NotFound | ContainerMissing):
                raise ContainerMissing(
                    f"container {self.container} does not exist in {self.account_url}",
                    backend=self.url) from cause
            if isinstance(e, PermissionDenied):
                raise PermissionDenied(
                    f"access denied to container {self.container} in {self.account_url}: check "
                    f"credentials ({e})", backend=self.url) from cause
            if isinstance(cause, ServiceRequestError):
                raise Transient(f"cannot reach {self.account_url}: {_first_line(cause)}",
                                backend=self.url) from cause
            raise

    async def head(self, key: str) -> ObjectInfo:
        props = await self._call("head", key, self._blob(key).get_blob_properties)
        return self._info(key, props)

    async def get_range(self, key: str, offset: int, length: int,
                        version: str | None = None) -> bytes:
        if length <= 0:
            await trio.lowlevel.checkpoint()
            return b""
        if offset < 0:
            raise ValueError("negative offset")
        blob = self._blob(key)

        def _get() -> bytes:
            condition: dict[str, object] = {} if version is None else {
                "etag": f'"{version}"', "match_condition": MatchConditions.IfNotModified}
            try:
                data: bytes = blob.download_blob(offset=offset, length=length,
                                                 **condition).readall()
            except HttpResponseError as e:
                # a range at or past the end, or any range of a 0-byte blob
                if _status(e) == 416 or _code(e) == "InvalidRange":
                    return b""
                if version is not None and (_status(e) == 412
                                            or _code(e) == "ConditionNotMet"):
                    raise Changed(f"Azure get {self._where(key)}: no longer version "
                                  f"{version}", backend=self.url, key=key) from None
                raise
            return data
        return await self._call("get", key, _get)

    async def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        meta = checked_metadata(metadata, "Azure", self._where(key), self.url, key)
        body = bytes(data)
        resp = await self._call("put", key, self._blob(key).upload_blob, body, length=len(body),
                                overwrite=True, metadata=meta)
        return ObjectInfo(key=key, size=len(body), mtime=_epoch(resp.get("last_modified")),
                          etag=strip_etag(resp.get("etag")), metadata=meta)

    async def put_file(self, key: str, path: str, metadata: Mapping[str, str], *,
                       if_match: str | None = None, if_absent: bool = False,
                       progress: Progress | None = None,
                       resume: Resume | None = None) -> ObjectInfo:
        meta = checked_metadata(metadata, "Azure", self._where(key), self.url, key)
        blob = self._blob(key)
        cond: dict[str, Any] = {}
        if if_match is not None:
            cond = {"etag": f'"{if_match}"', "match_condition": MatchConditions.IfNotModified}
        elif if_absent:
            cond = {"match_condition": MatchConditions.IfMissing}

        reported = 0
        lock = threading.Lock()

        def hook(current: int, total: int | None) -> None:
            # the SDK's workers report the bytes of the blocks staged so far (not always
            # in order); once all are, it commits the block list, which a busy store may
            # take long over
            nonlocal reported
            if progress is None:
                return
            with lock:
                delta = max(0, current - reported)
                reported = max(reported, current)
            progress.add(delta, taken=True)  # reported once a block was answered
            if total and current >= total and total > self._tier.multipart_threshold:
                progress.finish()

        def _put() -> tuple[int, dict[str, Any]]:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                # above max_single_put_size the SDK stages blocks of max_block_size, reading
                # each from the file in its own worker, then commits the block list (the
                # condition applies to that commit)
                resp = blob.upload_blob(ExactFile(f, size, f"Azure put {self._where(key)}"),
                                        length=size, overwrite=True, metadata=meta,
                                        max_concurrency=4, progress_hook=hook, **cond)
                return size, resp
        try:
            size = os.stat(path).st_size  # a local stat: cheaper than a thread hop
            if resume is not None and size > self._tier.multipart_threshold:
                resp = await self._put_blocks(key, path, size, meta, cond, progress, resume)
            else:
                size, resp = await self._call("put", key, _put)
        except (Conflict, NotFound) as e:
            if not cond:
                raise
            raise Changed(f"Azure put {self._where(key)}: the object is not the version this "
                          f"upload was based on ({e})", backend=self.url, key=key) from None
        return ObjectInfo(key=key, size=size, mtime=_epoch(resp.get("last_modified")),
                          etag=strip_etag(resp.get("etag")), metadata=meta)

    async def _put_blocks(self, key: str, path: str, size: int, meta: Mapping[str, str],
                          cond: Mapping[str, Any], progress: Progress | None,
                          resume: Resume) -> dict[str, Any]:
        """Stage the file's blocks under ids of the upload's own prefix (recorded in
        `resume` as they land), then commit their list on the condition. A new attempt
        stages only the blocks the store does not list as uncommitted. Blocks of an
        attempt given up are never committed: the store drops them (after a week), or
        when the blob is next committed."""
        blob = self._blob(key)
        if resume.stale(self.url, key) is not None:
            resume.dropped()  # its blocks are simply not committed
        recorded = resume.reusable(self.url, key)
        listed: dict[int, tuple[str, int]] = {}
        if recorded is not None:
            listed = await self._call("list blocks", key, _uncommitted, blob, recorded.ident)
            if progress is not None:
                progress.answered()
        else:
            recorded = resume.started(self.url, key, secrets.token_hex(8),
                                      max(1, self._tier.part_size), time.time())
        part_size = recorded.part_size
        nparts = math.ceil(size / part_size)
        ident = recorded.ident
        reused = 0

        def _block(n: int) -> Part | None:
            """Block n (0-based) staged: its Part if it was sent now."""
            start = n * part_size
            want = min(part_size, size - start)
            data = read_part(path, start, want, f"Azure put {self._where(key)}", self.url, key)
            # (no copy of unchanged ranges: Azure's needs a URL the store can read)
            source = source_of(n + 1, start, want, data, recorded, listed)
            if isinstance(source, Stored):
                if progress is not None:
                    progress.reused(want)
                return None
            block_id = _block_id(ident, n + 1)
            blob.stage_block(block_id, data, length=want)
            if progress is not None:
                progress.add(want, taken=True)  # counted once the block was answered
            part = Part(n + 1, block_id, want, md5_hex(data))
            landed_from_thread(resume, part)  # committed to the journal as each lands
            return part

        todo = iter(range(nparts))
        failures: list[Exception] = []
        async with trio.open_nursery() as nursery:
            async def worker() -> None:
                nonlocal reused
                for n in todo:
                    try:
                        part = await self._call("put", key, _block, n)
                    except Exception as e:
                        failures.append(e)
                        nursery.cancel_scope.cancel()
                        return
                    if part is None:
                        reused += 1
            # as upload_blob's max_concurrency: memory held is about this many blocks
            for _ in range(min(4, self._tier.max_connections, nparts)):
                nursery.start_soon(worker)
        try:
            if failures:
                raise failures[0]
            if progress is not None:
                progress.finish()  # the store now assembles the blob
            blocks = [BlobBlock(block_id=_block_id(ident, n + 1)) for n in range(nparts)]
            resp: dict[str, Any] = await self._call(
                "put", key, blob.commit_block_list, blocks, metadata=dict(meta), **cond)
        except Transient:
            raise  # the blocks stay staged: the next attempt continues
        except BackendError:  # a conflict, a permanent error: never committed, they expire
            resume.dropped()
            raise
        resume.dropped()  # committed: the blocks are the blob's now
        resume.reused, resume.parts = reused, nparts
        if reused:
            log.info("%s: resumed the upload of %s: %d of %d blocks were already staged",
                     self.url, self._where(key), reused, nparts)
        return resp

    async def abandon(self, recorded: Recorded) -> None:
        # uncommitted blocks cannot be deleted without the blob: the store drops them
        await trio.lowlevel.checkpoint()

    async def delete(self, key: str) -> None:
        try:
            await self._call("delete", key, self._blob(key).delete_blob)
        except NotFound:
            return

    async def list(self, prefix: str, delimiter: str = "/", token: str | None = None,
                   limit: int = 1000) -> ListPage:
        full = self._full(prefix)
        per_page = max(1, min(limit, 5000))

        def _list() -> ListPage:
            pager: Any
            if delimiter:
                pager = self._container.walk_blobs(name_starts_with=full or None,
                                                   include=["metadata"], delimiter=delimiter,
                                                   results_per_page=per_page)
            else:
                pager = self._container.list_blobs(name_starts_with=full or None,
                                                   include=["metadata"],
                                                   results_per_page=per_page)
            pages: Any = pager.by_page(continuation_token=token or None)
            objects: list[ObjectInfo] = []
            prefixes: list[str] = []
            for item in next(pages, []):
                if isinstance(item, BlobPrefix):
                    prefixes.append(self._rel(item.name))
                    continue
                rel = self._rel(item.name)
                if rel:  # skip the marker of the tier's own prefix
                    objects.append(self._info(rel, item))
            return ListPage(objects, prefixes, pages.continuation_token or None)
        return await self._call("list", prefix, _list)

    async def copy(self, src: str, dst: str,
                   metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        if src == dst:
            if metadata is not None:
                new = checked_metadata(metadata, "Azure", self._where(src), self.url, src)
                await self._call("set metadata", src, self._blob(src).set_blob_metadata, new)
            return await self.head(src)
        source = self._blob(src)
        target = self._blob(dst)
        meta = (None if metadata is None
                else checked_metadata(metadata, "Azure", self._where(dst), self.url, dst))
        # same account: the copy is authorised by our own credential (a SAS is part of
        # source.url). Put Blob From URL would be synchronous, but Azurite lacks it.
        source_url = source.url
        if self._sas and "?" not in source_url:
            source_url += "?" + self._sas
        resp = await self._call("copy", src, target.start_copy_from_url, source_url,
                                metadata=meta)
        status = resp.get("copy_status")
        copy_id = resp.get("copy_id")
        delay = 0.05
        try:
            while status == "pending":
                await trio.sleep(delay)
                delay = min(delay * 2, COPY_POLL_MAX)
                props = await self._call("copy", dst, target.get_blob_properties)
                status = props.copy.status
        except BaseException:
            if status == "pending" and copy_id:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    try:
                        await self._call("abort copy", dst, target.abort_copy, copy_id)
                    except BackendError as e:
                        log.warning("%s: could not abort copy to %s: %s", self.url, dst, e)
            raise
        if status != "success":
            raise Transient(f"Azure copy {self._where(src)} to {self._where(dst)} ended "
                            f"with status {status}", backend=self.url, key=src)
        if meta == {}:
            # an empty metadata set in Copy Blob means "keep the source's"
            await self._call("set metadata", dst, target.set_blob_metadata, {})
        return await self.head(dst)

    async def unfinished(self, prefix: str) -> builtins.list[Unfinished]:
        """Blobs that have staged blocks and were never committed (a writer that died
        mid-upload). Azure drops such blocks after a week; this frees them sooner."""
        full = self._full(prefix)

        def _list() -> builtins.list[Unfinished]:
            committed = {b.name for b in self._container.list_blobs(
                name_starts_with=full or None)}
            out = []
            for b in self._container.list_blobs(name_starts_with=full or None,
                                                 include=["uncommittedblobs"]):
                if b.name not in committed:
                    when = b.last_modified or b.creation_time
                    out.append(Unfinished(key=self._rel(b.name), ident=b.name,
                                          started=when.timestamp() if when else time.time(),
                                          size=b.size or None))
            return out
        return await self._call("list uncommitted", prefix, _list)

    async def discard(self, item: Unfinished) -> None:
        """Uncommitted blocks go with their blob. Deleted only if not modified since it
        was listed, so a blob its writer committed meanwhile stays. Where the store does
        not delete a blob that has no committed content, an empty one is committed over
        it (only while none exists) and deleted by its etag."""
        blob = self._container.get_blob_client(item.ident)
        since = datetime.fromtimestamp(item.started, tz=UTC)

        def _discard() -> None:
            try:
                blob.delete_blob(if_unmodified_since=since)
                return
            except ResourceModifiedError:
                return  # committed meanwhile: a real object now
            except ResourceNotFoundError:
                pass
            try:
                resp = blob.commit_block_list([], match_condition=MatchConditions.IfMissing)
            except ResourceExistsError:
                return
            with contextlib.suppress(ResourceModifiedError, ResourceNotFoundError):
                blob.delete_blob(etag=str(resp["etag"]),
                                 match_condition=MatchConditions.IfNotModified)
        with contextlib.suppress(NotFound):
            await self._call("discard", item.key, _discard)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._service.close()
        if self._owned_credential is not None:
            self._owned_credential.close()


_SECRET_OPTIONS = ("account_key", "sas_token", "connection_string")


@dataclass(frozen=True)
class AzureAuth:
    """How a tier authenticates, as choose_auth decided it (no SDK object yet)."""

    # "connection_string", "shared_key", "sas", "url_sas" (a SAS inside account_url) or
    # "entra_id" (azure.identity.DefaultAzureCredential)
    kind: str
    source: str  # where it came from: a tier option or an environment variable
    account_url: str | None = None
    connection_string: str | None = None
    account_name: str = ""  # for a shared key
    key: str | None = None
    sas: str | None = None


def choose_auth(tier: TierConfig, env: Mapping[str, str]) -> AzureAuth:
    """The credential of an az:// tier, first match wins: the tier's connection_string;
    AZURE_STORAGE_CONNECTION_STRING unless the tier gives account_url; else an account
    URL (account_url, AZURE_STORAGE_ACCOUNT_URL, AZURE_STORAGE_ACCOUNT) with a shared key
    (account_key, else AZURE_STORAGE_KEY unless the tier gives sas_token), else a SAS
    token (sas_token, AZURE_STORAGE_SAS_TOKEN), else a SAS inside the URL, else Entra ID
    (DefaultAzureCredential: AZURE_CLIENT_ID/..., workload or managed identity, az login)."""
    if tier.connection_string:
        return AzureAuth("connection_string", "connection_string",
                         connection_string=tier.connection_string)
    if not tier.account_url and env.get("AZURE_STORAGE_CONNECTION_STRING"):
        return AzureAuth("connection_string", "AZURE_STORAGE_CONNECTION_STRING",
                         connection_string=env["AZURE_STORAGE_CONNECTION_STRING"])
    account_url = tier.account_url or env.get("AZURE_STORAGE_ACCOUNT_URL")
    if not account_url and env.get("AZURE_STORAGE_ACCOUNT"):
        account_url = f"https://{env['AZURE_STORAGE_ACCOUNT']}.blob.core.windows.net"
    if not account_url:
        raise ConfigError(
            f"{_redact_url(tier.url)}: no Azure credentials: set "
            "AZURE_STORAGE_CONNECTION_STRING, or give connection_string, or an account "
            "(account_url, AZURE_STORAGE_ACCOUNT_URL or AZURE_STORAGE_ACCOUNT) with "
            "account_key or sas_token (or AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN), or "
            "with Entra ID credentials (AZURE_CLIENT_ID..., a managed identity, az login)")
    if tier.account_key or (env.get("AZURE_STORAGE_KEY") and not tier.sas_token):
        name = _account_name(account_url)
        if not name:
            raise ConfigError(f"{_redact_url(tier.url)}: cannot tell the storage account "
                              f"name from {account_url}")
        if tier.account_key:
            return AzureAuth("shared_key", "account_key", account_url, account_name=name,
                             key=tier.account_key)
        return AzureAuth("shared_key", "AZURE_STORAGE_KEY", account_url, account_name=name,
                         key=env["AZURE_STORAGE_KEY"])
    if tier.sas_token:
        return AzureAuth("sas", "sas_token", account_url, sas=tier.sas_token.lstrip("?"))
    if env.get("AZURE_STORAGE_SAS_TOKEN"):
        return AzureAuth("sas", "AZURE_STORAGE_SAS_TOKEN", account_url,
                         sas=env["AZURE_STORAGE_SAS_TOKEN"].lstrip("?"))
    if "sig=" in account_url:
        return AzureAuth("url_sas", "account_url", account_url)
    if urllib.parse.urlsplit(account_url).scheme.lower() != "https":
        # the SDK refuses bearer tokens over http, and only when the first request fails
        raise ConfigError(f"{_redact_url(tier.url)}: {account_url} is not https, so Entra ID "
                          "credentials cannot be used: give account_key or sas_token (or "
                          "AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN)")
    return AzureAuth("entra_id", "DefaultAzureCredential", account_url)


def default_credential(where: str) -> Any:
    """azure-identity's DefaultAzureCredential, imported only by the mounts that use it."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise ConfigError(
            f"{where}: no account key, SAS token or connection string, and azure-identity "
            "(for Entra ID: service principal, managed identity) is not installed: pip "
            "install 'stormount[azure]', or give account_key or sas_token (or "
            "AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN)") from None
    return DefaultAzureCredential()


def _block_id(prefix: str, number: int) -> str:
    """Block ids of one blob must all be the same length (the SDK base64-encodes them)."""
    return f"{prefix}-{number:06d}"


def _uncommitted(blob: Any, prefix: str) -> dict[int, tuple[str, int]]:
    """Part number -> (block id, size) of the upload's blocks the store holds staged."""
    _, uncommitted = blob.get_block_list("uncommitted")
    out: dict[int, tuple[str, int]] = {}
    for block in uncommitted:
        ident = str(block.id)
        head, _, number = ident.rpartition("-")
        if head == prefix and number.isdigit():
            out[int(number)] = (ident, int(block.size or 0))
    return out


def _redact_url(url: str) -> str:
    """The tier URL with secret query options (account_key=, sas_token=, ...) blanked."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    safe = [(k, "REDACTED" if k in _SECRET_OPTIONS else v) for k, v in query]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(safe,
                                                                               safe=":/")))


_SIGNATURE = re.compile(r"(?i)(sig=)[^&\s'\"]+")


def _first_line(e: BaseException) -> str:
    """The first line of an SDK message, with any SAS signature blanked out (connection
    errors quote the request URL)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return _SIGNATURE.sub(r"\1REDACTED", line)
