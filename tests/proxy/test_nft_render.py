"""The nftables renderer: golden ruleset text, names, dispatch modes, and the cost shape.

Regenerate the golden files after an intended change with ``MESH_UPDATE_GOLDEN=1 pytest``
and review the diff.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy import nft_names, nft_render
from mesh.proxy.nft_render import RenderOptions, render
from tests.conftest import require_root, require_tool

GOLDEN = Path(__file__).with_name("golden")


def ep(address: str, port: int = 8080, node: str = "node-a", **kw: bool) -> ProxyEndpoint:
    return ProxyEndpoint(address=address, node_name=node, ports={"http": port}, **kw)


HTTP = ProxyPort(name="http", port=80)
CONFIG = ProxyConfig(
    version=4,
    node_name="node-a",
    services=(
        ProxyService(
            namespace="default",
            name="web",
            cluster_ips=("198.19.0.10",),
            ports=(HTTP,),
            endpoints=(ep("198.18.0.3"), ep("198.18.0.2"), ep("198.18.0.9", ready=False)),
        ),
        ProxyService(
            namespace="kube-system",
            name="dns",
            cluster_ips=("198.19.0.53",),
            ports=(ProxyPort(name="dns", port=53, protocol="UDP"),),
            session_affinity=True,
            affinity_timeout=30,
            endpoints=(ProxyEndpoint(address="198.18.0.4", ports={"dns": 53}),),
        ),
        ProxyService(
            namespace="shop",
            name="cart",
            type="NodePort",
            cluster_ips=("198.19.0.11",),
            external_ips=("198.19.5.5",),
            ports=(ProxyPort(name="http", port=80, node_port=30080),),
            external_traffic_local=True,
            endpoints=(ep("198.18.0.5"), ep("198.18.0.6", node="node-b")),
        ),
        ProxyService(
            namespace="shop",
            name="empty",
            type="NodePort",
            cluster_ips=("198.19.0.12",),
            ports=(ProxyPort(name="http", port=80, node_port=30081),),
        ),
        ProxyService(
            namespace="shop",
            name="local-only",
            cluster_ips=("198.19.0.13",),
            ports=(HTTP,),
            internal_traffic_local=True,
            endpoints=(ep("198.18.0.7", node="node-b"),),
        ),
    ),
)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("basic", RenderOptions(pod_cidr="198.18.0.0/16", dispatch="inline")),
        ("shared", RenderOptions(dispatch="shared", node_port_addresses=("198.18.0.1",))),
    ],
)
def test_golden(name: str, options: RenderOptions) -> None:
    text = render(CONFIG, options).body
    path = GOLDEN / f"nft_{name}.nft"
    if os.environ.get("MESH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("name", ["basic", "shared"])
def test_golden_text_is_valid_nft(name: str) -> None:
    require_root()
    require_tool("nft", "unshare")
    # nft -c checks the script against a fresh, empty network namespace; nothing is applied.
    out = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", str(GOLDEN / f"nft_{name}.nft")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


def test_counts_and_targets() -> None:
    rs = render(CONFIG)
    assert rs.service_ports == 5
    # web: 2 ready endpoints (the unready one is left out); dns: 1; cart: 2
    assert rs.endpoints == 5
    assert rs.udp == {("198.19.0.53", 53): frozenset({("198.18.0.4", 53)})}
    assert set(rs.affinity_sets.values()) == {30}
    assert rs.rules == 29  # every rule line of the default rendering
    # Per-endpoint chains only where ClientIP affinity needs them (dns); hairpin pairs for all.
    assert [c for c in rs.chains if c.startswith("endpoint-")] == [
        nft_names.endpoint_chain(CONFIG.services[1], CONFIG.services[1].ports[0], "198.18.0.4", 53)
    ]
    assert rs.body.count(" . 198.18.0.") == 5


def test_deterministic_names() -> None:
    port = ProxyPort(name="http", port=80)
    svc = ProxyService(namespace="default", name="web", ports=(port,))
    name = nft_names.service_chain(svc, port)
    assert name == nft_names.service_chain(svc, port)
    assert name.startswith("service-") and name.endswith("-default/web/tcp/http")
    assert len(name.split("-")[1]) == 8
    ep_name = nft_names.endpoint_chain(svc, port, "198.18.0.2", 8080)
    assert ep_name.endswith("-default/web/tcp/http__198.18.0.2/8080")
    long = "x" * 63
    big = ProxyService(namespace=long, name=long, ports=(ProxyPort(name="a" * 15, port=1),))
    assert len(nft_names.endpoint_chain(big, big.ports[0], "198.18.0.2", 65535)) <= 250


def test_same_input_same_text() -> None:
    shuffled = CONFIG.model_copy(update={"services": tuple(reversed(CONFIG.services))})
    assert render(shuffled).body == render(CONFIG).body


def test_auto_dispatch_switches_to_the_shared_map() -> None:
    def many(n: int) -> ProxyConfig:
        return ProxyConfig(
            services=tuple(
                ProxyService(
                    namespace="b",
                    name=f"s{i}",
                    cluster_ips=(f"198.19.{i // 250}.{i % 250 + 1}",),
                    ports=(HTTP,),
                    endpoints=(ep("198.18.0.2"), ep("198.18.0.3")),
                )
                for i in range(n)
            )
        )

    small = render(many(nft_render.SHARED_DISPATCH_ABOVE)).body
    large = render(many(nft_render.SHARED_DISPATCH_ABOVE + 1)).body
    assert "dnat to numgen inc mod 2 map {" in small and "offset" not in small
    assert "ct mark set numgen inc mod 2 offset 1 goto endpoint-dnat" in large
    assert "ct mark set numgen inc mod 2 offset 2001 goto endpoint-dnat" in large
    assert "map {" not in large and "vmap {" not in large


def test_duplicate_addresses_first_service_wins() -> None:
    a = ProxyService(namespace="a", name="one", cluster_ips=("198.19.0.1",), ports=(HTTP,))
    b = a.model_copy(update={"namespace": "b"})
    body = render(ProxyConfig(services=(b, a))).body
    assert body.count("198.19.0.1 . tcp . 80 :") == 1
    assert "a/one/tcp/http" not in body.split("198.19.0.1 . tcp . 80 :")[0][-10:]


def _v6(ip: str) -> str:
    """198.19.a.b -> fd00:19::a:b (and 198.18 -> fd00:18): the same layout in IPv6."""
    _, net, c, d = ip.split(".")
    return str(ipaddress.ip_address(f"fd00:{net}::{c}:{d}"))


def _dual(config: ProxyConfig) -> ProxyConfig:
    """Every Service and endpoint of ``config`` with an IPv6 twin of each address."""
    services = []
    for svc in config.services:
        eps = [*svc.endpoints]
        eps += [e.model_copy(update={"address": _v6(e.address)}) for e in svc.endpoints]
        services.append(
            svc.model_copy(
                update={
                    "cluster_ips": (*svc.cluster_ips, *map(_v6, svc.cluster_ips)),
                    "external_ips": (*svc.external_ips, *map(_v6, svc.external_ips)),
                    "endpoints": tuple(eps),
                }
            )
        )
    return config.model_copy(update={"services": tuple(services)})


DUAL = _dual(CONFIG)
V6_OPTIONS = RenderOptions(family="ip6", pod_cidr="fd00:18::/64", dispatch="inline")


def test_golden_ip6() -> None:
    text = render(DUAL, V6_OPTIONS).body
    path = GOLDEN / "nft_ip6.nft"
    if os.environ.get("MESH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert text.startswith("table ip6 mesh-proxy {")


def test_golden_ip6_is_valid_nft() -> None:
    require_root()
    require_tool("nft", "unshare")
    out = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", str(GOLDEN / "nft_ip6.nft")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("dispatch", ["inline", "shared"])
def test_each_family_table_has_the_same_structure(dispatch: str) -> None:
    """The ip table of a dual-stack config is the single-stack table; the ip6 table has the
    same shape (chains, rules, elements) over the IPv6 addresses only."""
    v4 = RenderOptions(pod_cidr="198.18.0.0/16", dispatch=dispatch)  # type: ignore[arg-type]
    v6 = RenderOptions(family="ip6", pod_cidr="fd00:18::/64", dispatch=dispatch)  # type: ignore[arg-type]
    ip = render(DUAL, v4)
    assert ip.body == render(CONFIG, v4).body
    ip6 = render(DUAL, v6)
    assert "198.1" not in ip6.body and "fd00" not in ip.body
    for attr in ("rules", "elements", "service_ports", "endpoints"):
        assert getattr(ip6, attr) == getattr(ip, attr), attr
    assert len(ip6.chains) == len(ip.chains)
    assert {k: len(v) for k, v in ip6.element_sets.items()} == {
        k: len(v) for k, v in ip.element_sets.items()
    }
    assert ip6.udp == {("fd00:19::53", 53): frozenset({("fd00:18::4", 53)})}
    assert "ip6 saddr fd00:18::/64 goto" in ip6.body  # the local-traffic detector, per family
    assert "ipv6_addr" in ip6.body and "ipv4_addr" not in ip6.body


def test_endpoint_fallback_is_decided_per_family() -> None:
    """Ready IPv6 endpoints do not hide the IPv4 table's serving-terminating fallback."""
    svc = ProxyService(
        namespace="d",
        name="web",
        cluster_ips=("198.19.0.10", "fd00:19::10"),
        ports=(HTTP,),
        endpoints=(
            ep("198.18.0.2", ready=False, serving=True, terminating=True),
            ep("fd00:18::2"),
        ),
    )
    config = ProxyConfig(services=(svc,))
    assert "dnat to 198.18.0.2:8080" in render(config).body
    assert "dnat to [fd00:18::2]:8080" in render(config, RenderOptions(family="ip6")).body
