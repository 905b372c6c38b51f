"""One Service's share of the zone index: its owner names and their records (a :class:`Part`).

A part is made once per distinct Service and kept by the index builds that follow while the
Service does not change. Most Services are plain ClusterIP ones (dns/part_wire.py): their part
holds the wire form of its names' answers, made from templates, and its record operations
(dnslib objects) only when a name is first asked through the general path or shares its owner
name with another Service. Any other Service's part holds its record operations from the start.
A name's node is made from the parts that own it (``merge``), in config order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dnslib import DNSLabel

from mesh.config.dns import DnsService
from mesh.dns import names
from mesh.dns.part_wire import Entries, Templates, clusterip_wire
from mesh.dns.records import TYPE_PTR, TYPE_SRV, Node, NodeBuilder, RData, address, ptr, srv

# One record operation of a Service at an owner name:
# ("rr", rtype, rdata, text) | ("cname", target) | ("srv", port, target)
# | ("add", owner, rtype, rdata, text); ``text`` is the record's presentation form when it is
# known without asking dnslib (a canonical IPv4 address, a PTR target), else None.
Op = tuple[Any, ...]
Key = tuple[str, str, int]  # (namespace, name, n-th Service of that name in the config)


def _name(name: str) -> Any:
    """A record's target as dnslib's label, made from the bytes of an ASCII name: what
    dnslib's own path (backslash escapes, then the IDNA codec) gives for such a name, at
    a fifth of its cost. A name with a backslash or beyond ASCII takes dnslib's path."""
    if name.isascii() and "\\" not in name:
        return DNSLabel(name.encode())
    return name


class Part:
    """The records one Service contributes: ``owned``, its owner names (the empty
    non-terminals between its names and its base name included); ``wire``, when made from
    templates, each name's encoded answers by wire name, and ``reverse`` the wire names of
    its reverse (PTR) names; ``ops()``, each name's record operations."""

    __slots__ = ("_ops", "_zone", "owned", "reverse", "service", "wire")

    def __init__(
        self,
        service: DnsService,
        owned: tuple[str, ...],
        ops: dict[str, list[Op]] | None,
        zone: str,
        wire: dict[bytes, Entries] | None,
        reverse: tuple[bytes, ...],
    ) -> None:
        self.service = service
        self.owned = owned
        self._ops = ops
        self._zone = zone  # for the template parts' ops, made when first needed
        self.wire = wire
        self.reverse = reverse

    def ops(self) -> dict[str, list[Op]]:
        """Owner name -> record operations; a template part makes them on first use."""
        if self._ops is None:
            self._ops = service_ops(self.service, self._zone)
        return self._ops


def service_part(svc: DnsService, zone: str, templates: Templates) -> Part:
    """The part of ``svc`` in ``zone`` (absolute, lower case): from templates when it is a
    plain ClusterIP Service (``templates`` are of the same zone), else from its records."""
    made = clusterip_wire(svc, templates)
    if made is not None:
        owned, wire, reverse = made
        return Part(svc, owned, None, zone, wire, reverse)
    ops = service_ops(svc, zone)
    return Part(svc, tuple(ops), ops, zone, None, ())


def service_ops(svc: DnsService, zone: str) -> dict[str, list[Op]]:
    """Every owner name of ``svc`` with its record operations (empty lists: the empty
    non-terminals between its names and its base name)."""
    out: dict[str, list[Op]] = {}

    def at(name: str) -> list[Op]:
        ops = out.get(name)
        if ops is None:
            ops = out[name] = []
        return ops

    # An address's record made once per Service: a cluster IP is in the base name's answer
    # and again in the additional section of every named port's SRV answer.
    made: dict[str, tuple[int, RData, str | None]] = {}

    def addr(ip: str) -> tuple[int, RData, str | None]:
        found = made.get(ip)
        if found is None:
            found = made[ip] = _address(ip)
        return found

    def add_srv(name: str | None, proto: str, port: int, ips: Iterable[str], target: str) -> None:
        if not name:  # unnamed ports have no SRV record (spec 2.3.2)
            return
        ops = at(f"_{name}._{proto.lower()}.{base}")
        ops.append(("srv", port, target))
        for ip in ips:
            ops.append(("add", target, *addr(ip)))

    base = names.join(svc.name, svc.namespace, "svc", zone)
    if svc.kind == "ExternalName":
        at(base).append(("cname", names.absolute(svc.external_name or "")))
    elif svc.kind == "ClusterIP":
        ops = at(base)
        for ip in svc.cluster_ips:
            ops.append(("rr", *addr(ip)))
            at(names.reverse_name(ip)).append(("rr", TYPE_PTR, ptr(_name(base)), base))
        if svc.cluster_ips:
            for port in svc.ports:
                add_srv(port.name, port.protocol, port.port, svc.cluster_ips, base)
    elif svc.endpoints:  # headless; with no endpoint published the name does not exist
        ops = at(base)
        for ep in svc.endpoints:
            if ep.hostname:
                targets = [(names.join(ep.hostname, base), ep.addresses)]
            else:
                targets = [(names.join(names.endpoint_label(a), base), (a,)) for a in ep.addresses]
            for target, addrs in targets:
                host = at(target)
                for a in addrs:
                    rr = ("rr", *addr(a))
                    ops.append(rr)
                    host.append(rr)
                    at(names.reverse_name(a)).append(("rr", TYPE_PTR, ptr(_name(target)), target))
                for port in ep.ports:
                    add_srv(port.name, port.protocol, port.port, addrs, target)
    # Empty non-terminals below the base name (``_tcp.<base>``); the ones above it (the
    # namespace's ``<ns>.svc.<zone>`` and up) are the index's own.
    suffix = "." + base
    for name in list(out):
        while name.endswith(suffix):
            name = name.split(".", 1)[1]
            if name in out:
                break
            out[name] = []
    return out


def _address(ip: str) -> tuple[int, RData, str | None]:
    rtype, rdata = address(ip)
    return rtype, rdata, ip if names.CANONICAL_V4.fullmatch(ip) else None


def merge(name: str, parts: Iterable[Part]) -> Node:
    """The node of owner ``name`` from the parts that contribute to it, in config order."""
    b = NodeBuilder()
    srv_targets: dict[tuple[int, str], None] = {}
    for part in parts:
        for op in part.ops()[name]:
            tag = op[0]
            if tag == "rr":
                b.add(op[1], op[2], op[3])
            elif tag == "cname":
                b.cname = op[1]
            elif tag == "srv":
                srv_targets[(op[1], op[2])] = None
            else:
                b.add_additional(op[1], op[2], op[3], op[4])
    if srv_targets:
        weight = max(1, 100 // len(srv_targets))
        for port, target in srv_targets:
            rdata = srv(port, _name(target), weight=weight)
            b.add(TYPE_SRV, rdata, f"{port} {target}")
    return b.freeze()
