"""OpenTelemetry export of the tracer's hops: one SERVER span each, batched, sent over OTLP/HTTP.

Contract for the gateway wiring:

- ``spans = OtlpSpans.to_endpoint("http://collector:4318", service_name="mesh-gateway")`` when
  a tracing endpoint is configured; then ``Tracer(spans, ...)`` (see :mod:`mesh.http.tracing`).
  The endpoint is the collector's base URL, ``/v1/traces`` is appended unless already there
  (as ``OTEL_EXPORTER_OTLP_ENDPOINT`` works). No endpoint: no OtlpSpans, ``Tracer(None)``.
- ``record`` runs on the hot path: it queues the hop, its end and the clock
  (:class:`~mesh.http.batching.Batcher`). The batch thread turns each into one
  ``ReadableSpan`` (no SDK tracer, no span lifecycle, no context variables: the hop already
  holds everything) and hands the batch to the exporter, which encodes and POSTs it. A full
  queue drops spans (counted in ``dropped``); it never blocks a request.
- ``shutdown()`` exports what is queued and stops the thread; it blocks up to the export
  timeout, so a trio shell calls it through ``trio.to_thread.run_sync``.

Environment proxy settings are ignored: traces go straight to the configured collector.
"""

from __future__ import annotations

import time

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from mesh.http.batching import Batcher
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

    __slots__ = ("_exporter", "_queue", "_resource", "failed")

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
        self._exporter = exporter
        self.failed = 0  # spans the exporter reported as not delivered
        self._queue: Batcher[tuple[Hop, SpanEnd, int]] = Batcher(
            self._export,
            batch=batch,
            interval=delay_ms / 1000,
            max_pending=max_queue,
            name="otlp-spans",
        )
        self._queue.start()

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

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    @property
    def exported(self) -> int:
        return self._queue.drained - self.failed

    def record(self, hop: Hop, end: SpanEnd) -> None:
        self._queue.put((hop, end, end.end_ns or time.time_ns()))

    def _export(self, items: list[tuple[Hop, SpanEnd, int]]) -> None:
        spans = [self._span(*item) for item in items]
        if self._exporter.export(spans) is not SpanExportResult.SUCCESS:
            self.failed += len(spans)

    def _span(self, hop: Hop, end: SpanEnd, end_ns: int) -> ReadableSpan:
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
        return ReadableSpan(
            name=f"{end.method} {end.route}" if end.route else end.method,
            context=own,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=SpanKind.SERVER,
            # OpenTelemetry's HTTP server convention: only 5xx marks the server span an error.
            status=_ERROR if end.status >= 500 else _UNSET,
            start_time=hop.start_ns,
            end_time=end_ns,
            instrumentation_scope=_SCOPE,
        )

    def force_flush(self) -> None:
        """Export everything queued now, in the calling thread."""
        self._queue.flush()

    def shutdown(self) -> None:
        self._queue.close()
        self._exporter.shutdown()
