"""The one retry policy of the chain: exponential backoff with jitter and a cap, for
transient failures only, on trio's clock."""

from __future__ import annotations

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
