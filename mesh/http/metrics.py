"""Prometheus metrics of the L7 engine: plain integers on the hot path, families at scrape time.

As in the node proxy and the DNS server, a prometheus_client ``Counter.labels(...).inc()``
(a dict lookup under a lock, then another lock) would cost more than the rest of a request's
bookkeeping; here a request bumps a dict entry and a fixed-bucket histogram, and
:class:`_Collector` turns them into metric families only when ``/metrics`` is scraped.
Everything is bumped from one thread (the engine's), so no lock is taken.

Contract for the gateway wiring (``m = HttpMetrics("mesh_gateway")``; serve ``m.registry``):

- ``m.request(route, backend, status, reason, duration, upstream_response)`` once per finished
  request. ``route`` and ``backend`` are the names the plan chose ("" when there was none, e.g.
  no-route); ``reason`` the ``x-mesh-reason`` of a response the gateway made itself ("" when
  the backend answered); durations in seconds, ``upstream_response`` None when no upstream
  answered.
- ``m.upstream_connect_error(backend, reason)`` for each failed connect to an endpoint
  (reason: refused, timeout, reset, tls, ...).
- ``m.opened(listener)`` / ``m.closed(listener)`` around each downstream connection.
- ``m.watch(name, help, read, kind)`` exports a number some other part keeps (the access log's
  ``dropped``, the TLS terminator's ``handshakes``, the config version), read at scrape time.

Series (``<prefix>`` as given):

=================================================  ===========  ============================
``<prefix>_requests_total``                        counter      route, backend, code, reason
``<prefix>_request_duration_seconds``              histogram    route, backend
``<prefix>_upstream_response_duration_seconds``    histogram    backend
``<prefix>_upstream_connect_errors_total``         counter      backend, reason
``<prefix>_connections_open``                      gauge        listener
``<prefix>_connections_total``                     counter      listener
=================================================  ===========  ============================
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mesh.histogram import Histogram

# From half a millisecond (a pooled keep-alive exchange on loopback) to a minute (the longest
# default proxy-read-timeout); 16 buckets keep a histogram's series count modest per route.
LATENCY_BUCKETS = (
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
    5.0,
    10.0,
    30.0,
    60.0,
)


RequestKey = tuple[str, str, int, str]  # route, backend, status, reason


class HttpMetrics:
    """The counters and the registry that exports them; see the module docstring."""

    __slots__ = (
        "connect_errors",
        "connections_open",
        "connections_total",
        "durations",
        "prefix",
        "registry",
        "requests",
        "upstream_durations",
        "watched",
    )

    def __init__(self, prefix: str = "mesh_gateway", registry: CollectorRegistry | None = None):
        self.prefix = prefix
        self.requests: dict[RequestKey, int] = {}
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.upstream_durations: dict[str, Histogram] = {}
        self.connect_errors: dict[tuple[str, str], int] = {}
        self.connections_open: dict[str, int] = {}
        self.connections_total: dict[str, int] = {}
        self.watched: list[tuple[str, str, Callable[[], float], str]] = []
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_Collector(self))

    def request(
        self,
        route: str,
        backend: str,
        status: int,
        reason: str,
        duration: float,
        upstream_response: float | None = None,
    ) -> None:
        key = (route, backend, status, reason)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        hist = self.durations.get((route, backend))
        if hist is None:
            hist = self.durations[route, backend] = Histogram(LATENCY_BUCKETS)
        # Histogram.observe inlined: a call less on every request
        hist.counts[bisect_left(LATENCY_BUCKETS, duration)] += 1
        hist.count += 1
        hist.sum += duration
        if upstream_response is not None:
            up = self.upstream_durations.get(backend)
            if up is None:
                up = self.upstream_durations[backend] = Histogram(LATENCY_BUCKETS)
            up.observe(upstream_response)

    def upstream_connect_error(self, backend: str, reason: str) -> None:
        key = (backend, reason)
        self.connect_errors[key] = self.connect_errors.get(key, 0) + 1

    def opened(self, listener: str) -> None:
        self.connections_open[listener] = self.connections_open.get(listener, 0) + 1
        self.connections_total[listener] = self.connections_total.get(listener, 0) + 1

    def closed(self, listener: str) -> None:
        self.connections_open[listener] = self.connections_open.get(listener, 0) - 1

    def watch(
        self,
        name: str,
        help: str,
        read: Callable[[], float],
        kind: Literal["counter", "gauge"] = "gauge",
    ) -> None:
        """Export ``read()`` as ``<prefix>_<name>`` at every scrape."""
        self.watched.append((name, help, read, kind))


class _Collector(Collector):
    def __init__(self, metrics: HttpMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m, p = self._m, self._m.prefix
        # list(...) snapshots: the engine thread may add a key while a scrape runs in another.
        requests = CounterMetricFamily(
            f"{p}_requests",
            "Requests answered, by route, backend, status code and the gateway's reason",
            labels=("route", "backend", "code", "reason"),
        )
        for (route, backend, status, reason), n in sorted(list(m.requests.items())):
            requests.add_metric((route, backend, str(status), reason), n)
        yield requests
        durations = HistogramMetricFamily(
            f"{p}_request_duration_seconds",
            "Time from the first byte of a request to the last byte of its response",
            labels=("route", "backend"),
        )
        for (route, backend), hist in sorted(list(m.durations.items())):
            durations.add_metric((route, backend), hist.cumulative(), hist.sum)
        yield durations
        upstream = HistogramMetricFamily(
            f"{p}_upstream_response_duration_seconds",
            "Time from sending a request upstream to the end of the upstream's response head",
            labels=("backend",),
        )
        for backend, hist in sorted(list(m.upstream_durations.items())):
            upstream.add_metric((backend,), hist.cumulative(), hist.sum)
        yield upstream
        errors = CounterMetricFamily(
            f"{p}_upstream_connect_errors",
            "Connections to an endpoint that could not be made, by reason",
            labels=("backend", "reason"),
        )
        for (backend, reason), n in sorted(list(m.connect_errors.items())):
            errors.add_metric((backend, reason), n)
        yield errors
        open_ = GaugeMetricFamily(
            f"{p}_connections_open", "Downstream connections open now", labels=("listener",)
        )
        total = CounterMetricFamily(
            f"{p}_connections", "Downstream connections accepted", labels=("listener",)
        )
        for listener, n in sorted(list(m.connections_total.items())):
            total.add_metric((listener,), n)
            open_.add_metric((listener,), m.connections_open.get(listener, 0))
        yield open_
        yield total
        for name, help, read, kind in m.watched:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(f"{p}_{name}", help, value=read())
