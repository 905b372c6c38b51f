"""The packet-flow table against the userspace proxy over IPv6, inside a network namespace
the test creates (root): the proxy makes its IPv6 service ranges local (``local RANGE dev
lo``) at start and removes the routes at exit. Without the privilege it binds none of those
addresses and says so once."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from typing import TypeVar

import pytest
import trio

from mesh.proxy import netns
from mesh.proxy.listener import ListenKey
from mesh.proxy.local_routes import LocalRoutes
from mesh.proxy.userspace import UserspaceProxy
from tests.proxy import flows
from tests.proxy.servers import ask_tcp, ask_udp, tcp_who, udp_who
from tests.scratch_netns import in_namespace, scratch_namespace

T = TypeVar("T")
SERVICE_RANGES = flows.IPV6_SERVICE_RANGES
HOSTS = flows.IPV6_HOSTS  # clients and endpoints (made local by the test, not the proxy)
NODE_IP = "::1"
CASES = flows.CASES6


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    with scratch_namespace("ip") as name:
        yield name


def _local_table(name: str) -> str:
    argv = netns.exec_argv(name, ["ip", "-6", "route", "show", "table", "local"])
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


@pytest.fixture(scope="module")
def hosts(namespace: str) -> Iterator[None]:
    routes = LocalRoutes([HOSTS], privileged=True)
    in_namespace(namespace, routes.install)
    try:
        yield
    finally:
        in_namespace(namespace, routes.remove)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_flow_table_ipv6(namespace: str, hosts: None, case: flows.FlowCase) -> None:
    async def main() -> tuple[str, ...]:
        async with trio.open_nursery() as nursery:
            for ip, port in sorted(case.endpoints()):
                who = tcp_who if case.protocol == "TCP" else udp_who
                await nursery.start(who, ip, port)
            proxy = UserspaceProxy(node_ip=NODE_IP, local_ranges=SERVICE_RANGES)
            proxy.apply(case.config)
            await nursery.start(proxy.run)
            assert "fd00:10::/112" in _local_table(namespace)
            dest = (NODE_IP if case.dest == flows.NODE else case.dest, case.port)
            ask = ask_tcp if case.protocol == "TCP" else ask_udp
            got = tuple([await ask(client, dest) for client, _ in case.flows])
            nursery.cancel_scope.cancel()
        return got

    assert in_namespace(namespace, lambda: trio.run(main)) == case.expected
    # The proxy removed the routes it added when it stopped.
    assert "fd00:10::" not in _local_table(namespace)


DUAL_VIP6 = flows.IPV6_ADDRESSES[flows.VIP]
DUAL_V6_EPS = [flows.ipv6_host(flows.E1), flows.ipv6_host(flows.E2)]
DUAL = flows.config(
    *(flows.ep(a) for a in (flows.E1, DUAL_V6_EPS[0], flows.E2, DUAL_V6_EPS[1])),
    protocol="TCP",
    cluster_ips=(flows.VIP, DUAL_VIP6),
)


@pytest.mark.parametrize(
    ("client", "vip", "want"),
    [
        (flows.CLIENT_A, flows.VIP, [flows.E1, flows.E2]),
        (flows.ipv6_host(flows.CLIENT_A), DUAL_VIP6, DUAL_V6_EPS),
    ],
    ids=["IPv4 ClusterIP", "IPv6 ClusterIP"],
)
def test_dual_stack_service_relays_within_the_family(
    namespace: str, hosts: None, client: str, vip: str, want: list[str]
) -> None:
    """Two dual-stack pods: each ClusterIP rotates over its own family's two endpoints."""

    async def main() -> tuple[str, ...]:
        async with trio.open_nursery() as nursery:
            for ep in DUAL.services[0].endpoints:
                await nursery.start(tcp_who, ep.address, flows.EP_PORT)
            proxy = UserspaceProxy(node_ip=NODE_IP, local_ranges=SERVICE_RANGES)
            proxy.apply(DUAL)
            await nursery.start(proxy.run)
            got = tuple([await ask_tcp(client, (vip, flows.PORT)) for _ in range(4)])
            nursery.cancel_scope.cancel()
        return got

    expected = tuple(flows.at(a) for a in want + want)
    assert in_namespace(namespace, lambda: trio.run(main)) == expected


def test_without_privilege_ipv6_cluster_ips_are_not_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    case = next(c for c in CASES if c.name == "round robin in endpoint order")

    async def main() -> list[ListenKey]:
        proxy = UserspaceProxy(node_ip="127.0.0.1", local_ranges=SERVICE_RANGES)
        proxy.local_routes.privileged = False
        proxy.apply(case.config)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            listening = proxy.listening()
            ready = proxy.ready
            nursery.cancel_scope.cancel()
        assert ready
        return listening

    with caplog.at_level(logging.WARNING, logger="mesh.proxy"):
        assert trio.run(main) == []
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "IPv6 ClusterIPs are answered in DNS but not proxied: making the IPv6 service range "
        "local needs root (ip -6 route add local RANGE dev lo)"
    ]
