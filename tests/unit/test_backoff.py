"""The one backoff delay (stormount.chain.retry.backoff): first delay, doubling, cap and
jitter range, as the uploads, repairs and the start-up wait use it."""

from __future__ import annotations

import random

import pytest

from stormount.chain.retry import backoff


def test_without_jitter_it_doubles_from_the_first_delay_up_to_the_cap() -> None:
    assert [backoff(n, 1.0, 30.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff(1, 0.5, 10.0) == 0.5
    assert backoff(3, 0.5, 10.0) == 2.0


def test_the_cap_holds_however_many_attempts() -> None:
    assert backoff(10_000, 1.0, 60.0) == 60.0  # no overflow after days of failures
    assert backoff(10_000, 1.0, 60.0, jitter=0.2, rng=random.Random(1)) <= 72.0


@pytest.mark.parametrize("attempt,base", [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0),
                                          (5, 10.0), (9, 10.0)])
def test_jitter_adds_up_to_its_fraction_of_the_delay(attempt: int, base: float) -> None:
    rng = random.Random(7)
    delays = [backoff(attempt, 1.0, 10.0, jitter=0.2, rng=rng) for _ in range(500)]
    assert all(base <= d <= base * 1.2 for d in delays)
    assert max(delays) - min(delays) > 0.1 * base  # it does spread them


def test_jitter_draws_once_from_the_given_rng() -> None:
    a, b = random.Random(3), random.Random(3)
    assert backoff(2, 1.0, 10.0, jitter=0.2, rng=a) == 2.0 * (1 + 0.2 * b.random())
    assert a.random() == b.random()  # in step: one draw each
