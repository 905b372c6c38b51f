"""The service table: which endpoint a new flow to a virtual address goes to.

Theory of operation. :meth:`ServiceTable.build` turns a :class:`ProxyConfig` into two indexes,
``(virtual IP, port, protocol) -> Backend`` for ClusterIPs, external IPs and load-balancer
ingress IPs, and ``(node port, protocol) -> Backend`` for NodePorts. A :class:`Backend` is one
Service port as seen by one class of traffic:

- internal traffic (to a ClusterIP) obeys ``internalTrafficPolicy``;
- external traffic (NodePort, external IPs, load-balancer IPs) obeys ``externalTrafficPolicy``.

With policy Local only endpoints whose nodeName is this node's count. Among those, the ready
ones are used; when none is ready, the serving-and-terminating ones are (kube-proxy's
fallback, so a rolling update of the last pod does not drop traffic). An endpoint that has no
port for the Service port (a named targetPort its pod does not declare) is not used.

Dual-stack as kube-proxy's per-family proxiers: a Backend holds endpoints of one address
family, and a virtual address of family F is served by the Backend of family F only. A pod
with an address of each family is then one endpoint in each rotation (not two in one), and an
IPv4 ClusterIP is never relayed to an IPv6 endpoint. NodePorts exist in the families of the
Service's ClusterIPs (``lookup_node_port`` takes the family of the node address).

Endpoints are kept in a stable order (numeric address, then port) and picked round robin; with
``sessionAffinity: ClientIP`` a client keeps its endpoint until it has been idle for the
timeout (each new flow refreshes it, as kube-proxy's affinity sets do). ``pick`` returns None
when nothing is eligible: the caller rejects the flow at once (TCP reset / ICMP unreachable).

The table is pure: no I/O and an injected clock (``now``, seconds on any monotonic scale).
Round-robin and affinity state lives in the Backend objects, and ``build(config, previous)``
carries it across a config swap: a backend whose endpoint list is unchanged is reused as is,
one whose list changed keeps the affinities of surviving endpoints and continues its round
robin after the endpoint it picked last.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mesh import endpoint_policy
from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.endpoint_policy import family_of

Endpoint = tuple[str, int]  # (address, port)
Scope = Literal["internal", "external"]

_PURGE_AT = 1024  # affinity entries before expired ones are swept


def endpoint_order(ep: Endpoint) -> tuple[int, int, int]:
    """Sort key: numeric address (IPv4 before IPv6), then port."""
    ip = ipaddress.ip_address(ep[0])
    return (ip.version, int(ip), ep[1])


@dataclass(frozen=True, slots=True)
class ServicePortName:
    """A Service port, as metrics and logs name it."""

    namespace: str
    name: str
    port: str  # the Service port name, "" when unnamed
    protocol: str

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.namespace}/{self.name}{port}/{self.protocol}"


class Backend:
    """The eligible endpoints of one Service port for one class of traffic, with the
    round-robin cursor and the ClientIP affinity table."""

    __slots__ = (
        "_affinity",
        "_cursor",
        "_last",
        "_purge_at",
        "affinity_timeout",
        "endpoints",
        "service",
    )

    def __init__(
        self,
        service: ServicePortName,
        endpoints: Collection[Endpoint],
        affinity_timeout: float | None = None,
    ) -> None:
        self.service = service
        self.endpoints: tuple[Endpoint, ...] = tuple(sorted(set(endpoints), key=endpoint_order))
        self.affinity_timeout = affinity_timeout  # None: no session affinity
        self._cursor = 0
        self._last: Endpoint | None = None
        self._affinity: dict[str, tuple[Endpoint, float]] = {}
        self._purge_at = _PURGE_AT

    def __repr__(self) -> str:
        return f"Backend({self.service}, {list(self.endpoints)})"

    def same_as(self, other: Backend) -> bool:
        return self.endpoints == other.endpoints and self.affinity_timeout == other.affinity_timeout

    def pick(
        self, client_ip: str, now: float, exclude: Collection[Endpoint] = ()
    ) -> Endpoint | None:
        """The endpoint for a new flow from ``client_ip``, or None to reject it.

        ``exclude`` holds endpoints that already failed for this flow (a connect retry): an
        affinity to one of them is dropped and round robin moves on past it.
        """
        if self.affinity_timeout is not None:
            held = self._affinity.get(client_ip)
            if held is not None:
                held_ep, expires = held
                if now < expires and held_ep not in exclude:
                    self._affinity[client_ip] = (held_ep, now + self.affinity_timeout)
                    return held_ep
                del self._affinity[client_ip]
        ep = self._round_robin(exclude)
        if ep is not None and self.affinity_timeout is not None:
            self._affinity[client_ip] = (ep, now + self.affinity_timeout)
            if len(self._affinity) >= self._purge_at:
                self._purge(now)
        return ep

    def _round_robin(self, exclude: Collection[Endpoint]) -> Endpoint | None:
        n = len(self.endpoints)
        for i in range(n):
            idx = (self._cursor + i) % n
            ep = self.endpoints[idx]
            if ep not in exclude:
                self._cursor = (idx + 1) % n
                self._last = ep
                return ep
        return None

    def _purge(self, now: float) -> None:
        self._affinity = {c: v for c, v in self._affinity.items() if v[1] > now}
        self._purge_at = max(_PURGE_AT, 2 * len(self._affinity))

    def affinity(self, client_ip: str, now: float) -> Endpoint | None:
        """The endpoint ``client_ip`` is held to, if any (read only)."""
        held = self._affinity.get(client_ip)
        return held[0] if held is not None and now < held[1] else None

    def inherit(self, old: Backend) -> None:
        """Continue ``old``'s round robin after its last pick; keep affinities to surviving
        endpoints (when affinity is still on)."""
        if old._last is not None and self.endpoints:
            at = bisect.bisect_right(
                [endpoint_order(e) for e in self.endpoints], endpoint_order(old._last)
            )
            self._cursor = at % len(self.endpoints)
            self._last = old._last
        if self.affinity_timeout is not None and old.affinity_timeout is not None:
            alive = set(self.endpoints)
            self._affinity = {c: v for c, v in old._affinity.items() if v[0] in alive}

    def describe(self) -> dict[str, Any]:
        return {
            "service": str(self.service),
            "endpoints": [f"{a}:{p}" for a, p in self.endpoints],
            "affinity_timeout": self.affinity_timeout,
            "affinities": len(self._affinity),
        }


def eligible(endpoints: Collection[ProxyEndpoint]) -> list[ProxyEndpoint]:
    """Ready endpoints; when there are none, serving-and-terminating ones (the shared
    endpoint policy, mesh/endpoint_policy.py)."""
    return endpoint_policy.usable(endpoints)


VipKey = tuple[str, int, str]  # (ip, port, protocol)
_Entry = tuple[Scope, int, "Backend", ProxyPort]  # scope, family, Backend, Service port
_Built = tuple[ProxyService, list[_Entry]]
NodePortKey = tuple[int, str, int]  # (port, protocol, address family 4 or 6)
# namespace, name, port name, protocol, scope, address family
StateKey = tuple[str, str, str, str, Scope, int]


class ServiceTable:
    """Immutable indexes over mutable Backends; build one per config."""

    def __init__(
        self,
        version: int,
        vips: Mapping[VipKey, Backend],
        node_ports: Mapping[NodePortKey, Backend],
        by_state_key: Mapping[StateKey, Backend],
        conflicts: tuple[str, ...] = (),
        built: Mapping[tuple[str, str], _Built] | None = None,
        node_name: str = "",
    ) -> None:
        self.version = version
        self.vips = vips
        self.node_ports = node_ports
        self._by_state_key = by_state_key
        self.conflicts = conflicts  # addresses claimed by two Services (the first one wins)
        # Each Service's Backends with the ProxyService they were made from: the next build
        # reuses them as they are when the Service is the same object (a config from the
        # in-process plane shares unchanged records) or an equal one.
        self._built = built or {}
        self._node_name = node_name

    @classmethod
    def build(cls, config: ProxyConfig, previous: ServiceTable | None = None) -> ServiceTable:
        vips: dict[VipKey, Backend] = {}
        node_ports: dict[NodePortKey, Backend] = {}
        states: dict[StateKey, Backend] = {}
        conflicts: list[str] = []
        old = previous._by_state_key if previous is not None else {}
        reusable = (
            previous._built
            if previous is not None and previous._node_name == config.node_name
            else {}
        )
        built: dict[tuple[str, str], _Built] = {}
        services = sorted(config.services, key=lambda s: (s.namespace, s.name))
        for svc in services:
            prior_built = reusable.get(svc.key)
            if prior_built is not None and (prior_built[0] is svc or prior_built[0] == svc):
                entries = prior_built[1]
                reused = True
            else:
                entries = list(_backends(svc, config.node_name))
                reused = False
            final: list[_Entry] = []
            built[svc.key] = (svc, final)  # the Backends as used, after the reuse below
            for scope, family, backend, port in entries:
                skey: StateKey = (svc.namespace, svc.name, port.name, port.protocol, scope, family)
                prior = old.get(skey)
                if reused:
                    pass  # the very Backend of the previous table: its state goes on
                elif prior is not None and prior.same_as(backend):
                    backend = prior
                elif prior is not None:
                    backend.inherit(prior)
                # Cluster policy on both sides: one Backend (one cursor) for all traffic.
                if scope == "external":
                    ikey: StateKey = (*skey[:4], "internal", family)
                    internal = states.get(ikey)
                    if internal is not None and internal.same_as(backend):
                        backend = internal
                states[skey] = backend
                final.append((scope, family, backend, port))
                if scope == "internal":
                    ips: tuple[str, ...] = svc.cluster_ips
                else:
                    ips = svc.external_ips + svc.load_balancer_ips
                for ip in ips:
                    if family_of(ip) != family:
                        continue  # the other family's Backend serves it
                    key = (ip, port.port, port.protocol)
                    owner = vips.get(key)
                    if (
                        owner is not None
                        and (owner.service.namespace, owner.service.name) != svc.key
                    ):
                        conflicts.append(
                            f"{ip}:{port.port}/{port.protocol} ({svc.namespace}/{svc.name})"
                        )
                        continue
                    vips.setdefault(key, backend)
                if scope == "external" and port.node_port is not None and svc.type != "ClusterIP":
                    if family not in _node_port_families(svc):
                        continue
                    nkey = (port.node_port, port.protocol, family)
                    if nkey in node_ports:
                        conflicts.append(
                            f"nodePort {port.node_port}/{port.protocol} ({svc.namespace}/{svc.name})"
                        )
                        continue
                    node_ports[nkey] = backend
        return cls(
            config.version,
            vips,
            node_ports,
            states,
            tuple(conflicts),
            built,
            config.node_name,
        )

    def lookup(self, ip: str, port: int, protocol: str) -> Backend | None:
        """The Backend behind a virtual IP:port (None: not a Service address)."""
        return self.vips.get((ip, port, protocol))

    def lookup_node_port(self, port: int, protocol: str, family: int = 4) -> Backend | None:
        """The Backend behind a NodePort reached on a node address of ``family``."""
        return self.node_ports.get((port, protocol, family))

    def route(
        self, ip: str, port: int, protocol: str, node_ips: Collection[str] = ()
    ) -> Backend | None:
        """Where a packet to ip:port goes: a virtual IP first, then a NodePort on a node IP."""
        backend = self.lookup(ip, port, protocol)
        if backend is None and ip in node_ips:
            backend = self.lookup_node_port(port, protocol, family_of(ip))
        return backend

    def backends(self) -> Iterator[Backend]:
        """Every distinct Backend, in build order."""
        seen: set[int] = set()
        for b in self._by_state_key.values():
            if id(b) not in seen:
                seen.add(id(b))
                yield b

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "vips": {
                f"{ip}:{p}/{proto}": str(b.service)
                for (ip, p, proto), b in sorted(self.vips.items())
            },
            "node_ports": {
                f"{p}/{proto}" + ("/IPv6" if fam == 6 else ""): str(b.service)
                for (p, proto, fam), b in sorted(self.node_ports.items())
            },
            "backends": [b.describe() for b in self.backends()],
            "conflicts": list(self.conflicts),
        }


def _node_port_families(svc: ProxyService) -> frozenset[int]:
    """The families a Service's NodePorts answer in: those of its ClusterIPs (kube-proxy's
    proxier of a family handles only the Services of that family); both without any."""
    return frozenset(family_of(ip) for ip in svc.cluster_ips) or frozenset((4, 6))


def _backends(svc: ProxyService, node_name: str) -> Iterator[_Entry]:
    timeout = float(svc.affinity_timeout) if svc.session_affinity else None
    internal = {family_of(ip) for ip in svc.cluster_ips}
    external = {family_of(ip) for ip in svc.external_ips + svc.load_balancer_ips}
    if svc.type != "ClusterIP" and any(p.node_port is not None for p in svc.ports):
        external |= _node_port_families(svc)
    scopes: tuple[tuple[Scope, bool, list[int]], ...] = (
        ("internal", svc.internal_traffic_local, sorted(internal)),
        ("external", svc.external_traffic_local, sorted(external)),
    )
    by_family = {f: endpoint_policy.of_family(svc.endpoints, f) for f in internal | external}
    for port in svc.ports:
        name = ServicePortName(svc.namespace, svc.name, port.name, port.protocol)
        for scope, local, families in scopes:
            for family in families:
                # Eligibility per family: ready IPv6 endpoints do not hide the IPv4 fallback.
                serving = [ep for ep in by_family[family] if port.name in ep.ports]
                chosen = endpoint_policy.usable(serving, local_only=local, node_name=node_name)
                eps = [(ep.address, ep.ports[port.name]) for ep in chosen]
                yield scope, family, Backend(name, eps, timeout), port
