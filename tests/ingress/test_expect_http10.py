"""``Expect: 100-continue`` on the running gateway: an HTTP/1.1 client gets its interim
``100 Continue`` before it sends the body; an HTTP/1.0 client never does (RFC 9110 section
15.2: "a server MUST NOT send a 1xx response to an HTTP/1.0 client"), and its request is
still forwarded, body and all, once the body comes."""

from __future__ import annotations

import pytest
import trio

from tests.http.upstreams import status_of
from tests.ingress.harness import start_gateway
from tests.ingress.test_gateway_bodies import Scripted
from tests.ingress.test_gateway_features import one_route

BODY = b"hello, expectant world"


@pytest.mark.parametrize(("version", "interim"), [(b"1.1", True), (b"1.0", False)])
async def test_100_continue_only_to_an_http_1_1_client(
    nursery: trio.Nursery, version: bytes, interim: bool
) -> None:
    up = Scripted()
    gw = await start_gateway(nursery, one_route([await nursery.start(up.serve)]))
    head = (
        b"POST /r HTTP/%s\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % (version, len(BODY))
    )
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", gw.port))
    with sock:
        await sock.send(head)
        early = b""  # what the gateway says before the body is sent
        with trio.move_on_after(0.5):
            while b"\r\n\r\n" not in early:
                data = await sock.recv(65536)
                if not data:
                    break
                early += data
        await sock.send(BODY)
        reply = early
        with trio.fail_after(10):
            while data := await sock.recv(65536):
                reply += data
    assert (early == b"HTTP/1.1 100 Continue\r\n\r\n") is interim, early
    assert reply.count(b"100 Continue") == (1 if interim else 0), reply
    final = reply.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert status_of(final) == 200, reply
    assert [body for _, body in up.requests] == [BODY]
