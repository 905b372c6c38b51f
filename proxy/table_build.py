"""How the service table (proxy/table.py) is built: each Service's Backends and the
addresses they claim (:func:`place`), and the indexes a build changes (:class:`Index`), with the
sorted claimants of contested keys so that the first Service by namespace/name wins, as in
kube-proxy, and the next one takes over when it goes.

Pure: no I/O. Which endpoints are eligible is the shared endpoint policy
(mesh/endpoint_policy.py), applied per address family and per traffic scope.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from mesh import endpoint_policy
from mesh.config.proxy import ProxyEndpoint, ProxyPort, ProxyService
from mesh.endpoint_policy import family_of
from mesh.proxy.backend import Backend, ServicePortName

Scope = Literal["internal", "external"]


def eligible(endpoints: Collection[ProxyEndpoint]) -> list[ProxyEndpoint]:
    """Ready endpoints; when there are none, serving-and-terminating ones (the shared
    endpoint policy, mesh/endpoint_policy.py)."""
    return endpoint_policy.usable(endpoints)


VipKey = tuple[str, int, str]  # (ip, port, protocol)
_Entry = tuple[Scope, int, Backend, ProxyPort]  # scope, family, Backend, Service port
NodePortKey = tuple[int, str, int]  # (port, protocol, address family 4 or 6)
ServiceKey = tuple[str, str]  # namespace, name
# Within one Service: port name, protocol, scope, address family
_StateKey = tuple[str, str, Scope, int]
_Claim = tuple[bool, Any]  # (a NodePort?, its VipKey or NodePortKey)


@dataclass(slots=True, eq=False)
class Placed:
    """One Service as the table holds it: its Backends and the addresses they claim."""

    service: ProxyService  # the record it was made from (the next build compares with it)
    entries: list[_Entry]  # as used, after state carry and internal/external sharing
    states: dict[_StateKey, Backend]
    claims: list[_Claim]  # every claim in build order, repeats included (for conflicts)
    vips: dict[VipKey, Backend]  # the first claim of each address
    node_ports: dict[NodePortKey, Backend]  # the first claim of each NodePort
    repeats_node_port: bool  # claims one NodePort twice (a conflict with itself)


def same_record(a: ProxyService, b: ProxyService) -> bool:
    return a is b or a == b


def common_prefix(a: Iterable[ProxyService], b: Iterable[ProxyService], limit: int) -> int:
    """How many leading records of ``a`` and ``b`` are the same objects (at most ``limit``),
    counted in C: a Python loop over 10,000 records would cost a millisecond per edit."""
    return min(
        limit, next(itertools.compress(itertools.count(), map(operator.is_not, a, b)), limit)
    )


@dataclass(slots=True)
class Index:
    """The table's indexes while a build changes them (copies: the previous table stays
    as it was). Invariant: each key's Backend is that of its first claimant by Service key;
    the claimants of a key claimed more than once are kept, sorted, in the rivals maps."""

    placed: dict[ServiceKey, Placed]
    vips: dict[VipKey, Backend]
    node_ports: dict[NodePortKey, Backend]
    vip_rivals: dict[VipKey, list[ServiceKey]]
    node_port_rivals: dict[NodePortKey, list[ServiceKey]]
    repeats: set[ServiceKey]

    def claim(self, placed: Placed) -> None:
        key = placed.service.key
        self.placed[key] = placed
        for k, backend in placed.vips.items():
            _take(self.vips, self.vip_rivals, k, key, backend)
        for n, backend in placed.node_ports.items():
            _take(self.node_ports, self.node_port_rivals, n, key, backend)
        if placed.repeats_node_port:
            self.repeats.add(key)

    def release(self, placed: Placed) -> None:
        key = placed.service.key
        del self.placed[key]
        for k in placed.vips:
            winner = _drop(self.vips, self.vip_rivals, k, key)
            if winner is not None:
                self.vips[k] = self.placed[winner].vips[k]
        for n in placed.node_ports:
            winner = _drop(self.node_ports, self.node_port_rivals, n, key)
            if winner is not None:
                self.node_ports[n] = self.placed[winner].node_ports[n]
        self.repeats.discard(key)


def _take(
    index: dict[Any, Backend],
    rivals: dict[Any, list[ServiceKey]],
    k: Any,
    key: ServiceKey,
    backend: Backend,
) -> None:
    owner = index.get(k)
    if owner is None:
        index[k] = backend
        return
    claimants = list(rivals.get(k) or ((owner.service.namespace, owner.service.name),))
    bisect.insort(claimants, key)  # a new list: the previous table keeps its own
    rivals[k] = claimants
    if claimants[0] == key:
        index[k] = backend


def _drop(
    index: dict[Any, Backend], rivals: dict[Any, list[ServiceKey]], k: Any, key: ServiceKey
) -> ServiceKey | None:
    """Remove ``key``'s claim of ``k``; the claimant that owns ``k`` now, if any is left."""
    claimants = rivals.get(k)
    if claimants is None:
        del index[k]
        return None
    left = [c for c in claimants if c != key]
    if len(left) > 1:
        rivals[k] = left
    else:
        del rivals[k]
    return left[0]


def place(svc: ProxyService, node_name: str, prior: Placed | None, reuse: bool) -> Placed:
    """The Backends of one Service and the addresses they claim. ``reuse``: ``prior`` was
    made from an equal record, its very Backends go on; otherwise new ones are built (the
    seam tests count), each taking over its predecessor when the endpoints are the same,
    else inheriting its round robin position and affinities."""
    if reuse and prior is not None:
        made: list[_Entry] = prior.entries
        old: dict[_StateKey, Backend] = {}
    else:
        made = list(_backends(svc, node_name))
        old = prior.states if prior is not None else {}
    states: dict[_StateKey, Backend] = {}
    entries: list[_Entry] = []
    claims: list[_Claim] = []
    vips: dict[VipKey, Backend] = {}
    node_ports: dict[NodePortKey, Backend] = {}
    repeats = False
    for scope, family, backend, port in made:
        skey: _StateKey = (port.name, port.protocol, scope, family)
        was = old.get(skey)
        if was is not None:
            if was.same_as(backend):
                backend = was
            else:
                backend.inherit(was)
        # Cluster policy on both sides: one Backend (one cursor) for all traffic.
        if scope == "external":
            internal = states.get((port.name, port.protocol, "internal", family))
            if internal is not None and internal.same_as(backend):
                backend = internal
        states[skey] = backend
        entries.append((scope, family, backend, port))
        if scope == "internal":
            ips: tuple[str, ...] = svc.cluster_ips
        else:
            ips = svc.external_ips + svc.load_balancer_ips
        for ip in ips:
            if family_of(ip) != family:
                continue  # the other family's Backend serves it
            key = (ip, port.port, port.protocol)
            claims.append((False, key))
            vips.setdefault(key, backend)
        if scope == "external" and port.node_port is not None and svc.type != "ClusterIP":
            if family not in _node_port_families(svc):
                continue
            nkey = (port.node_port, port.protocol, family)
            claims.append((True, nkey))
            if nkey in node_ports:
                repeats = True
            else:
                node_ports[nkey] = backend
    return Placed(svc, entries, states, claims, vips, node_ports, repeats)


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
