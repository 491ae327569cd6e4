"""Chains of memory tiers for kernel-free tests, composed as the daemon composes them:
each tier a memory store behind a fault-injecting wrapper, the repair queue journaled
in a directory that a "restarted" chain can reuse."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import trio

from stormount.backends import open_backend
from stormount.backends.memory import _STORES
from stormount.chain import Chain, Tier
from stormount.chain.repair import RepairJournal
from stormount.config import ChainConfig, parse_tier_url
from tests.helpers.faults import FaultyBackend


class Tiers:
    """`n` memory stores; `make()` composes a chain over them (again after a restart)."""

    def __init__(self, root: Path, n: int = 2, mirrors: tuple[int, ...] = (),
                 **options: Any) -> None:
        self.root = root
        self.names = [f"tier{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
        self.mirrors = mirrors
        self.options = options
        self.faulty = [FaultyBackend(open_backend(parse_tier_url(f"memory://{name}")))
                       for name in self.names]
        self.made: list[Chain] = []

    def make(self, cfg: ChainConfig | None = None) -> Chain:
        tiers = []
        for i, backend in enumerate(self.faulty):
            opts = dict(self.options)
            if i in self.mirrors:
                opts["mirror"] = True
            tiers.append(Tier(i, backend, parse_tier_url(f"memory://{self.names[i]}", opts)))
        chain = Chain(tiers, RepairJournal(str(self.root / "repair.sqlite3")),
                      cfg or ChainConfig(), str(self.root / "spool"), host="testhost")
        self.made.append(chain)
        return chain

    def objects(self, i: int) -> dict[str, bytes]:
        """What tier `i` holds (its probe objects left out)."""
        return {k: data for k, (data, _) in _STORES.get(self.names[i], {}).items()
                if not k.startswith(".stormount/")}

    def put(self, i: int, key: str, data: bytes) -> None:
        """Write straight into tier `i`, as another client would."""
        from stormount.backends.base import ObjectInfo
        from stormount.backends.memory import etag_of

        _STORES.setdefault(self.names[i], {})[key] = (data, ObjectInfo(
            key=key, size=len(data), mtime=0.0, etag=etag_of(self.names[i], data),
            metadata={}))

    def close(self) -> None:
        for chain in self.made:
            chain.pending.journal.close()
        for name in self.names:
            _STORES.pop(name, None)


async def settled(chain: Chain, timeout: float = 600.0) -> None:
    """Until the repair queue is empty (on the test's clock)."""
    with trio.fail_after(timeout):
        await chain.settle()
