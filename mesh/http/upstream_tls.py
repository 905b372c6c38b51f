"""TLS to a backend (trio shell): a connected socket that speaks TLS through ``send``/``recv``.

Theory of operation. The engine moves upstream bytes with plain non-blocking socket calls
(``sock.send``, ``sock.recv``, waits on the descriptor through mesh.http.pool). A
:class:`TlsSocket` *is* such a socket (the same descriptor, a ``socket.socket`` subclass, as
``ssl.SSLSocket`` is) whose ``send`` and ``recv`` go through a sans-I/O
:class:`~mesh.tls.session.TlsSession`: so the forwarding code, the pool's liveness peek, the
deadlines and the reactor work unchanged on TLS connections, and only ``pool.connect`` knows
the difference (it calls :func:`handshake` for an endpoint that carries TLS settings).

The contract of a non-blocking socket is kept: ``recv`` raises BlockingIOError only when the
descriptor has nothing to read (so waiting for it to become readable is right), and ``send``
raises it only when the descriptor cannot take bytes (so waiting for writability is right).
A record already encrypted but only partly written is finished by the next ``send``, which
the caller makes with the same bytes (the count returned never covers bytes not yet on the
wire), so nothing is ever left unsent while the caller waits for the answer.

Closing says close_notify (RFC 8446 §6.1) and never cuts a record short: what the descriptor
cannot take at ``shutdown``/``close`` is written by a trio system task, bounded in time, before
the FIN. A close with linger zero (mesh.http.pool.close with ``reset``) is an abort: at once.

Failures: a handshake that fails (the backend refuses, its certificate does not verify or
does not name what it must) raises :class:`~mesh.http.errors.TlsHandshakeError`, an OSError,
so the caller treats it as a failed connect; a bad record later raises ConnectionResetError.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from mesh.http.errors import TlsHandshakeError
from mesh.tls.session import TlsError, TlsSession
from mesh.tls.upstream import UpstreamTls

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger("mesh.http.upstream_tls")
_LOGGED: set[tuple[str, str]] = set()  # (address, why) already logged: once each, not per request
_RECORD = 16384  # plaintext per TLS record: ``send`` encrypts at most this much at a time
_RECV = 65536
_PEEK = int(socket.MSG_PEEK)
# The plain socket's own calls, looked up once (``super()`` costs a lookup on every call).
_recv = socket.socket.recv
_send = socket.socket.send


class TlsSocket(socket.socket):
    """A connected non-blocking socket whose bytes are TLS application data."""

    def __init__(self, raw: socket.socket, session: TlsSession) -> None:
        super().__init__(raw.family, raw.type, raw.proto, fileno=raw.detach())
        self.setblocking(False)
        self.session = session
        self._plain = b""  # decrypted bytes not yet returned
        self._out = b""  # ciphertext not yet written
        self._owed = 0  # plaintext bytes whose ciphertext is in ``_out`` (not yet reported)
        self._closing = False  # close_notify queued
        self._abort = False  # closing with a RST: nothing more is written

    # -- reading -----------------------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Plaintext, b"" at the end; BlockingIOError when the descriptor has nothing.
        ``flags`` with MSG_PEEK: look without consuming (the pool's liveness check)."""
        plain = self._plain
        while not plain:
            try:
                data = _recv(self, _RECV)
            except BlockingIOError:
                if self._out:
                    self._flush()
                raise
            session = self.session
            try:
                plain = session.receive_data(data)
            except TlsError as exc:
                raise ConnectionResetError(errno.ECONNRESET, str(exc)) from None
            answer = session.data_to_send()  # e.g. to a key update
            if answer:
                self._out += answer
                self._flush()
            if not plain and (not data or session.peer_closed):
                return b""
        peek = flags != 0 and flags & _PEEK  # an int: IntFlag arithmetic costs a microsecond
        if len(plain) <= bufsize:  # the usual case: all of it, no slicing
            self._plain = plain if peek else b""
            return plain
        self._plain = plain if peek else plain[bufsize:]
        return plain[:bufsize]

    # -- writing -----------------------------------------------------------------------------

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        """Plaintext bytes taken (all of them on the wire as ciphertext); BlockingIOError when
        the descriptor takes nothing. The caller sends again from the first byte not counted."""
        if self._out:
            self._flush()
            if self._out:
                raise BlockingIOError(errno.EAGAIN, "the backend's window is full")
        if self._owed:  # written since (here, or by a ``recv`` flushing on its way)
            owed, self._owed = self._owed, 0
            return owed  # the caller's next bytes start after what that record carried
        size = len(data)  # type: ignore[arg-type]
        if size <= _RECORD:  # the usual case (a head, a small body): one record, one write
            session = self.session
            try:
                session.send(data if type(data) is bytes else bytes(data))
            except TlsError as exc:
                raise ConnectionResetError(errno.ECONNRESET, str(exc)) from None
            out = session.data_to_send()
            try:
                n = _send(self, out)
            except BlockingIOError:
                n = 0
            if n < len(out):  # encrypted but not all written: counted once it is
                self._out, self._owed = out[n:], size
                raise BlockingIOError(errno.EAGAIN, "the peer's window is full")
            return size
        view = memoryview(data)
        taken = 0
        while taken < len(view):
            piece = view[taken : taken + _RECORD]
            try:
                self.session.send(bytes(piece))
            except TlsError as exc:
                raise ConnectionResetError(errno.ECONNRESET, str(exc)) from None
            self._out = self.session.data_to_send()
            self._flush()
            if self._out:  # encrypted but not all written: counted once it is
                self._owed = len(piece)
                if taken:
                    return taken
                raise BlockingIOError(errno.EAGAIN, "the backend's window is full")
            taken += len(piece)
        return taken

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:  # pragma: no cover - not used
        raise NotImplementedError("a non-blocking TLS socket is written with send")

    def _flush(self) -> None:
        """Write what ciphertext the descriptor takes now."""
        try:
            n = _send(self, self._out)
        except BlockingIOError:
            return
        self._out = self._out[n:]

    # -- closing -----------------------------------------------------------------------------

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        # A linger of zero (mesh.http.pool.close with reset=True) is an abort: nothing more is
        # owed to the peer, so ``close`` neither says close_notify nor flushes.
        if level == socket.SOL_SOCKET and option == socket.SO_LINGER and isinstance(value, bytes):
            on, seconds = struct.unpack("ii", value)
            self._abort = bool(on) and seconds == 0
        super().setsockopt(level, option, value, *rest)

    def shutdown(self, how: int) -> None:
        """SHUT_WR sends close_notify first (the end of a tunnel's direction). The TCP FIN goes
        only behind every byte of ciphertext: while the backend's window is full it waits (in
        the background, at most ``CLOSE_FLUSH_SECONDS``) instead of cutting a record short."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._say_close_notify()
            if self._out:
                self._flush()
            if self._out and _spawn(self._shutdown_when_flushed, how):
                return
        super().shutdown(how)

    def close(self) -> None:
        """close_notify (RFC 8446 §6.1), then close. Ciphertext the descriptor cannot take now
        is written in the background (at most ``CLOSE_FLUSH_SECONDS``) before the descriptor
        closes. An abort (linger zero) closes at once, with a RST."""
        if self.fileno() < 0 or self._abort:
            super().close()
            return
        self._say_close_notify()
        try:
            if self._out:
                self._flush()
        except OSError:  # the backend is gone: nothing to deliver
            self._out = b""
        if not self._out:
            super().close()
            return
        # A trio task still waiting on this descriptor (a shutdown's flush) lets go first.
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            trio.lowlevel.notify_closing(self)
        # The descriptor moves to a plain socket the background task owns; this object is
        # closed for everyone else from now on.
        rest = socket.socket(self.family, self.type, self.proto, fileno=self.detach())
        data, self._out = self._out, b""
        if not _spawn(_flush_and_close, rest, data):
            rest.close()

    def _say_close_notify(self) -> None:
        if not self._closing and self.session.handshake_complete:
            self._closing = True
            self.session.close()
            self._out += self.session.data_to_send()

    async def _shutdown_when_flushed(self, how: int) -> None:
        try:
            with trio.move_on_after(CLOSE_FLUSH_SECONDS):
                while self._out and self.fileno() >= 0:
                    await trio.lowlevel.wait_writable(self)
                    self._flush()
        finally:
            if self.fileno() >= 0:  # else ``close`` took over what was left
                super().shutdown(how)


CLOSE_FLUSH_SECONDS = 5.0  # how long a closing connection may take to write its last records


def _spawn(flush: Callable[..., Awaitable[None]], *args: Any) -> bool:
    """Run ``flush(*args)`` in the background: a trio system task, as it outlives the
    connection's own task. False outside a trio run (the caller then does without)."""

    async def guarded() -> None:
        # An error may cost this connection its last bytes, never more: a system task that
        # raised would end the whole run.
        with contextlib.suppress(OSError, trio.ClosedResourceError, trio.BusyResourceError):
            await flush(*args)

    try:
        trio.lowlevel.spawn_system_task(guarded)
    except RuntimeError:  # no trio run in this thread
        return False
    return True


