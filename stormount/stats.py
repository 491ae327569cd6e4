"""Counters and latency histograms the layers keep for the control socket's `stats`,
`health` and `metrics`.

Each component owns its figures (the FUSE adapter its operations, a tier its requests,
the caches their hits); the control layer reads them. Nothing here is ever reset: a
`stats --reset` is a baseline the reader subtracts, so Prometheus counters stay
monotonic.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

PER_OCTAVE = 4  # buckets per doubling: a quantile is within one bucket, 2**(1/4) (19%)
LOWEST = -20 * PER_OCTAVE  # 2**-20 s, about 1 us: everything faster lands here
HIGHEST = 13 * PER_OCTAVE  # 2**13 s, over 2 h: everything slower lands here
EXPORTED = [2.0 ** k for k in range(-17, 10)]  # Prometheus `le` bounds: 7.6 us .. 512 s
FLOOR = 2.0 ** ((LOWEST + 1) / PER_OCTAVE)  # the top of the lowest bucket
_log2, _ceil = math.log2, math.ceil


class Histogram:
    """Latencies in seconds, in logarithmic buckets: constant memory, cheap to observe,
    and quantiles within a bucket's width, 19% (bucket k holds (2**(k/4), 2**((k+1)/4)], upper bound
    included, as Prometheus's `le` is)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # on every FUSE request: kept to a few operations
        if seconds > FLOOR:
            k = _ceil(_log2(seconds) * PER_OCTAVE) - 1
            if k > HIGHEST:
                k = HIGHEST
            self.sum += seconds
        else:
            k = LOWEST
        buckets = self.buckets
        buckets[k] = buckets.get(k, 0) + 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 < q <= 1), interpolated inside its bucket; None if empty."""
        if self.count <= 0:
            return None
        rank = q * self.count
        seen = 0
        for k in sorted(self.buckets):
            n = self.buckets[k]
            if n <= 0:
                continue
            if seen + n >= rank:
                frac = (rank - seen) / n
                return 2.0 ** ((k + frac) / PER_OCTAVE)
            seen += n
        return 2.0 ** ((max(self.buckets) + 1) / PER_OCTAVE)

    def cumulative(self, bounds: Iterable[float] = EXPORTED) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), as a Prometheus histogram has them;
        the bounds must be powers of two, so no bucket straddles one."""
        items = sorted(self.buckets.items())
        out, i, total = [], 0, 0
        for bound in bounds:
            limit = round(math.log2(bound) * PER_OCTAVE)  # buckets below k end at or below
            while i < len(items) and items[i][0] < limit:
                total += items[i][1]
                i += 1
            out.append((bound, total))
        return out

    def minus(self, other: Histogram) -> Histogram:
        out = Histogram()
        out.buckets = {k: n - other.buckets.get(k, 0) for k, n in self.buckets.items()}
        out.count = self.count - other.count
        out.sum = self.sum - other.sum
        return out

    def copy(self) -> Histogram:
        return self.minus(Histogram())

    def summary(self) -> dict[str, float | None]:
        """p50/p95/p99 in milliseconds, as the `stats` command shows them."""
        return {name: None if (v := self.quantile(q)) is None else round(v * 1000, 3)
                for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99))}


@dataclass
class Op:
    """One kind of operation: how many, which failed (by reason), how long they took."""

    count: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    latency: Histogram = field(default_factory=Histogram)

    def done(self, seconds: float, error: str | None = None) -> None:
        self.count += 1
        self.latency.observe(seconds)
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1

    def minus(self, other: Op) -> Op:
        return Op(count=self.count - other.count,
                  errors={k: n - other.errors.get(k, 0) for k, n in self.errors.items()
                          if n - other.errors.get(k, 0)},
                  retries=self.retries - other.retries,
                  latency=self.latency.minus(other.latency))

    def copy(self) -> Op:
        return self.minus(Op())

    def summary(self) -> dict[str, object]:
        return {"count": self.count, "errors": sum(self.errors.values()),
                "errors_by_reason": dict(sorted(self.errors.items())),
                "retries": self.retries, **self.latency.summary()}


class Ops(dict[str, Op]):
    """Operations by name, made on first use."""

    def __missing__(self, name: str) -> Op:
        op = self[name] = Op()
        return op

    def minus(self, other: Ops) -> Ops:
        out = Ops()
        for name, op in self.items():
            out[name] = op.minus(other[name]) if name in other else op.copy()
        return out

    def copy(self) -> Ops:
        return self.minus(Ops())


def human_size(n: float) -> str:
    """1536 -> "1.5 KiB", for log lines."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class Rate:
    """Bytes per second over the last `window` seconds. Fed from SDK worker threads as
    bytes go out (a lock keeps the counts whole), kept in one-second buckets so memory
    stays bounded however small the chunks."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.total = 0
        self._samples: deque[list[float]] = deque()  # [second, bytes in it]
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        now = time.monotonic()
        second = float(int(now))
        with self._lock:
            self.total += nbytes
            if self._samples and self._samples[-1][0] == second:
                self._samples[-1][1] += nbytes
            else:
                self._samples.append([second, float(nbytes)])
                self._prune(now)

    def per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            span = min(self.window, max(now - self._started, 1.0))
            return sum(n for _, n in self._samples) / span

    def _prune(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()
