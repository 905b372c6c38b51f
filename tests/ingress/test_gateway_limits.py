"""ingress-nginx's per-client limits on the running gateway: ``limit-connections`` (requests in
flight per client address) and ``limit-rps`` (a token bucket per client address), both answered
503 ``rate-limited`` as ingress-nginx's defaults (limit-conn-status-code and
limit-req-status-code are 503), the other clients untouched."""

from __future__ import annotations

import trio

from tests.http.upstreams import AcceptLoop, header_of, read_head, status_of
from tests.ingress.harness import backend, echo_servers, ingress, path, served, start_gateway
from tests.polling import until


class HeldUpstream(AcceptLoop):
    """Reads a request head, then answers only once ``release`` is set."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.arrived = 0

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        with conn:
            if await read_head(conn) is None:
                return
            self.arrived += 1
            await self.release.wait()
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


GET = b"GET /p HTTP/1.1\r\nHost: limits.example\r\nConnection: close\r\n\r\n"


async def _from(source: str, port: int) -> tuple[int, bytes | None]:
    """One request from the client address ``source``: (status, x-mesh-reason)."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    with sock:
        await sock.send(GET)
        reply = b""
        with trio.fail_after(10):
            while chunk := await sock.recv(65536):
                reply += chunk
    return status_of(reply), header_of(reply, b"x-mesh-reason")


async def test_limit_connections_counts_requests_in_flight_per_client_address(
    nursery: trio.Nursery,
) -> None:
    upstream = HeldUpstream()
    address = await nursery.start(upstream.serve)
    config = served(
        backend("held", address),
        ingress("lim", "limits.example", path("/", "held"), annotations={"limit-connections": "1"}),
    )
    gw = await start_gateway(nursery, config)
    first: list[tuple[int, bytes | None]] = []

    async def held() -> None:
        first.append(await _from("127.0.0.1", gw.port))

    nursery.start_soon(held)
    await until(lambda: upstream.arrived >= 1, 5)
    # The same client address, while its first request is in flight: refused, never forwarded.
    assert await _from("127.0.0.1", gw.port) == (503, b"rate-limited")
    assert upstream.arrived == 1
    # Another client address has its own count.
    other = trio.Event()
    answers: list[tuple[int, bytes | None]] = []

    async def other_client() -> None:
        answers.append(await _from("127.0.0.2", gw.port))
        other.set()

    nursery.start_soon(other_client)
    await until(lambda: upstream.arrived >= 2, 5)
    upstream.release.set()
    with trio.fail_after(5):
        await other.wait()
    await until(lambda: bool(first), 5)
    assert first == [(200, None)] and answers == [(200, None)]
    # Once the first finished, the client may send again.
    assert await _from("127.0.0.1", gw.port) == (200, None)


async def test_limit_rps_is_a_bucket_per_client_address(nursery: trio.Nursery) -> None:
    with echo_servers("web") as up:
        config = served(
            backend("web", up["web"]),
            ingress(
                "lim",
                "limits.example",
                path("/", "web"),
                annotations={"limit-rps": "2", "limit-burst-multiplier": "1"},
            ),
        )
        gw = await start_gateway(nursery, config)
        start = trio.current_time()
        burst = [await _from("127.0.0.1", gw.port) for _ in range(8)]
        took = trio.current_time() - start
        other = await _from("127.0.0.3", gw.port)
        await trio.sleep(1.1)  # two more tokens
        later = await _from("127.0.0.1", gw.port)
    passed = [s for s in burst if s == (200, None)]
    refused = [s for s in burst if s == (503, b"rate-limited")]
    assert len(passed) + len(refused) == 8, burst
    # two tokens at first, at most one more per half second while the burst went out
    assert 2 <= len(passed) <= 2 + int(took * 2) + 1, (burst, took)
    assert refused, burst
    assert other == (200, None)
    assert later == (200, None)
