"""Real storage for tests: emulators started once per session, a fresh bucket, container
or directory per test, and raw-SDK helpers to check "the bytes in the bucket" without
going through stormount.

Fixtures: `moto_server`, `azurite` (session); `s3_store`, `az_store`, `file_store`,
`memory_store` and `store` (parametrized over file, s3, az) per test.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
START_DEADLINE = 30.0  # seconds an emulator may take to answer its first request
XATTR = "user.stormount."


# --- emulator processes ----------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Emulator:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        # the emulator runs in its own session: signal its whole process group (the
        # azurite-blob launcher may have children), then make sure it is gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def _answers_http(port: int) -> bool:
    """True once something on the port answers an HTTP request (any status)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def start_emulator(name: str, argv: list[str], port: int, log_dir: Path) -> Emulator:
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        # cwd: anything an emulator writes next to itself stays in the test's temp dir
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, cwd=log_dir,
                                stderr=subprocess.STDOUT, start_new_session=True)
    emulator = Emulator(name, proc, port, log)
    atexit.register(emulator.stop)  # in case the session dies before fixture teardown
    deadline = time.monotonic() + START_DEADLINE
    while not _answers_http(port):
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode} before it "
                               f"answered on port {port}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            emulator.stop()
            raise RuntimeError(f"{name} did not answer on port {port} within "
                               f"{START_DEADLINE:.0f} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)  # poll interval, not a wait for readiness
    return emulator


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make install`")
    return found


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    port = free_port()
    emulator = start_emulator(
        "moto_server", [_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], port,
        tmp_path_factory.mktemp("moto"))
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    emulator = start_emulator(
        "azurite", [_tool("azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                    "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
                    "--silent"], port, workdir)
    try:
        yield emulator
    finally:
        emulator.stop()


def azurite_connection_string(emulator: Emulator) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={emulator.endpoint}/{AZURITE_ACCOUNT};")


# --- stores ------------------------------------------------------------------------------


def unique_name(stem: str = "t") -> str:
    """A bucket/container name valid on S3 and Azure: lowercase, digits, hyphens."""
    return f"{stem}-{uuid.uuid4().hex[:16]}"


@dataclass
class Store:
    """One empty bucket/container/directory for one test.

    `url` is a tier URL a daemon can mount; `env` holds the extra environment a daemon
    subprocess needs to reach it. The helper methods use the raw SDK (or the file
    system), never stormount, and take keys relative to the store's root."""

    kind: str
    url: str
    env: dict[str, str] = field(default_factory=dict)

    def tier_url(self, prefix: str = "", **options: object) -> str:
        """A tier URL for a sub-prefix of this store, with extra query options."""
        raise NotImplementedError

    def _query(self, base: Mapping[str, str], options: Mapping[str, object]) -> str:
        values = {**base, **{k: str(v) for k, v in options.items()}}
        return "?" + urllib.parse.urlencode(values, safe=":/") if values else ""

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def keys(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def metadata(self, key: str) -> dict[str, str]:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError


class S3Store(Store):
    def __init__(self, emulator: Emulator, bucket: str) -> None:
        import boto3
        from botocore.config import Config

        super().__init__("s3", f"s3://{bucket}?endpoint={emulator.endpoint}",
                         {"AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                          "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
                          "AWS_DEFAULT_REGION": os.environ["AWS_DEFAULT_REGION"]})
        self.bucket = bucket
        self.endpoint = emulator.endpoint
        self.client: Any = boto3.client(
            "s3", endpoint_url=emulator.endpoint, region_name="us-east-1",
            config=Config(retries={"max_attempts": 2, "mode": "standard"},
                          connect_timeout=2, read_timeout=30,
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          s3={"addressing_style": "path"}))
        self.client.create_bucket(Bucket=bucket)

    def tier_url(self, prefix: str = "", **options: object) -> str:
        path = "/" + prefix.strip("/") if prefix.strip("/") else ""
        return f"s3://{self.bucket}{path}" + self._query({"endpoint": self.endpoint}, options)

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                               Metadata=dict(metadata or {}))

    def get(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=prefix)
        for page in pages:
            out.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(out)

    def metadata(self, key: str) -> dict[str, str]:
        return dict(self.client.head_object(Bucket=self.bucket, Key=key)["Metadata"])

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return False
            raise
        return True

    def multipart_uploads(self) -> list[str]:
        """Keys of multipart uploads still in progress (not completed or aborted)."""
        resp = self.client.list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in resp.get("Uploads", [])]


class AzStore(Store):
    def __init__(self, emulator: Emulator, container: str) -> None:
        from azure.storage.blob import BlobServiceClient

        conn = azurite_connection_string(emulator)
        super().__init__("az", f"az://{container}", {"AZURE_STORAGE_CONNECTION_STRING": conn})
        self.container = container
        self.connection_string = conn
        self.account_url = f"{emulator.endpoint}/{AZURITE_ACCOUNT}"
        self.service = BlobServiceClient.from_connection_string(
            conn, retry_total=0, connection_timeout=2, read_timeout=30)
        self.client = self.service.get_container_client(container)
        self.client.create_container()

    def tier_url(self, prefix: str = "", **options: object) -> str:
        path = "/" + prefix.strip("/") if prefix.strip("/") else ""
        return f"az://{self.container}{path}" + self._query({}, options)

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        self.client.upload_blob(key, data, overwrite=True, metadata=dict(metadata or {}))

    def get(self, key: str) -> bytes:
        return bytes(self.client.download_blob(key).readall())

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(name_starts_with=prefix or None))

    def metadata(self, key: str) -> dict[str, str]:
        return dict(self.client.get_blob_client(key).get_blob_properties().metadata)

    def exists(self, key: str) -> bool:
        return bool(self.client.get_blob_client(key).exists())


class FileStore(Store):
    """A directory laid out as stormount's file:// backend lays it out: key `a/b` is the
    file DIR/a/b, a marker `a/` a directory flagged with user.stormount.dir, metadata in
    user.stormount.* extended attributes."""

    def __init__(self, root: Path) -> None:
        super().__init__("file", f"file://{root}")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def tier_url(self, prefix: str = "", **options: object) -> str:
        path = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        path.mkdir(parents=True, exist_ok=True)
        return f"file://{path}" + self._query({}, options)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.rstrip("/").split("/"))

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        path = self._path(key)
        if key.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            os.setxattr(path, XATTR + "dir", b"1")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for k, v in (metadata or {}).items():
            os.setxattr(path, XATTR + k.lower(), v.encode())

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def _is_marker(self, path: Path) -> bool:
        try:
            return os.getxattr(path, XATTR + "dir") == b"1"
        except OSError:
            return False

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".":
                rel_dir = ""
                dirnames[:] = [d for d in dirnames if d != ".stormount"]
            base = rel_dir + "/" if rel_dir else ""
            if rel_dir and self._is_marker(Path(dirpath)):
                out.append(base)
            out.extend(base + name for name in filenames)
        return sorted(k for k in out if k.startswith(prefix))

    def metadata(self, key: str) -> dict[str, str]:
        path = self._path(key)
        return {name[len(XATTR):]: os.getxattr(path, name).decode()
                for name in os.listxattr(path)
                if name.startswith(XATTR) and name != XATTR + "dir"}

    def exists(self, key: str) -> bool:
        path = self._path(key)
        if key.endswith("/"):
            return path.is_dir() and self._is_marker(path)
        return path.is_file()


class MemoryStore(Store):
    """memory://NAME, shared by name with MemoryBackend in this process only."""

    def __init__(self, name: str) -> None:
        super().__init__("memory", f"memory://{name}")
        self.name = name

    @property
    def _objects(self) -> dict[str, Any]:
        from stormount.backends import memory

        return memory._STORES.setdefault(self.name, {})

    def tier_url(self, prefix: str = "", **options: object) -> str:
        path = "/" + prefix.strip("/") if prefix.strip("/") else ""
        return f"memory://{self.name}{path}" + self._query({}, options)

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        from stormount.backends.base import ObjectInfo
        from stormount.backends.memory import etag_of

        info = ObjectInfo(key=key, size=len(data), mtime=time.time(),
                          etag=etag_of(self.name, data), metadata=dict(metadata or {}))
        self._objects[key] = (bytes(data), info)

    def get(self, key: str) -> bytes:
        return bytes(self._objects[key][0])

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._objects if k.startswith(prefix))

    def metadata(self, key: str) -> dict[str, str]:
        return dict(self._objects[key][1].metadata or {})

    def exists(self, key: str) -> bool:
        return key in self._objects


@pytest.fixture
def s3_store(moto_server: Emulator) -> S3Store:
    return S3Store(moto_server, unique_name("s3"))


@pytest.fixture
def az_store(azurite: Emulator) -> Iterator[AzStore]:
    st = AzStore(azurite, unique_name("az"))
    try:
        yield st
    finally:
        st.service.close()


@pytest.fixture
def file_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def memory_store() -> Iterator[MemoryStore]:
    st = MemoryStore(unique_name("mem"))
    try:
        yield st
    finally:
        from stormount.backends import memory

        memory._STORES.pop(st.name, None)


@pytest.fixture(params=["file", "s3", "az"], ids=lambda kind: str(kind))
def store(request: pytest.FixtureRequest) -> Store:
    """The same test against a directory, S3 (moto server) and Azure (Azurite)."""
    result: Store = request.getfixturevalue(f"{request.param}_store")
    return result
