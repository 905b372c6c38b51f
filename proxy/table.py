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

An edit costs in proportion to the change: the config stream's deltas (mesh/config/delta.py)
and the in-process plane keep every unchanged record as the very same object, so
``build(config, previous)`` finds the changed records by identity (the common head and
tail of the two Services tuples, then keys in the window between), takes the Services
that went or changed out of the indexes and puts the new ones in; the other Services'
Backends stay as they are. When several Services claim one address (or NodePort) the first
by namespace/name wins, as kube-proxy decides; the table keeps the sorted claimants of
such contested keys only, so when the winner goes or changes the next one takes over
exactly as a build from scratch would decide.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import operator
from collections.abc import Collection, Iterable, Iterator, Mapping
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
    # A dotted quad is read directly, several times faster than ipaddress (30,000
    # endpoints at scale); anything else goes through ipaddress.
    parts = ep[0].split(".")
    if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        a, b, c, d = map(int, parts)
        if max(a, b, c, d) <= 255:
            return (4, a << 24 | b << 16 | c << 8 | d, ep[1])
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
NodePortKey = tuple[int, str, int]  # (port, protocol, address family 4 or 6)
ServiceKey = tuple[str, str]  # namespace, name
# Within one Service: port name, protocol, scope, address family
_StateKey = tuple[str, str, Scope, int]
_Claim = tuple[bool, Any]  # (a NodePort?, its VipKey or NodePortKey)


@dataclass(slots=True, eq=False)
class _Placed:
    """One Service as the table holds it: its Backends and the addresses they claim."""

    service: ProxyService  # the record it was made from (the next build compares with it)
    entries: list[_Entry]  # as used, after state carry and internal/external sharing
    states: dict[_StateKey, Backend]
    claims: list[_Claim]  # every claim in build order, repeats included (for conflicts)
    vips: dict[VipKey, Backend]  # the first claim of each address
    node_ports: dict[NodePortKey, Backend]  # the first claim of each NodePort
    repeats_node_port: bool  # claims one NodePort twice (a conflict with itself)


