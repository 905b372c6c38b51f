"""A sans-I/O TLS connection: ciphertext in, plaintext out, ciphertext to send.

For a reactor that owns its non-blocking sockets (no trio stream to wrap). The whole contract:

    tls = TlsSession(context, server_side=True)       # or terminator.session()
    plain = tls.receive_data(sock.recv(...))         # b"" from recv: pass b"" (EOF)
    tls.send(b"HTTP/1.1 200 OK...")                  # buffered until the handshake is done
    sock.send(tls.data_to_send())                     # after every receive_data/send/close
    tls.close()                                       # queue close_notify, then send the rest

- ``receive_data`` returns every byte of plaintext that the ciphertext fed so far completes;
  handshake records produce no plaintext, only ``data_to_send``.
- ``peer_closed`` turns True at the peer's close_notify or at transport EOF; ``clean_close``
  tells which (HTTP/1.1 peers often skip close_notify, so the HTTP layer decides from its
  framing whether a body was complete; a ragged EOF is not an error by itself).
- A handshake or record failure raises :class:`TlsError` (the peer's fault); the alert that
  tells the peer is still in ``data_to_send`` — send it, then close the socket.

The memory BIOs are unbounded: the caller bounds what it feeds (its read size) and stops
reading while ``data_to_send`` has not drained, which is the backpressure.
"""

from __future__ import annotations

import contextlib
import ssl

from mesh.tls.contexts import upstream_context

_READ = 65536


class TlsError(Exception):
    """The peer broke the TLS handshake or a record; ``str()`` is one sentence."""


class TlsSession:
    __slots__ = (
        "_in",
        "_obj",
        "_out",
        "_pending",
        "clean_close",
        "handshake_complete",
        "peer_closed",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self._pending: list[bytes] = []
        self.handshake_complete = False
        self.peer_closed = False
        self.clean_close = False
        if not server_side:
            self._handshake()  # the client speaks first: its ClientHello is ready to send

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> bytes:
        """Feed ciphertext (``b""`` = the transport reached EOF); the plaintext it completes."""
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        if not self.handshake_complete and not self._handshake():
            return b""
        return self._read()

    def _handshake(self) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLEOFError as exc:
            self.peer_closed = True
            raise TlsError("the peer closed the connection during the TLS handshake") from exc
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake failed: {_reason(exc)}") from exc
        self.handshake_complete = True
        if self._pending:
            pending, self._pending = self._pending, []
            for chunk in pending:
                self._obj.write(chunk)
        return True

    def _read(self) -> bytes:
        chunks: list[bytes] = []
        obj, bio = self._obj, self._in
        while True:
            # Skip the exception round trip when nothing is buffered on either side.
            if not bio.pending and not obj.pending() and not bio.eof:
                break
            try:
                chunk = obj.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = self.clean_close = True
                break
            except ssl.SSLEOFError:
                self.peer_closed = True
                break
            except ssl.SSLError as exc:
                raise TlsError(f"bad TLS record from the peer: {_reason(exc)}") from exc
            if not chunk:  # CPython's way of reporting close_notify
                self.peer_closed = self.clean_close = True
                break
            chunks.append(chunk)
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    # -- output --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` for the peer; before the handshake completes it waits in a buffer."""
        if not self.handshake_complete:
            self._pending.append(bytes(data))
            return
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"cannot send on this TLS connection: {_reason(exc)}") from exc

    def data_to_send(self) -> bytes:
        """Ciphertext (handshake, records, alerts) to write to the socket, in order."""
        return self._out.read()

    def close(self) -> None:
        """Queue close_notify; the connection may be closed once ``data_to_send`` is sent."""
        if not self.handshake_complete:
            return
        # We do not wait for the peer's close_notify (RFC 8446 §6.1 allows it).
        with contextlib.suppress(ssl.SSLError):
            self._obj.unwrap()

    # -- what was negotiated -----------------------------------------------------------------

    @property
    def alpn_protocol(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        return self._obj.version()

    @property
    def context(self) -> ssl.SSLContext:
        """The context serving this connection (after SNI: the chosen certificate's)."""
        return self._obj.context

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate in DER, if it sent one (clients of mTLS, servers)."""
        return self._obj.getpeercert(binary_form=True)


def _reason(exc: ssl.SSLError) -> str:
    return (exc.reason or exc.strerror or str(exc)).lower().replace("_", " ")


def upstream_session(server_hostname: str | None, ca_pem: bytes | None = None) -> TlsSession:
    """A client session for re-encryption to a backend (see :func:`upstream_context`).

    ``server_hostname`` is the name the upstream expects: the Host sent upstream (the
    ``upstream-vhost`` annotation, else the request's host) or BackendTLSPolicy's hostname. It
    goes out as SNI and, when a CA is given, is what the certificate is verified against.
    """
    return TlsSession(upstream_context(ca_pem), server_side=False, server_hostname=server_hostname)
