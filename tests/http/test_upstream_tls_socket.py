"""The TLS socket the pool hands out for an HTTPS backend, against a real TLS echo server:
the non-blocking send/recv contract (partial writes resumed with the same bytes, nothing left
unsent while the caller waits to read), the pool's liveness peek, close_notify on shutdown,
and handshake failures as TlsHandshakeError."""

from __future__ import annotations

import math
import socket

import pytest
import trio

from mesh.http.errors import TlsHandshakeError
from mesh.http.pool import Pool, Upstream, connect, recv, send_all
from mesh.http.upstream_tls import TlsSocket
from mesh.tls import CertEntry, CertStore, TlsTerminator
from mesh.tls.upstream import TlsEndpoint, UpstreamTls
from tests.tls.pki import CA
from tests.tls.servers import serve_echo

ca = CA()
SNI = "echo.internal"
ECHO = ca.issue(SNI)


def terminator() -> TlsTerminator:
    return TlsTerminator(CertStore.build([CertEntry("test", ECHO.cert_pem, ECHO.key_pem)]))


async def read_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    with trio.fail_after(10):
        while len(got) < n:
            chunk = await recv(sock, math.inf)
            assert chunk, "EOF before the echo was complete"
            got += chunk
    return bytes(got)


async def test_echo_large_writes_peek_and_close_notify(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_echo, terminator())
    tls = UpstreamTls(
        server_name="echo.internal", verify=True, verify_names=("echo.internal",), ca_pem=ca.pem
    )
    sock = await connect(TlsEndpoint("127.0.0.1", port, tls), 5.0)
    assert isinstance(sock, TlsSocket) and sock.session.version in ("TLSv1.2", "TLSv1.3")
    # Far more than the socket buffers hold: send() must report partial progress honestly and
    # a caller resuming from its count must deliver every byte, in order.
    data = bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB
    async with trio.open_nursery() as inner:
        inner.start_soon(send_all, sock, data, 10.0)
        echoed = await read_exactly(sock, len(data))
    assert echoed == data
    # Idle and nothing unsolicited: the pool's peek says reusable (BlockingIOError).
    pool = Pool()
    pool.put(Upstream(sock, TlsEndpoint("127.0.0.1", port, tls)))
    again = pool.take(TlsEndpoint("127.0.0.1", port, tls))
    assert again is not None and again.sock is sock
    # shutdown(SHUT_WR) sends close_notify: the echo server ends, and so does our read.
    sock.shutdown(socket.SHUT_WR)
    with trio.fail_after(5):
        assert await recv(sock, math.inf) == b""
    sock.close()


@pytest.mark.parametrize(
    ("tls", "why"),
    [
        (UpstreamTls(SNI, verify=True, verify_names=(SNI,), ca_pem=CA().pem), "verify failed"),
        (UpstreamTls(SNI, verify=True, verify_names=("other.internal",), ca_pem=ca.pem), "name"),
        (UpstreamTls(SNI, verify=True, verify_names=(SNI,)), "verify failed"),  # system store
        # Without SNI the server answers with its default (self-signed) certificate.
        (UpstreamTls(None, verify=True, verify_names=(SNI,), ca_pem=ca.pem), "verify failed"),
    ],
)
async def test_handshake_failures(nursery: trio.Nursery, tls: UpstreamTls, why: str) -> None:
    port = await nursery.start(serve_echo, terminator())
    with pytest.raises(TlsHandshakeError) as caught:
        await connect(TlsEndpoint("127.0.0.1", port, tls), 5.0)
    assert why in str(caught.value)


async def test_a_server_that_is_not_tls(nursery: trio.Nursery) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    async def answer_plain() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(1024)
            await conn.send(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    nursery.start_soon(answer_plain)
    port = listener.getsockname()[1]
    with pytest.raises(TlsHandshakeError):
        await connect(TlsEndpoint("127.0.0.1", port, UpstreamTls()), 5.0)
    listener.close()
