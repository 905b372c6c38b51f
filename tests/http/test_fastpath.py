"""The common exchange's fast path (forward._simple) against the general path, differentially:
the same client bytes and the same upstream answer through a gateway with the fast path and
one without must give the same bytes at the upstream, the same bytes to the client and the
same end of the connection. The answers are a table of framings (whole, split, chunked, 1xx,
until close, refused by the strict codec) and a seeded fuzz of them."""

from __future__ import annotations

import random
import re
import socket
from dataclasses import dataclass, field

import pytest
import trio

from mesh.http import forward as forward_module
from mesh.http.balance import RoundRobin
from mesh.http.decision import Forward, Timeouts
from mesh.http.server import HttpServer, Limits
from tests.http.upstreams import AcceptLoop

WARM = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwarm"
GET = b"GET /%d HTTP/1.1\r\nHost: a.example\r\n\r\n"

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 3\r\n\r\nno\n",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\n"
    b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil the connection closes",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",  # cut short
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",  # bytes nobody asked for
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",  # a switch nobody asked for
    b"",  # closed without a word
    b"garbage\r\n\r\n",
]
REQUESTS = [
    GET,
    b"GET /%d HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    b"HEAD /%d HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"GET /%d HTTP/1.0\r\nHost: a.example\r\n\r\n",
    b"POST /%d HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\n"
    b"X-Request-Id: fixed\r\n\r\n",
]
_ID = re.compile(rb"x-request-id: [0-9a-f]{32}|x-forwarded-port: [0-9]+")  # differ per run
# A field line: the fast path forwards field lines as they came, the general one rewrites them
# as ``name: value`` with the name in lower case; RFC 9110 section 5.1 makes the two equal.
_FIELD_LINE = re.compile(rb"(?m)^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*\r$")


def _same_fields(data: bytes) -> bytes:
    return _FIELD_LINE.sub(lambda m: m[1].lower() + b": " + m[2] + b"\r", data)


@dataclass
class Scripted(AcceptLoop):
    """An upstream answering each connection's first request with WARM, its second with
    ``answer`` (then it closes), recording the bytes it received."""

    answer: bytes = b""
    received: bytearray = field(default_factory=bytearray)
    address: tuple[str, int] = ("127.0.0.1", 0)

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        buf = b""
        with conn:
            for reply in (WARM, self.answer):
                while b"\r\n\r\n" not in buf:
                    data = await conn.recv(65536)
                    if not data:
                        return
                    self.received += data
                    buf += data
                buf = buf.split(b"\r\n\r\n", 1)[1]
                if reply:
                    await conn.send(reply)
            await trio.sleep(0.05)


@dataclass
class Outcome:
    upstream: bytes
    client: bytes
    simple_calls: int


async def _run(fast: bool, request: bytes, answer: bytes) -> Outcome:
    calls = [0]
    original = forward_module._simple

    async def counting(*args: object, **kwargs: object) -> bool | None:
        calls[0] += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    upstream = Scripted(answer)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(forward_module, "_simple", counting)
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            decision = Forward(RoundRobin([upstream.address]), timeouts=Timeouts(read=1.0))
            gateway = HttpServer(lambda req, peer: decision, limits=Limits(idle_timeout=2.0))
            gateway.fast = fast
            address = await nursery.start(gateway.listen, "127.0.0.1", 0)
            sock = trio.socket.socket()
            await sock.connect(address)
            out = bytearray()
            with sock:
                await sock.send(GET % 0)
                while not out.endswith(b"warm"):
                    out += await sock.recv(65536)
                await sock.send(request % 1 if b"%d" in request else request)
                sock.shutdown(socket.SHUT_WR)
                with trio.move_on_after(3):
                    try:
                        while data := await sock.recv(65536):
                            out += data
                    except OSError:
                        out += b"<reset>"
            nursery.cancel_scope.cancel()
    return Outcome(_ID.sub(b"*", bytes(upstream.received)), bytes(out), calls[0])


async def _agree(request: bytes, answer: bytes) -> Outcome:
    fast = await _run(True, request, answer)
    general = await _run(False, request, answer)
    assert general.simple_calls == 0
    assert _same_fields(fast.upstream) == _same_fields(general.upstream), (request, answer)
    assert _same_fields(fast.client) == _same_fields(general.client), (request, answer)
    return fast


@pytest.mark.parametrize("answer", ANSWERS)
async def test_fast_and_general_paths_agree_on_each_framing(answer: bytes) -> None:
    outcome = await _agree(GET, answer)
    assert outcome.simple_calls == 1  # the second request took the fast path


@pytest.mark.parametrize("request_bytes", REQUESTS)
async def test_fast_and_general_paths_agree_on_each_request(request_bytes: bytes) -> None:
    for answer in ANSWERS[:4]:
        await _agree(request_bytes, answer)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One edit where it hurts most: a framing byte, a digit, a CR or LF, a space."""
    pieces = [b"\r", b"\n", b" ", b":", b"0", b"9", b",", b"\r\n", b"\t", b"\x00", b"-"]
    i = rng.randrange(len(data) + 1)
    kind = rng.randrange(3)
    if kind == 0:
        return data[:i] + rng.choice(pieces) + data[i:]
    if kind == 1:
        return data[:i] + data[i + 1 :]
    return data[:i] + rng.choice(pieces) + data[i + 1 :]


async def test_fast_and_general_paths_agree_on_fuzzed_answers() -> None:
    rng = random.Random(8)
    seeds = [a for a in ANSWERS if a]
    for _ in range(40):
        answer = rng.choice(seeds)
        for _ in range(rng.randrange(1, 3)):
            answer = _mutate(rng, answer)
        await _agree(GET, answer)


async def test_a_dead_pooled_connection_is_tried_again_once_for_an_idempotent_request() -> None:
    # The upstream reads the second request and closes without a word: the fast path finds
    # its pooled connection dead and hands the request to forward.after_dead.
    outcome = await _agree(GET, b"")
    assert outcome.simple_calls == 1
    assert outcome.upstream.count(b"GET /1 HTTP/1.1") == 2  # the dead connection, a fresh one
    assert outcome.client.count(b"HTTP/1.1 200 ") == 2
    assert outcome.client.endswith(b"warm")


async def test_a_dead_pooled_connection_is_not_tried_again_for_a_post() -> None:
    outcome = await _agree(b"POST /%d HTTP/1.1\r\nHost: a.example\r\n\r\n", b"")
    assert outcome.simple_calls == 1
    assert outcome.upstream.count(b"POST /1 HTTP/1.1") == 1
    assert b"HTTP/1.1 502 " in outcome.client
    assert b"x-mesh-reason: upstream-reset" in outcome.client
