"""Mistakes about the store itself: a missing bucket or container, wrong credentials."""

from __future__ import annotations

import pytest

from tests.helpers.cli import one_error_line, run
from tests.stores import azurite_connection_string, unique_name

pytestmark = pytest.mark.timeout(120)


def test_missing_bucket(moto_server, mnt, tmp_path):
    bucket = unique_name("absent")
    line = one_error_line(run("mount", f"s3://{bucket}?endpoint={moto_server.endpoint}",
                              str(mnt), "--cache-dir", str(tmp_path / "c")))
    assert bucket in line and "does not exist" in line


def test_missing_container(azurite, mnt, tmp_path):
    container = unique_name("absent")
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(azurite)}
    line = one_error_line(run("mount", f"az://{container}", str(mnt), "--cache-dir",
                              str(tmp_path / "c"), env=env))
    assert container in line and "does not exist" in line


def test_wrong_azure_key(az_store, mnt, tmp_path):
    wrong = az_store.env["AZURE_STORAGE_CONNECTION_STRING"].replace(
        "AccountKey=", "AccountKey=AAAA")
    line = one_error_line(run("mount", az_store.url, str(mnt), "--cache-dir",
                              str(tmp_path / "c"),
                              env={"AZURE_STORAGE_CONNECTION_STRING": wrong}))
    assert "denied" in line.lower() or "authent" in line.lower()


def test_unreachable_endpoint(mnt, tmp_path):
    from tests.stores import free_port

    url = (f"s3://bucket?endpoint=http://127.0.0.1:{free_port()}&connect_timeout=1"
           "&sdk_retries=0")
    line = one_error_line(run("mount", url, str(mnt), "--cache-dir", str(tmp_path / "c")))
    assert "cannot reach" in line or "connect" in line.lower()


def test_missing_azure_credentials(mnt, tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    line = one_error_line(run("mount", "az://container", str(mnt), "--cache-dir",
                              str(tmp_path / "c")))
    assert "AZURE_STORAGE_CONNECTION_STRING" in line


def test_wrong_s3_credentials(mnt, tmp_path, monkeypatch):
    """A moto server that checks credentials (it accepts any by default)."""
    from tests.stores import _tool, free_port, start_emulator

    port = free_port()
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
    server = start_emulator("moto_auth", [_tool("moto_server"), "-H", "127.0.0.1", "-p",
                                          str(port)], port, tmp_path)
    monkeypatch.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
    try:
        line = one_error_line(run("mount", f"s3://bucket?endpoint={server.endpoint}",
                                  str(mnt), "--cache-dir", str(tmp_path / "c"),
                                  env={"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0",
                                       "AWS_SECRET_ACCESS_KEY": "wrong"}))
    finally:
        server.stop()
    assert "denied" in line.lower() or "credentials" in line.lower(), line
