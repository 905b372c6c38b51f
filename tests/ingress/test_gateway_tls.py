"""TLS termination by SNI on the running gateway, seen by curl and openssl s_client."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from mesh.tls.certs import DEFAULT_CERT_CN
from tests.conftest import require_tool
from tests.ingress.harness import (
    backend,
    echo_servers,
    ingress,
    path,
    served,
    start_gateway,
    tls_secret,
)
from tests.tls.pki import CA


async def s_client_subject(port: int, servername: str | None) -> tuple[str, str]:
    """(the certificate subject line, the negotiated protocol and ALPN lines) per openssl."""
    require_tool("openssl")
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "http/1.1"]
    if servername is not None:
        args += ["-servername", servername]
    done = await trio.run_process(
        args, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
    )
    out = done.stdout.decode(errors="replace")
    subject = next((line for line in out.splitlines() if line.startswith("subject=")), "")
    rest = "\n".join(line for line in out.splitlines() if "Protocol" in line or "ALPN" in line)
    return subject, rest


async def test_certificates_by_sni_for_curl_and_openssl(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = CA()
    shop = ca.issue("shop.example.com")
    wild = ca.issue("*.apps.example.com")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    with echo_servers("web") as up:
        config = served(
            backend("web", up["web"]),
            tls_secret("shop-tls", shop.cert_pem, shop.key_pem),
            tls_secret("apps-tls", wild.cert_pem, wild.key_pem),
            ingress(
                "shop",
                "shop.example.com",
                path("/", "web"),
                tls=[{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
            ),
            ingress(
                "apps",
                "*.apps.example.com",
                path("/", "web"),
                tls=[{"hosts": ["*.apps.example.com"], "secretName": "apps-tls"}],
                created="2026-01-02T00:00:00Z",
            ),
        )
        gw = await start_gateway(nursery, config)
        port = gw.tls_port
        require_tool("curl")
        for host in ("shop.example.com", "a.apps.example.com"):
            done = await trio.run_process(
                [
                    "curl", "-s", "--max-time", "10", "--cacert", str(tmp_path / "ca.pem"),
                    "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/x",
                ],
                capture_stdout=True,
                check=False,
            )  # fmt: skip
            assert done.returncode == 0, (host, done.returncode)  # verified against the CA
            echoed = json.loads(done.stdout)
            assert echoed["name"] == "web"
            assert echoed["headers"]["x-forwarded-proto"] == "https"

        subject, proto = await s_client_subject(port, "shop.example.com")
        assert "CN = shop.example.com" in subject or "CN=shop.example.com" in subject
        assert "ALPN protocol: http/1.1" in proto
        subject, _ = await s_client_subject(port, "x.apps.example.com")
        assert "apps.example.com" in subject
        for name in ("unknown.example.com", None):  # no match, no SNI: the default
            subject, _ = await s_client_subject(port, name)
            assert DEFAULT_CERT_CN in subject, (name, subject)

        # A certificate change applies to the next handshake, without a restart.
        renewed = ca.issue("shop.example.com", ["shop.example.com", "renewed.example.com"])
        gw.apply(
            served(
                backend("web", up["web"]),
                tls_secret("shop-tls", renewed.cert_pem, renewed.key_pem),
                ingress(
                    "shop",
                    "shop.example.com",
                    path("/", "web"),
                    tls=[{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
                ),
                version=2,
            )
        )
        require_tool("openssl")
        done = await trio.run_process(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
             "shop.example.com", "-showcerts"],
            stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert renewed.cert_pem.decode().strip().splitlines()[1] in done.stdout.decode()


async def test_tls_versions_and_a_plain_client_on_the_tls_port(nursery: trio.Nursery) -> None:
    gw = await start_gateway(nursery, served())
    require_tool("openssl")
    for flag, expected in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        done = await trio.run_process(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.tls_port}", flag],
            stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert expected in done.stdout.decode(), flag
    # Plain HTTP bytes on the TLS port: the handshake fails, the gateway keeps serving.
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", gw.tls_port))
    with sock:
        await sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):  # closed (or reset: the request was never read) in time
            try:
                while await sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    subject, _ = await s_client_subject(gw.tls_port, "still.example.com")
    assert DEFAULT_CERT_CN in subject
