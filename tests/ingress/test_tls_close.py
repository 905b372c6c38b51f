"""How the TLS listener ends what it sends: every record, then close_notify, never a cut.

A byte tunnel (an Upgrade) over TLS whose upstream finishes its direction: the gateway sends
what the upstream wrote, then close_notify (RFC 8446 section 6.1), then the TCP FIN, even when
the client reads slowly and the gateway's window toward it is full when the upstream ends. And
that half-close does not cost the other direction: bytes the client is still sending (TLS 1.3
lets it) reach the upstream whole. A response on a connection the gateway then closes reaches
openssl s_client whole, followed by close_notify.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import time
from pathlib import Path

import pytest
import trio

from tests.conftest import require_tool
from tests.ingress.harness import backend, ingress, path, served, start_gateway, tls_secret
from tests.tls.pki import CA

HOST = "tunnel.example.com"
VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
UPGRADE = b"GET /t HTTP/1.1\r\nHost: tunnel.example.com\r\nConnection: Upgrade\r\nUpgrade: x-bytes\r\n\r\n"


class TunnelUpstream:
    """Answers 101, writes ``payload``, half-closes, then counts what it receives until EOF."""

    def __init__(self, payload: bytes, *, read_after: float = 0.0) -> None:
        self.payload = payload
        self.read_after = read_after  # seconds it neither reads nor ends before the 101
        self.received = 0
        self.digest = hashlib.sha256()
        self.done = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        task_status.started(listener.getsockname())
        conn, _ = await listener.accept()
        with conn, listener:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await conn.recv(65536)
                assert chunk, "the gateway closed before the request head"
                head += chunk
            rest = head.split(b"\r\n\r\n", 1)[1]
            await conn.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                            b"Upgrade: x-bytes\r\n\r\n")  # fmt: skip
            await trio.sleep(self.read_after)
            view = memoryview(self.payload)
            while view:
                view = view[await conn.send(view) :]
            conn.shutdown(socket.SHUT_WR)  # this direction is finished
            self.received, self.digest = len(rest), hashlib.sha256(rest)
            while chunk := await conn.recv(65536):
                self.received += len(chunk)
                self.digest.update(chunk)
        self.done.set()


async def _gateway(nursery: trio.Nursery, upstream: tuple[str, int]) -> tuple[int, bytes]:
    ca = CA()
    cert = ca.issue(HOST)
    config = served(
        backend("tun", upstream),
        tls_secret("tun-tls", cert.cert_pem, cert.key_pem),
        ingress("tun", HOST, path("/", "tun"), tls=[{"hosts": [HOST], "secretName": "tun-tls"}]),
    )
    gw = await start_gateway(nursery, config)
    return gw.tls_port, ca.pem


def _client(port: int, ca: bytes, version: ssl.TLSVersion) -> ssl.SSLSocket:
    context = ssl.create_default_context(cadata=ca.decode())
    context.maximum_version = version
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    # A ragged EOF (no close_notify) raises SSLEOFError instead of passing for the end.
    return context.wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False)


def _read_to_close_notify(tls: ssl.SSLSocket, first_wait: float) -> bytes:
    """Everything up to the peer's close_notify, slowly at first (the window fills up)."""
    time.sleep(first_wait)
    out = bytearray()
    while chunk := tls.recv(65536):  # b"": close_notify; SSLEOFError: cut without one
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_what_the_upstream_wrote_last_reaches_a_slow_client_then_close_notify(
    nursery: trio.Nursery, version: ssl.TLSVersion
) -> None:
    payload = bytes(range(256)) * (16 << 10)  # 4 MiB: far more than the socket buffers hold
    upstream = TunnelUpstream(payload)
    port, ca = await _gateway(nursery, await nursery.start(upstream.serve))

    def talk() -> bytes:
        with _client(port, ca, version) as tls:
            tls.sendall(UPGRADE)
            return _read_to_close_notify(tls, first_wait=1.0)

    with trio.fail_after(30):
        got = await trio.to_thread.run_sync(talk)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert len(body) == len(payload) and body == payload


