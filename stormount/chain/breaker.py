"""A circuit breaker on trio's clock: after `failures` consecutive failures a tier is
skipped for `open_for` seconds, then one trial request decides whether it is back."""

from __future__ import annotations

from enum import StrEnum

import trio


class State(StrEnum):
    CLOSED = "closed"  # requests flow
    OPEN = "open"  # requests skip the tier
    HALF_OPEN = "half-open"  # one trial request is in flight


class Breaker:
    def __init__(self, failures: int = 5, open_for: float = 60.0) -> None:
        self.failures = failures
        self.open_for = open_for
        self.state = State.CLOSED
        self.consecutive = 0  # failures since the last success
        self.opened_at = 0.0
        self.opened = 0  # times it opened, for the stats
        self._trial = False

    @property
    def retry_at(self) -> float | None:
        """When an open breaker lets a trial through."""
        return self.opened_at + self.open_for if self.state == State.OPEN else None

    def admits(self) -> bool:
        """Whether `allow` would let a request through (without taking the trial)."""
        if self.state == State.CLOSED:
            return True
        if self.state == State.OPEN:
            return trio.current_time() >= self.opened_at + self.open_for
        return not self._trial

    def allow(self) -> bool:
        """May a request go to the tier now? In half-open, only the first one may."""
        if self.state == State.OPEN and trio.current_time() >= self.opened_at + self.open_for:
            self.state = State.HALF_OPEN
            self._trial = False
        if self.state == State.HALF_OPEN:
            if self._trial:
                return False
            self._trial = True
            return True
        return self.state == State.CLOSED

    def success(self) -> None:
        self.state = State.CLOSED
        self.consecutive = 0
        self._trial = False

    def failure(self) -> None:
        self.consecutive += 1
        if self.state == State.HALF_OPEN or (
                self.state == State.CLOSED and self.consecutive >= self.failures):
            self.trip()

    def trip(self) -> None:
        """Open now (a failed probe, a tier that stopped answering)."""
        if self.state != State.OPEN:
            self.opened += 1
        self.state = State.OPEN
        self.opened_at = trio.current_time()
        self._trial = False

    def release(self) -> None:
        """A request ended without a verdict (throttled, cancelled): in half-open, the
        next request may be the trial."""
        self._trial = False
