"""The L7 metrics: bucket boundaries, and the exposition text a scrape returns."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh.histogram import Histogram
from mesh.http.metrics import HttpMetrics


@pytest.mark.parametrize(
    ("value", "bucket"),
    [(0.0, 0), (0.1, 0), (0.1000001, 1), (0.5, 1), (0.75, 2), (1.0, 2), (1.5, 3), (1e9, 3)],
)
def test_a_value_on_a_bound_counts_in_that_bucket(value: float, bucket: int) -> None:
    hist = Histogram((0.1, 0.5, 1.0))
    hist.observe(value)
    assert hist.counts == [int(i == bucket) for i in range(4)]


def test_cumulative() -> None:
    hist = Histogram((0.1, 0.5))
    for value in (0.05, 0.2, 0.3, 7.0):
        hist.observe(value)
    assert hist.cumulative() == [("0.1", 1), ("0.5", 3), ("+Inf", 4)]
    assert hist.sum == pytest.approx(7.55)


def scrape(m: HttpMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_exposition_text() -> None:
    m = HttpMetrics("mesh_gateway")
    m.request("shop/web/0", "shop/web:80", 200, "", 0.0007, upstream_response=0.0004)
    m.request("shop/web/0", "shop/web:80", 200, "", 0.003, upstream_response=0.002)
    m.request("shop/web/0", "shop/web:80", 502, "upstream-reset", 0.2)
    m.request("", "", 404, "no-route", 0.0001)
    m.upstream_connect_error("shop/web:80", "refused")
    m.upstream_connect_error("shop/web:80", "refused")
    m.opened("http")
    m.opened("http")
    m.opened("https")
    m.closed("http")
    dropped = [3]
    m.watch("access_log_dropped", "Access log lines dropped", lambda: dropped[0], "counter")
    m.watch("config_version", "Version of the config in use", lambda: 7)
    text = scrape(m)
    lines = text.splitlines()
    expected_requests = [
        "# HELP mesh_gateway_requests_total Requests answered, by route, backend, status code and the gateway's reason",
        "# TYPE mesh_gateway_requests_total counter",
        'mesh_gateway_requests_total{backend="",code="404",reason="no-route",route=""} 1.0',
        'mesh_gateway_requests_total{backend="shop/web:80",code="200",reason="",route="shop/web/0"} 2.0',
        'mesh_gateway_requests_total{backend="shop/web:80",code="502",reason="upstream-reset",route="shop/web/0"} 1.0',
    ]
    start = lines.index(expected_requests[0])
    assert lines[start : start + 5] == expected_requests
    web = 'backend="shop/web:80"'
    route = 'route="shop/web/0"'
    for line in (
        f'mesh_gateway_request_duration_seconds_bucket{{{web},le="0.0005",{route}}} 0.0',
        f'mesh_gateway_request_duration_seconds_bucket{{{web},le="0.001",{route}}} 1.0',
        f'mesh_gateway_request_duration_seconds_bucket{{{web},le="0.005",{route}}} 2.0',
        f'mesh_gateway_request_duration_seconds_bucket{{{web},le="0.25",{route}}} 3.0',
        f'mesh_gateway_request_duration_seconds_bucket{{{web},le="+Inf",{route}}} 3.0',
        f"mesh_gateway_request_duration_seconds_count{{{web},{route}}} 3.0",
        'mesh_gateway_request_duration_seconds_bucket{backend="",le="0.0005",route=""} 1.0',
        'mesh_gateway_upstream_response_duration_seconds_bucket{backend="shop/web:80",le="0.0005"} 1.0',
        'mesh_gateway_upstream_response_duration_seconds_count{backend="shop/web:80"} 2.0',
        'mesh_gateway_upstream_connect_errors_total{backend="shop/web:80",reason="refused"} 2.0',
        'mesh_gateway_connections_open{listener="http"} 1.0',
        'mesh_gateway_connections_open{listener="https"} 1.0',
        'mesh_gateway_connections_total{listener="http"} 2.0',
        "mesh_gateway_access_log_dropped_total 3.0",
        "mesh_gateway_config_version 7.0",
        "# TYPE mesh_gateway_request_duration_seconds histogram",
        "# TYPE mesh_gateway_connections_open gauge",
    ):
        assert line in lines, line
    # Only the backend that answered has upstream timings.
    assert 'upstream_response_duration_seconds_count{backend=""}' not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sums = {
        s.labels["backend"]: s.value
        for s in families["mesh_gateway_request_duration_seconds"].samples
        if s.name.endswith("_sum")
    }
    assert sums == pytest.approx({"shop/web:80": 0.2037, "": 0.0001})
    # Read at scrape time, not at registration.
    dropped[0] = 5
    assert "mesh_gateway_access_log_dropped_total 5.0" in scrape(m)


def test_label_values_are_escaped_and_prefixes_separate() -> None:
    m = HttpMetrics("mesh_sidecar")
    m.request('ns/"odd"\nroute', "b", 200, "", 0.01)
    text = scrape(m)
    assert 'route="ns/\\"odd\\"\\nroute"' in text
    assert "mesh_gateway" not in text
