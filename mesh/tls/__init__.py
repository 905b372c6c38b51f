"""TLS for the mesh: certificates by SNI, termination, re-encryption, a sans-I/O session.

- :mod:`mesh.tls.names`: SNI name normalisation and wildcard matching (pure).
- :mod:`mesh.tls.certs`: :class:`CertStore`, certificates validated from Secrets or PEM.
- :mod:`mesh.tls.terminator`: :class:`TlsTerminator`, the listening context whose SNI callback
  reads the current store.
- :mod:`mesh.tls.session`: :class:`TlsSession`, TLS over memory buffers for a raw reactor.
- :mod:`mesh.tls.contexts`: context settings, and :func:`upstream_context` for re-encryption.
"""

from mesh.tls.certs import (
    CertEntry,
    CertProblem,
    CertStore,
    LoadedCert,
    entry_from_secret,
    self_signed,
)
from mesh.tls.contexts import server_context, upstream_context
from mesh.tls.session import TlsError, TlsSession, upstream_session
from mesh.tls.terminator import TlsTerminator

__all__ = [
    "CertEntry",
    "CertProblem",
    "CertStore",
    "LoadedCert",
    "TlsError",
    "TlsSession",
    "TlsTerminator",
    "entry_from_secret",
    "self_signed",
    "server_context",
    "upstream_context",
    "upstream_session",
]
