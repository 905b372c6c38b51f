"""The L7 engine on loopback: a real gateway, recording upstreams, raw clients and curl."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio

from mesh.http.balance import RoundRobin
from mesh.http.decision import Forward, Respond, Timeouts
from mesh.http.events import Request
from mesh.http.server import HttpServer, Limits
from tests.conftest import require_tool
from tests.http.test_h1 import BAD_REQUESTS
from tests.http.upstreams import (
    CLOSE_AFTER,
    DIE_MID_BODY,
    SILENT,
    UPGRADE,
    AcceptLoop,
    RecordingUpstream,
    exchange,
    header_of,
    read_head,
    status_of,
)
from tests.polling import until

DEAD = ("127.0.0.1", 1)  # nothing listens on port 1: connection refused
LIMITS = Limits(header_timeout=10.0, idle_timeout=5.0, body_timeout=0.5)
SLOW = Limits(header_timeout=0.3, idle_timeout=5.0, body_timeout=0.3)


@dataclass
class Rig:
    gateway: HttpServer
    address: tuple[str, int]
    upstream: RecordingUpstream
    nursery: trio.Nursery

    def route(self, **kwargs: object) -> None:
        """Send every request to ``upstream`` (or the endpoints given) with these options."""
        endpoints = kwargs.pop("endpoints", [self.upstream.address])
        decision = Forward(RoundRobin(endpoints), **kwargs)  # type: ignore[arg-type]
        self.gateway.router = lambda request, peer: decision

    async def add_upstream(self, behaviour: str) -> RecordingUpstream:
        up = RecordingUpstream(behaviour)
        await self.nursery.start(up.serve)
        return up


@pytest.fixture(params=[True, False], ids=["reactor", "trio-tasks"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """The gateway with its connections driven by the reactor, and by trio tasks."""
    async with trio.open_nursery() as nursery:
        upstream = RecordingUpstream()
        await nursery.start(upstream.serve)
        gateway = HttpServer(
            lambda request, peer: Respond(404, reason="no-route"),
            limits=LIMITS,
            use_reactor=request.param,
        )
        address = await nursery.start(gateway.listen, "127.0.0.1", 0)
        r = Rig(gateway, address, upstream, nursery)
        r.route()
        yield r
        nursery.cancel_scope.cancel()


GET = b"GET /x HTTP/1.1\r\nHost: shop.example\r\n\r\n"


async def test_proxies_with_proxy_headers_and_keep_alive(rig: Rig) -> None:
    data, closed = await exchange(rig.address, GET + GET.replace(b"/x", b"/y"), wait=0.5)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert not closed or data.count(b"upstream") == 2
    first, second = rig.upstream.complete
    assert (first.target, second.target) == (b"/x", b"/y")
    fields = dict(first.headers)
    assert fields[b"host"] == b"shop.example"
    assert fields[b"x-forwarded-for"] == b"127.0.0.1"
    assert fields[b"x-forwarded-proto"] == b"http"
    assert fields[b"x-forwarded-host"] == b"shop.example"
    assert len(fields[b"x-request-id"]) == 32
    assert len(rig.upstream.received) == 1  # both requests on one pooled connection


async def test_pipelined_requests_answered_in_order(rig: Rig) -> None:
    reqs = b"".join(GET.replace(b"/x", b"/%d" % i) for i in range(5))
    data, _ = await exchange(rig.address, reqs, wait=0.5)
    order = [line.split(b" ")[1] for line in data.split(b"\n") if line.startswith(b"GET ")]
    assert order == [b"/0", b"/1", b"/2", b"/3", b"/4"]


async def test_curl_keep_alive_post_and_chunked(rig: Rig) -> None:
    require_tool("curl")
    url = "http://{}:{}".format(*rig.address)
    result = await trio.run_process(
        ["curl", "-sS", url + "/a", url + "/b", "-d", "hello", "-H", "Transfer-Encoding: chunked"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"body=5") == 2
    assert len(rig.upstream.received) == 1


async def test_expect_100_continue_with_curl(rig: Rig) -> None:
    require_tool("curl")
    url = "http://{}:{}/up".format(*rig.address)
    result = await trio.run_process(
        ["curl", "-sv", "-H", "Expect: 100-continue", "--data-binary", "@-", url],
        stdin=b"x" * 200_000,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"HTTP/1.1 100 Continue" in result.stderr
    assert b"body=200000" in result.stdout
    assert b"expect" not in dict(rig.upstream.complete[0].headers)


async def test_streams_a_large_chunked_upload(rig: Rig) -> None:
    """64 MiB in 64 KiB chunks: passed on piece by piece (the gateway never holds it)."""
    piece = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
    sock = trio.socket.socket()
    await sock.connect(rig.address)
    with sock:
        await sock.send(b"PUT /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1024):
            view = memoryview(piece)
            while view:
                view = view[await sock.send(view) :]
        await sock.send(b"0\r\n\r\n")
        reply = b""
        while b"body=" not in reply:
            reply += await sock.recv(65536)
    assert rig.upstream.bodies == [64 << 20]


@pytest.mark.parametrize(("name", "data", "status"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
async def test_malformed_requests_byte_by_byte(
    rig: Rig, name: str, data: bytes, status: int
) -> None:
    """Refused with the codec's status and a reason, the connection closed, and no request
    ever complete at the upstream (none of its bytes reach it when the head is bad)."""
    reply, closed = await exchange(rig.address, data, bytewise=True)
    assert status_of(reply) == status, reply
    reasons = (b"expectation-failed",) if status == 417 else (b"bad-request", b"headers-too-large")
    assert header_of(reply, b"x-mesh-reason") in reasons
    assert closed
    assert rig.upstream.complete == []
    head_is_bad = b"\r\n\r\n" not in data or status != 400 or not _head_ok(data)
    if head_is_bad:
        assert rig.upstream.total_bytes == 0


def _head_ok(data: bytes) -> bool:
    from mesh.http.errors import ProtocolError
    from mesh.http.h1 import Reader

    reader = Reader("server")
    reader.feed(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    try:
        return isinstance(reader.next_event(), Request)
    except ProtocolError:
        return False


async def test_bad_chunk_later_in_the_body_aborts_the_upstream_request(rig: Rig) -> None:
    sock = trio.socket.socket()
    await sock.connect(rig.address)
    with sock:
        await sock.send(
            b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await trio.sleep(0.2)  # the head and the first chunk are on their way upstream
        await sock.send(b"zz\r\n")
        reply = await sock.recv(65536)
        assert status_of(reply) == 400
        assert await sock.recv(65536) == b""
    await trio.sleep(0.1)
    assert rig.upstream.total_bytes > 0  # it had started...
    assert rig.upstream.complete == []  # ...and was never completed


async def test_oversized_head_431(rig: Rig) -> None:
    reply, closed = await exchange(rig.address, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000)
    assert status_of(reply) == 431 and closed
    assert header_of(reply, b"x-mesh-reason") == b"headers-too-large"


async def test_slow_client_408(rig: Rig) -> None:
    rig.gateway.limits = SLOW
    reply, closed = await exchange(rig.address, b"GET / HTTP/1.1\r\nHo", wait=3)
    assert status_of(reply) == 408 and closed
    assert header_of(reply, b"x-mesh-reason") == b"request-timeout"


async def test_slow_body_408_and_upstream_aborted(rig: Rig) -> None:
    rig.gateway.limits = SLOW
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"
    reply, closed = await exchange(rig.address, data, wait=3)
    assert status_of(reply) == 408 and closed
    assert rig.upstream.complete == []


async def test_upstream_dying_mid_response_closes_the_client(rig: Rig) -> None:
    dying = await rig.add_upstream(DIE_MID_BODY)
    rig.route(endpoints=[dying.address])
    reply, closed = await exchange(rig.address, GET, wait=3)
    assert closed
    assert status_of(reply) == 200
    assert reply.endswith(b"0123456789")  # what came, and not a byte pretending to be more


async def test_connect_failure_tries_the_next_endpoint(rig: Rig) -> None:
    rig.route(endpoints=[DEAD, rig.upstream.address])
    for _ in range(4):
        reply, _ = await exchange(rig.address, GET.replace(b"1.1", b"1.1\r\nConnection: close", 1))
        assert status_of(reply) == 200


@pytest.mark.parametrize(
    ("endpoints", "status", "reason"),
    [([DEAD], 502, b"upstream-connect-failure"), ([], 503, b"no-healthy-upstream")],
)
async def test_no_endpoint_to_be_had(
    rig: Rig, endpoints: list[tuple[str, int]], status: int, reason: bytes
) -> None:
    rig.route(endpoints=endpoints)
    reply, _ = await exchange(rig.address, GET, wait=0.5)
    assert status_of(reply) == status
    assert header_of(reply, b"x-mesh-reason") == reason


async def test_upstream_timeout_504(rig: Rig) -> None:
    silent = await rig.add_upstream(SILENT)
    rig.route(endpoints=[silent.address], timeouts=Timeouts(read=0.3))
    reply, _ = await exchange(rig.address, GET, wait=0.8)
    assert status_of(reply) == 504
    assert header_of(reply, b"x-mesh-reason") == b"upstream-timeout"


async def test_body_too_large_413(rig: Rig) -> None:
    rig.route(max_body=4)
    reply, closed = await exchange(
        rig.address, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert status_of(reply) == 413 and closed
    assert header_of(reply, b"x-mesh-reason") == b"body-too-large"
    assert rig.upstream.total_bytes == 0


async def test_direct_response_says_why(rig: Rig) -> None:
    rig.gateway.router = lambda request, peer: Respond(404, reason="no-route")
    reply, _ = await exchange(rig.address, GET, wait=0.3)
    assert status_of(reply) == 404
    assert header_of(reply, b"x-mesh-reason") == b"no-route"
    assert rig.gateway.reasons["no-route"] == 1


async def test_pooled_connection_closed_by_upstream_is_not_used(rig: Rig) -> None:
    closing = await rig.add_upstream(CLOSE_AFTER)
    rig.route(endpoints=[closing.address])
    for _ in range(3):
        reply, _ = await exchange(rig.address, GET.replace(b"1.1", b"1.1\r\nConnection: close", 1))
        assert status_of(reply) == 200
        await trio.sleep(0.05)  # the upstream's FIN arrives while the connection is idle
    assert len(closing.complete) == 3
    assert len(closing.received) == 3


async def test_upgrade_becomes_a_byte_tunnel(rig: Rig) -> None:
    echo = await rig.add_upstream(UPGRADE)
    rig.route(endpoints=[echo.address])
    sock = trio.socket.socket()
    await sock.connect(rig.address)
    with sock:
        await sock.send(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += await sock.recv(65536)
        assert status_of(head) == 101
        assert header_of(head, b"upgrade") == b"websocket"
        for message in (b"ping", b"\x00\xffbinary"):
            await sock.send(message)
            got = b""
            while len(got) < len(message):
                got += await sock.recv(65536)
            assert got == message
    assert dict(echo.complete[0].headers)[b"upgrade"] == b"websocket"


async def test_an_idle_keep_alive_connection_is_closed_silently(rig: Rig) -> None:
    """After ``idle_timeout`` with no byte of a next request, the connection is closed with
    no response (no 408: nothing was asked); the same for a connection that never spoke."""
    rig.gateway.limits = Limits(header_timeout=10.0, idle_timeout=0.3, body_timeout=0.5)
    for data in (GET, b""):
        start = trio.current_time()
        reply, closed = await exchange(rig.address, data, wait=3)
        took = trio.current_time() - start
        assert closed and 0.25 <= took < 2.5, took
        assert reply.count(b"HTTP/1.1 ") == (1 if data else 0), reply
        if data:
            assert status_of(reply) == 200


class _HeldKeepAlive(AcceptLoop):
    """Answers (keep-alive) once ``hold`` requests arrived; counts connections the other side
    closed."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.arrived = 0
        self.connections = 0
        self.closed_by_peer = 0
        self.all_in = trio.Event()

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        self.connections += 1
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await conn.recv(65536)
                    if not chunk:
                        self.closed_by_peer += 1
                        return
                    buf += chunk
                buf = buf.split(b"\r\n\r\n", 1)[1]
                self.arrived += 1
                if self.arrived >= self.hold:
                    self.all_in.set()
                await self.all_in.wait()
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def test_the_pool_keeps_at_most_max_idle_connections_per_endpoint(rig: Rig) -> None:
    from mesh.http.pool import Pool

    upstream = _HeldKeepAlive(hold=5)
    address = await rig.nursery.start(upstream.serve)
    rig.gateway.pool = Pool(max_idle=2)
    rig.route(endpoints=[address])
    replies: list[bytes] = []

    async def one() -> None:
        replies.append(
            (
                await exchange(
                    rig.address, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                )
            )[0]
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            for _ in range(5):  # five at once: five upstream connections
                clients.start_soon(one)
        assert [status_of(r) for r in replies] == [200] * 5
        assert upstream.connections == 5
    await until(lambda: upstream.closed_by_peer >= 3, 5)  # the three beyond the bound
    await trio.sleep(0.1)
    assert upstream.closed_by_peer == 3
    assert sum(len(idle) for idle in rig.gateway.pool._idle.values()) == 2
    # the next request goes out on a kept connection, not a new one
    reply, _ = await exchange(
        rig.address, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    )
    assert status_of(reply) == 200 and upstream.connections == 5


class _ResetAfterHead(AcceptLoop):
    """Reads a request head, then resets the connection before any response byte."""

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        import socket

        with conn:
            if await read_head(conn) is None:
                return
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )


