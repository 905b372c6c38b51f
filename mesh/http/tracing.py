"""Trace context propagation: W3C Trace Context and B3, as a pure function of request headers.

Contract for the gateway wiring:

- ``tracer = Tracer(sink, sample_ratio=..., formats=...)``, or ``Tracer(None)`` when tracing
  is off. ``sink`` is anything with ``record(hop, end)`` (see :mod:`mesh.http.otel`).
- Per request: ``hop = tracer.start(head_headers)``. When tracing is off this returns None at
  the cost of one attribute test and the request's headers go upstream untouched. Otherwise
  remove every header whose lowercase name is in :data:`TRACE_HEADERS` from the upstream
  request and add ``hop.headers``; ``hop.context.trace_id`` (hex) goes to the access log.
- When the response is done, ``if hop is not None and hop.context.sampled:``
  ``tracer.finish(hop, SpanEnd(...))``: each sampled hop becomes one OpenTelemetry span (kind
  SERVER) in the sink; the guard spares unsampled requests building the SpanEnd.

Which context a hop joins (first valid wins): ``traceparent`` (W3C, version 00 parsed
strictly, later versions by their first four fields, ``tracestate`` passed through), then the
single ``b3`` header, then the ``x-b3-*`` headers; otherwise a new trace. The hop's span gets a
fresh span id whose parent is the incoming span, and that span id is what the upstream sees as
its parent. An incoming sampling decision is kept (parent-based); a new trace is sampled by
``sample_ratio`` applied to the trace id, as OpenTelemetry's TraceIdRatioBased sampler does.

Ids stay lower-case hex strings from parse to upstream header (32 characters for a trace,
16 for a span; a 64-bit B3 trace id is left-padded with zeros): most hops only pass them on,
and the exporter converts to integers only for the spans it sends.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple, Protocol

Format = Literal["w3c", "b3", "b3multi"]
Headers = Iterable[tuple[bytes, bytes]]

TRACE_HEADERS = frozenset(
    {
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    }
)
_MAX_TRACESTATE_MEMBERS = 32  # W3C Trace Context §3.3.1
_PAD = "0" * 16


class Incoming(NamedTuple):
    """A context read from request headers. ``trace_id == ""`` carries a decision only (``b3: 0``)."""

    trace_id: str
    span_id: str
    sampled: bool | None  # None: the caller left the decision to us
    debug: bool = False
    tracestate: str | None = None


class SpanContext(NamedTuple):
    """This hop's span; ids in lower-case hex."""

    trace_id: str
    span_id: str
    parent_id: str | None  # the caller's span; None when this hop started the trace
    sampled: bool
    debug: bool = False
    tracestate: str | None = None


# W3C Trace Context §3.2: version, trace-id, parent-id, flags; a later version may append
# "-"-prefixed fields, version 00 may not. One C-level match instead of per-field checks.
_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL
)
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_B3_TRACE_ID = re.compile(r"[0-9a-f]{16}(?:[0-9a-f]{16})?")


