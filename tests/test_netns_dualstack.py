"""A dual-stack cluster in a box end to end (root): pods get an IPv4 and an IPv6 address,
a dual-stack Service answers A and AAAA, and ``mesh exec pod -- curl -6`` reaches it by
name through the ip6 nftables table. The IPv6 ranges are unique local (fd00::/8) inside
namespaces with no route out."""

from __future__ import annotations

import itertools
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.netns_box import MESH, PODS, Box, write_manifests
from tests.polling import wait_for

SERVICE_CIDR = "198.19.0.0/16,fd00:19::/112"
POD_CIDR = "198.18.0.0/16,fd00:18::/64"

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: v4, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  ipFamilyPolicy: PreferDualStack
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
"""


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    require_root()
    require_tool("ip", "nft", "dig", "curl")
    manifests = write_manifests(tmp_path, MANIFESTS, PODS)
    b = Box(
        f"t{secrets.token_hex(3)}",
        manifests,
        ["--service-cidr", SERVICE_CIDR, "--pod-cidr", POD_CIDR],
    )
    try:
        yield b
    finally:
        b.stop()


def _node_nft(b: Box, *args: str) -> str:
    argv = ["ip", "netns", "exec", f"{b.name}-node", "nft", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def test_dual_stack_box(box: Box, tmp_path: Path) -> None:
    b = box
    # Pods have an address of each family.
    addrs = b.exec("client", "ip", "-o", "addr", "show", "dev", "eth0")
    assert " 198.18." in addrs and " fd00:18::" in addrs

    # A and AAAA for the dual-stack Service; only A for the single-stack one.
    wait_for(
        lambda: b.exec("client", "dig", "+search", "+short", "web", "AAAA").startswith("fd00:19::"),
        timeout=15.0,
    )
    assert b.exec("client", "dig", "+search", "+short", "web", "A").startswith("198.19.")
    assert b.exec("client", "dig", "+search", "+short", "v4", "AAAA") == ""
    # Headless PreferDualStack: the pod's IPv6 address (from the IPv6 EndpointSlice).
    assert b.exec("client", "dig", "+search", "+short", "db-0.db", "AAAA").startswith("fd00:18::")
    vip6 = b.exec("client", "dig", "+search", "+short", "web", "AAAA")
    assert b.exec("client", "dig", "+short", "-x", vip6) == "web.shop.svc.cluster.local."

    # The ip6 table DNATs the IPv6 ClusterIP to the pods' IPv6 addresses.
    table = _node_nft(b, "list", "table", "ip6", "mesh-proxy")
    assert vip6 in table and "dnat ip6 to" in table and "fd00:18::" in table

    servers = []
    for name in ("web-1", "web-2"):
        site = tmp_path / name
        site.mkdir()
        (site / "index.html").write_text(name)
        serve = [sys.executable, "-m", "http.server", "8080", "--bind", "::", "--directory"]
        servers.append(
            subprocess.Popen(
                [*MESH, "exec", "--box", b.name, name, "--", *serve, str(site)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        curl6 = ["curl", "-6", "-s", "-m", "2", "http://web.shop/"]
        wait_for(lambda: b.exec("client", *curl6) != "", timeout=15.0)
        answers = [b.exec("client", *curl6) for _ in range(6)]
        assert set(answers) == {"web-1", "web-2"}
        assert all(x != y for x, y in itertools.pairwise(answers))
        # The same Service over IPv4 still works beside it.
        assert b.exec("client", "curl", "-4", "-s", "-m", "2", "http://web.shop/") in {
            "web-1",
            "web-2",
        }
    finally:
        for s in servers:
            s.terminate()
            s.wait(10)
