"""The packet-flow table both proxy modes are checked against.

Each :class:`FlowCase` is a ProxyConfig and a sequence of new flows (a TCP connection, or a
UDP exchange from a fresh client socket) to one destination: for each flow, the client's
source address and the endpoint ("ip:port") that must answer, or :data:`REJECT` (a TCP
reset, or an ICMP unreachable / no answer for UDP). Flows run in order against a proxy that
has just applied the config, so round-robin positions start at the first endpoint.

A destination of :data:`NODE` means "this node's address" (a NodePort): each mode substitutes
its own. Addresses are on 127.0.0.0/8 (userspace mode binds them all); a mode that needs other
addresses rewrites a case with :func:`remap`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService

REJECT = "reject"
NODE = "node"
NODE_NAME = "node-a"

VIP = "127.10.0.1"
EXTERNAL_IP = "127.20.0.1"
LB_IP = "127.30.0.1"
NODE_PORT = 30080
PORT = 10080  # the Service port (high: userspace mode binds it without privilege)
CLIENT_A = "127.0.0.11"
CLIENT_B = "127.0.0.12"

E1, E2, E3 = "127.0.1.1", "127.0.1.2", "127.0.1.3"
EP_PORT = 28080


@dataclass(frozen=True, slots=True)
class FlowCase:
    name: str
    config: ProxyConfig
    dest: str  # a virtual IP, or NODE
    port: int
    protocol: Literal["TCP", "UDP"]
    flows: tuple[tuple[str, str], ...]  # (client IP, expected "ip:port" or REJECT)

    @property
    def expected(self) -> tuple[str, ...]:
        return tuple(want for _, want in self.flows)

    def endpoints(self) -> set[tuple[str, int]]:
        """Every endpoint address:port of the config: where a test starts its backends."""
        return {
            (ep.address, port)
            for svc in self.config.services
            for ep in svc.endpoints
            for port in ep.ports.values()
        }


def ep(
    address: str, port: int = EP_PORT, node: str = NODE_NAME, name: str = "", **conditions: bool
) -> ProxyEndpoint:
    return ProxyEndpoint(address=address, node_name=node, ports={name: port}, **conditions)


def config(
    *endpoints: ProxyEndpoint, protocol: Literal["TCP", "UDP"] = "TCP", **kw: Any
) -> ProxyConfig:
    kw.setdefault("cluster_ips", (VIP,))
    kw.setdefault("ports", (ProxyPort(port=PORT, protocol=protocol),))
    svc = ProxyService(namespace="default", name="web", endpoints=endpoints, **kw)
    return ProxyConfig(version=1, node_name=NODE_NAME, services=(svc,))


def at(address: str, port: int = EP_PORT) -> str:
    return f"{address}:{port}"


def same_client(*want: str, client: str = CLIENT_A) -> tuple[tuple[str, str], ...]:
    return tuple((client, w) for w in want)


THREE = (ep(E1), ep(E2), ep(E3))
LOCAL_REMOTE = (ep(E1, node="node-b"), ep(E2))  # E2 is on this node
NODE_PORTS: dict[str, Any] = {
    "type": "NodePort",
    "ports": (ProxyPort(port=PORT, node_port=NODE_PORT),),
}

CASES: tuple[FlowCase, ...] = (
    FlowCase(
        "round robin in endpoint order",
        config(ep(E3), ep(E1), ep(E2)),
        VIP,
        PORT,
        "TCP",
        same_client(at(E1), at(E2), at(E3), at(E1), at(E2), at(E3)),
    ),
    FlowCase(
        "numeric address order",
        config(ep("127.0.1.10"), ep("127.0.1.9")),
        VIP,
        PORT,
        "TCP",
        same_client(at("127.0.1.9"), at("127.0.1.10"), at("127.0.1.9")),
    ),
    FlowCase(
        "client ip affinity",
        config(*THREE, session_affinity=True, affinity_timeout=300),
        VIP,
        PORT,
        "TCP",
        (
            (CLIENT_A, at(E1)),
            (CLIENT_B, at(E2)),
            (CLIENT_A, at(E1)),
            (CLIENT_B, at(E2)),
            (CLIENT_A, at(E1)),
        ),
    ),
    FlowCase(
        "udp round robin per client socket",
        config(ep(E1), ep(E2), protocol="UDP"),
        VIP,
        PORT,
        "UDP",
        same_client(at(E1), at(E2), at(E1)),
    ),
    FlowCase(
        "udp affinity",
        config(ep(E1), ep(E2), protocol="UDP", session_affinity=True),
        VIP,
        PORT,
        "UDP",
        ((CLIENT_A, at(E1)), (CLIENT_A, at(E1)), (CLIENT_B, at(E2))),
    ),
    FlowCase(
        "node port",
        config(*THREE, **NODE_PORTS),
        NODE,
        NODE_PORT,
        "TCP",
        same_client(at(E1), at(E2), at(E3), at(E1)),
    ),
    FlowCase(
        "external ip",
        config(ep(E1), ep(E2), external_ips=(EXTERNAL_IP,)),
        EXTERNAL_IP,
        PORT,
        "TCP",
        same_client(at(E1), at(E2)),
    ),
    FlowCase(
        "load balancer ip",
        config(ep(E1), ep(E2), load_balancer_ips=(LB_IP,), type="LoadBalancer"),
        LB_IP,
        PORT,
        "TCP",
        same_client(at(E1), at(E2)),
    ),
    FlowCase(
        "internal traffic policy local",
        config(*LOCAL_REMOTE, internal_traffic_local=True),
        VIP,
        PORT,
        "TCP",
        same_client(at(E2), at(E2), at(E2)),
    ),
    FlowCase(
        "internal local does not restrict node ports",
        config(*LOCAL_REMOTE, internal_traffic_local=True, **NODE_PORTS),
        NODE,
        NODE_PORT,
        "TCP",
        same_client(at(E1), at(E2)),
    ),
    FlowCase(
        "external traffic policy local on node port",
        config(*LOCAL_REMOTE, external_traffic_local=True, **NODE_PORTS),
        NODE,
        NODE_PORT,
        "TCP",
        same_client(at(E2), at(E2)),
    ),
    FlowCase(
        "external local does not restrict the cluster ip",
        config(*LOCAL_REMOTE, external_traffic_local=True, **NODE_PORTS),
        VIP,
        PORT,
        "TCP",
        same_client(at(E1), at(E2)),
    ),
    FlowCase(
        "external local with no local endpoint rejects",
        config(ep(E1, node="node-b"), external_traffic_local=True, **NODE_PORTS),
        NODE,
        NODE_PORT,
        "TCP",
        same_client(REJECT, REJECT),
    ),
    FlowCase(
        "serving-terminating fallback",
        config(
            ep(E1, ready=False, serving=True, terminating=True),
            ep(E2, ready=False, serving=False, terminating=True),
            ep(E3, ready=False, serving=True, terminating=True),
        ),
        VIP,
        PORT,
        "TCP",
        same_client(at(E1), at(E3), at(E1)),
    ),
    FlowCase(
        "named target ports per endpoint",
        config(
            ep(E1, 28081, name="http"),
            ep(E2, 28082, name="http"),
            ports=(ProxyPort(name="http", port=PORT),),
        ),
        VIP,
        PORT,
        "TCP",
        same_client(at(E1, 28081), at(E2, 28082), at(E1, 28081)),
    ),
    FlowCase(
        "no endpoints rejects",
        config(),
        VIP,
        PORT,
        "TCP",
        same_client(REJECT, REJECT),
    ),
    FlowCase(
        "no ready endpoints rejects",
        config(ep(E1, ready=False, serving=False)),
        VIP,
        PORT,
        "TCP",
        same_client(REJECT),
    ),
    FlowCase(
        "udp no endpoints rejects",
        config(protocol="UDP"),
        VIP,
        PORT,
        "UDP",
        same_client(REJECT),
    ),
)


def remap(case: FlowCase, addresses: Mapping[str, str]) -> FlowCase:
    """The same case with every IP address in ``addresses`` replaced (config, clients,
    destination and expectations)."""

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            return addresses.get(value, value)
        if isinstance(value, list):
            return [sub(v) for v in value]
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return value

    def sub_flow(want: str) -> str:
        if want == REJECT:
            return want
        ip, _, port = want.rpartition(":")
        return f"{addresses.get(ip, ip)}:{port}"

    cfg = ProxyConfig.model_validate(sub(case.config.model_dump(mode="json")))
    flows = tuple((addresses.get(c, c), sub_flow(w)) for c, w in case.flows)
    return replace(case, config=cfg, dest=addresses.get(case.dest, case.dest), flows=flows)


# The same table over IPv6: service addresses in three /112s, clients and endpoints
# 127.0.c.d -> fd00:0:1::c:d (a mode makes these ranges local its own way).
IPV6_SERVICE_RANGES = ("fd00:10::/112", "fd00:20::/112", "fd00:30::/112")
IPV6_HOSTS = "fd00:0:1::/64"
IPV6_ADDRESSES = {VIP: "fd00:10::1", EXTERNAL_IP: "fd00:20::1", LB_IP: "fd00:30::1"}


def ipv6_host(ip: str) -> str:
    _, _, c, d = ip.split(".")
    return str(ipaddress.ip_address(f"fd00:0:1::{c}:{d}"))


def remap6(case: FlowCase) -> FlowCase:
    """``case`` with every address moved to its IPv6 twin (see IPV6_ADDRESSES)."""
    ips = {c for c, _ in case.flows} | {ip for ip, _ in case.endpoints()}
    return remap(case, {**IPV6_ADDRESSES, **{ip: ipv6_host(ip) for ip in ips}})


CASES6 = tuple(remap6(c) for c in CASES)
