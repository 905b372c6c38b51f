"""CONNECT and TRACE at the gateway: a reverse proxy opens no tunnel to where a client says,
and echoes no request back (TRACE would hand a page's script the cookies and credentials it may
not read: cross-site tracing; nginx answers 405).

RFC 9112 section 3.2.3: CONNECT takes the authority-form (``host:port``) and only CONNECT
does, so ``CONNECT / HTTP/1.1`` is malformed (400). A well-formed CONNECT is refused with 405
and an ``allow`` field (RFC 9110 section 15.5.6; nginx answers 405 too), the connection is
closed (the client may already be sending what it meant for the tunnel), and no byte of it
reaches an upstream, even one behind a catch-all route. TRACE is refused the same way.
"""

from __future__ import annotations

import json

import pytest
import trio

from mesh.http.access_log import AccessLog
from mesh.http.metrics import HttpMetrics
from mesh.ingress.server import Telemetry
from tests.conftest import require_tool
from tests.http.upstreams import RecordingUpstream, exchange, header_of, status_of
from tests.ingress.harness import backend, ingress, path, served, start_gateway

CASES = [
    # (name, bytes sent, status, reason)
    ("authority-form", b"CONNECT up.example:443 HTTP/1.1\r\nHost: up.example:443\r\n\r\n", 405,
     b"method-not-allowed"),
    ("authority-form with tunnel bytes", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22"
     b"\r\n\r\nSSH-2.0-client\r\n", 405, b"method-not-allowed"),
    ("ipv6 authority, HTTP/1.0", b"CONNECT [::1]:80 HTTP/1.0\r\n\r\n", 405, b"method-not-allowed"),
    ("origin-form", b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400, b"bad-request"),
    ("origin-form path", b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", 400, b"bad-request"),
    ("absolute-form", b"CONNECT http://a:80/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, b"bad-request"),
    ("authority without a port", b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400, b"bad-request"),
    ("asterisk", b"CONNECT * HTTP/1.1\r\nHost: a\r\n\r\n", 400, b"bad-request"),
    ("trace", b"TRACE / HTTP/1.1\r\nHost: a\r\nCookie: session=1\r\n\r\n", 405,
     b"method-not-allowed"),
    ("trace absolute-form, HTTP/1.0", b"TRACE http://a/x HTTP/1.0\r\nAuthorization: Basic eDp5"
     b"\r\n\r\n", 405, b"method-not-allowed"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "status", "reason"), CASES, ids=[c[0] for c in CASES])
async def test_connect_is_refused_and_never_forwarded(
    nursery: trio.Nursery, name: str, data: bytes, status: int, reason: bytes
) -> None:
    upstream = RecordingUpstream()
    address = await nursery.start(upstream.serve)
    metrics = HttpMetrics("t_connect_" + str(abs(hash(name))))
    lines: list[bytes] = []
    log = AccessLog(lines.append)
    gw = await start_gateway(
        nursery,
        served(backend("rec", address), ingress("all", None, path("/", "rec"))),
        telemetry=Telemetry(metrics=metrics, access_log=log),
    )
    for bytewise in (False, True):
        reply, closed = await exchange(("127.0.0.1", gw.port), data, bytewise=bytewise)
        assert status_of(reply) == status, reply
        assert header_of(reply, b"x-mesh-reason") == reason
        assert header_of(reply, b"connection") == b"close"
        assert closed
        if status == 405:
            allow = header_of(reply, b"allow")
            assert allow is not None and b"GET" in allow
            assert b"CONNECT" not in allow and b"TRACE" not in allow
    assert upstream.total_bytes == 0 and upstream.received == []
    # counted with its reason as a metric label, no route and no backend, and logged
    assert metrics.requests[("", "", status, reason.decode())] == 2
    log.flush()
    records = [json.loads(line) for line in b"".join(lines).splitlines()]
    assert [(r["status"], r["reason"], r["client"]) for r in records] == [
        (status, reason.decode(), "127.0.0.1")
    ] * 2
    assert all(r["bytes_out"] > 0 for r in records)
    # and the gateway serves the next request as before
    reply, _ = await exchange(
        ("127.0.0.1", gw.port), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status_of(reply) == 200


async def test_curl_proxytunnel_through_the_gateway_is_refused(nursery: trio.Nursery) -> None:
    """curl used the gateway as a forward proxy (``-p -x``): its CONNECT gets 405, curl
    reports the tunnel failed, and the upstream a catch-all route names saw nothing."""
    require_tool("curl")
    upstream = RecordingUpstream()
    address = await nursery.start(upstream.serve)
    gw = await start_gateway(
        nursery, served(backend("rec", address), ingress("all", None, path("/", "rec")))
    )
    done = await trio.run_process(
        ["curl", "-sS", "--max-time", "10", "-p", "-x", f"http://127.0.0.1:{gw.port}",
         f"http://127.0.0.1:{address[1]}/secret"],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert done.returncode == 56, done.stderr  # "failure in receiving network data"
    assert b"405" in done.stderr, done.stderr
    assert upstream.received == []


async def test_trace_pipelined_after_a_get_is_refused_alone(nursery: trio.Nursery) -> None:
    """The GET before it is answered by the upstream; the TRACE gets its 405 in order, and
    the upstream never sees it."""
    upstream = RecordingUpstream()
    address = await nursery.start(upstream.serve)
    gw = await start_gateway(
        nursery, served(backend("rec", address), ingress("all", None, path("/", "rec")))
    )
    data = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nTRACE /b HTTP/1.1\r\nHost: a\r\n\r\n"
    reply, closed = await exchange(("127.0.0.1", gw.port), data)
    first, _, second = reply.partition(b"HTTP/1.1 405")
    assert status_of(first) == 200 and closed
    assert header_of(b"HTTP/1.1 405" + second, b"x-mesh-reason") == b"method-not-allowed"
    assert [r.target for r in upstream.complete] == [b"/a"]
    assert b"TRACE" not in b"".join(upstream.received)


async def test_curl_trace_is_refused(nursery: trio.Nursery) -> None:
    require_tool("curl")
    upstream = RecordingUpstream()
    address = await nursery.start(upstream.serve)
    gw = await start_gateway(
        nursery, served(backend("rec", address), ingress("all", None, path("/", "rec")))
    )
    done = await trio.run_process(
        ["curl", "-sS", "--max-time", "10", "-X", "TRACE", "-H", "cookie: session=1",
         "-o", "/dev/null", "-w", "%{http_code} %header{allow}",
         f"http://127.0.0.1:{gw.port}/"],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "405 GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
    assert upstream.received == []
