"""The one backoff policy: `retrying`, tenacity's retries within a request (the chain's,
transient failures only, on trio's clock), and `backoff`, the delay of the persistent
queues (uploads, repairs) and of the start-up wait for a tier."""

from __future__ import annotations

import random

import tenacity
import trio

from stormount.config import ChainConfig
from stormount.errors import Transient


class AllDown(Transient):
    """No tier can take the request now (every breaker is open): fail fast."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Transient) and not isinstance(exc, AllDown)


def retrying(cfg: ChainConfig) -> tenacity.AsyncRetrying:
    """`async for attempt in retrying(cfg): with attempt: ...` retries Transient errors
    `cfg.retries` times in all (1, 2, 4, 8 s ... capped, plus up to 20% jitter), then
    re-raises the last one. AllDown is not retried: the breakers already know."""
    return tenacity.AsyncRetrying(
        sleep=trio.sleep,  # trio's clock, so tests can jump it
        stop=tenacity.stop_after_attempt(cfg.retries),
        wait=tenacity.wait_exponential(multiplier=cfg.retry_delay, max=cfg.retry_max_delay)
        + tenacity.wait_random(0, 0.2 * cfg.retry_delay),
        retry=tenacity.retry_if_exception(_retryable),
        reraise=True,
    )


def backoff(attempt: int, first: float, cap: float, *, jitter: float = 0.0,
            rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1-based): first, 2*first, 4*first ... capped
    at `cap`, then up to `jitter` (a fraction: 0.2 is 20%) more, so that many failures do
    not retry in step. One draw of `rng` (default: the module's) when there is jitter."""
    # the exponent is bounded: a queue that keeps failing counts attempts without end,
    # and 2.0 ** 1024 overflows
    base = min(first * 2.0 ** min(attempt - 1, 64), cap)
    if not jitter:
        return base
    return base * (1 + jitter * (rng or random).random())
