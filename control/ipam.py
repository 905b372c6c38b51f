"""ClusterIP and NodePort allocation, done at admission as the API server does it.

A Service of type ClusterIP, NodePort or LoadBalancer that asks for no clusterIP gets one
from the service range; a NodePort or LoadBalancer port without a nodePort gets one from the
node-port range. Requested values are honoured when they are in range and free, and refused
otherwise (the API server answers 422). Once allocated, a value sticks to its Service: an
apply that leaves the field out keeps it (clusterIP is immutable in Kubernetes).

Allocation is deterministic so that addresses survive re-reads and restarts: the first
candidate is a hash of ``namespace/name`` into the range, and collisions probe forward.
Only two Services whose hashes collide can trade addresses across a restart, and only if
they are loaded in another order.

Pure code: the allocator keeps its own index and, on a collision, asks ``lookup`` (the
store's ``get``) whether the holder still owns the value, so deleted Services free theirs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mesh.cidrs import IPNetwork
from mesh.cidrs import parse_cidrs as _parse_cidrs
from mesh.control.ipfamilies import Families, Family, decide
from mesh.control.store import Key, Rejected
from mesh.objects import KubeObject, Service, replaced

Lookup = Callable[[str, str, str], KubeObject | None]

DEFAULT_SERVICE_CIDR = "127.10.0.0/16"
DEFAULT_NODE_PORTS = range(30000, 32768)
_MAX_PROBES = 1 << 16  # bounds the search in very large (IPv6) ranges


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _ipv4_text(value: int) -> str:
    # What str(ipaddress.IPv4Address(value)) gives, without the object (one per Service).
    return ".".join(map(str, value.to_bytes(4, "big")))


def _ipv6_text(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def parse_cidrs(cidrs: str | Iterable[str]) -> dict[int, IPNetwork]:
    """Service ranges by IP version (4, 6), primary first; at most one per family."""
    return _parse_cidrs(cidrs, "service")


class ServiceAllocator:
    """Admission for Services: fills in clusterIP(s) and nodePorts."""

    def __init__(
        self,
        cidrs: str | Iterable[str] = DEFAULT_SERVICE_CIDR,
        node_ports: range = DEFAULT_NODE_PORTS,
        lookup: Lookup | None = None,
    ) -> None:
        self.ranges = parse_cidrs(cidrs)
        self.node_ports = node_ports
        self.lookup = lookup
        self._ip_owner: dict[str, Key] = {}
        self._port_owner: dict[int, Key] = {}
        # The reverse of the two maps above, so that releasing a Service's values on each
        # admit costs its own values, not a scan of every owner.
        self._held: dict[Key, tuple[set[str], set[int]]] = {}

    # --- admission -----------------------------------------------------------------------

    def admit(self, new: KubeObject, old: KubeObject | None) -> KubeObject:
        if not isinstance(new, Service):
            return new
        prev = old if isinstance(old, Service) else None
        key = new.key
        spec = new.spec
        if spec.type == "ExternalName":
            self._release(key)
            return new
        families = decide(new, prev, self.families)
        if spec.headless:
            self._release(key)
            return _with_allocations(new, families, families.cluster_ips, {})
        ips = self._cluster_ips(new, families)
        fill = self._node_ports(new, prev)
        self._release(key)
        held_ips, held_ports = self._held.setdefault(key, (set(), set()))
        for ip in ips:
            self._ip_owner[ip] = key
            held_ips.add(ip)
        for port in [*fill.values(), *(p.node_port for p in spec.ports if p.node_port)]:
            self._port_owner[port] = key
            held_ports.add(port)
        return _with_allocations(new, families, ips, fill)

    def _release(self, key: Key) -> None:
        ips, ports = self._held.pop(key, ((), ()))
        for ip in ips:
            if self._ip_owner.get(ip) == key:
                del self._ip_owner[ip]
        for port in ports:
            if self._port_owner.get(port) == key:
                del self._port_owner[port]

    # --- cluster IPs ---------------------------------------------------------------------

    @property
    def families(self) -> tuple[Family, ...]:
        """The cluster's IP families, primary (the first range given) first."""
        return tuple("IPv4" if v == 4 else "IPv6" for v in self.ranges)

    def _cluster_ips(self, svc: Service, families: Families) -> list[str]:
        """One address per family: the one asked for (or kept), else a free one."""
        out = []
        for family, ip in zip(families.families, families.cluster_ips, strict=True):
            if ip:
                self._check_requested_ip(svc.key, ip)
                out.append(ip)
            else:
                out.append(self._allocate_ip(svc.key, 4 if family == "IPv4" else 6))
        return out

    def _check_requested_ip(self, key: Key, ip: str) -> None:
        addr = ipaddress.ip_address(ip)
        net = self.ranges.get(addr.version)
        if net is None or addr not in net:
            where = str(net) if net is not None else f"no IPv{addr.version} range"
            raise Rejected(f"spec.clusterIPs: {ip} is not in the valid range ({where})")
        if not self._ip_free(ip, key):
            holder = "/".join(self._ip_owner[ip][1:])
            raise Rejected(f"spec.clusterIPs: {ip} is already allocated to Service {holder}")

    def _ip_free(self, ip: str, key: Key) -> bool:
        owner = self._ip_owner.get(ip)
        if owner is None or owner == key:
            return True
        holder = self.lookup(*owner) if self.lookup is not None else None
        if self.lookup is not None and (
            not isinstance(holder, Service) or ip not in holder.spec.cluster_ips
        ):
            del self._ip_owner[ip]  # the holder is gone or moved: reclaim
            return True
        return False

    def _allocate_ip(self, key: Key, version: int) -> str:
        net = self.ranges[version]
        # Skip the network address and (IPv4) the broadcast address.
        base = int(net.network_address) + 1
        size = net.num_addresses - (2 if version == 4 else 1)
        start = _hash(f"{key[1]}/{key[2]}") % size
        text = _ipv4_text if version == 4 else _ipv6_text
        for i in range(min(size, _MAX_PROBES)):
            ip = text(base + (start + i) % size)
            if self._ip_free(ip, key):
                return ip
        raise Rejected(f"spec.clusterIP: no free address left in service range {net}")

    # --- node ports ----------------------------------------------------------------------

    def _node_ports(self, svc: Service, prev: Service | None) -> dict[int, int]:
        """Node ports for the ports that name none, by service port number: ports sharing
        a number (TCP and UDP 53) share a node port, a requested one if any."""
        if svc.spec.type not in ("NodePort", "LoadBalancer"):
            return {}
        requested: dict[int, int] = {}
        for p in svc.spec.ports:
            if p.node_port is not None:
                self._check_requested_port(svc.key, p.node_port)
                requested.setdefault(p.port, p.node_port)
        kept = _previous_node_ports(prev)
        out: dict[int, int] = {}
        for p in svc.spec.ports:
            if p.node_port is not None or p.port in out:
                continue
            if p.port in requested:
                out[p.port] = requested[p.port]
                continue
            if p.port in kept and self._port_free(kept[p.port], svc.key):
                out[p.port] = kept[p.port]
            else:
                taken = set(out.values()) | set(requested.values())
                out[p.port] = self._allocate_port(svc.key, p.port, taken)
        return out

    def _check_requested_port(self, key: Key, port: int) -> None:
        if port not in self.node_ports:
            lo, hi = self.node_ports.start, self.node_ports.stop - 1
            raise Rejected(f"spec.ports.nodePort: {port} is not in the valid range {lo}-{hi}")
        if not self._port_free(port, key):
            holder = "/".join(self._port_owner[port][1:])
            raise Rejected(f"spec.ports.nodePort: {port} is already allocated to Service {holder}")

    def _port_free(self, port: int, key: Key) -> bool:
        owner = self._port_owner.get(port)
        if owner is None or owner == key:
            return True
        holder = self.lookup(*owner) if self.lookup is not None else None
        if self.lookup is not None and (
            not isinstance(holder, Service) or port not in {p.node_port for p in holder.spec.ports}
        ):
            del self._port_owner[port]
            return True
        return False

    def _allocate_port(self, key: Key, port: int, taken: set[int]) -> int:
        size = len(self.node_ports)
        start = _hash(f"{key[1]}/{key[2]}/{port}") % size
        for i in range(size):
            candidate = self.node_ports[(start + i) % size]
            if candidate not in taken and self._port_free(candidate, key):
                return candidate
        raise Rejected("spec.ports.nodePort: no free node port left")


