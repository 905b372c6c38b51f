"""The admin server and the config-stream client on the engine's codec (mesh.http.h1):
framing both ways, the strictness the gateway has, and bad answers as stream errors."""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator

import pytest
import trio

from mesh.httpserve import MAX_BODY, HttpServer, Request, Response, StreamingResponse, text
from mesh.stream_client import StreamError, fetch_json
from tests.conftest import unavailable


async def _routes(request: Request) -> Response | StreamingResponse:
    if request.path == "/lines":

        async def lines() -> AsyncIterator[bytes]:
            for i in range(3):
                yield b'{"n": %d}\n' % i

        return StreamingResponse(lines())
    return text(200, f"hello {request.path}")


async def raw(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    out = b""
    with trio.fail_after(5):
        async with stream:
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = HttpServer(("127.0.0.1", 0), _routes, read_timeout=1.0, idle_timeout=2.0)
    async with trio.open_nursery() as nursery:
        yield await nursery.start(server.run)
        nursery.cancel_scope.cancel()


async def test_head_keep_alive_and_pipelining(port: int) -> None:
    reply = await raw(
        port,
        b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    heads = reply.split(b"HTTP/1.1 200 OK\r\n")
    assert len(heads) == 4 and heads[0] == b""
    assert b"content-length: 9\r\n\r\n" in heads[1] and not heads[1].endswith(b"/a\n")
    assert heads[2].endswith(b"\r\n\r\nhello /b\n")
    assert heads[3].endswith(b"connection: close\r\n\r\nhello /c\n")


async def test_streaming_is_chunked_for_1_1_and_until_close_for_1_0(port: int) -> None:
    body = b'{"n": 0}\n{"n": 1}\n{"n": 2}\n'
    chunked = await raw(port, b"GET /lines HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, rest = chunked.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head
    assert rest == b"".join(b"9\r\n%s\r\n" % line for line in body.splitlines(True)) + b"0\r\n\r\n"
    plain = await raw(port, b"GET /lines HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head, rest = plain.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head and b"connection: close" in head
    assert rest == body


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # h11 accepts these; the gateway's codec does not, nor does the admin port now
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
)
async def test_strict_like_the_gateway(port: int, data: bytes, status: int) -> None:
    reply = await raw(port, data)
    assert reply.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in reply


async def test_body_over_the_limit_is_413(port: int) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reply = b""
    with trio.fail_after(5):
        async with stream:
            await stream.send_all(head + b"x" * (MAX_BODY + 1))
            while chunk := await stream.receive_some(65536):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 ")


async def _answer_with(reply: bytes, stream: trio.SocketStream) -> None:
    async with stream:
        await stream.receive_some(65536)
        await stream.send_all(reply)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\n[1, 2]", (200, [1, 2])),  # the body ends with the connection
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
            (404, {}),
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n", (200, [])),
    ],
)
async def test_client_reads_any_framing(reply: bytes, expected: tuple[int, object]) -> None:
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(
                trio.serve_tcp, functools.partial(_answer_with, reply), 0, host="127.0.0.1"
            )
        )
        port = listener.socket.getsockname()[1]
        with trio.fail_after(5):
            assert await fetch_json(f"http://127.0.0.1:{port}", "/x") == expected
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # cut short
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"",
    ],
)
async def test_client_turns_bad_answers_into_stream_errors(reply: bytes) -> None:
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(
                trio.serve_tcp, functools.partial(_answer_with, reply), 0, host="127.0.0.1"
            )
        )
        port = listener.socket.getsockname()[1]
        with trio.fail_after(5), pytest.raises(StreamError):
            await fetch_json(f"http://127.0.0.1:{port}", "/x")
        nursery.cancel_scope.cancel()


async def test_client_over_ipv6_sends_a_bracketed_host() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        unavailable("no IPv6 loopback")
    seen: list[str] = []

    async def host_of(request: Request) -> Response:
        seen.append(dict(request.headers)["host"])
        return text(200, "ok")

    server = HttpServer(("::1", 0), host_of)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        with trio.fail_after(5):
            assert await fetch_json(f"http://[::1]:{port}", "/") == (200, "ok\n")
        nursery.cancel_scope.cancel()
    assert seen == [f"[::1]:{port}"]
