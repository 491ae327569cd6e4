"""Running real stormount daemons in their own processes, and always cleaning up."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stormount.registry import mounted_fuse
from stormount.writeback import read_pending

# mountpoints this test process mounted and has not unmounted yet
LIVE: set[Path] = set()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def stormount_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stormount", *args]


def unmount_quietly(mountpoint: Path) -> None:
    if mounted_fuse(str(mountpoint)) is not None:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
    if mounted_fuse(str(mountpoint)) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


@dataclass
class Mount:
    """A stormount daemon serving `path`; `stop()` unmounts and reaps it."""

    path: Path
    url: str
    cache_dir: Path
    log_path: Path
    env: dict[str, str]
    args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Mount:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a dead FUSE mount there: the daemon is to clear it
            if e.errno != errno.ENOTCONN:
                raise
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        cmd = stormount_cmd("mount", self.url, str(self.path), "--cache-dir",
                            str(self.cache_dir), "--foreground", "--log-level", "debug",
                            *self.args)
        self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log,
                                     stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        LIVE.add(self.path)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            return mounted_fuse(str(self.path)) == "fuse.stormount"
        wait_for(ready, what=f"mount at {self.path}")
        return self

    def pending(self) -> list[dict[str, object]]:
        """The daemon's upload queue, as its journal holds it."""
        return read_pending(str(self.cache_dir / "journal.sqlite3"))

    def settle(self, timeout: float = 60.0) -> None:
        """Until every file handed to the daemon is in the store."""
        wait_for(lambda: not self.pending(), timeout=timeout,
                 what=f"uploads of {self.path} to finish")

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`stormount ctl -m MOUNTPOINT ARGS...` as an operator runs it."""
        return subprocess.run(stormount_cmd("ctl", "-m", str(self.path), *args),
                              capture_output=True, text=True, timeout=timeout)

    def ask(self, *args: str) -> dict:
        """The daemon's JSON answer to `ctl --json ARGS...`."""
        result = self.ctl("--json", *args)
        assert result.stdout, result.stderr
        return json.loads(result.stdout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """Unmount (the daemon uploads what is pending and exits); kill if it does not."""
        unmount_quietly(self.path)
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        unmount_quietly(self.path)
        LIVE.discard(self.path)
        return code
