"""An https redirect goes where this gateway serves TLS: ``mesh up`` listens for TLS on 8443,
so ``https://host/`` (port 443) would be a dead end. Followed by curl -L through a running
gateway: ssl-redirect of an Ingress (to the gateway's TLS port) and a Gateway API
RequestRedirect with scheme https (to the HTTPS listener beside the HTTP one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from mesh.config.gateway import GatewayListener
from mesh.http.routes import https_ports
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
from tests.ingress.test_listener_failures import hold_port
from tests.polling import until
from tests.routing.world import obj
from tests.tls.pki import CA


def lis(name: str, protocol: str, port: int | None, address: str | None) -> GatewayListener:
    return GatewayListener(name=name, protocol=protocol, port=port, address=address)


CASES = [
    # (listeners, own ports, expected)
    ([lis("http", "HTTP", None, None), lis("https", "HTTPS", None, None)],
     {"http": 8080, "https": 8443}, {"http": 8443, "https": 8443}),
    ([lis("http", "HTTP", None, None), lis("https", "HTTPS", None, None)],
     {"http": 80, "https": 443}, {}),  # the well-known port: left out of the Location
    ([lis("http", "HTTP", None, None), lis("https", "HTTPS", None, None)], {}, {}),  # unbound
    ([lis("a", "HTTP", 8080, "127.0.0.5"), lis("b", "HTTPS", 9443, "127.0.0.5"),
      lis("c", "HTTPS", 8443, "127.0.0.5"), lis("d", "HTTP", 80, "127.0.0.6")],
     {}, {"a": 8443, "b": 8443, "c": 8443}),  # the lowest; none on another address
    ([lis("a", "HTTP", 8080, "127.0.0.5"), lis("b", "HTTPS", 443, "127.0.0.5"),
      lis("c", "HTTPS", 8443, "127.0.0.5")], {}, {}),  # 443 is there
]  # fmt: skip


@pytest.mark.parametrize(("listeners", "own", "expected"), CASES)
def test_the_https_port_of_each_listener(
    listeners: list[GatewayListener], own: dict[str, int], expected: dict[str, int]
) -> None:
    assert https_ports(listeners, own) == expected


async def curl_follow(tmp_path: Path, url: str, *resolve: str) -> tuple[int, str, list[str]]:
    """(exit code, body, Location headers seen) of ``curl -L`` on ``url``."""
    require_tool("curl")
    args = ["curl", "-sS", "-L", "--max-redirs", "3", "--max-time", "10", "-D", "-",
            "--cacert", str(tmp_path / "ca.pem")]  # fmt: skip
    for item in resolve:
        args += ["--resolve", item]
    done = await trio.run_process(
        [*args, url], capture_stdout=True, capture_stderr=True, check=False
    )
    out = done.stdout.decode()
    locations = [
        line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if line.lower().startswith("location:")
    ]
    return done.returncode, out.rsplit("\r\n\r\n", 1)[-1], locations


async def test_curl_follows_an_ingress_ssl_redirect_to_the_gateway_tls_port(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = CA()
    shop = ca.issue("shop.example.com")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    with echo_servers("web") as up:
        gw = await start_gateway(nursery, None)
        gw.apply(
            served(
                backend("web", up["web"]),
                tls_secret("shop-tls", shop.cert_pem, shop.key_pem),
                ingress(
                    "shop",
                    "shop.example.com",
                    path("/", "web"),
                    tls=[{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
                ),
            )
        )
        host = "shop.example.com"
        code, body, locations = await curl_follow(
            tmp_path,
            f"http://{host}:{gw.port}/x?y=1",
            f"{host}:{gw.port}:127.0.0.1",
            f"{host}:{gw.tls_port}:127.0.0.1",
        )
        assert locations == [f"https://{host}:{gw.tls_port}/x?y=1"]
        assert code == 0, body
        echoed = json.loads(body)
        assert echoed["name"] == "web" and echoed["headers"]["x-forwarded-proto"] == "https"


async def test_curl_follows_a_gateway_api_scheme_redirect_to_the_https_listener(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ip = "127.11.78.21"
    ports = []
    for _ in range(2):  # two ports free a moment ago, for the gateway's listeners
        held = hold_port(ip)
        ports.append(held.getsockname()[1])
        held.close()
    http_port, https_port = ports
    ca = CA()
    cert = ca.issue("api.example.com")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    listeners = [
        {"name": "http", "port": http_port, "protocol": "HTTP"},
        {"name": "https", "port": https_port, "protocol": "HTTPS",
         "tls": {"mode": "Terminate", "certificateRefs": [{"name": "api-tls"}]}},
    ]  # fmt: skip
    redirect = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}
    with echo_servers("api") as up:
        config = served(
            backend("api", up["api"]),
            tls_secret("api-tls", cert.cert_pem, cert.key_pem),
            obj("GatewayClass", "mesh", "", spec={"controllerName": "mesh.dev/gateway"}),
            obj("Gateway", "web", spec={
                "gatewayClassName": "mesh",
                "addresses": [{"type": "IPAddress", "value": ip}],
                "listeners": listeners,
            }),
            obj("HTTPRoute", "to-https", spec={
                "parentRefs": [{"name": "web", "sectionName": "http"}],
                "hostnames": ["api.example.com"],
                "rules": [{"filters": [redirect]}],
            }),
            obj("HTTPRoute", "api", spec={
                "parentRefs": [{"name": "web", "sectionName": "https"}],
                "hostnames": ["api.example.com"],
                "rules": [{"backendRefs": [{"name": "api", "port": 80}]}],
            }),
        )  # fmt: skip
        gw = await start_gateway(nursery, config)
        await until(lambda: len(gw.config_json()["listeners"]) == 4)  # the Gateway's two too
        host = "api.example.com"
        code, body, locations = await curl_follow(
            tmp_path,
            f"http://{host}:{http_port}/v1",
            f"{host}:{http_port}:{ip}",
            f"{host}:{https_port}:{ip}",
        )
        assert locations == [f"https://{host}:{https_port}/v1"]
        assert code == 0, body
        assert json.loads(body)["name"] == "api"