async def test_a_half_closed_tunnel_still_carries_what_the_client_sends(
    nursery: trio.Nursery,
) -> None:
    """TLS 1.3: the upstream finishes its direction while the client's bytes are still
    queued at the gateway (the upstream was not reading): every one of them reaches it."""
    upstream = TunnelUpstream(b"bye", read_after=0.5)
    port, ca = await _gateway(nursery, await nursery.start(upstream.serve))
    sent = bytes(range(251)) * 40_000  # ~10 MB: more than the buffers between them hold

    def talk() -> bytes:
        with _client(port, ca, ssl.TLSVersion.TLSv1_3) as tls:
            tls.sendall(UPGRADE + sent)  # blocks until the upstream reads
            got = _read_to_close_notify(tls, first_wait=0.0)  # the gateway's half-close
            tls.unwrap()  # our close_notify ends the other direction
            return got

    with trio.fail_after(30):
        got = await trio.to_thread.run_sync(talk)
        await upstream.done.wait()
    assert got.endswith(b"\r\n\r\nbye")
    assert upstream.received == len(sent)
    assert upstream.digest.digest() == hashlib.sha256(sent).digest()


async def _s_client(port: int, data: bytes) -> tuple[int, bytes, bytes]:
    """openssl s_client's exit status (1 after an EOF without close_notify), its output
    and its errors."""
    require_tool("openssl")
    done = await trio.run_process(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST,
         "-quiet", "-ign_eof"],
        stdin=data, capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


async def test_openssl_s_client_gets_the_tunnel_whole_then_close_notify(
    nursery: trio.Nursery,
) -> None:
    payload = b"z" * (3 << 20)
    upstream = TunnelUpstream(payload)
    port, _ = await _gateway(nursery, await nursery.start(upstream.serve))
    code, out, err = await _s_client(port, UPGRADE)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), err
    assert body == payload, (len(body), err[-400:])
    assert code == 0 and b"unexpected eof" not in err.lower(), err[-400:]


async def test_openssl_s_client_gets_a_closing_response_whole_then_close_notify(
    nursery: trio.Nursery,
) -> None:
    from tests.ingress.harness import echo_servers

    with echo_servers("web") as up:
        port, _ = await _gateway(nursery, up["web"])
        request = b"GET /x HTTP/1.1\r\nHost: tunnel.example.com\r\nConnection: close\r\n\r\n"
        code, out, err = await _s_client(port, request)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), err
    assert len(body) == _content_length(head) > 0
    assert code == 0 and b"unexpected eof" not in err.lower(), err[-400:]


def _content_length(head: bytes) -> int:
    lines = head.split(b"\r\n")
    return next(int(v.split(b":")[1]) for v in lines if v.lower().startswith(b"content-length:"))


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /big HTTP/1.1\r\nHost: tunnel.example.com\r\nConnection: close\r\n\r\n", 200),
        (b"GET /big HTTP/1.0\r\nHost: tunnel.example.com\r\n\r\n", 200),
        (b"GET /big HTTP/1.1\r\nHost: tunnel.example.com\r\nContent-Length: 1, 1\r\n\r\n", 400),
    ],
    ids=["connection-close", "http-1.0", "bad-request"],
)
async def test_a_response_before_the_gateway_closes_ends_with_close_notify(
    nursery: trio.Nursery, version: ssl.TLSVersion, request_: bytes, status: int
) -> None:
    """The gateway closes the connection after this response (the client said so, or its
    request was bad): the client reads it whole, then close_notify, not a bare FIN."""
    from tests.ingress.harness import echo_servers

    with echo_servers("web") as up:
        port, ca = await _gateway(nursery, up["web"])

        def talk() -> bytes:
            with _client(port, ca, version) as tls:
                tls.sendall(request_)
                return _read_to_close_notify(tls, first_wait=0.2)

        with trio.fail_after(20):
            got = await trio.to_thread.run_sync(talk)
    assert got.startswith(b"HTTP/1.1 %d " % status), got[:200]
    head, _, body = got.partition(b"\r\n\r\n")
    assert len(body) == _content_length(head)


