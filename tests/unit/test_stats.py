"""Latency histograms: quantiles within their bucket's width, Prometheus buckets that
count exactly, and the subtraction behind `stats --reset`."""

from __future__ import annotations

import random

import pytest

from stormount.stats import EXPORTED, Histogram, Op, Ops


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


@pytest.mark.parametrize("seed", range(5))
def test_quantiles_are_within_ten_percent(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(-6, 1.5) for _ in range(5000)]  # ~2.5 ms, wide spread
    hist = Histogram()
    for v in values:
        hist.observe(v)
    for q in (0.5, 0.95, 0.99):
        assert hist.quantile(q) == pytest.approx(exact(values, q), rel=0.1)
    assert hist.count == 5000 and hist.sum == pytest.approx(sum(values))


def test_cumulative_buckets_count_exactly():
    values = [1e-7, 3e-5, 0.001, 0.0015, 0.5, 2.0, 3.0, 100.0, 10_000.0]
    hist = Histogram()
    for v in values:
        hist.observe(v)
    for bound, n in hist.cumulative():
        assert n == sum(v <= bound for v in values), bound
    assert [b for b, _ in hist.cumulative()] == EXPORTED
    assert Histogram().quantile(0.5) is None
    hist.observe(0.0)  # and a zero or negative time counts in the lowest bucket
    hist.observe(-1.0)
    assert hist.cumulative()[0][1] == 3


def test_minus_is_what_happened_since_the_baseline():
    ops = Ops()
    ops["read"].done(0.001)
    ops["read"].done(0.002, "EIO")
    base = ops.copy()
    ops["read"].done(0.004)
    ops["write"].done(0.008, "ENOSPC")
    ops["read"].retries += 2
    since = ops.minus(base)
    assert since["read"].count == 1 and since["read"].errors == {}
    assert since["read"].retries == 2
    assert since["read"].latency.quantile(0.5) == pytest.approx(0.004, rel=0.1)
    assert since["write"].summary()["errors_by_reason"] == {"ENOSPC": 1}
    assert base["read"].count == 2  # the baseline is a copy, untouched
    assert Op().summary()["p50_ms"] is None