async def test_an_upstream_reset_before_any_response_byte_is_502_upstream_reset(
    rig: Rig,
) -> None:
    address = await rig.nursery.start(_ResetAfterHead().serve)
    rig.route(endpoints=[address])
    reply, _ = await exchange(
        rig.address, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    )
    assert status_of(reply) == 502, reply
    assert header_of(reply, b"x-mesh-reason") == b"upstream-reset"
    assert rig.gateway.reasons["upstream-reset"] == 1


_BIG = 64 << 20  # bytes each way: more than every socket buffer between the two ends holds
_HELD = 32 << 20  # what the buffers of four loopback sockets can hold at most, with room


class _StallingUpstream(AcceptLoop):
    """Upload: reads the head, then nothing until ``go``, then the whole body. Download:
    answers with ``_BIG`` bytes as fast as the gateway takes them, counting what it sent."""

    def __init__(self) -> None:
        self.go = trio.Event()
        self.body = 0
        self.sent = 0

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += await conn.recv(65536)
            head, buf = buf.split(b"\r\n\r\n", 1)
            if head.startswith(b"GET"):
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % _BIG)
                block = b"d" * 65536
                while self.sent < _BIG:
                    self.sent += await conn.send(block[: _BIG - self.sent])
                return
            await self.go.wait()
            self.body = len(buf)
            while self.body < _BIG:
                chunk = await conn.recv(1 << 20)
                if not chunk:
                    return
                self.body += len(chunk)
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


