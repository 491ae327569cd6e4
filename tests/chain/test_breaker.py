"""The circuit breaker's states on trio's clock."""

from __future__ import annotations

import trio

from stormount.chain.breaker import Breaker, State


async def test_opens_after_consecutive_failures_and_lets_one_trial_through_later(
        autojump_clock):
    breaker = Breaker(failures=5, open_for=60)
    for _ in range(4):
        breaker.failure()
    assert breaker.state == State.CLOSED and breaker.allow()
    breaker.success()  # a success resets the count
    for _ in range(4):
        breaker.failure()
    assert breaker.state == State.CLOSED
    breaker.failure()
    assert breaker.state == State.OPEN and not breaker.allow()
    await trio.sleep(59.9)
    assert not breaker.allow()
    await trio.sleep(0.2)
    assert breaker.allow()  # the trial
    assert breaker.state == State.HALF_OPEN
    assert not breaker.allow()  # only one
    breaker.success()
    assert breaker.state == State.CLOSED and breaker.allow()


async def test_a_failed_trial_opens_it_for_another_period(autojump_clock):
    breaker = Breaker(failures=5, open_for=60)
    breaker.trip()
    await trio.sleep(60)
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == State.OPEN and not breaker.allow()
    await trio.sleep(59)
    assert not breaker.allow()
    await trio.sleep(1)
    assert breaker.allow()


async def test_a_trial_without_verdict_frees_the_trial(autojump_clock):
    breaker = Breaker(failures=1, open_for=10)
    breaker.failure()
    await trio.sleep(10)
    assert breaker.allow() and not breaker.allow()
    breaker.release()  # throttled or cancelled: says nothing about the tier
    assert breaker.allow()
