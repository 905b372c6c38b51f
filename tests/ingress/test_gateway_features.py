"""Gateway behaviour around the engine: retries by route policy, the access log, listeners
that cannot be opened."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio

from mesh.config.gateway import (
    GatewayBackend,
    GatewayEndpoint,
    GatewayListener,
    Mirror,
    Policy,
    Retry,
    Route,
    ServedGatewayConfig,
    Timeouts,
    WeightedBackend,
)
from mesh.http.access_log import AccessLog
from mesh.http.events import CLOSED, NEED_DATA, EndOfMessage
from mesh.http.h1 import Reader
from mesh.ingress.server import Telemetry, build_telemetry
from tests.http.test_otel import collector, spans_of
from tests.http.upstreams import OK, SILENT, RecordingUpstream, exchange, header_of, status_of
from tests.ingress.harness import backend, echo_servers, ingress, path, served, start_gateway


def one_route(endpoints: list[tuple[str, int]], **route: object) -> ServedGatewayConfig:
    return ServedGatewayConfig(
        version=1,
        listeners=(GatewayListener(name="ingress-http", wildcard="one-label"),),
        routes=(
            Route(
                name="httproute/default/r/rule-0",
                listeners=("ingress-http",),
                backends=(WeightedBackend(backend="default/b:80"),),
                **route,
            ),
        ),
        backends=(
            GatewayBackend(
                name="default/b:80",
                endpoints=tuple(GatewayEndpoint(ip=ip, port=port) for ip, port in endpoints),
            ),
        ),
    )


GET = b"GET /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
POST = b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def test_retries_follow_the_route_policy(nursery: trio.Nursery) -> None:
    """A backend that never answers, backendRequest 0.2 s, two retries: a GET is tried three
    times, then 504; a POST once (it may have reached the backend); without a policy, once."""
    silent = RecordingUpstream(SILENT)
    eps = [await nursery.start(silent.serve)]
    timeouts = Timeouts(backend_request=0.2)
    gw = await start_gateway(
        nursery, one_route(eps, timeouts=timeouts, retry=Retry(attempts=2, codes=(503,)))
    )

    async def tries(request: bytes) -> tuple[int, int]:
        before = len(silent.complete)
        reply, _ = await exchange(("127.0.0.1", gw.port), request)
        for _ in range(200):  # the upstream's task may not have read the last try yet
            if len(silent.complete) > before:
                break
            await trio.sleep(0.01)
        return status_of(reply), len(silent.complete) - before

    assert await tries(GET) == (504, 3)
    assert await tries(POST) == (504, 1)
    gw.apply(one_route(eps, timeouts=timeouts).model_copy(update={"version": 2}))
    assert await tries(GET) == (504, 1)

    # With a second endpoint that answers, the retries reach it: every GET succeeds.
    good = RecordingUpstream(OK)
    both = [*eps, await nursery.start(good.serve)]
    retry = Retry(attempts=2, codes=(503,))
    gw.apply(one_route(both, timeouts=timeouts, retry=retry).model_copy(update={"version": 3}))
    statuses = [status_of((await exchange(("127.0.0.1", gw.port), GET))[0]) for _ in range(6)]
    assert statuses == [200] * 6


@pytest.mark.parametrize(
    ("request_timeout", "backend_request", "tries"),
    [(0.5, 0.2, 3), (0.5, None, 1), (0.5, 2.0, 1)],
    ids=["per-try-within-whole", "whole-only", "per-try-longer-than-whole"],
)
async def test_the_whole_request_timeout_bounds_every_try_and_retry(
    nursery: trio.Nursery, request_timeout: float, backend_request: float | None, tries: int
) -> None:
    """GEP-1742: ``timeouts.request`` covers the whole transaction, retries included; a try
    is cut to what is left of it. A backend that never answers, five retries allowed: 504
    after about ``request`` seconds, never after five tries' worth."""
    silent = RecordingUpstream(SILENT)
    eps = [await nursery.start(silent.serve)]
    timeouts = Timeouts(request=request_timeout, backend_request=backend_request)
    gw = await start_gateway(
        nursery, one_route(eps, timeouts=timeouts, retry=Retry(attempts=5, codes=(503,)))
    )
    start = trio.current_time()
    reply, _ = await exchange(("127.0.0.1", gw.port), GET)
    took = trio.current_time() - start
    assert status_of(reply) == 504, reply
    assert header_of(reply, b"x-mesh-reason") == b"upstream-timeout"
    assert request_timeout * 0.8 <= took < request_timeout + 0.4, took
    await trio.sleep(0.1)
    assert tries - 1 <= len(silent.received) <= tries, silent.received


