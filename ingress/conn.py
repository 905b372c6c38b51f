"""The client side of one gateway connection: a socket-like object over plain TCP or TLS.

The engine (mesh.http.server, forward, pool) works on non-blocking sockets: it calls
``recv``/``send`` and, on ``BlockingIOError``, waits for the descriptor. :class:`Downstream`
offers exactly that over either a plain socket or a
:class:`~mesh.http.upstream_tls.TlsSocket` (the socket-like TLS the engine uses toward
backends, here with a server session), so TLS needs nothing from the engine.

Why a TlsSocket (memory BIOs) and not an ``ssl.SSLSocket``: ending a connection right.
``SSLSocket.unwrap`` calls SSL_shutdown twice, the second time reading from the descriptor,
and OpenSSL drops the connection on any application data it finds there
(APPLICATION_DATA_AFTER_CLOSE_NOTIFY): bytes a client was still sending into a half-closed
tunnel were lost. When the client's window was full the close_notify stayed inside OpenSSL
and the FIN went out without it; and ``SSLSocket.close`` says no close_notify at all, so every
connection the gateway closed ended in a ragged EOF. A TlsSocket queues close_notify behind
the last record and writes both before the FIN (in the background when the window is full,
bounded in time), and keeps reading after its own close_notify (TLS 1.3 half-close, RFC 8446
section 6.1).

No plaintext waits inside it while the engine waits for the descriptor: a read takes at most
64 KiB of ciphertext and the engine asks for 64 KiB of plaintext, so one ``recv`` returns all
that was decrypted; plaintext that came with the handshake's last flight (a request sent right
behind the client's Finished) is returned by ``handshake`` and fed to the engine first.

It also notes what the access log and the metrics want to know of a response without
touching the engine: the status of the response head written (``status``) and the bytes both
ways; and it lets a retry policy refuse a response head by its status before any byte of it
reaches the client (``veto``): the engine's exchange then ends with ``Refused``, and its
upstream connection, referenced by nobody any more, is closed when collected.
"""

from __future__ import annotations

import errno
import math
import socket
import ssl
from collections.abc import Callable
from typing import Any

import trio

from mesh.http.pool import DEADLINES, Timeout, close
from mesh.http.upstream_tls import TlsSocket, drive_handshake
from mesh.tls.session import TlsError, TlsSession

_RECV = 65536
# How long a failed handshake waits to get its alert to the client and the client's close.
ALERT_LINGER = 2.0


class Refused(Exception):
    """The response head was refused before any byte of it left (a retry will replace it)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Downstream:
    __slots__ = (
        "__weakref__", "client", "fileno", "received", "sent", "sock", "status", "tls", "veto",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, *, tls: bool = False, client: str = "") -> None:
        self.sock = sock
        self.client = client  # the client's address, for the access log
        # The socket's own method, not a wrapper: asked at every wait of the engine.
        self.fileno: Callable[[], int] = sock.fileno
        self.tls = tls
        self.status = 0  # the status of the response head written for the current request
        self.sent = 0
        self.received = 0
        # Asked with the status of a final response head before it is written: True refuses
        # it (Refused is raised, nothing is sent), so a retry policy can try again.
        self.veto: Callable[[int], bool] | None = None

    def recv(self, size: int, flags: int = 0) -> bytes:
        # A TlsSocket raises BlockingIOError and ConnectionResetError as a plain socket does.
        data = self.sock.recv(size, flags)
        self.received += len(data)
        return data

    def send(self, data: bytes | memoryview) -> int:
        if self.status < 200 and data[:5] == b"HTTP/":
            # The response head (a 1xx first, then the final one): "HTTP/1.1 200 ..."
            code = bytes(data[9:12])
            if code.isdigit():  # a check, not a suppressed ValueError: cheaper on this path
                self.status = int(code)
            if self.status >= 200 and self.veto is not None and self.veto(self.status):
                refused, self.status = self.status, 0
                raise Refused(refused)
        n = self.sock.send(data)
        self.sent += n
        return n

    def setsockopt(self, *args: Any) -> None:
        # A linger of zero (an abort) reaches the TlsSocket, which then says no close_notify.
        self.sock.setsockopt(*args)

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    def shutdown(self, how: int) -> None:
        """Half-close (a tunnel whose upstream finished). Over TLS: close_notify behind the
        last record, then the FIN; the client's direction stays open."""
        self.sock.shutdown(how)

    def close(self) -> None:
        """Over TLS: close_notify behind the last record, then close (an abort: at once)."""
        self.sock.close()


async def handshake(
    sock: socket.socket, context: ssl.SSLContext, seconds: float
) -> tuple[TlsSocket, bytes]:
    """TLS server handshake on a non-blocking socket, within ``seconds``: the TLS socket
    (which now owns the descriptor) and the plaintext that came with the client's last
    flight. Raises OSError or Timeout; the socket is closed then."""
    deadline = math.inf if seconds == math.inf else trio.current_time() + seconds
    try:
        session = TlsSession(context, server_side=True)
    except (ValueError, OSError):
        sock.close()
        raise
    conn = TlsSocket(sock, session)
    said = False  # the alert was written and the socket closed in order
    try:
        try:
            if not await drive_handshake(conn, deadline):
                raise ConnectionResetError(errno.ECONNRESET, "closed during the TLS handshake")
        except TlsError as exc:
            said = True
            await _tell_and_close(conn, deadline)  # the alert that tells the client why
            raise ConnectionResetError(errno.EPROTO, str(exc)) from None
        early, conn._plain = conn._plain, b""
        return conn, early
    except BaseException:
        if not said:
            close(conn, reset=True)
        raise


async def _tell_and_close(conn: TlsSocket, deadline: float) -> None:
    """Write the alert, then the FIN, then read and drop what the client still sends until
    it closes too, at most ``ALERT_LINGER`` seconds (within the handshake's deadline); then
    close. A reset instead (or closing with unread bytes, which makes the kernel send one,
    RFC 2525 section 2.17) may reach the client before it read the alert, and a client's TCP
    may drop received data on a reset: it would never learn why (nginx's lingering close)."""
    until = min(deadline, trio.current_time() + ALERT_LINGER)
    try:
        while conn._out:
            conn._flush()
            if conn._out:
                await DEADLINES.wait(conn, math.inf, until, True)
        socket.socket.shutdown(conn, socket.SHUT_WR)
        while True:
            try:
                if not socket.socket.recv(conn, _RECV):
                    break
            except BlockingIOError:
                await DEADLINES.wait(conn, math.inf, until, False)
    except (OSError, Timeout):
        pass  # the client went away, or took too long: nothing more is owed
    finally:
        conn._abort = True  # no close_notify: the handshake never finished
        close(conn)
