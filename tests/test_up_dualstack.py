"""``mesh up`` (userspace proxy) on a dual-stack service range, run as root inside a network
namespace the test creates: DNS answers A and AAAA, ``curl -6`` reaches the IPv6 ClusterIP
through the userspace proxy, and the ``local RANGE dev lo`` route the proxy added is gone
after it stops."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mesh.proxy import netns
from tests.polling import wait_for
from tests.scratch_netns import run_in, scratch_namespace, serve_http
from tests.test_cli_e2e import Proc, listen_anywhere

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
    with scratch_namespace("ip", "dig", "curl") as name:
        yield name


def _local_routes(ns: str) -> str:
    return run_in(ns, "ip", "-6", "route", "show", "table", "local")


def _up(
    tmp_path: Path,
    namespace: str,
    stderr: object = subprocess.DEVNULL,
    wait: set[str] | None = None,
    extra: Sequence[str] = (),
) -> Proc:
    args = ["up", "-f", str(tmp_path), "--service-cidr", "127.10.0.0/16,fd00:10::/112"]
    args += listen_anywhere(("--dns-listen", "--control-listen", "--admin-listen"))
    args += [*extra, "--no-forward"]
    return Proc(args, wait or {"admin"}, stderr, netns.exec_argv(namespace, []))


def test_up_dual_stack_userspace(namespace: str, tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(MANIFESTS)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello over ipv6")
    server = serve_http(namespace, 18080, site)
    gateway = ["--gateway-listen", "127.0.0.1:0", "--gateway-tls-listen", "127.0.0.1:0"]
    up = _up(tmp_path, namespace, wait={"dns", "admin"}, extra=gateway)
    try:
        port = str(up.addresses["dns"][1])
        dig = ["dig", "@127.0.0.1", "-p", port, "+short", "web.shop.svc.cluster.local"]
        vip6 = run_in(namespace, *dig, "AAAA")
        assert vip6.startswith("fd00:10::")
        assert run_in(namespace, *dig, "A").startswith("127.10.")
        assert "fd00:10::/112" in _local_routes(namespace)
        curl = ["curl", "-6", "-s", "-m", "2", "-g", f"http://[{vip6}]:80/"]
        wait_for(lambda: run_in(namespace, *curl) == "hello over ipv6", timeout=15.0)
    finally:
        up.stop()
        server.terminate()
        server.wait(10)
    assert "fd00:10::" not in _local_routes(namespace)


def test_a_local_route_left_by_sigkill_is_adopted_and_removed(
    namespace: str, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "web.yaml").write_text(MANIFESTS)
    killed = _up(manifests, namespace)
    wait_for(lambda: "fd00:10::/112" in _local_routes(namespace), timeout=10.0)
    killed.popen.kill()
    killed.popen.wait(10)
    left = [line for line in _local_routes(namespace).splitlines() if "fd00:10::/112" in line]
    assert len(left) == 1 and "proto 109" in left[0]  # our mark

    with (tmp_path / "stderr").open("w") as log:
        again = _up(manifests, namespace, log)
        try:
            wait_for(lambda: "adopted" in (tmp_path / "stderr").read_text(), timeout=10.0)
        finally:
            again.stop()
    assert "fd00:10::" not in _local_routes(namespace)
    assert "Traceback" not in (tmp_path / "stderr").read_text()


PROXY_CONFIG = """
version: 1
services:
  - namespace: shop
    name: web
    cluster_ips: [127.10.0.5, "fd00:10::5"]
    ports: [{name: http, port: 80}]
    endpoints:
      - {address: 127.0.0.1, ports: {http: 18080}}
      - {address: "::1", ports: {http: 18080}}
"""


def test_standalone_userspace_proxy_makes_its_ipv6_service_range_local(
    namespace: str, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from the standalone proxy")
    server = serve_http(namespace, 18080, site)
    config = tmp_path / "proxy.yaml"
    config.write_text(PROXY_CONFIG)
    args = ["proxy", "--config", str(config), "--admin-listen", "127.0.0.1:0"]
    proxy = Proc(
        [*args, "--service-cidr", "fd00:10::/112,127.10.0.0/16"],
        {"admin"},
        prefix=netns.exec_argv(namespace, []),
    )
    try:
        assert "fd00:10::/112" in _local_routes(namespace)
        curl = ["curl", "-6", "-s", "-m", "2", "-g", "http://[fd00:10::5]:80/"]
        wait_for(
            lambda: run_in(namespace, *curl) == "hello from the standalone proxy", timeout=15.0
        )
    finally:
        proxy.stop()
        server.terminate()
        server.wait(10)
    assert "fd00:10::" not in _local_routes(namespace)
