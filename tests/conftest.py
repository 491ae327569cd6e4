"""Emulators as session fixtures (moto server for S3, Azurite for Azure Blob) and the
per-test store fixtures of tests/stores.py.

The environment is fixed here, at import, so that every SDK client in this process and
every daemon subprocess a test starts talks to the emulators with dummy credentials and
nothing from the developer's own ~/.aws or Azure settings leaks in.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# --- environment, before any SDK is imported ------------------------------------------
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CA_BUNDLE", "AWS_SESSION_TOKEN",
              "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
              "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_USE_FIPS_ENDPOINT",
              "AWS_S3_ADDRESSING_STYLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
              "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT",
              "AZURE_STORAGE_ACCOUNT_URL", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN",
              "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_name, None)
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # no ~/.aws files, no instance-metadata probing when credentials are missing
    "AWS_CONFIG_FILE": "/nonexistent/stormount-tests/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/stormount-tests/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    # mount records of test daemons go to a private directory, not /run/stormount
    "STORMOUNT_RUNTIME_DIR": tempfile.mkdtemp(prefix="stormount-test-runtime-"),
})

from tests.stores import (  # noqa: E402
    Store,
    az_store,
    azurite,
    file_store,
    memory_store,
    moto_server,
    s3_store,
    store,
)

__all__ = ["Store", "az_store", "azurite", "file_store", "memory_store", "moto_server",
           "s3_store", "store"]


def pytest_sessionfinish(session, exitstatus):
    """No test may leave a mount behind: unmount this session's leftovers and fail."""
    from stormount.registry import mounted_fuse
    from tests.helpers.mounts import LIVE, unmount_quietly

    left = sorted(str(p) for p in LIVE if mounted_fuse(str(p)) is not None)
    for mountpoint in left:
        unmount_quietly(Path(mountpoint))
    if left:
        print(f"\nERROR: tests left stormount mounts behind: {left}")
        session.exitstatus = 1
