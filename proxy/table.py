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

Endpoints are kept in a stable order and picked round robin, with optional ClientIP affinity
(the Backend, proxy/backend.py). How a build places each Service and keeps the indexes is
proxy/table_build.py; this module holds the table and its lookups.

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

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from mesh.config.proxy import ProxyConfig, ProxyService
from mesh.endpoint_policy import family_of
from mesh.proxy.backend import Backend
from mesh.proxy.table_build import (
    Index,
    NodePortKey,
    Placed,
    ServiceKey,
    VipKey,
    common_prefix,
    place,
    same_record,
)


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
        placed: dict[ServiceKey, Placed],
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
        index = Index({}, {}, {}, {}, {}, set())
        unique = True
        for svc in sorted(config.services, key=lambda s: (s.namespace, s.name)):
            key = svc.key
            if key in index.placed:
                unique = False  # given twice: the first one counts
                continue
            prior = old.get(key)
            reuse = same_node and prior is not None and same_record(prior.service, svc)
            index.claim(place(svc, config.node_name, prior, reuse))
        return _table_of(index, config, unique)

    def _next(self, config: ProxyConfig) -> ServiceTable | None:
        """The table for ``config`` from this one, visiting only the records that are not
        the same objects at the same places (a delta keeps the others); None when the
        config gives a Service key twice (the full build decides that case)."""
        old, new = self._services, config.services
        head = common_prefix(old, new, min(len(old), len(new)))
        tail = common_prefix(reversed(old), reversed(new), min(len(old), len(new)) - head)
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
            if was is None or not same_record(was, svc):
                changed.append(svc)
        index = Index(
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
            placed = place(svc, config.node_name, self._placed.get(svc.key), reuse=False)
            index.claim(placed)
            vip_keys.update(placed.vips)
            node_port_keys.update(placed.node_ports)
        table = _table_of(index, config, True)
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


def _table_of(index: Index, config: ProxyConfig, unique: bool) -> ServiceTable:
    """The table over ``index``, the indexes a build made for ``config``."""
    return ServiceTable(
        config.version,
        config.node_name,
        config.services,
        index.placed,
        index.vips,
        index.node_ports,
        index.vip_rivals,
        index.node_port_rivals,
        frozenset(index.repeats),
        unique,
    )