async def test_access_log_line_per_request(nursery: trio.Nursery) -> None:
    lines: list[bytes] = []
    log = AccessLog(lines.append)
    with echo_servers("web") as up:
        gw = await start_gateway(
            nursery,
            served(
                backend("web", up["web"]), ingress("shop", "shop.example.com", path("/", "web"))
            ),
            telemetry=Telemetry(access_log=log),
        )
        reply, _ = await exchange(
            ("127.0.0.1", gw.port),
            b"GET /cart?x=1 HTTP/1.1\r\nHost: shop.example.com\r\nX-Request-Id: abc\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert status_of(reply) == 200
        reply, _ = await exchange(("127.0.0.1", gw.port), GET)
        assert header_of(reply, b"x-mesh-reason") == b"no-route"
    log.flush()
    records = [json.loads(line) for line in b"".join(lines).splitlines()]
    assert [(r["path"], r["status"], r["reason"]) for r in records] == [
        ("/cart?x=1", 200, None),
        ("/r", 404, "no-route"),
    ]
    first = records[0]
    assert (first["route"], first["backend"]) == ("ingress/default/shop", "default/web:80")
    assert (first["host"], first["client"], first["request_id"]) == (
        "shop.example.com",
        "127.0.0.1",
        "abc",
    )
    assert first["bytes_out"] == len(reply) or first["bytes_out"] > 100
    assert first["duration_ms"] > 0


async def test_a_listener_that_cannot_be_opened_is_reported_and_the_rest_serve(
    nursery: trio.Nursery,
) -> None:
    with echo_servers("web") as up:
        config = one_route([up["web"]]).model_copy(
            update={
                "listeners": (
                    GatewayListener(name="ingress-http", wildcard="one-label"),
                    # 192.0.2.1 (TEST-NET-1) is not an address of this machine
                    GatewayListener(
                        name="gateway/default/far/8080", address="192.0.2.1", port=8080
                    ),
                )
            }
        )
        gw = await start_gateway(nursery, config)
        reply, _ = await exchange(("127.0.0.1", gw.port), GET)
        assert status_of(reply) == 200
        for _ in range(500):
            if "gateway/default/far/8080" in gw.problems:
                break
            await trio.sleep(0.01)
        assert "cannot listen on 192.0.2.1:8080" in gw.problems["gateway/default/far/8080"]
        view = gw.config_json()
        assert view["problems"] == gw.problems
        assert "ingress-http" in view["listeners"]


async def test_request_mirror_sends_a_copy_and_never_delays_the_request(
    nursery: trio.Nursery,
) -> None:
    shadow = RecordingUpstream(SILENT)  # reads the copy, never answers
    shadow_ep = await nursery.start(shadow.serve)
    real = RecordingUpstream(OK)
    real_ep = await nursery.start(real.serve)
    config = one_route([real_ep], policy=Policy(mirrors=(Mirror(backend="default/m:80"),)))
    config = config.model_copy(
        update={
            "backends": (
                *config.backends,
                GatewayBackend(
                    name="default/m:80",
                    endpoints=(GatewayEndpoint(ip=shadow_ep[0], port=shadow_ep[1]),),
                ),
            )
        }
    )
    gw = await start_gateway(nursery, config)
    # a field the Connection field names is hop-by-hop (RFC 9110 7.6.1): not in the copy either
    get = b"GET /r HTTP/1.1\r\nHost: a\r\nX-Hop: 1\r\nConnection: close, x-hop\r\n\r\n"
    with trio.fail_after(5):  # a shadow that never answers costs the request nothing
        reply, _ = await exchange(("127.0.0.1", gw.port), get)
    assert status_of(reply) == 200
    for _ in range(200):
        if shadow.complete:
            break
        await trio.sleep(0.01)
    assert [(r.method, r.target) for r in shadow.complete] == [(b"GET", b"/r")]
    assert [n for n, _ in shadow.complete[0].headers if n == b"x-hop"] == []
    assert [n for n, _ in real.complete[0].headers if n == b"x-hop"] == []
    assert [(r.method, r.target) for r in real.complete] == [(b"GET", b"/r")]
    with_body = b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    with trio.fail_after(5):
        reply, _ = await exchange(("127.0.0.1", gw.port), with_body)
    assert status_of(reply) == 200
    for _ in range(200):  # the copy carries the body too (tests/ingress/test_gateway_bodies.py)
        if len(shadow.complete) == 2:
            break
        await trio.sleep(0.01)
    assert [(r.method, r.target) for r in shadow.complete] == [(b"GET", b"/r"), (b"POST", b"/r")]
    assert shadow.bodies == [0, 3] and gw.mirrors.skipped == 0


async def _serve_answers(nursery: trio.Nursery, respond: Callable[[], bytes]) -> list[Any]:
    """A backend on loopback that sends ``respond()`` for each whole request it reads."""

    async def handle(conn: trio.SocketStream) -> None:
        reader = Reader("server")
        async with conn:
            while True:
                ev = reader.next_event()
                if ev is NEED_DATA:
                    data = await conn.receive_some(65536)
                    if not data:
                        return
                    reader.feed(data)
                elif type(ev) is EndOfMessage:
                    await conn.send_all(respond())
                    reader.next_message()
                elif ev is CLOSED:
                    return

    listeners: list[Any] = await nursery.start(
        functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
    )
    return listeners


async def test_a_retried_status_is_replaced_by_the_next_try(nursery: trio.Nursery) -> None:
    """Retry codes (503): the backend's first two answers are 503, the third 200; with two
    retries the client sees only the 200; with one, the second 503 goes to the client."""
    answers: list[int] = []
    plan: list[int] = []

    def respond() -> bytes:
        status = plan.pop(0) if plan else 200
        answers.append(status)
        body = b"try %d\n" % len(answers)
        return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)

    listeners = await _serve_answers(nursery, respond)
    ep = listeners[0].socket.getsockname()
    retry = Retry(attempts=2, codes=(503,))
    gw = await start_gateway(nursery, one_route([ep], retry=retry))
    plan[:] = [503, 503]
    reply, _ = await exchange(("127.0.0.1", gw.port), GET)
    assert (status_of(reply), reply.split(b"\r\n\r\n", 1)[1]) == (200, b"try 3\n")
    assert answers == [503, 503, 200]
    gw.apply(
        one_route([ep], retry=Retry(attempts=1, codes=(503,))).model_copy(update={"version": 2})
    )
    answers.clear()
    plan[:] = [503, 503]
    reply, _ = await exchange(("127.0.0.1", gw.port), GET)
    assert status_of(reply) == 503 and answers == [503, 503]
    plan[:] = [503]
    answers.clear()
    reply, _ = await exchange(("127.0.0.1", gw.port), POST)  # POST: not retried
    assert status_of(reply) == 503 and answers == [503]


