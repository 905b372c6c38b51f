"""The gateway's operator flags through the real CLI: what the upstream learns of the client
(``--client-forwarded-headers``, ``--forwarded-header``) seen with curl, and a Gateway without
``spec.addresses`` served on an address allocated from ``--gateway-cidr``."""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from mesh.ingress import echo
from tests.conftest import require_tool
from tests.ingress.up_manifests import ECHO_SHOP
from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc, listen_anywhere

ECHO_IP = "127.23.0.9"
CLIENT_IP = "127.0.0.5"  # curl binds here: the peer the gateway sees
CIDR = "127.11.203.0/30"
CLAIMED = "203.0.113.9"  # what a client says in X-Forwarded-For

MANIFESTS = (
    ECHO_SHOP.replace("{pod}", "echo-9")
    + """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: auto, namespace: shop}}
spec:
  gatewayClassName: mesh
  listeners:
  - {{name: http, protocol: HTTP, port: {gateway_port}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: shop}}
spec:
  parentRefs: [{{name: auto}}]
  hostnames: [echo.example.com]
  rules:
  - backendRefs: [{{name: echo, port: 80}}]
"""
)


def curl(url: str, *headers: str) -> subprocess.CompletedProcess[str]:
    args = ["curl", "-sS", "--max-time", "5", "--interface", CLIENT_IP, url]
    for header in headers:
        args += ["-H", header]
    return subprocess.run(args, capture_output=True, text=True, timeout=15)


def seen_upstream(url: str, *headers: str) -> dict[str, str]:
    """The request's fields as the echo upstream received them."""
    out = curl(url, "host: shop.example.com", *headers)
    assert out.returncode == 0, out.stderr
    fields: dict[str, str] = json.loads(out.stdout)["headers"]
    return fields


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, int]]:
    """``mesh up`` trusting the client's forwarding fields and adding Forwarded."""
    require_tool("curl")
    (server,) = echo.serve("echo", [(ECHO_IP, 0)])
    gateway_port = random.randrange(20000, 30000)
    manifests = tmp_path_factory.mktemp("flags")
    (manifests / "app.yaml").write_text(
        MANIFESTS.format(
            echo_ip=ECHO_IP, echo_port=server.server_address[1], gateway_port=gateway_port
        )
    )
    args = ["up", "-f", str(manifests), "--no-proxy", "--upstream", "127.0.0.1:9"]
    args += listen_anywhere()
    args += ["--gateway-cidr", CIDR, "--client-forwarded-headers", "trust", "--forwarded-header"]
    proc = Proc(args, {"control", "gateway"})
    try:
        yield proc, gateway_port
    finally:
        proc.stop()
        server.shutdown()
        server.server_close()


def test_trusted_forwarding_fields_are_kept_and_forwarded_is_added(up: tuple[Proc, int]) -> None:
    proc, _ = up
    gateway = proc.url("gateway")
    port = proc.addresses["gateway"][1]
    got = seen_upstream(f"{gateway}/", f"x-forwarded-for: {CLAIMED}", "x-forwarded-proto: https")
    assert got["x-forwarded-for"] == f"{CLAIMED}, {CLIENT_IP}"  # appended
    assert got["x-forwarded-proto"] == "https"  # the trusted proxy's word
    assert got["forwarded"] == f'for={CLIENT_IP};proto=http;host="shop.example.com"'
    plain = seen_upstream(f"{gateway}/")  # nothing claimed: the gateway's own view
    assert plain["x-forwarded-for"] == CLIENT_IP
    assert (plain["x-forwarded-proto"], plain["x-forwarded-port"]) == ("http", str(port))


def test_by_default_a_client_claims_nothing(up: tuple[Proc, int]) -> None:
    """``mesh ingress`` with no flag, fed by the same control plane: the edge."""
    proc, _ = up
    args = ["ingress", "--control", proc.url("control")]
    args += ["--gateway-listen", "127.0.0.1:0", "--gateway-tls-listen", "127.0.0.1:0"]
    edge = Proc([*args, "--admin-listen", "127.0.0.1:0"], {"gateway"})
    try:
        url = f"{edge.url('gateway')}/"

        def served() -> bool:
            return curl(url, "host: shop.example.com").stdout.startswith("{")

        wait_for(served, timeout=10)
        claims = [f"x-forwarded-for: {CLAIMED}", "x-forwarded-proto: https",
                  "forwarded: for=198.51.100.1"]  # fmt: skip
        got = seen_upstream(url, *claims)
        assert got["x-forwarded-for"] == CLIENT_IP  # replaced by the peer
        assert got["x-forwarded-proto"] == "http"
        assert "forwarded" not in got  # neither the client's nor one of ours
    finally:
        edge.stop()


def test_a_gateway_without_addresses_is_served_on_one_from_gateway_cidr(
    up: tuple[Proc, int],
) -> None:
    proc, gateway_port = up
    control = ["--control", proc.url("control")]

    def allocated() -> Any:
        out = subprocess.run(
            [*MESH, "get", "gateway", "auto", "-n", "shop", "-o", "yaml", *control],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return (yaml.safe_load(out.stdout) or {}).get("status", {}).get("addresses")

    wait_for(allocated, timeout=10)
    (address,) = allocated()
    assert address["type"] == "IPAddress"
    assert ipaddress.ip_address(address["value"]) in ipaddress.ip_network(CIDR)
    url = f"http://{address['value']}:{gateway_port}/"

    def routed() -> bool:
        out = curl(url, "host: echo.example.com")
        return out.returncode == 0 and out.stdout.startswith("{")

    wait_for(routed, timeout=10)
    assert json.loads(curl(url, "host: echo.example.com").stdout)["host"] == "echo.example.com"