def _previous_node_ports(prev: Service | None) -> dict[int, int]:
    if prev is None or prev.spec.type not in ("NodePort", "LoadBalancer"):
        return {}
    return {p.port: p.node_port for p in prev.spec.ports if p.node_port is not None}


def _with_allocations(
    svc: Service, families: Families, ips: Sequence[str], node_ports: dict[int, int]
) -> Service:
    spec = svc.spec
    if (
        list(spec.cluster_ips) == list(ips)
        and spec.ip_families == families.families
        and spec.ip_family_policy == families.policy
        and not node_ports
    ):
        return svc
    # A copy, not a re-validation: the values are checked already, and re-validating every
    # Service on admission was most of the cost of loading a big manifest. The copies are
    # model_copy's (a shallow copy, the updated names added to the fields-set) made for
    # frozen models without its generic machinery: every Service at start makes two.
    ports = spec.ports
    if node_ports:
        ports = tuple(
            replaced(p, {"node_port": node_ports[p.port]})
            if p.node_port is None and p.port in node_ports
            else p
            for p in ports
        )
    update: dict[str, Any] = {
        "cluster_ip": ips[0],
        "cluster_ips": tuple(ips),
        "ip_families": tuple(families.families),
        "ip_family_policy": families.policy,
        "ports": ports,
    }
    if spec.type in ("NodePort", "LoadBalancer") and spec.external_traffic_policy is None:
        update["external_traffic_policy"] = "Cluster"
    return replaced(svc, {"spec": replaced(spec, update)})
