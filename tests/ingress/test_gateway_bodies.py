"""Request bodies through the gateway's retries and mirrors: a body kept (bounded) for a
retry and replayed byte for byte; a body over the retry buffer streamed and never retried;
a huge upload never held; mirror copies with their bodies, never slowing the request."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from prometheus_client import generate_latest

from mesh.config.gateway import (
    GatewayBackend,
    GatewayEndpoint,
    Mirror,
    Policy,
    Retry,
    ServedGatewayConfig,
)
from mesh.http.errors import ProtocolError
from mesh.http.events import CLOSED, NEED_DATA, Data, EndOfMessage, Request
from mesh.http.h1 import Reader
from mesh.http.replay import RETRY_BUFFER
from mesh.http.tee import MIRROR_BUFFER
from tests.http.upstreams import AcceptLoop, status_of
from tests.ingress.harness import start_gateway
from tests.ingress.test_gateway_features import one_route


@dataclass
class Scripted(AcceptLoop):
    """Answers each complete request with the next status of ``plan`` (200 when it is
    empty; 0: a reset instead of an answer) and records what came: the request, its body, the raw bytes of each connection.
    ``reset_on_head``: reset the first connection as soon as a request head arrives.
    ``keep``: False only counts body bytes (for uploads too large to record)."""

    plan: list[int] = field(default_factory=list)
    reset_on_head: bool = False
    keep: bool = True
    requests: list[tuple[Request, bytes]] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)
    counted: int = 0
    address: tuple[str, int] = ("127.0.0.1", 0)

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        record = bytearray()
        self.raw.append(record)
        first = len(self.raw) == 1
        reader = Reader("server")
        body = bytearray()
        with conn:
            try:
                while True:
                    ev = reader.next_event()
                    if ev is NEED_DATA:
                        data = await conn.recv(1 << 20)
                        if self.keep:
                            record += data
                        reader.feed(data)
                    elif ev is CLOSED:
                        return
                    elif type(ev) is Request:
                        request = ev
                        body = bytearray()
                        if first and self.reset_on_head:
                            conn.setsockopt(
                                trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\1\0\0\0\0\0\0\0"
                            )
                            return
                    elif type(ev) is Data:
                        self.counted += len(ev.data)
                        if self.keep:
                            body += ev.data
                    elif type(ev) is EndOfMessage:
                        self.requests.append((request, bytes(body)))
                        status = self.plan.pop(0) if self.plan else 200
                        if status == 0:  # no answer: a reset
                            conn.setsockopt(
                                trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\1\0\0\0\0\0\0\0"
                            )
                            return
                        text = b"try %d\n" % len(self.requests)
                        await conn.send(
                            b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                            % (status, len(text), text)
                        )
                        reader.next_message()
            except (OSError, ProtocolError):
                return


async def send_request(
    port: int, head: bytes, pieces: list[bytes], pause: float = 0.0
) -> tuple[bytes, bool]:
    """``head``, then each piece (``pause`` seconds between them); the reply until close."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    with sock:
        await sock.send(head)
        for piece in pieces:
            if pause:
                await trio.sleep(pause)
            view = memoryview(piece)
            while view:
                view = view[await sock.send(view) :]
        reply = b""
        with trio.move_on_after(10):
            while data := await sock.recv(65536):
                reply += data
            return reply, True
        return reply, False


