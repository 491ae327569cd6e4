"""daemon.private_cache_dir refuses a cache directory of another user (issue 19, 4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stormount import daemon
from stormount.errors import StartupError


def test_cache_dir_of_another_user_refused(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(StartupError, match="belongs to uid"):
        daemon.private_cache_dir(str(cache))
