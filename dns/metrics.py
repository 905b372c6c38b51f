"""DNS server metrics as plain counters, exported by one custom collector.

The UDP fast path answers a query in a few microseconds, so it must not pay for a
prometheus_client metric with labels on every packet: it bumps plain ints and dict entries,
and observes latency once per batch (the batch's mean, weighted by its size). ``collect``
turns the counters into metric families when scraped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mesh.histogram import Histogram

LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class DnsMetrics(Collector):
    PATHS = ("cache", "cluster", "forward")

    def __init__(self) -> None:
        self.queries: defaultdict[tuple[str, str], int] = defaultdict(int)  # (qtype, rcode)
        self.latency = {path: Histogram(LATENCY_BUCKETS) for path in self.PATHS}
        # wire: cluster answers; answer: forwarded answers by client query; forward: the
        # question cache of upstream answers; stale: expired answers served (RFC 8767)
        self.cache_hits = {"wire": 0, "answer": 0, "forward": 0, "stale": 0}
        self.cache_misses = {"wire": 0, "answer": 0, "forward": 0, "stale": 0}
        self.forward_shared = 0  # questions that waited for an identical one in flight
        self.forwards_in_flight = 0
        self.health_checks: defaultdict[str, int] = defaultdict(int)  # by result
        self.forward_errors: defaultdict[str, int] = defaultdict(int)  # by reason
        self.dropped: defaultdict[str, int] = defaultdict(int)  # packets not answered, by reason
        self.autopath: defaultdict[str, int] = defaultdict(int)  # search paths walked, by result
        self.config_version = 0
        self.config_applies = 0

    def collect(self) -> Iterable[Metric]:
        q = CounterMetricFamily(
            "mesh_dns_queries", "DNS queries answered", labels=("qtype", "rcode")
        )
        for (qtype, rcode), n in sorted(self.queries.items()):
            q.add_metric((qtype, rcode), n)
        yield q
        h = HistogramMetricFamily(
            "mesh_dns_request_duration_seconds",
            "Time from receiving a query to sending its reply",
            labels=("path",),
        )
        for path, hist in self.latency.items():
            h.add_metric((path,), hist.cumulative(), hist.sum)
        yield h
        hits = CounterMetricFamily("mesh_dns_cache_hits", "Cache hits", labels=("cache",))
        misses = CounterMetricFamily("mesh_dns_cache_misses", "Cache misses", labels=("cache",))
        for name in self.cache_hits:
            hits.add_metric((name,), self.cache_hits[name])
            misses.add_metric((name,), self.cache_misses[name])
        yield hits
        yield misses
        errors = CounterMetricFamily(
            "mesh_dns_forward_errors", "Failed upstream exchanges", labels=("reason",)
        )
        for reason, n in sorted(self.forward_errors.items()):
            errors.add_metric((reason,), n)
        yield errors
        yield CounterMetricFamily(
            "mesh_dns_forward_shared",
            "Questions answered by an identical upstream exchange already in flight",
            value=self.forward_shared,
        )
        yield GaugeMetricFamily(
            "mesh_dns_forwards_in_flight",
            "Queries waiting for upstreams",
            value=self.forwards_in_flight,
        )
        checks = CounterMetricFamily(
            "mesh_dns_health_checks", "Health checks of upstreams marked down", labels=("result",)
        )
        for result, n in sorted(self.health_checks.items()):
            checks.add_metric((result,), n)
        yield checks
        dropped = CounterMetricFamily(
            "mesh_dns_dropped", "Packets received and not answered", labels=("reason",)
        )
        for reason, n in sorted(self.dropped.items()):
            dropped.add_metric((reason,), n)
        yield dropped
        autopath = CounterMetricFamily(
            "mesh_dns_autopath",
            "Search paths walked for a pod (found: answered with a CNAME; missed: NXDOMAIN)",
            labels=("result",),
        )
        for result, n in sorted(self.autopath.items()):
            autopath.add_metric((result,), n)
        yield autopath
        yield GaugeMetricFamily(
            "mesh_dns_config_version", "Version of the live config", value=self.config_version
        )
        yield CounterMetricFamily(
            "mesh_dns_config_applies", "Configs applied", value=self.config_applies
        )
