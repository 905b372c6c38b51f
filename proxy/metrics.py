"""The node proxy's Prometheus metrics, on a registry of its own.

Per-flow figures (flows, bytes, picks, rejects) change on every connection and every read, so
they are plain integers in :class:`FlowCounters`, bumped without locks by the single trio
thread, and turned into metric families only when the registry is scraped. A
prometheus_client ``Counter.inc`` takes a lock and costs a microsecond or two; on a path that
handles tens of thousands of requests a second that is a visible share of the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PROTOCOLS = ("TCP", "UDP")
DIRECTIONS = ("to_endpoint", "to_client")
PickKey = tuple[str, str, str, int]  # namespace, service, endpoint address, endpoint port


class FlowCounters:
    """Plain counters of the data path; only :class:`_FlowCollector` reads them."""

    __slots__ = ("active", "bytes", "connect_errors", "flows", "picks", "rejects")

    def __init__(self) -> None:
        self.flows = dict.fromkeys(PROTOCOLS, 0)  # accepted TCP connections, UDP sessions
        self.active = dict.fromkeys(PROTOCOLS, 0)
        self.rejects = dict.fromkeys(PROTOCOLS, 0)
        self.bytes = [0, 0]  # indexed like DIRECTIONS
        self.connect_errors = 0
        self.picks: dict[PickKey, int] = {}

    def picked(self, namespace: str, service: str, endpoint: tuple[str, int]) -> None:
        key = (namespace, service, endpoint[0], endpoint[1])
        self.picks[key] = self.picks.get(key, 0) + 1


class _FlowCollector(Collector):
    def __init__(self, counters: FlowCounters) -> None:
        self._c = counters

    def collect(self) -> Iterator[Metric]:
        c = self._c
        flows = CounterMetricFamily(
            "mesh_proxy_connections_total",
            "Flows accepted (TCP connections, UDP sessions)",
            labels=["protocol"],
        )
        active = GaugeMetricFamily(
            "mesh_proxy_active_connections",
            "Flows open now (TCP connections, UDP sessions)",
            labels=["protocol"],
        )
        rejects = CounterMetricFamily(
            "mesh_proxy_rejects_total",
            "Flows refused: no usable endpoint, or every connect attempt failed",
            labels=["protocol"],
        )
        for proto in PROTOCOLS:
            flows.add_metric([proto], c.flows[proto])
            active.add_metric([proto], c.active[proto])
            rejects.add_metric([proto], c.rejects[proto])
        sent = CounterMetricFamily(
            "mesh_proxy_bytes_total", "Payload bytes relayed", labels=["direction"]
        )
        for direction, n in zip(DIRECTIONS, c.bytes, strict=True):
            sent.add_metric([direction], n)
        picks = CounterMetricFamily(
            "mesh_proxy_endpoint_picks_total",
            "Endpoints chosen for new flows",
            labels=["namespace", "service", "endpoint"],
        )
        for (ns, name, ip, port), n in list(c.picks.items()):
            picks.add_metric([ns, name, f"{ip}:{port}"], n)
        errors = CounterMetricFamily(
            "mesh_proxy_endpoint_connect_errors_total",
            "Connects to an endpoint that failed (the next endpoint is tried)",
            value=c.connect_errors,
        )
        yield from (flows, active, sent, picks, rejects, errors)


class ProxyMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.flows = FlowCounters()
        r.register(_FlowCollector(self.flows))
        self.sync_duration = Histogram(
            "mesh_proxy_sync_duration_seconds",
            "Time to apply a config (table build and listener reconcile)",
            registry=r,
        )
        self.sync_errors = Counter(
            "mesh_proxy_sync_errors_total",
            "Config applies that failed in part (a listener that could not be bound)",
            registry=r,
        )
        self.config_version = Gauge(
            "mesh_proxy_config_version", "Version of the config in use", registry=r
        )
        self.listeners = Gauge(
            "mesh_proxy_listeners", "Virtual address listeners bound", ["protocol"], registry=r
        )
        for proto in PROTOCOLS:
            self.listeners.labels(proto)
