"""Real TLS handshakes on 127.0.0.1: the certificate chosen by SNI as openssl s_client and curl
see it, TLS 1.2 and 1.3, ALPN, rotation without a restart, the sans-I/O session over a plain
non-blocking socket, and re-encryption to an upstream."""

from __future__ import annotations

import re
import ssl
import subprocess

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mesh.tls import CertEntry, CertStore, TlsTerminator, upstream_context
from tests.conftest import require_tool
from tests.tls.pki import CA, Issued
from tests.tls.servers import raw_https, serve_echo

ca = CA()
SHOP = ca.issue("shop.example.com")
WILD = ca.issue("wildcard.example.com", ["*.example.com"])


def entry(issued: Issued, *names: str) -> CertEntry:
    return CertEntry(f"Secret test/{issued.cn}", issued.cert_pem, issued.key_pem, names)


def terminator() -> TlsTerminator:
    return TlsTerminator(CertStore.build([entry(SHOP), entry(WILD)]))


async def s_client(port: int, *args: str) -> dict[str, str]:
    """Handshake with openssl s_client; the subject, protocol and ALPN it reports."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args]
    with trio.fail_after(20):
        done = await trio.run_process(
            cmd, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
        )
    out = done.stdout.decode()
    found = {"rc": str(done.returncode)}
    for key, pattern in (
        ("subject", r"^subject=(.*)$"),
        ("protocol", r"^New, (TLSv[0-9.]+), Cipher"),
        ("alpn", r"^(ALPN protocol: .*|No ALPN negotiated)$"),
    ):
        match = re.search(pattern, out, re.MULTILINE)
        found[key] = match.group(1) if match else ""
    return found


@pytest.mark.parametrize(
    ("args", "subject"),
    [
        (["-servername", "shop.example.com"], "CN = shop.example.com"),
        (["-servername", "SHOP.EXAMPLE.COM"], "CN = shop.example.com"),
        (["-servername", "cart.example.com"], "CN = wildcard.example.com"),
        (["-servername", "a.cart.example.com"], "CN = Mesh Gateway Default Certificate"),
        (["-servername", "unknown.test"], "CN = Mesh Gateway Default Certificate"),
        (["-noservername"], "CN = Mesh Gateway Default Certificate"),
    ],
)
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_s_client_sees_the_certificate_for_its_sni(
    args: list[str], subject: str, version: str
) -> None:
    require_tool("openssl")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_echo, terminator())
        seen = await s_client(port, *args, version, "-alpn", "http/1.1")
        nursery.cancel_scope.cancel()
    expected = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    assert seen == {
        "rc": "0",
        "subject": subject,
        "protocol": expected,
        "alpn": "ALPN protocol: http/1.1",
    }


async def test_alpn_without_http11_and_old_protocols() -> None:
    require_tool("openssl")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_echo, terminator())
        h2_only = await s_client(port, "-servername", "shop.example.com", "-alpn", "h2")
        # The client allows TLS 1.1 only (security level 0 lets it try); the server refuses.
        old = await s_client(port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        nursery.cancel_scope.cancel()
    assert h2_only["alpn"] == "No ALPN negotiated"
    assert h2_only["subject"] == "CN = shop.example.com"
    assert old["rc"] != "0" and old["protocol"] == ""


def _subject(der: bytes | None) -> str:
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


async def _client(port: int, sni: str) -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), upstream_context(), server_hostname=sni
    )
    await stream.do_handshake()
    return stream


async def _echo(stream: trio.SSLStream[trio.SocketStream], data: bytes) -> bytes:
    await stream.send_all(data)
    got = b""
    with trio.fail_after(5):
        while len(got) < len(data):
            got += await stream.receive_some()
    return got


async def test_rotation_applies_to_the_next_handshake_only() -> None:
    require_tool("openssl")
    first = ca.issue("rotate.example.com")
    second = ca.issue("rotate.example.com")
    term = TlsTerminator(CertStore.build([entry(first)]))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_echo, term)
        old = await _client(port, "rotate.example.com")
        assert old.getpeercert(True) == first.cert.public_bytes(Encoding.DER)
        assert await _echo(old, b"before") == b"before"

        term.update(CertStore.build([entry(second)], previous=term.store))

        new = await _client(port, "rotate.example.com")
        assert new.getpeercert(True) == second.cert.public_bytes(Encoding.DER)
        seen = await s_client(port, "-servername", "rotate.example.com", "-showcerts")
        # The connection made before the change keeps working on its certificate.
        assert await _echo(old, b"after the change") == b"after the change"
        assert old.getpeercert(True) == first.cert.public_bytes(Encoding.DER)
        assert await _echo(new, b"new") == b"new"
        await old.aclose()
        await new.aclose()
        nursery.cancel_scope.cancel()
    assert seen["subject"] == "CN = rotate.example.com" and seen["rc"] == "0"


async def test_upstream_context_verifies_only_with_a_ca() -> None:
    backend = ca.issue("backend.internal")
    term = TlsTerminator(CertStore.build([entry(backend)]))
    other_ca = CA("Someone Else")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_echo, term)
        # Verification off (ingress-nginx's default): any certificate is accepted.
        loose = await _client(port, "backend.internal")
        assert _subject(loose.getpeercert(True)) == "CN=backend.internal"
        assert loose.selected_alpn_protocol() == "http/1.1"
        await loose.aclose()
        # With the right CA, the SNI must pick the backend's certificate for it to verify.
        stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", port),
            upstream_context(ca.pem),
            server_hostname="backend.internal",
        )
        assert await _echo(stream, b"verified") == b"verified"
        await stream.aclose()
        for ca_pem, name in ((other_ca.pem, "backend.internal"), (ca.pem, "elsewhere.internal")):
            bad = trio.SSLStream(
                await trio.open_tcp_stream("127.0.0.1", port),
                upstream_context(ca_pem),
                server_hostname=name,
            )
            with pytest.raises(trio.BrokenResourceError) as info:
                await bad.do_handshake()
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
            await trio.aclose_forcefully(bad)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("host", "flag", "subject", "answer"),
    [
        ("shop.example.com", "--tlsv1.3", "CN=shop.example.com", "TLSv1.3 http/1.1"),
        ("cart.example.com", "--tls-max", "CN=wildcard.example.com", "TLSv1.2 http/1.1"),
        ("nothing.test", "--tlsv1.3", "CN=Mesh Gateway Default Certificate", "TLSv1.3 http/1.1"),
    ],
)
def test_sans_io_session_over_a_plain_socket_with_curl(
    host: str, flag: str, subject: str, answer: str
) -> None:
    require_tool("curl")
    version = ["--tls-max", "1.2"] if flag == "--tls-max" else [flag]
    with raw_https(terminator()) as port:
        done = subprocess.run(
            [
                "curl",
                "-sS",
                "-v",
                "-k",
                "--max-time",
                "10",
                *version,
                "--resolve",
                f"{host}:{port}:127.0.0.1",
                f"https://{host}:{port}/",
            ],
            capture_output=True,
            timeout=20,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert done.stdout.decode() == answer + "\n"
    assert re.search(r"subject: (.*)", err).group(1).replace(" ", "") == subject.replace(" ", "")  # type: ignore[union-attr]
    assert "ALPN: server accepted http/1.1" in err or "ALPN, server accepted to use http/1.1" in err


_DER = __import__(
    "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
).Encoding.DER


async def test_idn_and_malformed_sni_names() -> None:
    require_tool("openssl")
    idn = ca.issue("idn", ["xn--bcher-kva.example"])
    term = TlsTerminator(CertStore.build([entry(idn, "bücher.example")]))
    cases = {
        "xn--bcher-kva.example": "CN = idn",
        "XN--BCHER-KVA.EXAMPLE": "CN = idn",
        "xn--a.example": "CN = Mesh Gateway Default Certificate",  # invalid punycode
        "a" * 70 + ".example": "CN = Mesh Gateway Default Certificate",  # label too long
        "a_b..example": "CN = Mesh Gateway Default Certificate",
    }
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_echo, term)
        seen = {name: await s_client(port, "-servername", name) for name in cases}
        nursery.cancel_scope.cancel()
    assert {name: (s["rc"], s["subject"]) for name, s in seen.items()} == {
        name: ("0", subject) for name, subject in cases.items()
    }
