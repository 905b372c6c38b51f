"""Trace context propagation: W3C traceparent/tracestate and B3 parsed and generated, from
tables written from the specifications, plus properties over arbitrary input."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.http.tracing import (
    TRACE_HEADERS,
    Hop,
    Incoming,
    SpanContext,
    SpanEnd,
    Tracer,
    extract,
    format_traceparent,
    parse_b3,
    parse_traceparent,
    propagate,
    ratio_sampler,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
T, S = TRACE, SPAN
T64 = "a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", Incoming(T, S, True)),
        (f"00-{TRACE}-{SPAN}-00", Incoming(T, S, False)),
        (f"00-{TRACE}-{SPAN}-03", Incoming(T, S, True)),  # unknown flag bits ignored
        (f"00-{TRACE}-{SPAN}-02", Incoming(T, S, False)),
        (f"01-{TRACE}-{SPAN}-01", Incoming(T, S, True)),  # a later version: same first fields
        (f"cc-{TRACE}-{SPAN}-01-what-the-future-holds", Incoming(T, S, True)),
        (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 is exactly 55 characters
        (f"cc-{TRACE}-{SPAN}-01x", None),
        (f"ff-{TRACE}-{SPAN}-01", None),  # version ff is forbidden
        (f"0g-{TRACE}-{SPAN}-01", None),
        (f"00-{TRACE.upper()}-{SPAN}-01", None),  # lower-case hex only
        (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE}-{SPAN}-0x", None),
        (f"00-{TRACE}-{SPAN}-1", None),
        (f"00_{TRACE}-{SPAN}-01", None),
        (f"00-{TRACE[:-1]}-{SPAN}0-01", None),
        ("", None),
    ],
)
def test_parse_traceparent(value: str, expected: Incoming | None) -> None:
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            Incoming("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", True),
        ),
        (f"{T64}-{SPAN}", Incoming("0" * 16 + T64, S, None)),  # 64-bit trace ids widened
        (f"{TRACE}-{SPAN}-0", Incoming(T, S, False)),
        (f"{TRACE}-{SPAN}-d", Incoming(T, S, True, debug=True)),
        ("0", Incoming("", "", False)),
        ("1", Incoming("", "", True)),
        ("d", Incoming("", "", True, debug=True)),
        (f"{TRACE}-{SPAN}-2", None),
        (f"{TRACE.upper()}-{SPAN}-1", None),
        (f"{TRACE}-{SPAN}-1-{SPAN}-x", None),
        (f"{TRACE}-{SPAN}-1-zz", None),
        (f"{TRACE}", None),
        (f"{'0' * 32}-{SPAN}", None),
        (f"{TRACE}-{SPAN[:-1]}", None),
        ("", None),
    ],
)
def test_parse_b3_single(value: str, expected: Incoming | None) -> None:
    assert parse_b3(value) == expected


def h(**headers: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        (h(x_b3_traceid=TRACE, x_b3_spanid=SPAN, x_b3_sampled="1"), Incoming(T, S, True)),
        (h(X_B3_TraceId=TRACE, X_B3_SpanId=SPAN, X_B3_Sampled="true"), Incoming(T, S, True)),
        (h(x_b3_traceid=TRACE, x_b3_spanid=SPAN, x_b3_sampled="0"), Incoming(T, S, False)),
        (h(x_b3_traceid=TRACE, x_b3_spanid=SPAN), Incoming(T, S, None)),
        (h(x_b3_traceid=TRACE, x_b3_spanid=SPAN, x_b3_flags="1"), Incoming(T, S, True, True)),
        (h(x_b3_traceid=TRACE, x_b3_spanid=SPAN, x_b3_sampled="yes"), None),
        (h(x_b3_traceid=TRACE), None),
        (h(x_b3_sampled="0"), Incoming("", "", False)),
        # Precedence: a valid traceparent, then b3, then x-b3-*.
        (
            h(traceparent=f"00-{TRACE}-{SPAN}-01", b3=f"{'1' * 32}-{'2' * 16}-0"),
            Incoming(T, S, True),
        ),
        (h(traceparent="garbage", b3=f"{TRACE}-{SPAN}-0"), Incoming(T, S, False)),
        (h(b3="garbage", x_b3_traceid=TRACE, x_b3_spanid=SPAN), Incoming(T, S, None)),
        # tracestate travels with a valid traceparent only, joined across headers.
        (
            h(traceparent=f"00-{TRACE}-{SPAN}-01", tracestate="a=1, b=2"),
            Incoming(T, S, True, tracestate="a=1,b=2"),
        ),
        (
            h(traceparent=f"00-{TRACE}-{SPAN}-01") + h(tracestate="a=1") + h(tracestate=",b=2"),
            Incoming(T, S, True, tracestate="a=1,b=2"),
        ),
        (h(traceparent=f"00-{TRACE}-{SPAN}-01", tracestate="novalue"), Incoming(T, S, True)),
        (
            h(
                traceparent=f"00-{TRACE}-{SPAN}-01",
                tracestate=",".join(f"k{i}=v" for i in range(33)),
            ),
            Incoming(T, S, True),
        ),
        (h(traceparent="bad", tracestate="a=1"), None),
        # Two traceparent headers are ambiguous: neither is used.
        (h(traceparent=f"00-{TRACE}-{SPAN}-01") + h(traceparent=f"00-{TRACE}-{SPAN}-00"), None),
    ],
)
def test_extract(headers: list[tuple[bytes, bytes]], expected: Incoming | None) -> None:
    assert extract(headers) == expected


def counter(start: int = 0x1111) -> Callable[[int], str]:
    """Ids 1111, 1112, ... padded to the width asked for."""
    numbers = itertools.count(start)
    return lambda digits: f"{next(numbers):0{digits}x}"


S1, T2 = "0000000000001111", "00000000000000000000000000001112"


def test_propagate_joins_the_incoming_trace_with_a_child_span() -> None:
    headers = h(traceparent=f"00-{TRACE}-{SPAN}-01", tracestate="vendor=x", user_agent="curl")
    ctx, out = propagate(headers, new_id=counter(), formats=("w3c", "b3", "b3multi"))
    assert ctx == SpanContext(T, S1, S, True, tracestate="vendor=x")
    assert out == (
        (b"traceparent", f"00-{TRACE}-0000000000001111-01".encode()),
        (b"tracestate", b"vendor=x"),
        (b"b3", f"{TRACE}-0000000000001111-1-{SPAN}".encode()),
        (b"x-b3-traceid", TRACE.encode()),
        (b"x-b3-spanid", b"0000000000001111"),
        (b"x-b3-parentspanid", SPAN.encode()),
        (b"x-b3-sampled", b"1"),
    )
    assert {name for name, _ in out} <= TRACE_HEADERS


def test_propagate_starts_a_trace_and_keeps_decisions() -> None:
    ctx, out = propagate([], new_id=counter(), formats=("w3c",))
    assert ctx == SpanContext(T2, S1, None, True)
    assert out == ((b"traceparent", b"00-00000000000000000000000000001112-0000000000001111-01"),)
    never = ratio_sampler(0.0)
    new, _ = propagate([], new_id=counter(), sample=never)
    assert not new.sampled
    # The caller's decision wins over the local ratio, either way.
    kept, _ = propagate(h(b3=f"{TRACE}-{SPAN}-1"), new_id=counter(), sample=never)
    assert kept.sampled and kept.trace_id == T
    denied, out = propagate(h(b3="0"), new_id=counter(), formats=("b3multi",))
    assert not denied.sampled and denied.parent_id is None
    assert out[-1] == (b"x-b3-sampled", b"0")
    debug, out = propagate(h(b3="d"), new_id=counter(), formats=("b3multi", "b3"))
    assert debug.sampled and debug.debug
    assert (b"x-b3-flags", b"1") in out and all(n != b"x-b3-sampled" for n, _ in out)
    assert out[-1][1].endswith(b"-d")


def test_ratio_sampler_uses_the_low_64_bits() -> None:
    half = ratio_sampler(0.5)
    assert half("f" * 16 + "3fffffffffffffff") and not half("0" * 16 + "8000000000000001")
    assert ratio_sampler(1.0)("f" * 32) and not ratio_sampler(0.0)("0" * 31 + "1")


class ListSink:
    def __init__(self) -> None:
        self.spans: list[tuple[Hop, SpanEnd]] = []

    def record(self, hop: Hop, end: SpanEnd) -> None:
        self.spans.append((hop, end))


def test_tracer_off_does_nothing_and_on_records_sampled_hops() -> None:
    off = Tracer(None)
    assert off.start(h(traceparent=f"00-{TRACE}-{SPAN}-01")) is None
    off.finish(None, SpanEnd("GET", "h", "/", 200))
    sink = ListSink()
    on = Tracer(sink, new_id=counter())
    sampled = on.start(h(traceparent=f"00-{TRACE}-{SPAN}-01"))
    unsampled = on.start(h(traceparent=f"00-{TRACE}-{SPAN}-00"))
    assert sampled is not None and unsampled is not None
    assert sampled.start_ns > 0
    on.finish(sampled, SpanEnd("GET", "h", "/", 200))
    on.finish(unsampled, SpanEnd("GET", "h", "/", 200))
    assert [hop for hop, _ in sink.spans] == [sampled]


@given(st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1), st.booleans())
def test_traceparent_round_trip(trace: int, span: int, sampled: bool) -> None:
    trace_id, span_id = f"{trace:032x}", f"{span:016x}"
    assert parse_traceparent(format_traceparent(trace_id, span_id, sampled)) == Incoming(
        trace_id, span_id, sampled
    )


@given(st.lists(st.tuples(st.sampled_from(sorted(TRACE_HEADERS)), st.binary(max_size=80))))
def test_extract_never_raises(headers: list[tuple[bytes, bytes]]) -> None:
    found = extract(headers)
    assert found is None or (found.trace_id == "") == (found.span_id == "")


def test_the_off_path_builds_no_span_state(monkeypatch: pytest.MonkeyPatch) -> None:
    import mesh.http.tracing as tracing

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("tracing is off: nothing may be built")

    monkeypatch.setattr(tracing, "propagate", boom)
    monkeypatch.setattr(tracing, "Hop", boom)
    assert Tracer(None).start(h(traceparent=f"00-{TRACE}-{SPAN}-01")) is None