async def test_bodies_stream_with_backpressure_both_ways(rig: Rig) -> None:
    """A stalled upstream stops the client's upload, a stalled client stops the upstream's
    download: the gateway takes no more than a few socket buffers of either, then passes
    every byte once the slow side reads."""
    rig.gateway.limits = Limits(header_timeout=10.0, idle_timeout=10.0, body_timeout=10.0)
    upstream = _StallingUpstream()
    address = await rig.nursery.start(upstream.serve)
    rig.route(endpoints=[address])
    sock = trio.socket.socket()
    await sock.connect(rig.address)
    with sock, trio.fail_after(60):
        await sock.send(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % _BIG)
        block, taken = b"u" * (1 << 20), 0
        with trio.move_on_after(1.5):  # as much as the gateway takes while the upstream stalls
            while taken < _BIG:
                taken += await sock.send(block[: _BIG - taken])
        assert taken < _HELD, taken
        upstream.go.set()
        while taken < _BIG:
            taken += await sock.send(block[: _BIG - taken])
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += await sock.recv(65536)
        assert status_of(reply) == 200 and upstream.body == _BIG

        await sock.send(b"GET /down HTTP/1.1\r\nHost: a\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += await sock.recv(1024)
        await trio.sleep(1.5)  # the client reads nothing: the upstream must stall
        assert upstream.sent < _HELD, upstream.sent
        got = len(head.split(b"\r\n\r\n", 1)[1])
        while got < _BIG:
            chunk = await sock.recv(1 << 20)
            assert chunk, got
            got += len(chunk)
    assert got == _BIG
    await until(lambda: upstream.sent == _BIG, 5)  # its task counts after its last send


class _DiesMidBody(AcceptLoop):
    """Answers with a body framed as ``framing`` says, sends part of it, then ends the
    connection (``reset``: a RST; else a FIN) before the body's end."""

    def __init__(self, framing: str, reset: bool) -> None:
        self.framing = framing
        self.reset = reset

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        import socket

        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += await conn.recv(65536)
            if self.framing == "chunked":
                await conn.send(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"
                )
            elif self.framing == "length":
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            else:  # close-delimited: only a RST tells it was cut
                await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789")
            await trio.sleep(0.05)
            if self.reset:
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )


