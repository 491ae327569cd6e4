"""A backend wrapper that fails, hangs or delays on a plan: the one place tests inject
faults, at the backend seam."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from stormount.backends.base import Backend

OPERATIONS = ("check", "head", "get_range", "put_file", "put_bytes", "delete", "list", "copy")


@dataclass
class Trickle:
    """A plan for `put_file`: a slow link. The upload reports `step` bytes every `every`
    seconds for `steps` steps, then stops moving for good if `stall` (the link died),
    else the store takes `assemble` seconds to put the object together (the bytes are
    all sent: no progress meanwhile) and then it lands. `taken`: the store is seen to
    take the bytes (else they only fill socket buffers, as toward a dead endpoint)."""

    steps: int
    every: float
    step: int = 1 << 20
    stall: bool = False
    assemble: float = 0.0
    taken: bool = True

    async def run(self, progress: Any) -> None:
        for _ in range(self.steps):
            await trio.sleep(self.every)
            if progress is not None:
                progress.add(self.step, taken=self.taken)
        if self.stall:
            await trio.sleep_forever()
        if self.assemble:
            if progress is not None:
                progress.finish()
            await trio.sleep(self.assemble)


class FaultyBackend:
    """Delegates to `inner`; `plan[op]` is an exception to raise, the string "hang", a
    float delay in seconds, a callable(key) returning one of those (or None), or for
    `put_file` a Trickle."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.url = inner.url
        self.plan: dict[str, Any] = {}

    def fail(self, op: str, what: Any) -> None:
        self.plan[op] = what

    def heal(self) -> None:
        self.plan.clear()

    async def _fault(self, op: str, key: str) -> None:
        what = self.plan.get(op)
        if isinstance(what, Callable) and not isinstance(what, type):  # type: ignore[arg-type]
            what = what(key)
        if what is None:
            return
        if what == "hang":
            await trio.sleep_forever()
        if isinstance(what, int | float):
            await trio.sleep(what)
            return
        raise what

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in OPERATIONS:
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            plan = self.plan.get(name)
            if isinstance(plan, Trickle):
                await plan.run(kwargs.get("progress"))
            else:
                await self._fault(name, str(args[0]) if args else "")
            return await target(*args, **kwargs)
        return call