async def _flush_and_close(sock: socket.socket, data: bytes) -> None:
    try:
        with trio.move_on_after(CLOSE_FLUSH_SECONDS):
            while data:
                try:
                    data = data[sock.send(data) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def handshake(
    sock: socket.socket, tls: UpstreamTls, seconds: float, deadline: float = math.inf
) -> TlsSocket:
    """Run the client handshake on a connected socket (within ``seconds`` and ``deadline``)
    and check the certificate's names; the socket is closed on any failure."""
    from mesh.http.pool import close

    if seconds != math.inf:
        deadline = min(deadline, trio.current_time() + seconds)
    name = tls.server_name if tls.server_name and not _is_ip(tls.server_name) else None
    try:
        session = TlsSession(tls.context(), server_side=False, server_hostname=name)
    except (ValueError, OSError) as exc:
        close(sock)
        raise TlsHandshakeError(errno.EPROTO, f"cannot start TLS: {exc}") from None
    try:
        host, port = sock.getpeername()[:2]
        sock_name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    except OSError:
        sock_name = "?"
    conn = TlsSocket(sock, session)
    try:
        try:
            if not await drive_handshake(conn, deadline):
                raise TlsHandshakeError(
                    errno.ECONNRESET, "the backend closed the connection during the TLS handshake"
                )
        except TlsError as exc:
            conn._flush()  # the alert that tells the backend why
            raise TlsHandshakeError(errno.EPROTO, str(exc)) from None
        problem = tls.check(session.peer_certificate())
        if problem is not None:
            raise TlsHandshakeError(errno.EPROTO, problem)
    except BaseException as exc:
        close(conn, reset=True)
        if isinstance(exc, TlsHandshakeError):
            _log_once(sock_name, exc.strerror or str(exc))
        raise
    return conn


async def drive_handshake(conn: TlsSocket, deadline: float) -> bool:
    """Run ``conn``'s handshake (either side) by ``deadline``: True once complete, with the
    plaintext that came with the peer's last flight in ``conn._plain``; False if the peer
    closed first. A TlsError propagates with the alert that says why queued in ``conn._out``;
    a Timeout propagates as it is."""
    from mesh.http.pool import DEADLINES

    session = conn.session
    while True:
        conn._out += session.data_to_send()
        while conn._out:
            conn._flush()
            if conn._out:
                await DEADLINES.wait(conn, math.inf, deadline, True)
        if session.handshake_complete:
            return True
        try:
            data = socket.socket.recv(conn, _RECV)
        except BlockingIOError:
            await DEADLINES.wait(conn, math.inf, deadline, False)
            continue
        if not data:
            return False
        try:
            conn._plain = session.receive_data(data)
        except TlsError:
            conn._out += session.data_to_send()
            raise


def _log_once(address: str, why: str) -> None:
    if (address, why) in _LOGGED:
        return
    if len(_LOGGED) < 1024:
        _LOGGED.add((address, why))
    log.warning("TLS to a backend failed", extra={"endpoint": address, "error": why})


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
