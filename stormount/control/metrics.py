"""Prometheus text exposition of the mount's figures (prometheus-client): for the
`metrics` command, and for the optional HTTP endpoint (`metrics_listen`).

The same counters as `stats`, but as totals since the start: `stats --reset` does not
touch them, so Prometheus's counters stay monotonic. The families are built from a
Snapshot (figures.py), which the caller reads on the event loop's thread: this module
knows nothing of the commands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from stormount.control.figures import Snapshot
from stormount.errors import StartupError
from stormount.stats import Histogram, Ops

log = logging.getLogger(__name__)
STATES = ("ok", "degraded", "down")


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    buckets = [(repr(bound), float(n)) for bound, n in hist.cumulative()]
    buckets.append(("+Inf", float(hist.count)))
    family.add_metric(labels, buckets, sum_value=hist.sum)


def _ops(prefix: str, what: str, label_names: list[str], rows: list[tuple[list[str], Ops]],
         retries: bool = False) -> Iterator[Metric]:
    count = CounterMetricFamily(f"{prefix}_requests", f"{what} handled",
                                labels=[*label_names, "op"])
    errors = CounterMetricFamily(f"{prefix}_errors", f"{what} that failed, by reason",
                                 labels=[*label_names, "op", "reason"])
    latency = HistogramMetricFamily(f"{prefix}_request_duration_seconds",
                                    f"time {what} took", labels=[*label_names, "op"])
    again = CounterMetricFamily(f"{prefix}_retries", f"{what} retried after a transient "
                                "failure", labels=[*label_names, "op"])
    for labels, ops in rows:
        for name, op in sorted(ops.items()):
            count.add_metric([*labels, name], op.count)
            _histogram(latency, [*labels, name], op.latency)
            for reason, n in sorted(op.errors.items()):
                errors.add_metric([*labels, name, reason], n)
            again.add_metric([*labels, name], op.retries)
    yield from (count, errors, latency)
    if retries:
        yield again


def families(snapshot: Snapshot) -> list[Metric]:
    """Every metric family of one snapshot."""
    c = snapshot.counters
    health = snapshot.health
    out: list[Metric] = []
    state = GaugeMetricFamily("stormount_health", "1 for the mount's current state "
                              "(ok, degraded, down)", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1.0 if health["state"] == name else 0.0)
    out.append(state)
    out.extend(_ops("stormount_fuse", "FUSE requests", [], [([], c.fuse)]))
    out.append(CounterMetricFamily("stormount_read_bytes", "bytes read through the mount",
                                   value=c.bytes_read))
    out.append(CounterMetricFamily("stormount_page_cache_bytes", "bytes fetched from the "
                                   "store given to the kernel's page cache, which then "
                                   "serves their reads itself", value=c.bytes_to_pages))
    out.append(CounterMetricFamily("stormount_written_bytes",
                                   "bytes written through the mount", value=c.bytes_written))
    tiers = health["tiers"]
    out.extend(_ops("stormount_backend", "backend requests", ["tier"],
                    [([str(t["index"])], ops) for t, ops in zip(tiers, c.tiers, strict=True)],
                    retries=True))
    info = GaugeMetricFamily("stormount_tier_info", "the tiers of the chain",
                             labels=["tier", "url", "role"])
    up = GaugeMetricFamily("stormount_tier_up", "1 while the tier is in service and its "
                           "breaker closed", labels=["tier"])
    drained = GaugeMetricFamily("stormount_tier_drained", "1 while the operator has the "
                                "tier drained", labels=["tier"])
    breaker = GaugeMetricFamily("stormount_tier_breaker", "1 for the breaker's current "
                                "state", labels=["tier", "state"])
    opened = CounterMetricFamily("stormount_tier_breaker_opened", "times the breaker opened",
                                 labels=["tier"])
    inflight = GaugeMetricFamily("stormount_tier_requests_in_flight", "requests in flight",
                                 labels=["tier"])
    for t in tiers:
        label = str(t["index"])
        info.add_metric([label, t["url"], t["role"]], 1.0)
        up.add_metric([label], 1.0 if t["healthy"] else 0.0)
        drained.add_metric([label], 1.0 if t["drained"] else 0.0)
        for name in ("closed", "open", "half-open"):
            breaker.add_metric([label, name], 1.0 if t["breaker"] == name else 0.0)
        opened.add_metric([label], t["opened"])
        inflight.add_metric([label], t["in_flight"])
    out += [info, up, drained, breaker, opened, inflight]
    for cache, counts in (("metadata", c.metadata), ("block", c.blocks)):
        for what in ("hits", "misses"):
            out.append(CounterMetricFamily(f"stormount_{cache}_cache_{what}",
                                           f"{cache} cache {what}", value=counts[what]))
    out.append(CounterMetricFamily("stormount_block_cache_evictions",
                                   "blocks evicted from the block cache",
                                   value=c.blocks["evictions"]))
    if snapshot.block_bytes is not None:
        out.append(GaugeMetricFamily("stormount_block_cache_bytes", "bytes in the block "
                                     "cache", value=snapshot.block_bytes))
        out.append(GaugeMetricFamily("stormount_block_cache_max_bytes", "cap of the block "
                                     "cache", value=snapshot.block_max_bytes))
    out.append(GaugeMetricFamily("stormount_inodes", "inodes the mount holds in memory",
                                 value=snapshot.inodes))
    queue = health["writeback"]
    depth = GaugeMetricFamily("stormount_writeback_queue", "files waiting for their upload",
                              labels=["state"])
    depth.add_metric(["pending"], queue["pending"])
    depth.add_metric(["uploading"], queue["uploading"])
    depth.add_metric(["open"], queue["open"])  # waiting for their writers' last close
    depth.add_metric(["failing"], queue["failing"])
    out.append(depth)
    for name, help_ in (("uploaded", "uploads done"), ("failures", "upload attempts that "
                        "failed"), ("conflicts", "uploads kept beside a version changed "
                                    "in the store")):
        out.append(CounterMetricFamily(f"stormount_writeback_{name}", help_,
                                       value=c.uploads[name]))
    out.append(CounterMetricFamily("stormount_writeback_uploaded_bytes", "bytes uploaded",
                                   value=c.uploads["bytes"]))
    repair = GaugeMetricFamily("stormount_repair_pending", "repair tasks the tiers owe",
                               labels=["kind"])
    for kind, n in sorted(health["repair"].items()):
        repair.add_metric([kind], n)
    out.append(repair)
    out.append(CounterMetricFamily("stormount_repairs", "spilled objects copied up",
                                   value=c.repaired))
    return out


class _Collector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot],
                 token: trio.lowlevel.TrioToken | None) -> None:
        self.snapshot = snapshot
        self.token = token

    def collect(self) -> Iterator[Metric]:
        if self.token is None:
            return iter(families(self.snapshot()))
        # a scrape on the HTTP server's thread: the figures are read on the loop's
        return iter(families(trio.from_thread.run_sync(self.snapshot, trio_token=self.token)))


def _registry(snapshot: Callable[[], Snapshot],
              token: trio.lowlevel.TrioToken | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot, token))
    return registry


def exposition(snapshot: Snapshot) -> str:
    return generate_latest(_registry(lambda: snapshot, None)).decode()


class MetricsServer:
    """`/metrics` over HTTP on `host:port`, served by prometheus-client's thread."""

    def __init__(self, snapshot: Callable[[], Snapshot], listen: str) -> None:
        """`snapshot` reads the figures; it is called on the event loop's thread."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            self._server: Any
            self._server, self._thread = start_http_server(
                int(port), addr=host,
                registry=_registry(snapshot, trio.lowlevel.current_trio_token()))
        except OSError as e:
            raise StartupError(f"cannot serve metrics on {listen}: {e.strerror}") from None
        self.address = f"{host}:{self._server.server_port}"
        log.info("serving Prometheus metrics at http://%s/metrics", self.address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
