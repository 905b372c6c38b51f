"""Trace context propagation: W3C Trace Context and B3, as a pure function of request headers.

Contract for the gateway wiring:

- ``tracer = Tracer(sink, sample_ratio=..., formats=...)``, or ``Tracer(None)`` when tracing
  is off. ``sink`` is anything with ``record(hop, end)`` (see :mod:`mesh.http.otel`).
- Per request: ``hop = tracer.start(head_headers)``. When tracing is off this returns None at
  the cost of one attribute test and the request's headers go upstream untouched. Otherwise
  remove every header whose lowercase name is in :data:`TRACE_HEADERS` from the upstream
  request and add ``hop.headers``; ``hop.context.trace_id_hex`` goes to the access log.
- When the response is done, ``if hop is not None and hop.context.sampled:``
  ``tracer.finish(hop, SpanEnd(...))``: each sampled hop becomes one OpenTelemetry span (kind
  SERVER) in the sink; the guard spares unsampled requests building the SpanEnd.

Which context a hop joins (first valid wins): ``traceparent`` (W3C, version 00 parsed
strictly, later versions by their first four fields, ``tracestate`` passed through), then the
single ``b3`` header, then the ``x-b3-*`` headers; otherwise a new trace. The hop's span gets a
fresh span id whose parent is the incoming span, and that span id is what the upstream sees as
its parent. An incoming sampling decision is kept (parent-based); a new trace is sampled by
``sample_ratio`` applied to the trace id, as OpenTelemetry's TraceIdRatioBased sampler does.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable
from typing import Literal, Protocol

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
_HEX = frozenset("0123456789abcdef")
_MAX_TRACESTATE_MEMBERS = 32  # W3C Trace Context §3.3.1


@dataclasses.dataclass(frozen=True, slots=True)
class Incoming:
    """A context read from request headers. ``trace_id == 0`` carries a decision only (``b3: 0``)."""

    trace_id: int
    span_id: int
    sampled: bool | None  # None: the caller left the decision to us
    debug: bool = False
    tracestate: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SpanContext:
    """This hop's span."""

    trace_id: int
    span_id: int
    parent_id: int | None  # the caller's span; None when this hop started the trace
    sampled: bool
    debug: bool = False
    tracestate: str | None = None

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        return f"{self.span_id:016x}"


def _hex_id(value: str, lengths: tuple[int, ...]) -> int | None:
    """A non-zero id of lower-case hex digits of one of the given lengths."""
    if len(value) not in lengths or not _HEX.issuperset(value):
        return None
    number = int(value, 16)
    return number or None


