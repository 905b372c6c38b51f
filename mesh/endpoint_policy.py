"""Endpoint policy: which endpoints of a Service a consumer may send a new connection to.

One set of rules for every consumer of EndpointSlices (the DNS and proxy translators, the
node proxy's service table, the L7 balancer), as kube-proxy's ``pkg/proxy/topology.go``
(``CategorizeEndpoints``) and its endpoint-slice cache apply them:

1. **Ports by name, per endpoint.** A Service port is matched to a slice port by name and
   protocol, so a named targetPort may resolve to different numbers on different endpoints;
   an endpoint whose slice has no such port does not serve that Service port.
2. **Merging slices.** An address found in several slices of one Service (whose port lists
   differ) is one endpoint with the union of their ports; its conditions are those of the
   first slice by name. Only the first address of an endpoint counts; FQDN slices are skipped.
3. **Traffic policy Local** keeps only the endpoints whose nodeName is this node.
4. **Ready first, then the fallback.** Among what is left, the ready endpoints are used; when
   none is ready, the ones that are serving and terminating are (so the last pod of a rolling
   update keeps its connections). ``publishNotReadyAddresses`` makes every endpoint ready.
5. **One family at a time.** A virtual address of one family is served by the endpoints of
   that family only (:func:`of_family`), and rule 4 is applied per family, as kube-proxy runs
   one proxier per family: a dual-stack pod is one endpoint in each family's rotation.

Everything here is pure and returns plain tuples; the conditions travel in
:class:`PolicyEndpoint`, a NamedTuple any consumer can keep in its own tables.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol, TypeVar

from mesh.objects import EndpointSlice

PortKey = tuple[str, str]  # (Service port name, "" when unnamed; protocol)
Target = tuple[str, int]  # (address, port)


class PolicyEndpoint(NamedTuple):
    """One endpoint of a Service with its conditions and its port per Service port name."""

    address: str
    node_name: str | None
    ready: bool
    serving: bool
    terminating: bool
    ports: tuple[tuple[str, int], ...]  # (Service port name, endpoint port), by name

    def port(self, name: str) -> int | None:
        """This endpoint's port for the Service port ``name``; None: it does not serve it."""
        for port_name, number in self.ports:
            if port_name == name:
                return number
        return None


class HasConditions(Protocol):
    """What the policy reads of an endpoint (PolicyEndpoint, the proxy's ProxyEndpoint)."""

    @property
    def node_name(self) -> str | None: ...
    @property
    def ready(self) -> bool: ...
    @property
    def serving(self) -> bool: ...
    @property
    def terminating(self) -> bool: ...


E = TypeVar("E", bound=HasConditions)


def address_order(address: str) -> tuple[int, int]:
    """Sort key of an address: IPv4 before IPv6, then numeric. The C parser first (an
    ipaddress object per endpoint was a third of a 10,000-Service proxy config's build);
    ipaddress for what it refuses (a scope id), and its error for what is no address."""
    try:
        if ":" in address:
            return (6, int.from_bytes(socket.inet_pton(socket.AF_INET6, address)))
        return (4, int.from_bytes(socket.inet_pton(socket.AF_INET, address)))
    except OSError:
        ip = ipaddress.ip_address(address)
        return (ip.version, int(ip))


def family_of(address: str) -> int:
    """4 or 6: the family of a valid address (no parse: only IPv6 spells a colon)."""
    return 6 if ":" in address else 4


class HasAddress(Protocol):
    @property
    def address(self) -> str: ...


A = TypeVar("A", bound=HasAddress)


def of_family(endpoints: Iterable[A], family: int) -> list[A]:
    """The endpoints whose address is of ``family`` (4 or 6), in the given order (rule 5)."""
    six = family == 6
    return [ep for ep in endpoints if (":" in ep.address) == six]


def from_slices(
    service_ports: Sequence[PortKey],
    slices: Iterable[EndpointSlice],
    *,
    publish_not_ready: bool = False,
) -> tuple[PolicyEndpoint, ...]:
    """The endpoints of one Service from its EndpointSlices (rules 1 and 2), by address."""
    merged: dict[str, tuple[PolicyEndpoint, dict[str, int]]] = {}
    for sl in sorted(slices, key=lambda s: s.name):
        if sl.address_type == "FQDN":
            continue
        ports = _slice_ports(service_ports, sl)
        for ep in sl.endpoints:
            address = ep.addresses[0]
            entry = merged.get(address)
            if entry is None:
                ready = ep.ready or publish_not_ready
                first = PolicyEndpoint(
                    address, ep.node_name, ready, ep.serving or ready, ep.terminating, ()
                )
                entry = merged[address] = (first, {})
            for name, port in ports.items():
                entry[1].setdefault(name, port)
    out = [first._replace(ports=tuple(sorted(ports.items()))) for first, ports in merged.values()]
    out.sort(key=lambda e: address_order(e.address))
    return tuple(out)


def _slice_ports(service_ports: Sequence[PortKey], sl: EndpointSlice) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, protocol in service_ports:
        for ep_port in sl.ports:
            if (ep_port.name or "") == name and ep_port.protocol == protocol and ep_port.port:
                out[name] = ep_port.port
                break
    return out


def usable(endpoints: Iterable[E], *, local_only: bool = False, node_name: str = "") -> list[E]:
    """The endpoints a new connection may go to (rules 3 and 4), in the given order."""
    pool = [ep for ep in endpoints if not local_only or (node_name and ep.node_name == node_name)]
    ready = [ep for ep in pool if ep.ready]
    if ready:
        return ready
    return [ep for ep in pool if ep.serving and ep.terminating]


def targets(
    endpoints: Iterable[PolicyEndpoint],
    port_name: str,
    *,
    local_only: bool = False,
    node_name: str = "",
) -> tuple[Target, ...]:
    """(address, port) pairs for one Service port: the endpoints that serve it, then
    :func:`usable` over those (an endpoint without the port never counts as ready)."""
    serving = [ep for ep in endpoints if ep.port(port_name) is not None]
    chosen = usable(serving, local_only=local_only, node_name=node_name)
    return tuple((ep.address, ep.port(port_name) or 0) for ep in chosen)


def published(ready: bool, publish_not_ready: bool) -> bool:
    """Whether DNS lists an endpoint: ready ones, or all with ``publishNotReadyAddresses``
    (DNS has no fallback: a name that answers with terminating pods would draw new clients)."""
    return ready or publish_not_ready