def chunked(pieces: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


async def test_a_post_with_a_body_is_retried_after_503_with_the_same_body(
    nursery: trio.Nursery,
) -> None:
    """The route allows non-idempotent retries: the first try gets 503, the second sees the
    whole body, byte for byte, and its answer is the client's."""
    up = Scripted(plan=[503])
    ep = await nursery.start(up.serve)
    retry = Retry(attempts=2, codes=(503,), non_idempotent=True)
    gw = await start_gateway(nursery, one_route([ep], retry=retry))
    body = os.urandom(40_000)
    head = b"POST /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    # in three pieces: the body crosses several reads of the gateway
    reply, _ = await send_request(
        gw.port, head % len(body), [body[:1000], body[1000:30000], body[30000:]], pause=0.05
    )
    assert status_of(reply) == 200 and reply.endswith(b"try 2\n")
    assert [b for _, b in up.requests] == [body, body]
    # the bytes after each upstream head are the same bytes
    tails = [bytes(r).split(b"\r\n\r\n", 1)[1] for r in up.raw]
    assert len(tails) == 2 and tails[0] == tails[1] == body


async def test_a_chunked_body_is_retried_with_the_same_chunks(nursery: trio.Nursery) -> None:
    up = Scripted(plan=[503, 503])
    ep = await nursery.start(up.serve)
    gw = await start_gateway(nursery, one_route([ep], retry=Retry(attempts=2, codes=(503,))))
    pieces = [os.urandom(n) for n in (10, 5000, 1, 20000)]
    head = b"PUT /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply, _ = await send_request(gw.port, head, chunked(pieces), pause=0.02)
    assert status_of(reply) == 200 and reply.endswith(b"try 3\n")
    assert [b for _, b in up.requests] == [b"".join(pieces)] * 3
    tails = {bytes(r).split(b"\r\n\r\n", 1)[1] for r in up.raw}
    assert tails == {b"".join(chunked(pieces))}  # the same framing on every try


async def test_a_reset_mid_body_is_retried_with_what_was_sent_and_the_rest(
    nursery: trio.Nursery,
) -> None:
    """The first connection is reset while the client is still sending: the retry replays
    the part already sent and goes on with the rest as it arrives."""
    up = Scripted(reset_on_head=True)
    ep = await nursery.start(up.serve)
    gw = await start_gateway(nursery, one_route([ep], retry=Retry(attempts=1, codes=(503,))))
    body = os.urandom(30_000)
    head = b"PUT /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    reply, _ = await send_request(gw.port, head % len(body), [body[:7000], body[7000:]], 0.3)
    assert status_of(reply) == 200
    assert len(up.raw) == 2 and [b for _, b in up.requests] == [body]


async def test_a_body_over_the_retry_buffer_is_streamed_and_not_retried(
    nursery: trio.Nursery,
) -> None:
    up = Scripted(plan=[503])
    ep = await nursery.start(up.serve)
    gw = await start_gateway(nursery, one_route([ep], retry=Retry(attempts=2, codes=(503,))))
    body = random.Random(1).randbytes(RETRY_BUFFER + 1)
    head = b"PUT /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    reply, _ = await send_request(gw.port, head % len(body), [body])
    assert status_of(reply) == 503
    assert [b for _, b in up.requests] == [body]
    # exactly at the limit it is kept, and retried
    up.plan[:] = [503]
    body = body[:RETRY_BUFFER]
    reply, _ = await send_request(gw.port, head % len(body), [body])
    assert status_of(reply) == 200 and [b for _, b in up.requests[1:]] == [body, body]


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_a_huge_upload_on_a_retried_mirrored_route_is_never_held(
    nursery: trio.Nursery,
) -> None:
    """1 GiB (generated, Content-Length) through a route with a retry policy and a mirror:
    it reaches the backend whole while the process grows by far less than the body (the
    retry buffer is released past its limit, the mirror copy dropped past its own)."""
    total = 1 << 30
    up = Scripted(keep=False)
    ep = await nursery.start(up.serve)
    shadow = Scripted(keep=False)
    shadow_ep = await nursery.start(shadow.serve)
    gw = await start_gateway(nursery, mirrored([ep], shadow_ep, retry=Retry(attempts=2)))
    piece = os.urandom(1 << 20)
    before = _rss()
    peak = before

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, _rss())
            await trio.sleep(0.05)

    head = b"PUT /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    async with trio.open_nursery() as inner:
        inner.start_soon(watch)
        with trio.fail_after(240):
            reply, _ = await send_request(gw.port, head % total, [piece] * (total >> 20))
        inner.cancel_scope.cancel()
    assert status_of(reply) == 200
    assert up.counted == total and len(up.requests) == 1
    assert peak - before < 64 << 20, (before, peak)