def parse_traceparent(value: str) -> Incoming | None:
    """``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``; None when invalid."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version = value[:2]
    if not _HEX.issuperset(version) or version == "ff":
        return None
    # Version 00 is exactly 55 characters; a later version may append fields after a dash.
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        return None
    trace_id = _hex_id(value[3:35], (32,))
    span_id = _hex_id(value[36:52], (16,))
    flags = value[53:55]
    if trace_id is None or span_id is None or not _HEX.issuperset(flags):
        return None
    return Incoming(trace_id, span_id, bool(int(flags, 16) & 1))


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def clean_tracestate(values: list[str]) -> str | None:
    """Several tracestate headers joined, empty members dropped; None when malformed or too long."""
    members = [m.strip() for v in values for m in v.split(",") if m.strip()]
    if not members or len(members) > _MAX_TRACESTATE_MEMBERS:
        return None
    if any("=" not in m or m.startswith("=") for m in members):
        return None
    return ",".join(members)


_B3_SAMPLING = {"0": (False, False), "1": (True, False), "d": (True, True)}


def parse_b3(value: str) -> Incoming | None:
    """The single header: ``{trace}-{span}[-{sampling}[-{parent}]]`` or only ``{sampling}``."""
    if value in _B3_SAMPLING:
        return Incoming(0, 0, *_B3_SAMPLING[value])
    parts = value.split("-")
    if not 2 <= len(parts) <= 4:
        return None
    trace_id = _hex_id(parts[0], (16, 32))
    span_id = _hex_id(parts[1], (16,))
    if trace_id is None or span_id is None:
        return None
    sampled: bool | None = None
    debug = False
    if len(parts) >= 3:
        if parts[2] not in _B3_SAMPLING:
            return None
        sampled, debug = _B3_SAMPLING[parts[2]]
    if len(parts) == 4 and _hex_id(parts[3], (16,)) is None:
        return None
    return Incoming(trace_id, span_id, sampled, debug)


def parse_b3_multi(found: dict[bytes, str]) -> Incoming | None:
    """``x-b3-traceid``, ``-spanid``, ``-sampled``, ``-flags`` (names in lower case)."""
    debug = found.get(b"x-b3-flags") == "1"
    raw = found.get(b"x-b3-sampled")
    sampled: bool | None = {"1": True, "true": True, "0": False, "false": False}.get(raw or "")
    if debug:
        sampled = True
    elif raw is not None and sampled is None:
        return None
    trace, span = found.get(b"x-b3-traceid"), found.get(b"x-b3-spanid")
    if trace is None and span is None:
        return Incoming(0, 0, sampled, debug) if sampled is not None else None
    trace_id = _hex_id(trace or "", (16, 32))
    span_id = _hex_id(span or "", (16,))
    if trace_id is None or span_id is None:
        return None
    return Incoming(trace_id, span_id, sampled, debug)


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
    if traceparents == 1:  # two traceparent headers are ambiguous: ignore both
        parent = parse_traceparent(found[b"traceparent"])
        if parent is not None:
            state = clean_tracestate(tracestates) if tracestates else None
            return dataclasses.replace(parent, tracestate=state) if state else parent
    if b"b3" in found:
        single = parse_b3(found[b"b3"])
        if single is not None:
            return single
    return parse_b3_multi(found)


def ratio_sampler(ratio: float) -> Callable[[int], bool]:
    """Sample a trace when its low 64 bits fall under ``ratio`` (OpenTelemetry's TraceIdRatioBased)."""
    bound = round(max(0.0, min(1.0, ratio)) * (1 << 64))
    return lambda trace_id: (trace_id & 0xFFFFFFFFFFFFFFFF) < bound


_ALWAYS = ratio_sampler(1.0)


@dataclasses.dataclass(frozen=True, slots=True)
class Hop:
    """The span record of one request: its context, start time and the headers for upstream."""

    context: SpanContext
    headers: tuple[tuple[bytes, bytes], ...]
    start_ns: int  # wall clock, for the exported span


def propagate(
    headers: Headers,
    *,
    rand: Callable[[int], int] = random.getrandbits,
    sample: Callable[[int], bool] = _ALWAYS,
    formats: tuple[Format, ...] = ("w3c", "b3multi"),
) -> tuple[SpanContext, tuple[tuple[bytes, bytes], ...]]:
    """This hop's span context and the trace headers to send upstream (pure but for ``rand``)."""
    incoming = extract(headers)
    span_id = rand(64) or 1
    if incoming is None or incoming.trace_id == 0:
        trace_id = rand(128) or 1
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
    trace, span = ctx.trace_id_hex.encode(), ctx.span_id_hex.encode()
    flag = b"d" if ctx.debug else b"1" if ctx.sampled else b"0"
    parent = f"{ctx.parent_id:016x}".encode() if ctx.parent_id else None
    for fmt in formats:
        if fmt == "w3c":
            out.append(
                (
                    b"traceparent",
                    format_traceparent(ctx.trace_id, ctx.span_id, ctx.sampled).encode(),
                )
            )
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


@dataclasses.dataclass(frozen=True, slots=True)
class SpanEnd:
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

    __slots__ = ("_formats", "_rand", "_sample", "enabled", "sink")

    def __init__(
        self,
        sink: SpanSink | None,
        *,
        sample_ratio: float = 1.0,
        formats: tuple[Format, ...] = ("w3c", "b3multi"),
        rand: Callable[[int], int] = random.getrandbits,
    ) -> None:
        self.sink = sink
        self.enabled = sink is not None
        self._sample = ratio_sampler(sample_ratio)
        self._formats = formats
        self._rand = rand

    def start(self, headers: Headers) -> Hop | None:
        if not self.enabled:
            return None
        ctx, out = propagate(headers, rand=self._rand, sample=self._sample, formats=self._formats)
        return Hop(ctx, out, time.time_ns())

    def finish(self, hop: Hop | None, end: SpanEnd) -> None:
        if hop is not None and hop.context.sampled and self.sink is not None:
            self.sink.record(hop, end)
