"""The client side of one gateway connection: a socket-like object over plain TCP or TLS.

The engine (mesh.http.server, forward, pool) works on non-blocking sockets: it calls
``recv``/``send`` and, on ``BlockingIOError``, waits for the descriptor. :class:`Downstream`
offers exactly that over either a plain socket or an ``ssl.SSLSocket`` (OpenSSL's "want read"
and "want write" become ``BlockingIOError``, its other errors ``OSError``, which the engine
already treats as a broken connection), so TLS needs nothing from the engine.

Why an SSLSocket and not a memory BIO: OpenSSL reads only the record it needs from the
kernel (no read-ahead), and every ``recv`` here asks for more than the largest record, so no
decrypted byte is ever left inside OpenSSL while the engine waits for the descriptor.

It also notes what the access log and the metrics want to know of a response without
touching the engine: the status of the response head written (``status``) and the bytes both
ways; and it lets a retry policy refuse a response head by its status before any byte of it
reaches the client (``veto``): the engine's exchange then ends with ``Refused``, and its
upstream connection, referenced by nobody any more, is closed when collected.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
from collections.abc import Callable
from typing import Any

import trio

from mesh.http.pool import DEADLINES


class Refused(Exception):
    """The response head was refused before any byte of it left (a retry will replace it)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Downstream:
    __slots__ = ("__weakref__", "fileno", "received", "sent", "sock", "status", "tls", "veto")

    def __init__(self, sock: socket.socket, *, tls: bool = False) -> None:
        self.sock = sock
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
        try:
            data = self.sock.recv(size, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError from None
        except ssl.SSLError as exc:
            raise ConnectionResetError(f"TLS: {exc.reason or exc}") from None
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
        try:
            n = self.sock.send(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError from None
        except ssl.SSLError as exc:
            raise BrokenPipeError(f"TLS: {exc.reason or exc}") from None
        self.sent += n
        return n

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    def shutdown(self, how: int) -> None:
        """Half-close (a tunnel whose upstream finished). Over TLS: close_notify first, then
        the TCP half-close under the TLS layer (SSLSocket.shutdown would drop the TLS state
        while the client may still be sending)."""
        if not self.tls:
            self.sock.shutdown(how)
            return
        assert isinstance(self.sock, ssl.SSLSocket)
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self.sock.unwrap()  # sends close_notify; the peer's answer is not awaited
        socket.socket.shutdown(self.sock, how)

    def close(self) -> None:
        self.sock.close()


async def handshake(sock: socket.socket, context: ssl.SSLContext, seconds: float) -> ssl.SSLSocket:
    """TLS server handshake on a non-blocking socket, within ``seconds``; raises
    OSError (ssl.SSLError included) or Timeout. The socket is then owned by the result."""
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    deadline = math.inf if seconds == math.inf else trio.current_time() + seconds
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                await DEADLINES.wait(tls, math.inf, deadline, False)
            except ssl.SSLWantWriteError:
                await DEADLINES.wait(tls, math.inf, deadline, True)
    except BaseException:
        tls.close()  # ``sock`` gave its descriptor to ``tls``: closing ``sock`` would not do
        raise
