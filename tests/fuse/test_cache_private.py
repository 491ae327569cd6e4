"""The cache directory is private to the mount's user whatever existed before (issue 19,
finding 4): it holds every key, size, ETag, owner and mode of the bucket, and the log."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.helpers.mounts import Mount


def test_premade_cache_dir_made_private(tmp_path: Path, file_store) -> None:
    cache = tmp_path / "mnt-cache"
    cache.mkdir(mode=0o755)
    os.chmod(cache, 0o755)  # as `mkdir -p` under umask 022 leaves it
    (cache / "stormount.log").write_text("an earlier run\n")
    os.chmod(cache / "stormount.log", 0o644)
    m = Mount(path=tmp_path / "mnt", url=file_store.url, cache_dir=cache,
              log_path=tmp_path / "daemon.log", env=file_store.env,
              args=("-o", "debounce=0", "-o", f"log_file={cache / 'stormount.log'}"))
    m.start()
    try:
        for i in range(3):
            (m.path / f"f{i}.txt").write_text("x" * 1000)
        assert (m.path / "f0.txt").read_text() == "x" * 1000
        m.settle()
        assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
        files = [Path(d) / f for d, _, names in os.walk(cache) for f in names]
        names = {p.name for p in files}
        assert {"meta.sqlite3", "journal.sqlite3", "index.sqlite3", "stormount.log"} <= names
        open_to_others = {str(p): oct(stat.S_IMODE(p.lstat().st_mode)) for p in files
                          if p.lstat().st_mode & 0o077}
        assert not open_to_others
    finally:
        m.stop()

