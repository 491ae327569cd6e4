"""Fixtures that mount real FUSE filesystems in separate daemon processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounts import Mount, unmount_quietly


@pytest.fixture
def make_mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """make_mount(url, env=None, args=()) -> a started Mount, stopped at teardown."""
    mounts: list[Mount] = []

    def _make(url: str, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
              name: str = "mnt") -> Mount:
        m = Mount(path=tmp_path / name, url=url, cache_dir=tmp_path / f"{name}-cache",
                  log_path=tmp_path / f"{name}-daemon.log", env=env or {}, args=args)
        mounts.append(m)
        return m.start()

    yield _make
    for m in mounts:
        m.stop()
        print(f"--- daemon log of {m.path} ---\n{m.log()}")


class SettledStore:
    """A store seen through a mount's uploads: every read of it first waits until the
    mount has uploaded what it queued (write-back), so tests see the final state."""

    def __init__(self, store: Any, mount: Mount) -> None:
        self._store = store
        self._mount = mount

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in ("get", "keys", "metadata", "exists"):
            return attr

        def settled(*args: Any, **kwargs: Any) -> Any:
            self._mount.settle()
            return attr(*args, **kwargs)
        return settled


@pytest.fixture
def mount(store, make_mount) -> Mount:
    """The parametrized store mounted at a fresh mountpoint; `mount.store` reads the
    store once the mount's uploads are done."""
    m = make_mount(store.url, env=store.env, args=("-o", "debounce=0"))
    m.store = SettledStore(store, m)  # type: ignore[attr-defined]
    return m


@pytest.fixture
def mnt(tmp_path: Path):
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    unmount_quietly(path)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path
