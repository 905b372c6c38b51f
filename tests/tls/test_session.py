"""The sans-I/O TLS session in memory: a client and a server session pumped into each other,
whole and one byte at a time, with close_notify, ragged EOF and a peer that is not TLS."""

from __future__ import annotations

import pytest

from mesh.tls import (
    CertEntry,
    CertStore,
    TlsError,
    TlsSession,
    TlsTerminator,
    upstream_context,
    upstream_session,
)
from tests.tls.pki import CA

ca = CA()
SHOP = ca.issue("shop.example.com")
TERM = TlsTerminator(CertStore.build([CertEntry("Secret t/shop", SHOP.cert_pem, SHOP.key_pem)]))


def pump(client: TlsSession, server: TlsSession, step: int | None = None) -> tuple[bytes, bytes]:
    """Move ciphertext both ways until quiet; the plaintext each side received."""
    to_client = to_server = b""
    for _ in range(100):
        c2s, s2c = client.data_to_send(), server.data_to_send()
        if not c2s and not s2c:
            return to_client, to_server
        for i in range(0, len(c2s), step or len(c2s) or 1):
            to_server += server.receive_data(c2s[i : i + (step or len(c2s))])
        for i in range(0, len(s2c), step or len(s2c) or 1):
            to_client += client.receive_data(s2c[i : i + (step or len(s2c))])
    raise AssertionError("the sessions never went quiet")


@pytest.mark.parametrize("step", [None, 1, 7])
def test_exchange_whole_and_byte_at_a_time(step: int | None) -> None:
    client = TlsSession(upstream_context(), server_side=False, server_hostname="shop.example.com")
    server = TERM.session()
    client.send(b"GET / HTTP/1.1\r\n\r\n")  # before the handshake: buffered
    to_client, to_server = pump(client, server, step)
    assert to_server == b"GET / HTTP/1.1\r\n\r\n" and to_client == b""
    assert server.handshake_complete and client.handshake_complete
    assert server.alpn_protocol == client.alpn_protocol == "http/1.1"
    assert server.version == "TLSv1.3"
    assert server.context is TERM.store.lookup("shop.example.com").context
    big = bytes(range(256)) * 1000  # several records
    server.send(big)
    to_client, _ = pump(client, server, step)
    assert to_client == big


def test_upstream_session_verifies_against_its_server_name() -> None:
    good = upstream_session("shop.example.com", ca.pem)
    server = TERM.session()
    good.send(b"ping")
    assert pump(good, server) == (b"", b"ping")
    wrong = upstream_session("other.example.com", ca.pem)
    with pytest.raises(TlsError, match="certificate verify failed"):
        pump(wrong, TERM.session())


def test_close_notify_is_a_clean_close() -> None:
    client = TlsSession(upstream_context(), server_side=False, server_hostname="shop.example.com")
    server = TERM.session()
    pump(client, server)
    client.send(b"last words")
    client.close()
    _, to_server = pump(client, server)
    assert to_server == b"last words"
    assert server.peer_closed and server.clean_close


def test_transport_eof_without_close_notify_is_ragged() -> None:
    client = TlsSession(upstream_context(), server_side=False, server_hostname="shop.example.com")
    server = TERM.session()
    pump(client, server)
    assert server.receive_data(b"") == b""
    assert server.peer_closed and not server.clean_close


def test_eof_during_the_handshake_is_an_error() -> None:
    server = TERM.session()
    with pytest.raises(TlsError, match="closed the connection during the TLS handshake"):
        server.receive_data(b"")


def test_plaintext_http_is_an_error() -> None:
    server = TERM.session()
    with pytest.raises(TlsError, match=r"^TLS handshake failed: http request$"):
        server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_a_malformed_client_hello_gets_an_alert() -> None:
    server = TERM.session()
    hello = b"\x01\x00\x00\x02\x03\x03"  # ClientHello whose body is cut short
    with pytest.raises(TlsError, match=r"^TLS handshake failed: .+") as info:
        server.receive_data(b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello)
    assert "\n" not in str(info.value)
    alert = server.data_to_send()
    assert alert[:1] == b"\x15"  # a TLS alert record tells the client why


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_the_server_refuses_a_tls11_only_client() -> None:
    import ssl

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT@SECLEVEL=0")
    client = TlsSession(old, server_side=False)
    server = TERM.session()
    with pytest.raises(TlsError, match="handshake failed"):
        pump(client, server)