async def test_a_request_in_the_same_segment_as_the_clients_finished_is_answered(
    nursery: trio.Nursery,
) -> None:
    """TLS 1.3: the client's Finished and its request leave in one send, so the gateway's
    last handshake read also brings the request's plaintext: answered at once, not after the
    idle timeout."""
    from mesh.tls.session import TlsSession
    from tests.ingress.harness import echo_servers

    with echo_servers("web") as up:
        port, ca = await _gateway(nursery, up["web"])
        context = ssl.create_default_context(cadata=ca.decode())
        client = TlsSession(context, server_side=False, server_hostname=HOST)
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        with sock, trio.fail_after(3):  # far below the idle timeout
            await sock.send(client.data_to_send())  # ClientHello
            while not client.handshake_complete:
                client.receive_data(await sock.recv(65536))
            request = b"GET /x HTTP/1.1\r\nHost: tunnel.example.com\r\nConnection: close\r\n\r\n"
            client.send(request)
            await sock.send(client.data_to_send())  # Finished and the request, one segment
            got = b""
            while not client.peer_closed:
                data = await sock.recv(65536)
                got += client.receive_data(data)
                if not data:
                    break
    assert got.startswith(b"HTTP/1.1 200 "), got[:200]
    assert client.clean_close  # and it ended with close_notify


async def test_a_client_that_stalls_its_handshake_is_dropped_after_the_header_timeout(
    nursery: trio.Nursery,
) -> None:
    """Nothing, or half a ClientHello, then silence: the TLS listener lets go after the
    header timeout (as for a slow request head) and keeps serving others."""
    from mesh.http.server import Limits

    gw = await start_gateway(nursery, served(), limits=Limits(header_timeout=0.5))
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(*hello, server_hostname="x.example.com")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    client_hello = hello[1].read()
    for sent in (b"", client_hello[: len(client_hello) // 2]):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", gw.tls_port))
        with sock:
            if sent:
                await sock.send(sent)
            start = trio.current_time()
            with trio.fail_after(5):
                try:
                    while await sock.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
            assert 0.4 <= trio.current_time() - start < 4
    from mesh.tls.certs import DEFAULT_CERT_CN
    from tests.ingress.test_gateway_tls import s_client_subject

    subject, _ = await s_client_subject(gw.tls_port, "next.example.com")
    assert DEFAULT_CERT_CN in subject


async def test_a_large_upload_over_the_tls_listener_with_curl(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """16 MiB from curl through TLS termination, twice in one curl run: every byte reaches
    the backend (the plaintext the TLS layer decrypts is all handed on, none left inside)."""
    import json

    from tests.ingress.harness import echo_servers

    require_tool("curl")
    body = tmp_path / "body"
    body.write_bytes(bytes(range(256)) * (1 << 16))
    with echo_servers("web") as up:
        port, ca = await _gateway(nursery, up["web"])
        (tmp_path / "ca.pem").write_bytes(ca)
        url = f"https://{HOST}:{port}/upload"
        done = await trio.run_process(
            ["curl", "-s", "--max-time", "30", "--cacert", str(tmp_path / "ca.pem"),
             "--resolve", f"{HOST}:{port}:127.0.0.1", "--data-binary", f"@{body}", url,
             "--next", "--cacert", str(tmp_path / "ca.pem"), "--resolve",
             f"{HOST}:{port}:127.0.0.1", "--data-binary", f"@{body}", url],
            capture_stdout=True, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.returncode
    text, answers, at = done.stdout.decode(), [], 0
    decoder = json.JSONDecoder()
    while at < len(text.rstrip()):
        answer, at = decoder.raw_decode(text, at)
        answers.append(answer)
        while at < len(text) and text[at].isspace():
            at += 1
    assert [a["body_bytes"] for a in answers] == [16 << 20, 16 << 20]
