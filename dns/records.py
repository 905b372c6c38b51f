"""Record data and the node type the zone index is made of.

A node holds the record sets of one owner name, keyed by type, as dnslib rdata objects (owner
names and TTLs are added when an answer is built, so the question's case can be echoed).
A node with no record sets is an empty non-terminal: the name exists, it has no data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dnslib import AAAA, CNAME, PTR, QTYPE, SOA, SRV, TXT, A

from mesh.dns import names

RData = Any  # a dnslib rdata object (untyped library)

TYPE_A: int = QTYPE.A
TYPE_AAAA: int = QTYPE.AAAA
TYPE_CNAME: int = QTYPE.CNAME
TYPE_PTR: int = QTYPE.PTR
TYPE_SRV: int = QTYPE.SRV
TYPE_TXT: int = QTYPE.TXT
TYPE_SOA: int = QTYPE.SOA
TYPE_NS: int = QTYPE.NS
TYPE_ANY: int = QTYPE.ANY

SCHEMA_VERSION = "1.1.0"  # Kubernetes DNS specification, section 2.2


def address(ip: str) -> tuple[int, RData]:
    """(A, rdata) or (AAAA, rdata) for an address."""
    if names.ip_version(ip) == 4:
        return TYPE_A, A(ip)
    return TYPE_AAAA, AAAA(ip)


def srv(port: int, target: str, *, priority: int = 0, weight: int = 100) -> RData:
    return SRV(priority=priority, weight=weight, port=port, target=target)


def ptr(target: str) -> RData:
    return PTR(target)


def txt(text: str) -> RData:
    return TXT(text)


def cname(target: str) -> RData:
    return CNAME(target)


def soa(zone: str, serial: int, minimum: int) -> RData:
    """The zone's SOA, shaped as CoreDNS's: ``ns.dns.<zone> hostmaster.<zone>``."""
    return SOA(
        mname="ns.dns." + zone,
        rname="hostmaster." + zone,
        times=(serial % 2**32, 7200, 1800, 86400, minimum),
    )


@dataclass(frozen=True, slots=True)
class Node:
    rrsets: Mapping[int, tuple[RData, ...]] = field(default_factory=lambda: MappingProxyType({}))
    cname: str | None = None  # absolute, lower case target of a CNAME at this name
    # (owner, type, rdata) for the additional section of an SRV answer: the targets' addresses
    additional: tuple[tuple[str, int, RData], ...] = ()


@dataclass(slots=True)
class NodeBuilder:
    rrsets: dict[int, list[RData]] = field(default_factory=dict)
    seen: set[tuple[int, str]] = field(default_factory=set)
    cname: str | None = None
    additional: list[tuple[str, int, RData]] = field(default_factory=list)
    additional_seen: set[tuple[str, int, str]] = field(default_factory=set)

    def add(self, rtype: int, rdata: RData, text: str | None = None) -> None:
        """Add a record unless the node has it; ``text``, when given, is its
        presentation form in lower case (dnslib's own is slow to make)."""
        key = (rtype, str(rdata).lower() if text is None else text)
        if key not in self.seen:
            self.seen.add(key)
            self.rrsets.setdefault(rtype, []).append(rdata)

    def add_additional(self, owner: str, rtype: int, rdata: RData, text: str | None = None) -> None:
        key = (owner, rtype, str(rdata).lower() if text is None else text)
        if key not in self.additional_seen:
            self.additional_seen.add(key)
            self.additional.append((owner, rtype, rdata))

    def freeze(self) -> Node:
        if not self.rrsets and self.cname is None:
            return _EMPTY
        return Node(
            rrsets=MappingProxyType({t: tuple(v) for t, v in self.rrsets.items()}),
            cname=self.cname,
            additional=tuple(self.additional),
        )


_EMPTY = Node()