@pytest.mark.parametrize(
    ("framing", "reset"),
    [("length", False), ("chunked", False), ("chunked", True), ("until-close", True)],
    ids=["length-fin", "chunked-fin", "chunked-rst", "until-close-rst"],
)
async def test_a_body_cut_short_upstream_is_never_passed_on_as_complete(
    rig: Rig, framing: str, reset: bool
) -> None:
    """The client gets what came and a connection that ends without the body's end: no last
    chunk, and a reset when only the connection's end could have said "complete"."""
    address = await rig.nursery.start(_DiesMidBody(framing, reset).serve)
    rig.route(endpoints=[address])
    sock = trio.socket.socket()
    await sock.connect(rig.address)
    reply, how = b"", "fin"
    with sock, trio.fail_after(5):  # closed, never left hanging
        await sock.send(GET)
        try:
            while chunk := await sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            how = "rst"
    assert status_of(reply) == 200, (reply, how)
    assert b"0123456789" in reply
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    if b"transfer-encoding: chunked" in head:
        assert not reply.endswith(b"0\r\n\r\n"), reply  # no last chunk: visibly incomplete
    elif b"content-length" not in head:
        assert how == "rst", reply  # close-delimited: a FIN would say "complete"
    else:
        assert len(reply.split(b"\r\n\r\n", 1)[1]) < 100  # fewer bytes than announced


async def test_a_client_that_leaves_mid_body_never_completes_the_upstream_request(
    rig: Rig,
) -> None:
    """10 of 100 announced body bytes, then the client's FIN: the upstream saw the request
    start and never end (the gateway does not make up the rest or pass on a short body)."""
    import socket

    sock = trio.socket.socket()
    await sock.connect(rig.address)
    with sock:
        await sock.send(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        await trio.sleep(0.2)  # the head and the first bytes are on their way upstream
        sock.shutdown(socket.SHUT_WR)
        with trio.fail_after(5):
            try:
                while await sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    await until(lambda: rig.upstream.total_bytes > 0, 5)
    await trio.sleep(0.2)
    assert rig.upstream.complete == []
