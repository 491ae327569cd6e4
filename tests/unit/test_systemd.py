"""The shipped unit file is one systemd accepts, and `make install-systemd` puts every
file where the unit, mount(8) and the docs expect it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "stormount@.service"
BIN = Path(sys.executable).parent


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    assert shutil.which("systemd-analyze"), "scripts/install-system-deps.sh installs systemd"
    # the unit names the installed command; here that is this checkout's
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/stormount mount " in text
    (tmp_path / UNIT.name).write_text(text.replace("/usr/local/bin/stormount",
                                                   str(BIN / "stormount")))
    result = subprocess.run(["systemd-analyze", "verify", f"{tmp_path / UNIT.name}"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("line", ["Type=notify", "NotifyAccess=main", "Restart=on-failure",
                                  "RuntimeDirectory=stormount/%i", "WatchdogSec=60",
                                  "ExecReload=/bin/kill -HUP $MAINPID"])
def test_unit_says(line):
    assert line in UNIT.read_text().splitlines()


def test_unit_keeps_the_host_mount_namespace():
    """Options that give the service a mount namespace of its own would hide its mount."""
    text = UNIT.read_text()
    for option in ("ProtectSystem=", "PrivateTmp=", "ProtectHome=", "PrivateDevices=",
                   "ReadOnlyPaths=", "DeviceAllow=", "PrivateMounts=", "ProtectKernelModules="):
        assert f"\n{option}" not in text, option


def test_install_systemd_into_a_staging_root(tmp_path):
    dest = tmp_path / "root"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install-systemd.sh")],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DESTDIR": str(dest),
                                 "STORMOUNT_VENV": str(BIN.parent)})
    assert result.returncode == 0, result.stderr
    unit = dest / "etc/systemd/system/stormount@.service"
    assert unit.read_text() == UNIT.read_text()
    for link in ("usr/local/bin/stormount", "sbin/mount.stormount",
                 "sbin/mount.fuse.stormount"):
        target = os.readlink(dest / link)
        assert Path(target).name in ("stormount", "mount.stormount"), (link, target)
        assert Path(target).is_absolute() and Path(target).exists(), (link, target)
    assert (dest / "usr/local/share/doc/stormount/OPERATIONS.md").exists()
    assert (dest / "etc/stormount/example.toml.sample").exists()
    assert (dest / "etc/stormount").stat().st_mode & 0o777 == 0o750
