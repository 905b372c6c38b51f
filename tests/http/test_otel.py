"""Spans exported over OTLP/HTTP to a fake collector on 127.0.0.1, decoded with the OTLP
protobuf schema."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from mesh.http.otel import OtlpSpans, traces_url
from mesh.http.tracing import SpanEnd, Tracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


class Collector(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[str, str, bytes]] = []  # path, content type, body


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, self.headers["Content-Type"], body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def spans_of(server: Collector) -> list[tuple[dict[str, object], Span]]:
    out: list[tuple[dict[str, object], Span]] = []
    for path, ctype, body in server.received:
        assert path == "/v1/traces" and ctype == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                assert ss.scope.name == "mesh.http"
                out.extend((resource, span) for span in ss.spans)
    return out


def attrs(span: Span) -> dict[str, object]:
    return {
        a.key: a.value.int_value if a.value.HasField("int_value") else a.value.string_value
        for a in span.attributes
    }


def test_sampled_hops_reach_the_collector_as_server_spans() -> None:
    with collector() as server:
        port = server.server_address[1]
        spans = OtlpSpans.to_endpoint(f"http://127.0.0.1:{port}/", service_name="gw-test")
        tracer = Tracer(spans)
        joined = tracer.start([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())])
        fresh = tracer.start([])
        dropped = tracer.start([(b"b3", b"0")])
        assert joined is not None and fresh is not None and dropped is not None
        tracer.finish(
            joined,
            SpanEnd(
                "GET",
                "shop.example.com",
                "/cart",
                200,
                route="shop/web/0",
                backend="shop/web:80",
                client="127.0.0.9",
            ),
        )
        tracer.finish(fresh, SpanEnd("POST", "x.test", "/", 503, reason="no-healthy-upstream"))
        tracer.finish(dropped, SpanEnd("GET", "x.test", "/", 200))
        spans.force_flush()
        assert spans.exported == 2 and spans.dropped == 0
        spans.shutdown()
    got = spans_of(server)
    assert len(got) == 2
    by_name = {span.name: (resource, span) for resource, span in got}
    resource, first = by_name["GET shop/web/0"]
    assert resource["service.name"] == "gw-test"
    assert first.trace_id.hex() == TRACE
    assert first.parent_span_id.hex() == SPAN
    assert first.span_id.hex() == joined.context.span_id
    # The upstream sees the exported span as its parent.
    assert (b"traceparent", f"00-{TRACE}-{first.span_id.hex()}-01".encode()) in joined.headers
    assert first.kind == Span.SPAN_KIND_SERVER
    assert first.start_time_unix_nano == joined.start_ns <= first.end_time_unix_nano
    assert attrs(first) == {
        "http.request.method": "GET",
        "url.path": "/cart",
        "server.address": "shop.example.com",
        "http.response.status_code": 200,
        "mesh.route": "shop/web/0",
        "mesh.backend": "shop/web:80",
        "client.address": "127.0.0.9",
    }
    assert first.status.code == Status.STATUS_CODE_UNSET
    _, second = by_name["POST"]
    assert second.parent_span_id == b"" and second.trace_id.hex() == fresh.context.trace_id
    assert second.status.code == Status.STATUS_CODE_ERROR
    assert attrs(second)["mesh.reason"] == "no-healthy-upstream"


def test_traces_url() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"


def test_a_collector_that_is_down_costs_spans_not_requests() -> None:
    with collector() as server:
        port = server.server_address[1]
    # The port is closed now: every export is refused.
    spans = OtlpSpans.to_endpoint(f"http://127.0.0.1:{port}", timeout=1.0)
    tracer = Tracer(spans)
    hop = tracer.start([])
    assert hop is not None
    tracer.finish(hop, SpanEnd("GET", "x.test", "/", 200))
    spans.force_flush()
    spans.shutdown()
    assert spans.failed == 1 and spans.exported == 0
