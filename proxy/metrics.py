"""The node proxy's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProxyMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Counter(
            "mesh_proxy_connections_total",
            "Flows accepted (TCP connections, UDP sessions)",
            ["protocol"],
            registry=r,
        )
        self.active = Gauge(
            "mesh_proxy_active_connections",
            "Flows open now (TCP connections, UDP sessions)",
            ["protocol"],
            registry=r,
        )
        self.bytes = Counter(
            "mesh_proxy_bytes_total",
            "Payload bytes relayed",
            ["direction"],  # to_endpoint, to_client
            registry=r,
        )
        self.picks = Counter(
            "mesh_proxy_endpoint_picks_total",
            "Endpoints chosen for new flows",
            ["namespace", "service", "endpoint"],
            registry=r,
        )
        self.rejects = Counter(
            "mesh_proxy_rejects_total",
            "Flows refused: no usable endpoint, or every connect attempt failed",
            ["protocol"],
            registry=r,
        )
        self.connect_errors = Counter(
            "mesh_proxy_endpoint_connect_errors_total",
            "Connects to an endpoint that failed (the next endpoint is tried)",
            registry=r,
        )
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
        for proto in ("TCP", "UDP"):
            self.connections.labels(proto)
            self.active.labels(proto)
            self.rejects.labels(proto)
            self.listeners.labels(proto)
        for direction in ("to_endpoint", "to_client"):
            self.bytes.labels(direction)
