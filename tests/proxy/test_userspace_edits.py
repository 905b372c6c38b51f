"""Edits to a running userspace proxy: only the changed Services' listeners are touched, and
an address two Services claim passes to the next one when its owner goes (real sockets)."""

from __future__ import annotations

import socket

import pytest
import trio

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy.listener import Listener, ListenKey
from mesh.proxy.userspace import UserspaceProxy
from tests.proxy.servers import REJECT, ask_tcp, tcp_who

PORT = 10080
CLIENT = "127.0.0.21"
NODE_IP = "127.0.7.100"


def service(name: str, vip: str, endpoint: str, node_port: int | None = None) -> ProxyService:
    ip, port = endpoint.split(":")
    return ProxyService(
        namespace="default",
        name=name,
        type="NodePort" if node_port else "ClusterIP",
        cluster_ips=(vip,),
        ports=(ProxyPort(port=PORT, node_port=node_port),),
        endpoints=(ProxyEndpoint(address=ip, ports={"": int(port)}),),
    )


async def test_the_next_service_takes_over_a_shared_address(nursery: trio.Nursery) -> None:
    for ip in ("127.0.7.1", "127.0.7.2"):
        await nursery.start(tcp_who, ip, 28080)
    a = service("a", "127.10.7.1", "127.0.7.1:28080", node_port=31080)
    b = service("b", "127.10.7.1", "127.0.7.2:28080", node_port=31080)
    proxy = UserspaceProxy(node_ip=NODE_IP)
    proxy.apply(ProxyConfig(version=1, services=(b, a)))
    await nursery.start(proxy.run)
    assert proxy.table.conflicts == (
        "127.10.7.1:10080/TCP (default/b)",
        "nodePort 31080/TCP (default/b)",
    )
    for dest in (("127.10.7.1", PORT), (NODE_IP, 31080)):
        assert await ask_tcp(CLIENT, dest) == "127.0.7.1:28080"
    proxy.apply(ProxyConfig(version=2, services=(b,)))  # the owner goes: b takes both
    for dest in (("127.10.7.1", PORT), (NODE_IP, 31080)):
        assert await ask_tcp(CLIENT, dest) == "127.0.7.2:28080"
    # The NodePort's address becomes a Service address too: the Service address wins the
    # socket, and gets it back for the NodePort when it goes.
    c = service("c", NODE_IP, "127.0.7.1:28080")
    c = c.model_copy(update={"ports": (ProxyPort(port=31080),)})
    proxy.apply(ProxyConfig(version=3, services=(b, c)))
    assert await ask_tcp(CLIENT, (NODE_IP, 31080)) == "127.0.7.1:28080"
    assert ("node", NODE_IP, 31080, "TCP") not in proxy.listening()
    proxy.apply(ProxyConfig(version=4, services=(b,)))
    assert await ask_tcp(CLIENT, (NODE_IP, 31080)) == "127.0.7.2:28080"
    proxy.apply(ProxyConfig(version=5, services=()))
    assert await ask_tcp(CLIENT, ("127.10.7.1", PORT)) == REJECT
    assert proxy.listening() == []


async def test_an_edit_of_one_service_rebinds_its_listener_only(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    await nursery.start(tcp_who, "127.0.7.1", 28080)
    services = [service(f"s{i}", f"127.11.{i // 250}.{i % 250 + 1}", "127.0.7.1:28080") for i in range(300)]  # fmt: skip
    proxy = UserspaceProxy(node_ip=NODE_IP)
    proxy.apply(ProxyConfig(version=1, services=tuple(services)))
    await nursery.start(proxy.run)
    assert len(proxy.listening()) == 300
    before = {k: proxy._listeners[k] for k in proxy.listening()}
    bound: list[ListenKey] = []
    real = proxy._bind

    def counting(key: ListenKey) -> Listener:
        bound.append(key)
        return real(key)

    monkeypatch.setattr(proxy, "_bind", counting)
    wanted: list[ListenKey] = []
    real_wanted = proxy._wanted

    def counting_wanted(key: ListenKey) -> bool:
        wanted.append(key)
        return real_wanted(key)

    monkeypatch.setattr(proxy, "_wanted", counting_wanted)
    services[7] = service("s7", "127.12.0.7", "127.0.7.1:28080")  # moves to a new address
    proxy.apply(ProxyConfig(version=2, services=tuple(services)))
    assert bound == [("vip", "127.12.0.7", PORT, "TCP")]
    assert len(wanted) == 2  # the old address and the new one, not 300
    after = {k: proxy._listeners[k] for k in proxy.listening()}
    gone = ("vip", "127.11.0.8", PORT, "TCP")
    assert set(before) - set(after) == {gone}
    assert all(after[k] is before[k] for k in before if k != gone)
    assert await ask_tcp(CLIENT, ("127.12.0.7", PORT)) == "127.0.7.1:28080"
    assert await ask_tcp(CLIENT, ("127.11.0.8", PORT)) == REJECT


async def test_an_address_that_could_not_be_bound_stops_counting_when_its_service_goes(
    nursery: trio.Nursery,
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.10.7.9", PORT))
    squatter.listen()
    with squatter:
        ok = service("ok", "127.10.7.8", "127.0.7.1:28080")
        taken = service("taken", "127.10.7.9", "127.0.7.1:28080")
        proxy = UserspaceProxy(node_ip=NODE_IP, bind_retry=60.0)
        proxy.apply(ProxyConfig(version=1, services=(ok, taken)))
        await nursery.start(proxy.run)
        assert proxy.not_ready_reason() == (
            "cannot listen on 127.10.7.9:10080/TCP: Address already in use"
        )
        proxy.apply(ProxyConfig(version=2, services=(ok,)))
        assert (proxy.not_ready_reason(), proxy.ready) == (None, True)
