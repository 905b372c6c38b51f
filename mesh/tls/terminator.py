"""TLS termination by SNI over a swappable certificate store.

Contract for the gateway wiring:

- ``term = TlsTerminator(store)`` once per TLS listener (or one for all of them).
- ``term.context`` is the listening context. Hand it to whatever does the TLS:
  ``trio.SSLStream(stream, term.context, server_side=True, https_compatible=True)`` in a trio
  shell, or :class:`~mesh.tls.session.TlsSession` (``term.session()``) over a non-blocking
  socket in a raw reactor. Both run OpenSSL through a memory BIO, and the SNI callback works
  the same way for both.
- ``term.update(new_store)`` when the certificates change: one attribute assignment, read
  once per handshake, so the next handshake sees the new store and a connection already
  established keeps the context it negotiated (OpenSSL holds a reference to it).

During the ClientHello, OpenSSL calls :meth:`TlsTerminator._on_sni`, which looks the name up
(exact, wildcard, default) and moves the connection onto that certificate's context. A
ClientHello without SNI gets the default certificate.
"""

from __future__ import annotations

import ssl

from mesh.tls.certs import CertStore
from mesh.tls.contexts import ALPN_HTTP11, server_context
from mesh.tls.session import TlsSession


class TlsTerminator:
    __slots__ = ("_store", "context", "handshakes")

    def __init__(self, store: CertStore) -> None:
        self._store = store
        self.handshakes = 0  # ClientHellos seen; a plain counter for the metrics layer
        self.context = server_context(ALPN_HTTP11)
        # The listening context carries no certificate: OpenSSL calls the callback for every
        # ClientHello, SNI or not, and the callback always moves the connection onto a
        # certificate's context before OpenSSL needs one.
        self.context.sni_callback = self._on_sni

    @property
    def store(self) -> CertStore:
        return self._store

    def update(self, store: CertStore) -> None:
        """Serve ``store`` from the next handshake on."""
        self._store = store

    def session(self) -> TlsSession:
        """A sans-I/O server session on this terminator's context (see :mod:`mesh.tls.session`)."""
        return TlsSession(self.context, server_side=True)

    def _on_sni(
        self,
        conn: ssl.SSLObject | ssl.SSLSocket,
        server_name: str | None,
        _listening: ssl.SSLContext,
    ) -> int | None:
        self.handshakes += 1
        try:
            conn.context = self._store.context_for(server_name)
        except Exception:  # an exception here would escape into OpenSSL: answer with an alert
            return int(ssl.AlertDescription.ALERT_DESCRIPTION_INTERNAL_ERROR)
        return None
