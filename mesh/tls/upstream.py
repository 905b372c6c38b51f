"""Re-encryption to a backend, the pure part: what a TLS connection to an endpoint must be.

- :class:`UpstreamTls`: the settings of one backend's TLS (SNI, whether and against what the
  certificate is verified, the trusted CAs). Frozen and hashable: equal settings are one key.
- :class:`TlsEndpoint`: an endpoint ``(ip, port)`` that carries its TLS settings. It is still a
  2-tuple (the balancers, the socket calls and the logs take it as one) but it equals and
  hashes with its settings, so the connection pool, keyed by endpoint, keeps connections to
  the same address with different settings apart, and never hands a plain connection to a
  TLS route or the other way round.
- :meth:`UpstreamTls.check` decides after the handshake whether the certificate names what it
  must. OpenSSL verifies the chain; the names are checked here so that the name verified may
  differ from the SNI sent (ingress-nginx's ``proxy-ssl-name`` with ``proxy-ssl-server-name:
  off``; BackendTLSPolicy's ``subjectAltNames``).

No I/O: the trio shell is mesh.http.upstream_tls.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import ssl

from mesh.tls import names as hostnames
from mesh.tls.contexts import ALPN_HTTP11


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamTls:
    server_name: str | None = None  # SNI; None (or an IP address): none sent
    verify: bool = False
    verify_names: tuple[str, ...] = ()  # DNS names; one must be in the certificate
    verify_uris: tuple[str, ...] = ()  # URI SANs (SPIFFE IDs); one must be in the certificate
    ca_pem: bytes | None = None  # trusted CAs; None with verify: the system's store

    def context(self) -> ssl.SSLContext:
        return _context(self.verify, self.ca_pem)

    def check(self, der: bytes | None) -> str | None:
        """Why the peer certificate (DER) does not name what it must; None when it does (or
        nothing is verified)."""
        if not self.verify or not (self.verify_names or self.verify_uris):
            return None
        if der is None:
            return "the backend sent no certificate"
        dns, ips, uris = _subject_alt_names(der)
        for want in self.verify_names:
            if _ip(want) is not None:
                if _ip(want) in ips:
                    return None
            elif any(hostnames.matches(have, want) for have in dns):
                return None
        if any(u in uris for u in self.verify_uris):
            return None
        wanted = ", ".join((*self.verify_names, *self.verify_uris))
        return f"the backend's certificate does not name {wanted}"


class TlsEndpoint(tuple[str, int]):
    """``(ip, port)`` with the TLS settings to reach it (see the module comment)."""

    tls: UpstreamTls
    _hash: int

    def __new__(cls, ip: str, port: int, tls: UpstreamTls) -> TlsEndpoint:
        self = super().__new__(cls, (ip, port))
        self.tls = tls
        # The pool looks an endpoint up per request: hash the settings (a CA bundle) once.
        self._hash = hash((ip, port, tls))
        return self

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TlsEndpoint) and tuple.__eq__(self, other) and self.tls == other.tls
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[object, ...]:
        return (TlsEndpoint, (self[0], self[1], self.tls))

    def __repr__(self) -> str:
        return f"TlsEndpoint({self[0]!r}, {self[1]!r})"


@functools.lru_cache(maxsize=64)
def _context(verify: bool, ca_pem: bytes | None) -> ssl.SSLContext:
    """A client context, cached per trust setting (contexts are reusable and costly to load).
    Names are checked by UpstreamTls.check, so OpenSSL's own host check is off."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(list(ALPN_HTTP11))
    ctx.check_hostname = False
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_pem is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
    return ctx


def check_ca(ca_pem: bytes) -> str | None:
    """Why a CA bundle cannot be used to verify a backend; None when it can."""
    try:
        _context(True, ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        return f"holds no usable PEM CA certificate ({exc.args[-1] if exc.args else exc})"
    return None


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _subject_alt_names(der: bytes) -> tuple[list[str], set[str], set[str]]:
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return [], set(), set()
    return (
        san.get_values_for_type(x509.DNSName),
        {str(ip) for ip in san.get_values_for_type(x509.IPAddress)},
        set(san.get_values_for_type(x509.UniformResourceIdentifier)),
    )
