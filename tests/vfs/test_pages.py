"""Blocks given to the kernel's page cache (vfs/pages.py): only what the kernel's pages
may hold, never past the end, and never landing after a change that settled them."""

from __future__ import annotations

import threading

import trio

from stormount.vfs.attrs import Attrs
from stormount.vfs.nodes import Node
from stormount.vfs.pages import KernelPages


def open_file(size: int = 100, version: str = "v1") -> Node:
    node = Node(ino=7, name="f", parent=None, attrs=Attrs(mode=0o100644, uid=0, gid=0,
                                                          size=size, mtime_ns=0, ctime_ns=0))
    node.etag = node.page_cache_etag = version
    node.opens = 1
    return node


class Kernel:
    """The kernel's side: what was stored where; `gate` holds a store in the kernel."""

    def __init__(self) -> None:
        self.stored: list[tuple[int, int, bytes]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def store(self, ino: int, offset: int, data: bytes) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.stored.append((ino, offset, data))


async def settled(pages: KernelPages) -> None:
    while pages.queued:
        await trio.sleep(0.001)


async def test_only_the_version_the_pages_hold_and_never_past_the_end(nursery):
    kernel = Kernel()
    pages = KernelPages(kernel.store)
    pages.background = nursery
    node = open_file(size=100)
    pages.offer(node, "v1", 64, b"x" * 64, 64, 100)  # the last block: cut at the end
    pages.offer(node, "v0", 0, b"y" * 64, 64, 100)  # another version: never
    await settled(pages)
    assert kernel.stored == [(7, 64, b"x" * 36)]
    for change in ("writer", "staging", "closed", "unlinked"):
        other = open_file()
        if change == "writer":
            other.writers = 1
        elif change == "staging":
            other.staging = object()  # type: ignore[assignment]
        elif change == "closed":
            other.opens = 0
        else:
            other.unlinked = True
        pages.offer(other, "v1", 0, b"z", 1, 100)
    await settled(pages)
    assert kernel.stored == [(7, 64, b"x" * 36)]
    assert pages.stored_bytes == 36


async def test_a_store_under_way_lands_before_settle_returns_and_later_ones_never(nursery):
    kernel = Kernel()
    kernel.gate = threading.Event()
    pages = KernelPages(kernel.store)
    pages.background = nursery
    node = open_file()
    pages.offer(node, "v1", 0, b"a" * 10, 10, 100)  # in the kernel, held by the gate
    await trio.to_thread.run_sync(kernel.entered.wait, 10)
    pages.offer(node, "v1", 10, b"b" * 10, 10, 100)  # queued behind it
    done = trio.Event()

    async def settle() -> None:
        await pages.settle(node)
        done.set()

    nursery.start_soon(settle)
    await trio.sleep(0.05)
    assert not done.is_set()  # waits for the store in the kernel
    kernel.gate.set()
    await done.wait()
    assert kernel.stored == [(7, 0, b"a" * 10)]  # landed before settle returned
    await settled(pages)
    assert kernel.stored == [(7, 0, b"a" * 10)]  # the queued one never lands


async def test_the_kernel_without_stored_pages_turns_it_off(nursery):
    def refuse(ino: int, offset: int, data: bytes) -> None:
        raise OSError(38, "Function not implemented")  # ENOSYS

    pages = KernelPages(refuse)
    pages.background = nursery
    node = open_file()
    pages.offer(node, "v1", 0, b"a", 1, 100)
    await settled(pages)
    assert not pages.enabled and pages.stored_bytes == 0


async def test_a_range_is_given_again_only_once_the_kernel_may_have_dropped_it(
        nursery, autojump_clock):
    kernel = Kernel()
    pages = KernelPages(kernel.store)
    pages.background = nursery
    node = open_file()
    cached = b"c" * 50

    def from_cache() -> bytes:
        return cached

    pages.offer(node, "v1", 0, from_cache, 50, 100)  # read from the block cache
    pages.offer(node, "v1", 0, from_cache, 50, 100)  # the next read of it, at once: no
    await settled(pages)
    assert kernel.stored == [(7, 0, cached)]
    await trio.sleep(2)  # a read through the daemon now: the kernel dropped the pages
    pages.offer(node, "v1", 0, from_cache, 50, 100)
    pages.offer(node, "v1", 50, lambda: None, 50, 100)  # evicted from the cache meanwhile
    await settled(pages)
    assert kernel.stored == [(7, 0, cached), (7, 0, cached)]
