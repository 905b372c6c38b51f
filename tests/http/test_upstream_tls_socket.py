"""The TLS socket the pool hands out for an HTTPS backend, against a real TLS echo server:
the non-blocking send/recv contract (partial writes resumed with the same bytes, nothing left
unsent while the caller waits to read), the pool's liveness peek, close_notify on shutdown,
and handshake failures as TlsHandshakeError."""

from __future__ import annotations

import math
import os
import socket

import pytest
import trio

from mesh.http import upstream_tls
from mesh.http.errors import TlsHandshakeError
from mesh.http.pool import Pool, Upstream, close, connect, recv, send_all
from mesh.http.upstream_tls import TlsSocket
from mesh.tls import CertEntry, CertStore, TlsTerminator
from mesh.tls.upstream import TlsEndpoint, UpstreamTls
from tests.polling import until
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


async def serve_echo_tickets_late(
    term: TlsTerminator, release: trio.Event, *, task_status: trio.TaskStatus[int]
) -> None:
    """One connection: a TLS 1.3 echo that holds its session tickets (sent by OpenSSL as the
    handshake ends) until ``release``, as a slow server or a congested path would."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listener.socket.getsockname()[1])
    stream = await listener.accept()
    tls = term.session()
    while not tls.handshake_complete:
        tls.receive_data(await stream.receive_some(65536))
        if not tls.handshake_complete:
            await stream.send_all(tls.data_to_send())  # the server's flight
    tickets = tls.data_to_send()
    assert tickets  # what this test is about: records that carry no application data
    await release.wait()
    await stream.send_all(tickets)
    while data := await stream.receive_some(65536):
        tls.send(tls.receive_data(data))
        await stream.send_all(tls.data_to_send())
    await stream.aclose()
    await listener.aclose()


async def test_an_idle_connection_that_receives_only_session_tickets_is_reused(
    nursery: trio.Nursery,
) -> None:
    """A connection pooled before its TLS 1.3 NewSessionTicket records arrived: they wake the
    pool's liveness peek, which must take them for what they are (handshake records, no
    plaintext), not for unsolicited bytes or a close, and hand the connection out."""
    release = trio.Event()
    port = await nursery.start(serve_echo_tickets_late, terminator(), release)
    endpoint = TlsEndpoint("127.0.0.1", port, UpstreamTls())
    sock = await connect(endpoint, 5.0)
    assert isinstance(sock, TlsSocket) and sock.session.version == "TLSv1.3"
    pool = Pool()
    pool.put(Upstream(sock, endpoint))
    release.set()
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(sock)  # the tickets wait in the kernel's buffer
    again = pool.take(endpoint)
    assert again is not None and again.sock is sock
    # Still a working connection: the tickets were consumed, the echo comes back whole.
    await send_all(sock, b"ping", 5.0)
    assert await read_exactly(sock, 4) == b"ping"
    sock.close()


async def serve_held(
    term: TlsTerminator,
    release: trio.Event,
    got: list[bytes],
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    """One TLS connection that reads nothing until ``release``, then everything: ``got`` ends
    with the plaintext and b"closed cleanly" (close_notify) or b"cut" (a truncated stream)."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listener.socket.getsockname()[1])
    stream = await listener.accept()
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # fills sooner
    tls = trio.SSLStream(stream, term.context, server_side=True)  # close_notify required
    await tls.do_handshake()
    await release.wait()
    data = bytearray()
    try:
        while chunk := await tls.receive_some(65536):
            data += chunk
        got += [bytes(data), b"closed cleanly"]
    except trio.BrokenResourceError:
        got += [bytes(data), b"cut"]
    done.set()
    await trio.aclose_forcefully(tls)
    await listener.aclose()


async def fill(sock: TlsSocket) -> bytes:
    """Send until the peer's window is full, then have more ciphertext pending than any window
    here holds (the tail a record begun leaves, but larger, so a flush surely has to wait);
    returns every plaintext byte the peer must get, in order."""
    stream = bytes(range(256)) * 4096 * 8  # 8 MiB, more than the shrunk windows hold
    counted = 0
    for _ in range(128):
        try:
            counted += sock.send(stream[counted : counted + 65536])
        except BlockingIOError:
            break
    assert sock._out, "the window must be full for this test to mean anything"
    begun = stream[: counted + sock._owed]  # a record begun goes out whole: it cannot be unsent
    extra = b"tail" * (128 * 1024)  # 512 KiB: several times what the windows hold
    sock.session.send(extra)
    sock._out += sock.session.data_to_send()
    return begun + extra


@pytest.mark.parametrize("how", ["shutdown", "close"])
async def test_closing_with_the_window_full_delivers_every_record_then_close_notify(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Ciphertext still pending when the connection is half-closed (a tunnel's direction that
    ended) or closed goes out before the FIN, and so does close_notify: the peer reads a
    whole TLS stream, not a record cut short."""
    # The bound is not what this test is about: however slowly a loaded machine moves the
    # bytes through the small windows, the flush must not give up here.
    monkeypatch.setattr(upstream_tls, "CLOSE_FLUSH_SECONDS", 120.0)
    release, done, got = trio.Event(), trio.Event(), list[bytes]()
    port = await nursery.start(serve_held, terminator(), release, got, done)
    sock = await connect(TlsEndpoint("127.0.0.1", port, UpstreamTls()), 5.0)
    assert isinstance(sock, TlsSocket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    expected = await fill(sock)
    if how == "shutdown":
        sock.shutdown(socket.SHUT_WR)
    else:
        close(sock)
    release.set()
    with trio.fail_after(120):
        await done.wait()
    data, end = got
    assert end == b"closed cleanly"
    assert len(data) == len(expected) and data == expected
    if how == "shutdown":
        sock.close()


async def test_a_peer_that_never_reads_does_not_keep_a_closed_connection_open(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush on close is bounded: the descriptor stays open while its last records wait
    for the peer's window, and closes once CLOSE_FLUSH_SECONDS have passed without it."""
    monkeypatch.setattr(upstream_tls, "CLOSE_FLUSH_SECONDS", 0.2)
    release, done, got = trio.Event(), trio.Event(), list[bytes]()
    port = await nursery.start(serve_held, terminator(), release, got, done)
    sock = await connect(TlsEndpoint("127.0.0.1", port, UpstreamTls()), 5.0)
    assert isinstance(sock, TlsSocket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    await fill(sock)
    fd = sock.fileno()
    inode = os.fstat(fd).st_ino

    def same_socket() -> bool:
        try:
            return os.fstat(fd).st_ino == inode
        except OSError:
            return False

    close(sock)
    assert sock.fileno() == -1 and same_socket()  # closed for its owner, still flushing
    await until(lambda: not same_socket())  # the peer never read: the flush gave up
    release.set()  # the server reads the stream: cut short, as it must be by now
    with trio.fail_after(10):
        await done.wait()
    assert got[1] == b"cut"


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