class ServiceTable:
    """Immutable indexes over mutable Backends; build one per config.

    ``build(config, previous)`` redoes only the Services whose record changed. Who owns an
    address claimed by several Services is kept as the sorted list of claimants (only for
    such contested keys): the first one wins, as in a build from scratch, and when it goes
    the next one takes over. ``changed_vips`` and ``changed_node_ports`` name the keys a
    build may have changed against ``previous`` (None: built from scratch, anything may
    have), so the listeners are reconciled for those only.
    """

    def __init__(
        self,
        version: int,
        node_name: str,
        services: tuple[ProxyService, ...],
        placed: dict[ServiceKey, _Placed],
        vips: dict[VipKey, Backend],
        node_ports: dict[NodePortKey, Backend],
        vip_rivals: dict[VipKey, list[ServiceKey]],
        node_port_rivals: dict[NodePortKey, list[ServiceKey]],
        repeats: frozenset[ServiceKey],
        unique: bool,
    ) -> None:
        self.version = version
        self.vips: Mapping[VipKey, Backend] = vips
        self.node_ports: Mapping[NodePortKey, Backend] = node_ports
        self._node_name = node_name
        self._services = services  # the config's records, to find the next edit by identity
        self._placed = placed
        self._vip_rivals = vip_rivals  # contested keys only: claimants, sorted
        self._node_port_rivals = node_port_rivals
        self._repeats = repeats  # Services claiming one NodePort twice
        self._unique = unique  # no Service key given twice (else the next build is full)
        self.changed_vips: frozenset[VipKey] | None = None
        self.changed_node_ports: frozenset[NodePortKey] | None = None
        self.conflicts = self._conflicts()  # addresses claimed by two Services (first wins)

    @classmethod
    def build(
        cls, config: ProxyConfig, previous: ServiceTable | None = None, incremental: bool = True
    ) -> ServiceTable:
        """The table for ``config``, carrying round robin and affinity state over from
        ``previous``; with ``incremental`` only the changed Services are visited (else
        every one is, reusing those that are unchanged)."""
        if (
            incremental
            and previous is not None
            and previous._unique
            and previous._node_name == config.node_name
        ):
            table = previous._next(config)
            if table is not None:
                return table
        return cls._full(config, previous)

    @classmethod
    def _full(cls, config: ProxyConfig, previous: ServiceTable | None) -> ServiceTable:
        old = previous._placed if previous is not None else {}
        same_node = previous is not None and previous._node_name == config.node_name
        index = _Index({}, {}, {}, {}, {}, set())
        unique = True
        for svc in sorted(config.services, key=lambda s: (s.namespace, s.name)):
            key = svc.key
            if key in index.placed:
                unique = False  # given twice: the first one counts
                continue
            prior = old.get(key)
            reuse = same_node and prior is not None and _same(prior.service, svc)
            index.claim(_place(svc, config.node_name, prior, reuse))
        return index.table(config, unique)

    def _next(self, config: ProxyConfig) -> ServiceTable | None:
        """The table for ``config`` from this one, visiting only the records that are not
        the same objects at the same places (a delta keeps the others); None when the
        config gives a Service key twice (the full build decides that case)."""
        old, new = self._services, config.services
        head = _common(old, new, min(len(old), len(new)))
        tail = _common(reversed(old), reversed(new), min(len(old), len(new)) - head)
        gone = {s.key: s for s in old[head : len(old) - tail]}
        changed: list[ProxyService] = []
        seen: set[ServiceKey] = set()
        for svc in new[head : len(new) - tail]:
            key = svc.key
            if key in seen:
                return None
            seen.add(key)
            was = gone.pop(key, None)
            if was is None and key in self._placed:
                return None  # also given outside the window
            if was is None or not _same(was, svc):
                changed.append(svc)
        index = _Index(
            dict(self._placed),
            dict(self.vips),
            dict(self.node_ports),
            dict(self._vip_rivals),
            dict(self._node_port_rivals),
            set(self._repeats),
        )
        vip_keys: set[VipKey] = set()
        node_port_keys: set[NodePortKey] = set()
        for key in (*gone, *(svc.key for svc in changed)):
            prior = index.placed.get(key)
            if prior is not None:
                index.release(prior)
                vip_keys.update(prior.vips)
                node_port_keys.update(prior.node_ports)
        for svc in changed:
            placed = _place(svc, config.node_name, self._placed.get(svc.key), reuse=False)
            index.claim(placed)
            vip_keys.update(placed.vips)
            node_port_keys.update(placed.node_ports)
        table = index.table(config, True)
        table.changed_vips = frozenset(vip_keys)
        table.changed_node_ports = frozenset(node_port_keys)
        return table

    def _conflicts(self) -> tuple[str, ...]:
        """Every claim that lost, in build order (Services by namespace/name), as a build
        from scratch reports them; only the Services with a contested claim are visited."""
        involved = set(self._repeats)
        for claimants in (*self._vip_rivals.values(), *self._node_port_rivals.values()):
            involved.update(claimants)
        out: list[str] = []
        for key in sorted(involved):
            placed = self._placed[key]
            ns, name = key
            taken: set[NodePortKey] = set()
            for is_node_port, k in placed.claims:
                if is_node_port:
                    rivals = self._node_port_rivals.get(k)
                    if k in taken or (rivals is not None and rivals[0] != key):
                        out.append(f"nodePort {k[0]}/{k[1]} ({ns}/{name})")
                    taken.add(k)
                else:
                    rivals = self._vip_rivals.get(k)
                    if rivals is not None and rivals[0] != key:
                        out.append(f"{k[0]}:{k[1]}/{k[2]} ({ns}/{name})")
        return tuple(out)

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
        """Every distinct Backend, in build order (Services by namespace/name)."""
        seen: set[int] = set()
        for key in sorted(self._placed):
            for b in self._placed[key].states.values():
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


def _same(a: ProxyService, b: ProxyService) -> bool:
    return a is b or a == b


def _common(a: Iterable[ProxyService], b: Iterable[ProxyService], limit: int) -> int:
    """How many leading records of ``a`` and ``b`` are the same objects (at most ``limit``),
    counted in C: a Python loop over 10,000 records would cost a millisecond per edit."""
    return min(
        limit, next(itertools.compress(itertools.count(), map(operator.is_not, a, b)), limit)
    )


@dataclass(slots=True)
class _Index:
    """The table's indexes while a build changes them (copies: the previous table stays
    as it was). Invariant: each key's Backend is that of its first claimant by Service key;
    the claimants of a key claimed more than once are kept, sorted, in the rivals maps."""

    placed: dict[ServiceKey, _Placed]
    vips: dict[VipKey, Backend]
    node_ports: dict[NodePortKey, Backend]
    vip_rivals: dict[VipKey, list[ServiceKey]]
    node_port_rivals: dict[NodePortKey, list[ServiceKey]]
    repeats: set[ServiceKey]

    def table(self, config: ProxyConfig, unique: bool) -> ServiceTable:
        return ServiceTable(
            config.version,
            config.node_name,
            config.services,
            self.placed,
            self.vips,
            self.node_ports,
            self.vip_rivals,
            self.node_port_rivals,
            frozenset(self.repeats),
            unique,
        )

    def claim(self, placed: _Placed) -> None:
        key = placed.service.key
        self.placed[key] = placed
        for k, backend in placed.vips.items():
            _take(self.vips, self.vip_rivals, k, key, backend)
        for n, backend in placed.node_ports.items():
            _take(self.node_ports, self.node_port_rivals, n, key, backend)
        if placed.repeats_node_port:
            self.repeats.add(key)

    def release(self, placed: _Placed) -> None:
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


def _place(svc: ProxyService, node_name: str, prior: _Placed | None, reuse: bool) -> _Placed:
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
    return _Placed(svc, entries, states, claims, vips, node_ports, repeats)


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
