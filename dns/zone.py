"""The zone index: every owner name of a DnsConfig, built once per config.

A query for a cluster name is one dict lookup (lower-cased absolute name -> Node). The only
names not stored are insecure-mode pod names (``a-b-c-d.<ns>.pod.<zone>``), which stand for any
address and are recognised by their shape instead.

Empty non-terminals (``svc.<zone>``, ``<ns>.svc.<zone>``, ``_tcp.web.<ns>.svc.<zone>`` ...) are
stored as empty nodes so they answer NODATA, not NXDOMAIN (RFC 8020). Reverse names
(``in-addr.arpa``, ``ip6.arpa``) are stored without their ancestors: the cluster owns single
PTR names there, not the reverse zones, so any other reverse name is forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from mesh.config.dns import DnsConfig, DnsService
from mesh.dns import names
from mesh.dns.records import (
    SCHEMA_VERSION,
    TYPE_PTR,
    TYPE_SOA,
    TYPE_SRV,
    TYPE_TXT,
    Node,
    NodeBuilder,
    RData,
    address,
    ptr,
    soa,
    srv,
    txt,
)


class ZoneIndex:
    """The immutable lookup structure of one config."""

    __slots__ = (
        "_namespaces",
        "_nodes",
        "_pod_suffix",
        "pod_mode",
        "soa",
        "ttl",
        "version",
        "zone",
    )

    def __init__(
        self,
        *,
        zone: str,
        ttl: int,
        version: int,
        pod_mode: str,
        nodes: Mapping[str, Node],
        namespaces: frozenset[str],
    ) -> None:
        self.zone = zone  # absolute, lower case: "cluster.local."
        self.ttl = ttl
        self.version = version
        self.pod_mode = pod_mode
        self.soa: RData = soa(zone, version, ttl)
        self._nodes = nodes
        self._namespaces = namespaces
        self._pod_suffix = ".pod." + zone if pod_mode == "insecure" else None

    @classmethod
    def build(cls, config: DnsConfig) -> ZoneIndex:
        return _Builder(config).build()

    def __len__(self) -> int:
        return len(self._nodes)

    def owns(self, name: str) -> bool:
        """Whether this server is authoritative for absolute lower-case ``name``."""
        return names.in_zone(name, self.zone) or name in self._nodes

    def find(self, name: str) -> Node | None:
        node = self._nodes.get(name)
        if node is not None or self._pod_suffix is None or not name.endswith(self._pod_suffix):
            return node
        label, dot, namespace = name[: -len(self._pod_suffix)].partition(".")
        if not dot or "." in namespace or namespace not in self._namespaces:
            return None
        ip = names.pod_label_ip(label)
        if ip is None:
            return None
        rtype, rdata = address(ip)
        return Node(rrsets=MappingProxyType({rtype: (rdata,)}))

    @property
    def namespaces(self) -> frozenset[str]:
        return self._namespaces

    def items(self) -> Iterable[tuple[str, Node]]:
        """(name, node) of every stored owner name."""
        return self._nodes.items()

    def names(self) -> list[str]:
        return sorted(self._nodes)


class _Builder:
    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self.zone = names.absolute(config.zone)
        self.nodes: dict[str, NodeBuilder] = {}
        self.srv: dict[str, dict[tuple[int, str], None]] = {}  # name -> ordered (port, target)

    def node(self, name: str) -> NodeBuilder:
        b = self.nodes.get(name)
        if b is None:
            b = self.nodes[name] = NodeBuilder()
        return b

    def build(self) -> ZoneIndex:
        config, zone = self.config, self.zone
        namespaces = set(config.namespaces)
        namespaces.update(s.namespace for s in config.services)
        namespaces.update(p.namespace for p in config.pods)
        self.node(zone).add(TYPE_SOA, soa(zone, config.version, config.ttl))
        self.node("dns-version." + zone).add(TYPE_TXT, txt(SCHEMA_VERSION))
        for ns in namespaces:
            self.node(names.join(ns, "svc", zone))
            if config.pod_mode != "disabled":
                self.node(names.join(ns, "pod", zone))
        for svc in config.services:
            self.service(svc)
        if config.pod_mode == "verified":
            for pod in config.pods:
                for ip in pod.ips:
                    rtype, rdata = address(ip)
                    self.node(names.join(names.endpoint_label(ip), pod.namespace, "pod", zone)).add(
                        rtype, rdata
                    )
        for name, entries in self.srv.items():
            weight = max(1, 100 // len(entries))
            for port, target in entries:
                self.node(name).add(TYPE_SRV, srv(port, target, weight=weight))
        self.empty_non_terminals()
        return ZoneIndex(
            zone=zone,
            ttl=config.ttl,
            version=config.version,
            pod_mode=config.pod_mode,
            nodes={name: b.freeze() for name, b in self.nodes.items()},
            namespaces=frozenset(namespaces),
        )

    def service(self, svc: DnsService) -> None:
        base = names.join(svc.name, svc.namespace, "svc", self.zone)
        if svc.kind == "ExternalName":
            self.node(base).cname = names.absolute(svc.external_name or "")
        elif svc.kind == "ClusterIP":
            node = self.node(base)
            for ip in svc.cluster_ips:
                node.add(*address(ip))
                self.node(names.reverse_name(ip)).add(TYPE_PTR, ptr(base))
            if svc.cluster_ips:
                for port in svc.ports:
                    self.add_srv(port.name, port.protocol, port.port, base, svc.cluster_ips, base)
        elif svc.endpoints:  # headless; with no endpoint published the name does not exist
            node = self.node(base)
            for ep in svc.endpoints:
                if ep.hostname:
                    targets = [(names.join(ep.hostname, base), ep.addresses)]
                else:
                    targets = [
                        (names.join(names.endpoint_label(a), base), (a,)) for a in ep.addresses
                    ]
                for target, addrs in targets:
                    host = self.node(target)
                    for a in addrs:
                        rtype, rdata = address(a)
                        node.add(rtype, rdata)
                        host.add(rtype, rdata)
                        self.node(names.reverse_name(a)).add(TYPE_PTR, ptr(target))
                    for port in ep.ports:
                        self.add_srv(port.name, port.protocol, port.port, base, addrs, target)

    def add_srv(
        self, name: str | None, proto: str, port: int, base: str, ips: tuple[str, ...], target: str
    ) -> None:
        if not name:  # unnamed ports have no SRV record (spec 2.3.2)
            return
        owner = f"_{name}._{proto.lower()}.{base}"
        self.srv.setdefault(owner, {})[(port, target)] = None
        node = self.node(owner)
        for ip in ips:
            node.add_additional(target, *address(ip))

    def empty_non_terminals(self) -> None:
        zone = self.zone
        for name in list(self.nodes):
            if not names.in_zone(name, zone):
                continue
            parent = name
            while parent != zone:
                parent = parent.split(".", 1)[1]
                if parent in self.nodes:
                    break
                self.nodes[parent] = NodeBuilder()
