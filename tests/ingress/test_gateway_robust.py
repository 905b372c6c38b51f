"""The running gateway under bad input and under config churn.

- Smuggling and malformed requests (the codec's table of bad requests, sent byte by byte to
  the whole gateway) get the codec's status with ``x-mesh-reason`` and a closed connection, and
  a recording upstream behind a catch-all Ingress receives no byte of a request whose head is
  bad.
- Fifty config swaps under bounded load (routes, weights and endpoints changing) cost no
  request.
"""

from __future__ import annotations

import functools

import pytest
import trio

from tests.http.test_h1 import BAD_REQUESTS
from tests.http.test_server import _head_ok
from tests.http.upstreams import RecordingUpstream, exchange, header_of, status_of
from tests.ingress.harness import backend, echo_servers, ingress, path, served, start_gateway


@pytest.mark.parametrize(("name", "data", "status"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_smuggling_and_malformed_requests_never_reach_the_upstream(
    nursery: trio.Nursery, name: str, data: bytes, status: int
) -> None:
    upstream = RecordingUpstream()
    address = await nursery.start(upstream.serve)
    gw = await start_gateway(
        nursery, served(backend("rec", address), ingress("all", None, path("/", "rec")))
    )
    reply, closed = await exchange(("127.0.0.1", gw.port), data, bytewise=True)
    assert status_of(reply) == status, reply
    reason = header_of(reply, b"x-mesh-reason")
    assert reason is not None
    assert (reason == b"expectation-failed") == (status == 417), reason
    assert closed
    assert upstream.complete == []
    if b"\r\n\r\n" not in data or status != 400 or not _head_ok(data):
        assert upstream.total_bytes == 0, name
    # The gateway still serves the next, good request.
    reply, _ = await exchange(
        ("127.0.0.1", gw.port), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status_of(reply) == 200


async def test_fifty_config_swaps_under_load_fail_no_request(nursery: trio.Nursery) -> None:
    import httpx

    with echo_servers("a", "b", "c") as up:
        # Configs that differ in what a swap can change: the route's backend, a weighted
        # canary, the endpoints of a Service (the one left behind keeps running, so only the
        # gateway's handling of the swap could fail a request).
        shapes = [
            served(backend("web", up["a"]), ingress("web", "w.example", path("/", "web"))),
            served(
                backend("web", up["a"]),
                backend("web2", up["b"]),
                ingress("web", "w.example", path("/", "web")),
                ingress(
                    "canary",
                    "w.example",
                    path("/", "web2"),
                    annotations={"canary": "true", "canary-weight": "50"},
                    created="2026-02-01T00:00:00Z",
                ),
            ),
            served(backend("web", up["c"]), ingress("web", "w.example", path("/", "web"))),
            served(
                backend("web", up["b"]),
                ingress("web", "w.example", path("/", "web"), path("/x", "web", "Exact")),
            ),
        ]
        gw = await start_gateway(nursery, shapes[0])
        failures: list[str] = []
        answered = {"a": 0, "b": 0, "c": 0}
        done = trio.Event()
        budget = 4000  # requests in all, whatever happens: the load is bounded

        async def client() -> None:
            nonlocal budget
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as c:
                while not done.is_set() and budget > 0:
                    budget -= 1
                    try:
                        r = await c.get("/p", headers={"host": "w.example"})
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.headers.get('x-mesh-reason')}")
                    else:
                        answered[r.headers["x-echo"]] += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as load:
                for _ in range(4):
                    load.start_soon(client)
                for i in range(1, 51):
                    await trio.sleep(0.02)
                    gw.apply(shapes[i % len(shapes)].model_copy(update={"version": i + 1}))
                done.set()
        assert gw.config is not None and gw.config.version == 51
        assert failures == []
        assert all(answered.values()), answered  # every shape was served


async def test_a_request_in_flight_finishes_on_the_config_it_started_with(
    nursery: trio.Nursery,
) -> None:
    """A slow answer keeps coming after its route and its backend left the config; the
    next request sees the new config (404)."""
    started = trio.Event()

    async def slow(conn: trio.SocketStream) -> None:
        async with conn:
            await conn.receive_some(65536)
            started.set()
            await trio.sleep(0.5)
            await conn.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslow\n")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, slow, 0, host="127.0.0.1"))
    ep = listeners[0].socket.getsockname()
    gw = await start_gateway(
        nursery, served(backend("slow", ep), ingress("s", None, path("/", "slow")))
    )
    result: list[bytes] = []

    async def ask() -> None:
        reply, _ = await exchange(
            ("127.0.0.1", gw.port), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        result.append(reply)

    async with trio.open_nursery() as inner:
        inner.start_soon(ask)
        with trio.fail_after(5):
            await started.wait()
        gw.apply(served(version=2))  # no routes, no backends: the pool drains too
        reply, _ = await exchange(
            ("127.0.0.1", gw.port), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert status_of(reply) == 404
    (slow_reply,) = result
    assert status_of(slow_reply) == 200 and slow_reply.endswith(b"slow\n")


async def test_endpoints_that_leave_the_config_lose_their_pooled_connections(
    nursery: trio.Nursery,
) -> None:
    with echo_servers("a", "b") as up:
        config = served(backend("web", up["a"]), ingress("w", None, path("/", "web")))
        gw = await start_gateway(nursery, config)
        reply, _ = await exchange(
            ("127.0.0.1", gw.port), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert status_of(reply) == 200
        assert gw.pool.idle(up["a"]) == 1  # kept for the next request
        moved = served(backend("web", up["b"]), ingress("w", None, path("/", "web")), version=2)
        gw.apply(moved)
        assert gw.pool.idle(up["a"]) == 0
        reply, _ = await exchange(
            ("127.0.0.1", gw.port), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert header_of(reply, b"x-echo") == b"b"
        assert gw.pool.idle(up["b"]) == 1


async def test_fifty_certificate_and_route_swaps_under_tls_load_fail_no_request(
    nursery: trio.Nursery,
) -> None:
    """Over TLS, each request on a new connection (a handshake each): the Secret's
    certificate and the route's backend change fifty times; every request is answered, every
    handshake verifies, and both certificates were served."""
    import ssl

    from mesh.config.gateway import ServedGatewayConfig
    from tests.ingress.harness import tls_secret
    from tests.tls.pki import CA

    ca = CA()
    certs = [ca.issue("swap.example.com") for _ in range(2)]
    context = ssl.create_default_context(cadata=ca.pem.decode())
    with echo_servers("a", "b") as up:

        def shape(i: int) -> ServedGatewayConfig:
            cert, name = certs[i % 2], "ab"[i % 2]
            return served(
                backend("web", up[name]),
                tls_secret("swap-tls", cert.cert_pem, cert.key_pem),
                ingress(
                    "web",
                    "swap.example.com",
                    path("/", "web"),
                    tls=[{"hosts": ["swap.example.com"], "secretName": "swap-tls"}],
                ),
                version=i + 1,
            )

        gw = await start_gateway(nursery, shape(0))
        failures: list[str] = []
        seen: set[bytes] = set()
        done = trio.Event()
        budget = 1200  # handshakes in all: bounded

        async def client() -> None:
            nonlocal budget
            while not done.is_set() and budget > 0:
                budget -= 1
                try:
                    tcp = await trio.open_tcp_stream("127.0.0.1", gw.tls_port)
                    stream = trio.SSLStream(
                        tcp, context, server_hostname="swap.example.com", https_compatible=True
                    )
                    async with stream:
                        await stream.send_all(
                            b"GET /p HTTP/1.1\r\nHost: swap.example.com\r\n"
                            b"Connection: close\r\n\r\n"
                        )
                        reply = b""
                        while chunk := await stream.receive_some(65536):
                            reply += chunk
                        der = stream.getpeercert(binary_form=True)
                except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
                    failures.append(repr(exc))
                    continue
                if not reply.startswith(b"HTTP/1.1 200 "):
                    failures.append(reply[:80].decode(errors="replace"))
                seen.add(der)

        with trio.fail_after(60):
            async with trio.open_nursery() as load:
                for _ in range(3):
                    load.start_soon(client)
                for i in range(1, 51):
                    await trio.sleep(0.03)
                    gw.apply(shape(i))
                done.set()
    assert gw.config is not None and gw.config.version == 51
    assert failures == []
    assert len(seen) == 2  # the handshakes followed the swaps