def mirrored(
    endpoints: list[tuple[str, int]], shadow: tuple[str, int], **route: object
) -> ServedGatewayConfig:
    config = one_route(endpoints, policy=Policy(mirrors=(Mirror(backend="default/m:80"),)), **route)
    return config.model_copy(
        update={
            "backends": (
                *config.backends,
                GatewayBackend(
                    name="default/m:80", endpoints=(GatewayEndpoint(ip=shadow[0], port=shadow[1]),)
                ),
            )
        }
    )


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(500):  # at most about 5 s
        if check():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_a_mirror_copy_carries_the_same_body(nursery: trio.Nursery) -> None:
    up = Scripted()
    shadow = Scripted()
    gw = await start_gateway(
        nursery, mirrored([await nursery.start(up.serve)], await nursery.start(shadow.serve))
    )
    body = os.urandom(100_000)
    head = (
        b"POST /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n"
    )
    reply, _ = await send_request(gw.port, head % len(body), [body[:5], body[5:]], 0.05)
    assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    pieces = [b"abc", os.urandom(70_000)]
    head = b"PUT /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply, _ = await send_request(gw.port, head, chunked(pieces), 0.05)
    assert status_of(reply) == 200
    await _until(lambda: len(shadow.requests) == 2 and gw.mirrors.sent == 2)
    got = [(r.method, r.target, b) for r, b in shadow.requests]
    assert got == [(b"POST", b"/r", body), (b"PUT", b"/c", b"".join(pieces))]
    assert b"expect" not in dict(shadow.requests[0][0].headers)  # the copy does not wait
    assert [b for _, b in up.requests] == [body, b"".join(pieces)]
    assert gw.mirrors.dropped == 0


class Stalled(AcceptLoop):
    """Accepts and never reads: its window fills, a writer to it stalls."""

    def __init__(self) -> None:
        self.connections: list[trio.socket.SocketType] = []

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        self.connections.append(conn)
        await trio.sleep_forever()


async def test_a_slow_mirror_never_stalls_the_request(nursery: trio.Nursery) -> None:
    """A mirror that reads nothing: the request's 32 MiB body reaches the backend in time;
    the copy, once it falls ``MIRROR_BUFFER`` behind, is dropped and its connection reset."""
    up = Scripted(keep=False)
    stalled = Stalled()
    gw = await start_gateway(
        nursery, mirrored([await nursery.start(up.serve)], await nursery.start(stalled.serve))
    )
    total = 32 << 20
    assert total > 8 * MIRROR_BUFFER  # far more than the copy's queue and socket buffers
    head = b"PUT /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    with trio.fail_after(30):
        reply, _ = await send_request(gw.port, head % total, [b"m" * (1 << 20)] * 32)
    assert status_of(reply) == 200 and up.counted == total
    await _until(lambda: gw.mirrors.dropped == 1 and gw.mirrors.in_flight == 0)
    assert gw.mirrors.sent == 0
    assert b"mesh_gateway_mirror_dropped_total 1.0" in generate_latest(gw.registry)
    # the stalled mirror's connection was reset: reading it ends in an error, not a request
    (conn,) = stalled.connections
    got = bytearray()
    with trio.fail_after(5):
        try:
            while data := await conn.recv(1 << 20):
                got += data
        except OSError:
            pass
    assert len(got) < total


async def test_a_dead_mirror_never_fails_the_request(nursery: trio.Nursery) -> None:
    up = Scripted()
    gw = await start_gateway(nursery, mirrored([await nursery.start(up.serve)], ("127.0.0.1", 1)))
    body = os.urandom(300_000)
    head = b"POST /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    reply, _ = await send_request(gw.port, head % len(body), [body])
    assert status_of(reply) == 200
    assert [b for _, b in up.requests] == [body]
    await _until(lambda: gw.mirrors.failed == 1 and gw.mirrors.in_flight == 0)


async def test_retries_on_a_kept_alive_connection_and_after_100_continue(
    nursery: trio.Nursery,
) -> None:
    """What went to the client before this request's answer (an earlier response on the same
    connection, a 100 Continue) does not stop a retry; the 100 Continue is sent once."""
    up = Scripted()
    ep = await nursery.start(up.serve)
    gw = await start_gateway(nursery, one_route([ep], retry=Retry(attempts=1, codes=(503,))))
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", gw.port))
    reply = b""
    with sock, trio.fail_after(10):
        await sock.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        while not reply.endswith(b"try 1\n"):
            reply += await sock.recv(65536)
        up.plan[:] = [0]  # the first try of the second request is reset
        await sock.send(
            b"PUT /2 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        while b"100 Continue\r\n\r\n" not in reply:
            reply += await sock.recv(65536)
        await sock.send(b"hello")
        while not reply.endswith(b"try 3\n"):
            reply += await sock.recv(65536)
    assert reply.count(b"HTTP/1.1 100 Continue") == 1 and reply.count(b"HTTP/1.1 200 ") == 2
    tries = [(r.target, b) for r, b in up.requests]
    assert tries == [(b"/1", b""), (b"/2", b"hello"), (b"/2", b"hello")]
