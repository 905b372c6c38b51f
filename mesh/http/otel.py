"""OpenTelemetry export of the tracer's hops: one SERVER span each, batched, sent over OTLP/HTTP.

Contract for the gateway wiring:

- ``spans = OtlpSpans.to_endpoint("http://collector:4318", service_name="mesh-gateway")`` when
  a tracing endpoint is configured; then ``Tracer(spans, ...)`` (see :mod:`mesh.http.tracing`).
  The endpoint is the collector's base URL, ``/v1/traces`` is appended unless already there
  (as ``OTEL_EXPORTER_OTLP_ENDPOINT`` works). No endpoint: no OtlpSpans, ``Tracer(None)``.
- ``record`` runs on the hot path: it builds one ``ReadableSpan`` from data the hop already
  holds (no SDK tracer, no span lifecycle, no context variables) and hands it to a
  ``BatchSpanProcessor``, whose own thread does the encoding and the HTTP POSTs. A full queue
  drops spans; it never blocks a request.
- ``shutdown()`` flushes and stops the thread; it blocks up to the export timeout, so a trio
  shell calls it through ``trio.to_thread.run_sync``.

Environment proxy settings are ignored: traces go straight to the configured collector.
"""

from __future__ import annotations

import time

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from mesh.http.tracing import Hop, SpanEnd

_SCOPE = InstrumentationScope("mesh.http")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)


def traces_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class OtlpSpans:
    """A :class:`~mesh.http.tracing.SpanSink` that batches spans to an exporter."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        service_name: str = "mesh-gateway",
        max_queue: int = 4096,
        batch: int = 512,
        delay_ms: float = 1000,
    ) -> None:
        self._resource = Resource.create({"service.name": service_name})
        self._processor = BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue,
            schedule_delay_millis=delay_ms,
            max_export_batch_size=batch,
        )

    @classmethod
    def to_endpoint(
        cls,
        endpoint: str,
        *,
        service_name: str = "mesh-gateway",
        timeout: float = 10.0,
        delay_ms: float = 1000,
    ) -> OtlpSpans:
        session = requests.Session()
        session.trust_env = False
        exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=timeout, session=session)
        return cls(exporter, service_name=service_name, delay_ms=delay_ms)

    def record(self, hop: Hop, end: SpanEnd) -> None:
        ctx = hop.context
        state = TraceState.from_header([ctx.tracestate]) if ctx.tracestate else None
        trace_id = int(ctx.trace_id, 16)
        own = SpanContext(trace_id, int(ctx.span_id, 16), False, _SAMPLED, state)
        parent = (
            SpanContext(trace_id, int(ctx.parent_id, 16), True, _SAMPLED)
            if ctx.parent_id is not None
            else None
        )
        attributes: dict[str, str | int] = {
            "http.request.method": end.method,
            "url.path": end.path,
            "server.address": end.host,
            "http.response.status_code": end.status,
        }
        if end.route:
            attributes["mesh.route"] = end.route
        if end.backend:
            attributes["mesh.backend"] = end.backend
        if end.reason:
            attributes["mesh.reason"] = end.reason
        if end.client:
            attributes["client.address"] = end.client
        span = ReadableSpan(
            name=f"{end.method} {end.route}" if end.route else end.method,
            context=own,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=SpanKind.SERVER,
            # OpenTelemetry's HTTP server convention: only 5xx marks the server span an error.
            status=_ERROR if end.status >= 500 else _UNSET,
            start_time=hop.start_ns,
            end_time=end.end_ns or time.time_ns(),
            instrumentation_scope=_SCOPE,
        )
        self._processor.on_end(span)

    def force_flush(self, timeout_ms: int = 10000) -> bool:
        return self._processor.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self._processor.shutdown()  # type: ignore[no-untyped-call]
