"""What crosses the wire in a multipart upload: the parts an SDK client sends (S3
UploadPart, Azure Put Block), counted, and failed on demand as a cut connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


class Wire:
    """Counts the parts (S3 UploadPart, Azure Put Block) sent and their bytes; fails
    the ones `failing` names with a transient error, as a dropped connection would."""

    def __init__(self) -> None:
        self.parts: list[int] = []
        self.bytes = 0
        self.failing: set[int] = set()


@contextmanager
def s3_wire(backend: Any) -> Iterator[Wire]:
    from botocore.exceptions import ClientError

    wire = Wire()

    def before(params: dict[str, Any], **kwargs: Any) -> None:
        number = int(params["PartNumber"])
        if number in wire.failing:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "cut"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "UploadPart")
        wire.parts.append(number)
        wire.bytes += int(params["ContentLength"])

    events = backend._client.meta.events
    events.register("before-parameter-build.s3.UploadPart", before, unique_id="wire")
    try:
        yield wire
    finally:
        events.unregister("before-parameter-build.s3.UploadPart", unique_id="wire")


@contextmanager
def az_wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    from azure.core.exceptions import ServiceResponseError
    from azure.storage.blob import BlobClient

    wire = Wire()
    real = BlobClient.stage_block

    def stage_block(self: Any, block_id: str, data: bytes, length: int | None = None,
                    **kwargs: Any) -> Any:
        number = int(block_id.rpartition("-")[2])
        if number in wire.failing:
            raise ServiceResponseError("connection cut")
        wire.parts.append(number)
        wire.bytes += len(data)
        return real(self, block_id, data, length=length, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(BlobClient, "stage_block", stage_block)
        yield wire


def wire_of(kind: str, backend: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    return s3_wire(backend) if kind == "s3" else az_wire(monkeypatch)
