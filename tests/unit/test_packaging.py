"""Packaging (issue 21): one version, from pyproject.toml; a mount imports only the SDK
of its stores; a store whose SDK is missing names the extra to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import stormount
from stormount.backends import open_backend
from stormount.cli import cli
from stormount.config import parse_tier_url
from stormount.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SDKS = ("boto3", "botocore", "s3transfer", "azure")


def test_version_is_pyproject_s():
    with open(ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert stormount.__version__ == version
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and version in result.output


def test_a_local_mount_imports_no_cloud_sdk(tmp_path):
    code = f"""
import sys
import stormount.cli, stormount.daemon, stormount.manage.store
from stormount.backends import open_backend
from stormount.config import parse_tier_url
open_backend(parse_tier_url("file://{tmp_path}"))
open_backend(parse_tier_url("memory://packaging"))
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({SDKS!r})))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("url", "missing", "extra"), [
    ("s3://bucket", "boto3", "s3"),
    ("az://container", "azure.storage.blob", "azure"),
])
def test_a_missing_sdk_names_its_extra(monkeypatch, url, missing, extra):
    module = "stormount.backends." + ("s3" if extra == "s3" else "azure")
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    with pytest.raises(ConfigError) as err:
        open_backend(parse_tier_url(url))
    assert str(err.value) == (f"{url.split(':')[0]}:// needs {missing}, which is not "
                              f"installed: pip install 'stormount[{extra}]'")