async def test_a_retried_status_after_early_hints_is_still_retried(nursery: trio.Nursery) -> None:
    """A 103 Early Hints before a 503 goes to the client at once, on its own; the 503 is then
    seen as the final status and retried (and counted as what the client finally got)."""
    answers: list[int] = []

    def respond() -> bytes:
        status = 503 if not answers else 200
        answers.append(status)
        return (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 %d X\r\nContent-Length: 3\r\n\r\n%d" % (status, status)
        )

    listeners = await _serve_answers(nursery, respond)
    ep = listeners[0].socket.getsockname()
    gw = await start_gateway(nursery, one_route([ep], retry=Retry(attempts=1, codes=(503,))))
    reply, _ = await exchange(("127.0.0.1", gw.port), GET)
    assert answers == [503, 200]
    heads = [line for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert [h[9:12] for h in heads] == [b"103", b"103", b"200"]
    assert reply.endswith(b"\r\n\r\n200")


async def test_spans_reach_an_otlp_collector_when_the_gateway_stops() -> None:
    """--otlp-endpoint wiring: one SERVER span per request, with the client's trace id,
    exported over OTLP/HTTP; what is queued is sent when the gateway stops."""
    with collector() as server, echo_servers("web") as up:
        port = server.server_address[1]
        telemetry = build_telemetry(access_log=None, otlp_endpoint=f"http://127.0.0.1:{port}")
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        async with trio.open_nursery() as inner:
            gw = await start_gateway(
                inner,
                served(backend("web", up["web"]), ingress("shop", None, path("/", "web"))),
                telemetry=telemetry,
            )
            request = (
                b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                b"traceparent: 00-" + trace.encode() + b"-00f067aa0ba902b7-01\r\n\r\n"
            )
            reply, _ = await exchange(("127.0.0.1", gw.port), request)
            assert status_of(reply) == 200
            inner.cancel_scope.cancel()
        spans = spans_of(server)
    assert len(spans) == 1
    resource, span = spans[0]
    assert resource["service.name"] == "mesh-gateway"
    assert span.trace_id.hex() == trace
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"


def test_config_problems_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    """A bad annotation value (or anything else the translator refused) is a warning in the
    gateway's log, naming the object; the same problem in the next config is not logged again,
    a new one is."""
    from mesh.config.gateway import Problem
    from mesh.ingress.gateway import IngressGateway

    gw = IngressGateway(("127.0.0.1", 0), ("127.0.0.1", 0), telemetry=Telemetry())
    bad = Problem(kind="Ingress", object="shop/web", message="canary-weight: 'ten' is not a number")
    config = one_route([("127.0.0.1", 9)]).model_copy(update={"problems": (bad,)})
    caplog.set_level(logging.WARNING, logger="mesh.ingress")
    gw.apply(config)
    gw.apply(config.model_copy(update={"version": 2}))
    other = Problem(kind="HTTPRoute", object="shop/api", message="backendRef x not found")
    gw.apply(config.model_copy(update={"version": 3, "problems": (bad, other)}))
    logged = [(r.object, r.problem) for r in caplog.records if hasattr(r, "problem")]  # type: ignore[attr-defined]
    assert logged == [
        ("Ingress shop/web", "canary-weight: 'ten' is not a number"),
        ("HTTPRoute shop/api", "backendRef x not found"),
    ]
