"""The packet-flow table against the userspace proxy, with real sockets on 127.0.0.0/8."""

from __future__ import annotations

import pytest
import trio

from mesh.component import Component
from mesh.proxy.userspace import UserspaceProxy
from tests.proxy.flows import CASES, NODE, FlowCase
from tests.proxy.servers import ask_tcp, ask_udp, tcp_who, udp_who

NODE_IP = "127.9.0.1"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_flow_table(case: FlowCase, nursery: trio.Nursery) -> None:
    for ip, port in sorted(case.endpoints()):
        await nursery.start(tcp_who if case.protocol == "TCP" else udp_who, ip, port)
    proxy = UserspaceProxy(node_ip=NODE_IP)
    proxy.apply(case.config)
    await nursery.start(proxy.run)
    dest = (NODE_IP if case.dest == NODE else case.dest, case.port)
    ask = ask_tcp if case.protocol == "TCP" else ask_udp
    got = tuple([await ask(client, dest) for client, _ in case.flows])
    assert got == case.expected
    rejects = proxy.registry.get_sample_value(
        "mesh_proxy_rejects_total", {"protocol": case.protocol}
    )
    if case.protocol == "TCP":
        assert rejects == case.expected.count("reject")
    else:
        # UDP to a Service without endpoints is refused by the kernel (no socket, so ICMP
        # port unreachable), before the proxy sees it.
        assert not rejects


def test_is_a_component() -> None:
    assert isinstance(UserspaceProxy(), Component)