def parse_traceparent(value: str) -> Incoming | None:
    """``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``; None when invalid."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace, span, flags, rest = match.groups()
    if version == "ff" or (rest is not None and version == "00"):
        return None
    if not trace.strip("0") or not span.strip("0"):  # all-zero ids are invalid
        return None
    return Incoming(trace, span, flags[1] in "13579bdf")


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def clean_tracestate(values: list[str]) -> str | None:
    """Several tracestate headers joined, empty members dropped; None when malformed or too long."""
    members = [m.strip() for v in values for m in v.split(",") if m.strip()]
    if not members or len(members) > _MAX_TRACESTATE_MEMBERS:
        return None
    if any("=" not in m or m.startswith("=") for m in members):
        return None
    return ",".join(members)


_B3_SAMPLING = {"0": (False, False), "1": (True, False), "d": (True, True)}
_B3_SAMPLED: dict[str, bool | None] = {"1": True, "true": True, "0": False, "false": False}


def _b3_ids(trace: str, span: str) -> tuple[str, str] | None:
    """Validated B3 ids, the trace id widened to 128 bits; None when either is invalid."""
    if _B3_TRACE_ID.fullmatch(trace) is None or _SPAN_ID.fullmatch(span) is None:
        return None
    if not trace.strip("0") or not span.strip("0"):
        return None
    return (trace if len(trace) == 32 else _PAD + trace), span


def parse_b3(value: str) -> Incoming | None:
    """The single header: ``{trace}-{span}[-{sampling}[-{parent}]]`` or only ``{sampling}``."""
    if value in _B3_SAMPLING:
        return Incoming("", "", *_B3_SAMPLING[value])
    parts = value.split("-")
    if not 2 <= len(parts) <= 4:
        return None
    ids = _b3_ids(parts[0], parts[1])
    if ids is None:
        return None
    sampled: bool | None = None
    debug = False
    if len(parts) >= 3:
        if parts[2] not in _B3_SAMPLING:
            return None
        sampled, debug = _B3_SAMPLING[parts[2]]
    if len(parts) == 4 and (_SPAN_ID.fullmatch(parts[3]) is None or not parts[3].strip("0")):
        return None
    return Incoming(*ids, sampled, debug)


def parse_b3_multi(found: dict[bytes, str]) -> Incoming | None:
    """``x-b3-traceid``, ``-spanid``, ``-sampled``, ``-flags`` (names in lower case)."""
    debug = found.get(b"x-b3-flags") == "1"
    raw = found.get(b"x-b3-sampled")
    sampled = _B3_SAMPLED.get(raw or "")
    if debug:
        sampled = True
    elif raw is not None and sampled is None:
        return None
    trace, span = found.get(b"x-b3-traceid"), found.get(b"x-b3-spanid")
    if trace is None and span is None:
        return Incoming("", "", sampled, debug) if sampled is not None else None
    ids = _b3_ids(trace or "", span or "")
    return None if ids is None else Incoming(*ids, sampled, debug)


def extract(headers: Headers) -> Incoming | None:
    """The incoming context by precedence: traceparent, b3, x-b3-*; None when there is none."""
    found: dict[bytes, str] = {}
    traceparents = 0
    tracestates: list[str] = []
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name not in TRACE_HEADERS:
            continue
        value = raw_value.decode("latin-1").strip()
        if name == b"traceparent":
            traceparents += 1
        elif name == b"tracestate":
            tracestates.append(value)
        found[name] = value
    if not found:
        return None
    if traceparents == 1:  # two traceparent headers are ambiguous: ignore both
        parent = parse_traceparent(found[b"traceparent"])
        if parent is not None:
            state = clean_tracestate(tracestates) if tracestates else None
            return parent._replace(tracestate=state) if state else parent
    b3 = found.get(b"b3")
    if b3 is not None:
        single = parse_b3(b3)
        if single is not None:
            return single
    return parse_b3_multi(found)


def ratio_sampler(ratio: float) -> Callable[[str], bool]:
    """Sample a trace when its low 64 bits fall under ``ratio`` (OpenTelemetry's TraceIdRatioBased)."""
    bound = round(max(0.0, min(1.0, ratio)) * (1 << 64))
    if bound >= 1 << 64:
        return lambda trace_id: True
    return lambda trace_id: int(trace_id[16:], 16) < bound


_ALWAYS = ratio_sampler(1.0)


def random_id(hex_digits: int) -> str:
    """A random non-zero id of ``hex_digits`` lower-case hex characters."""
    return f"{random.getrandbits(hex_digits * 4) or 1:0{hex_digits}x}"


class Hop(NamedTuple):
    """The span record of one request: its context, start time and the headers for upstream."""

    context: SpanContext
    headers: tuple[tuple[bytes, bytes], ...]
    start_ns: int  # wall clock, for the exported span


def propagate(
    headers: Headers,
    *,
    new_id: Callable[[int], str] = random_id,
    sample: Callable[[str], bool] = _ALWAYS,
    formats: tuple[Format, ...] = ("w3c", "b3multi"),
) -> tuple[SpanContext, tuple[tuple[bytes, bytes], ...]]:
    """This hop's span context and the trace headers to send upstream (pure but for ``new_id``)."""
    incoming = extract(headers)
    span_id = new_id(16)
    if incoming is None or not incoming.trace_id:
        trace_id = new_id(32)
        decided = incoming.sampled if incoming is not None else None
        debug = incoming.debug if incoming is not None else False
        sampled = sample(trace_id) if decided is None else decided
        ctx = SpanContext(trace_id, span_id, None, sampled, debug)
    else:
        sampled = sample(incoming.trace_id) if incoming.sampled is None else incoming.sampled
        ctx = SpanContext(
            incoming.trace_id,
            span_id,
            incoming.span_id,
            sampled,
            incoming.debug,
            incoming.tracestate,
        )
    return ctx, upstream_headers(ctx, formats)


def upstream_headers(
    ctx: SpanContext, formats: Iterable[Format]
) -> tuple[tuple[bytes, bytes], ...]:
    out: list[tuple[bytes, bytes]] = []
    trace, span = ctx.trace_id.encode(), ctx.span_id.encode()
    flag = b"d" if ctx.debug else b"1" if ctx.sampled else b"0"
    parent = ctx.parent_id.encode() if ctx.parent_id else None
    for fmt in formats:
        if fmt == "w3c":
            flags = b"01" if ctx.sampled else b"00"
            out.append((b"traceparent", b"00-%s-%s-%s" % (trace, span, flags)))
            if ctx.tracestate:
                out.append((b"tracestate", ctx.tracestate.encode()))
        elif fmt == "b3":
            out.append((b"b3", b"-".join((trace, span, flag, *((parent,) if parent else ())))))
        else:
            out.append((b"x-b3-traceid", trace))
            out.append((b"x-b3-spanid", span))
            if parent:
                out.append((b"x-b3-parentspanid", parent))
            # B3: debug is sent as Flags and implies sampled; Sampled then must be left out.
            out.append((b"x-b3-flags", b"1") if ctx.debug else (b"x-b3-sampled", flag))
    return tuple(out)


class SpanEnd(NamedTuple):
    """What the request turned out to be, for the span's name and attributes."""

    method: str
    host: str
    path: str
    status: int
    route: str = ""
    backend: str = ""
    reason: str = ""  # x-mesh-reason of a response the gateway made itself
    client: str = ""
    end_ns: int = 0  # 0: now


class SpanSink(Protocol):
    def record(self, hop: Hop, end: SpanEnd) -> None: ...


class Tracer:
    """Starts and finishes hops; with no sink, ``start`` returns None and nothing else runs."""

    __slots__ = ("_formats", "_new_id", "_sample", "enabled", "sink")

    def __init__(
        self,
        sink: SpanSink | None,
        *,
        sample_ratio: float = 1.0,
        formats: tuple[Format, ...] = ("w3c", "b3multi"),
        new_id: Callable[[int], str] = random_id,
    ) -> None:
        self.sink = sink
        self.enabled = sink is not None
        self._sample = ratio_sampler(sample_ratio)
        self._formats = formats
        self._new_id = new_id

    def start(self, headers: Headers) -> Hop | None:
        if not self.enabled:
            return None
        ctx, out = propagate(
            headers, new_id=self._new_id, sample=self._sample, formats=self._formats
        )
        return Hop(ctx, out, time.time_ns())

    def finish(self, hop: Hop | None, end: SpanEnd) -> None:
        if hop is not None and hop.context.sampled and self.sink is not None:
            self.sink.record(hop, end)
