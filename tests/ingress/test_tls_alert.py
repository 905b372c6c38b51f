"""A failed TLS handshake tells the client why: the gateway's alert reaches it before the
connection ends (written, then the FIN, the client's last bytes read and dropped, bounded in
time), never a reset that can make the client's TCP throw the alert away unread."""

from __future__ import annotations

import contextlib
import ssl

import pytest
import trio

from tests.conftest import require_tool
from tests.ingress.harness import start_gateway

CASES = [
    # (what the client insists on, what openssl says of the gateway's alert)
    (["-tls1_2", "-cipher", "NULL-SHA256:@SECLEVEL=0"], "alert handshake failure"),
    (["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_8_SHA256"], "alert handshake failure"),
]


@pytest.mark.parametrize(("insist", "alert"), CASES, ids=["tls1.2 cipher", "tls1.3 suite"])
async def test_openssl_sees_the_alert_of_a_failed_handshake(
    nursery: trio.Nursery, insist: list[str], alert: str
) -> None:
    require_tool("openssl")
    gw = await start_gateway(nursery, None)
    for _ in range(5):  # a reset loses the alert only sometimes: a few tries
        done = await trio.run_process(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.tls_port}",
             "-servername", "shop.example.com", *insist],
            stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        said = done.stderr.decode(errors="replace")
        assert done.returncode != 0
        assert alert in said, said
        assert "reset" not in said.lower() and "errno=104" not in said, said


def _client_hello(ciphers: str) -> tuple[ssl.SSLObject, ssl.MemoryBIO, bytes]:
    """A TLS 1.2 ClientHello offering only ``ciphers``, and the client to read the answer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="shop.example.com")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return obj, incoming, outgoing.read()


@pytest.mark.parametrize("trailing", [b"", b"\x17\x03\x03\x00\x05hello" * 200])
async def test_the_alert_comes_before_an_orderly_close(
    nursery: trio.Nursery, trailing: bytes
) -> None:
    """Read to the end: the alert, then EOF (a FIN), not ECONNRESET; also when the client
    sent more behind its ClientHello (closing with unread bytes would make the kernel reset)."""
    gw = await start_gateway(nursery, None)
    obj, incoming, hello = _client_hello("NULL-SHA256:@SECLEVEL=0")
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", gw.tls_port))
    with sock:
        await sock.send(hello + trailing)
        got = bytearray()
        with trio.fail_after(5):
            while data := await sock.recv(65536):  # ConnectionResetError fails the test
                got += data
    incoming.write(bytes(got))
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        obj.do_handshake()
