"""``mesh up`` (userspace proxy) on a dual-stack service range, run as root inside a network
namespace the test creates: DNS answers A and AAAA, ``curl -6`` reaches the IPv6 ClusterIP
through the userspace proxy, and the ``local RANGE dev lo`` route the proxy added is gone
after it stops."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.proxy import netns
from tests.conftest import require_root, require_tool
from tests.polling import wait_for
from tests.test_cli_e2e import Proc

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80, targetPort: 18080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints: [{addresses: ["::1"]}]
ports: [{name: http, port: 18080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["127.0.0.1"]}]
ports: [{name: http, port: 18080}]
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    require_root()
    require_tool("ip", "dig", "curl")
    name = f"mesh-test-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)  # also ends every process left in it


def _in(ns: str, *argv: str) -> str:
    out = subprocess.run(netns.exec_argv(ns, argv), capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def test_up_dual_stack_userspace(namespace: str, tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(MANIFESTS)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello over ipv6")
    server = subprocess.Popen(
        netns.exec_argv(
            namespace,
            [
                sys.executable,
                "-m",
                "http.server",
                "18080",
                "--bind",
                "::",
                "--directory",
                str(site),
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    up = Proc(
        [
            "up",
            "-f",
            str(tmp_path),
            "--service-cidr",
            "127.10.0.0/16,fd00:10::/112",
            "--dns-listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
            "--gateway-tls-listen",
            "127.0.0.1:0",
            "--no-forward",
        ],
        {"dns", "admin"},
        prefix=netns.exec_argv(namespace, []),
    )
    try:
        port = str(up.addresses["dns"][1])
        dig = ["dig", "@127.0.0.1", "-p", port, "+short", "web.shop.svc.cluster.local"]
        vip6 = _in(namespace, *dig, "AAAA")
        assert vip6.startswith("fd00:10::")
        assert _in(namespace, *dig, "A").startswith("127.10.")
        assert "fd00:10::/112" in _in(namespace, "ip", "-6", "route", "show", "table", "local")
        curl = ["curl", "-6", "-s", "-m", "2", "-g", f"http://[{vip6}]:80/"]
        wait_for(lambda: _in(namespace, *curl) == "hello over ipv6", timeout=15.0)
    finally:
        up.stop()
        server.terminate()
        server.wait(10)
    assert "fd00:10::" not in _in(namespace, "ip", "-6", "route", "show", "table", "local")
