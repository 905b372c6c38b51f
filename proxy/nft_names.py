"""The names and types of the nftables ruleset: hooks, chains, maps and sets, their key types
per address family (``ip``: IPv4, ``ip6``: IPv6), the render options, and the deterministic
chain and set names
of Service ports and endpoints (a hash of the identity, then the identity: stable across
syncs, readable in ``nft list``). Shared by the renderer and the syncer."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Literal

from mesh.config.proxy import ProxyPort, ProxyService

DSTNAT = -100
SRCNAT = 100
FILTER = DSTNAT - 10  # filter before DNAT, so the rules see Service addresses

MARK_MASQ_CHAIN = "mark-for-masquerade"
MASQUERADING_CHAIN = "masquerading"
SERVICES_CHAIN = "services"
ENDPOINTS_CHECK_CHAIN = "endpoints-check"
REJECT_CHAIN = "reject-chain"
SERVICE_IPS_MAP = "service-ips"
SERVICE_NODEPORTS_MAP = "service-nodeports"
NO_ENDPOINT_SERVICES_MAP = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS_MAP = "no-endpoint-nodeports"
NODEPORT_IPS_SET = "nodeport-ips"
DISPATCH_CHAIN = "endpoint-dispatch"
DISPATCH_MAP = "endpoint-dispatch"
DNAT_CHAIN = "endpoint-dnat"
DNAT_MAP = "endpoint-addrs"
HAIRPIN_SET = "endpoint-hairpin"
CLUSTER_IPS_SET = "cluster-ips"
MAPS = (
    SERVICE_IPS_MAP,
    SERVICE_NODEPORTS_MAP,
    NO_ENDPOINT_SERVICES_MAP,
    NO_ENDPOINT_NODEPORTS_MAP,
    DISPATCH_MAP,
    DNAT_MAP,
)
_PORT_KEY = "inet_proto . inet_service : verdict"
Family = Literal["ip", "ip6"]
ADDR_TYPE: dict[str, str] = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}
VERSION: dict[str, int] = {"ip": 4, "ip6": 6}
# Loopback destinations never take NodePort traffic (kube-proxy's default node port addresses).
LOOPBACK: dict[str, str] = {"ip": "127.0.0.0/8", "ip6": "::1"}

# Above this many load-balanced Service ports, "auto" dispatch switches from one anonymous
# vmap per Service to the shared map: the kernel's cost of adding anonymous sets and of
# checking jump loops through verdict maps grows with the number of sets in the table, so
# N per-Service vmaps cost O(N^2) at commit (about 90 s for 10,000 Services on Linux 6.x).
SHARED_DISPATCH_ABOVE = 1000


@dataclass(frozen=True, slots=True)
class RenderOptions:
    table: str = "mesh-proxy"
    family: Family = "ip"  # the table's address family: "ip" (IPv4) or "ip6" (IPv6)
    masquerade_mark: int = 0x4000
    # Traffic to a ClusterIP from outside this CIDR (of the table's family) is masqueraded
    # (kube-proxy's local traffic detector); None: never.
    pod_cidr: str | None = None
    # Addresses that accept NodePort traffic; empty: every local address but 127.0.0.0/8.
    node_port_addresses: tuple[str, ...] = ()
    # Round robin: "inline" renders an anonymous map in each Service chain
    # (``dnat to numgen inc mod N map { 0 : ip . port, ... }``, or kube-proxy's
    # ``numgen inc mod N vmap { 0 : goto ... }`` with affinity); "shared" stores
    # ``numgen inc mod N offset BASE`` in the connection's ct mark and looks it up in one
    # shared map (same order, one set for the whole table); "auto" picks inline up to
    # SHARED_DISPATCH_ABOVE Service ports.
    dispatch: Literal["auto", "inline", "shared"] = "auto"


def map_types(family: str) -> dict[str, str]:
    addr = ADDR_TYPE[family]
    ip_key = f"{addr} . inet_proto . inet_service : verdict"
    return {
        SERVICE_IPS_MAP: ip_key,
        SERVICE_NODEPORTS_MAP: _PORT_KEY,
        NO_ENDPOINT_SERVICES_MAP: ip_key,
        NO_ENDPOINT_NODEPORTS_MAP: _PORT_KEY,
        DISPATCH_MAP: "mark : verdict",
        DNAT_MAP: f"mark : {addr} . inet_service",
    }


def set_types(family: str) -> dict[str, str]:
    addr = ADDR_TYPE[family]
    return {HAIRPIN_SET: f"{addr} . {addr}", CLUSTER_IPS_SET: f"{addr} . inet_proto . inet_service"}


MAP_TYPES = map_types("ip")
SETS = set_types("ip")


@functools.lru_cache(maxsize=65_536)  # the same names every sync
def _hashed(prefix: str, identity: str) -> str:
    # The identity keeps names unique; the hash prefix keeps similar ones visually apart.
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8].upper()
    name = f"{prefix}{digest}-{identity}"
    return name if len(name) <= 250 else name[:247] + "..."


def port_identity(svc: ProxyService, port: ProxyPort) -> str:
    return f"{svc.namespace}/{svc.name}/{port.protocol.lower()}/{port.name}"


def service_chain(svc: ProxyService, port: ProxyPort, local: bool = False) -> str:
    return _hashed("local-" if local else "service-", port_identity(svc, port))


def external_chain(svc: ProxyService, port: ProxyPort) -> str:
    return _hashed("external-", port_identity(svc, port))


def _name_ip(ip: str) -> str:
    # nft names may not hold ":"; an IPv6 address is spelled with "." instead (readable,
    # and unambiguous next to the IPv4 spelling since the family's table holds only one).
    return ip.replace(":", ".")


def endpoint_chain(svc: ProxyService, port: ProxyPort, ip: str, target: int) -> str:
    return _hashed("endpoint-", f"{port_identity(svc, port)}__{_name_ip(ip)}/{target}")


def affinity_set(svc: ProxyService, port: ProxyPort, ip: str, target: int) -> str:
    return _hashed("affinity-", f"{port_identity(svc, port)}__{_name_ip(ip)}/{target}")
