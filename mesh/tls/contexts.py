"""The ssl.SSLContext settings the mesh uses, in one place.

- :func:`server_context`: TLS 1.2 and 1.3 only, ALPN ``http/1.1``, no compression (CRIME), no
  client-initiated renegotiation (a CPU exhaustion vector on TLS 1.2), the server's cipher
  order. Every per-certificate context of a :class:`~mesh.tls.certs.CertStore` is built with
  it, because after an SNI switch OpenSSL takes ALPN and protocol limits from the new context.
- :func:`load_chain`: loads PEM bytes into a context without writing the key to disk
  (``ssl`` only reads files; a memfd is an anonymous in-memory file on Linux).
- :func:`upstream_context`: re-encryption to a backend (``backend-protocol: HTTPS``,
  BackendTLSPolicy). As ingress-nginx does by default (``proxy-ssl-verify: off``), the backend's
  certificate is not verified unless a CA bundle is given; with one, the chain and the host
  name are verified. Wrap with ``server_hostname=<upstream host>`` so the SNI names the
  upstream (Python leaves SNI out by itself when that host is an IP literal, RFC 6066 §3).
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence

ALPN_HTTP11 = ("http/1.1",)


def server_context(alpn: Sequence[str] = ALPN_HTTP11) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path that reads as ``data``: a memfd where Linux has one, else a private temp file."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("mesh-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="mesh-tls-")  # mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        yield path
    finally:
        os.unlink(path)


def load_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and its key; raises ssl.SSLError when OpenSSL refuses them."""
    with _pem_file(chain_pem) as cert_path, _pem_file(key_pem) as key_path:
        ctx.load_cert_chain(cert_path, key_path)


@functools.lru_cache(maxsize=64)
def upstream_context(
    ca_pem: bytes | None = None, alpn: tuple[str, ...] = ALPN_HTTP11
) -> ssl.SSLContext:
    """A client context for re-encryption; cached per CA bundle (contexts are reusable).

    Raises ssl.SSLError when ``ca_pem`` holds no usable certificate; the config translation
    should have refused such a CA before it got here.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
