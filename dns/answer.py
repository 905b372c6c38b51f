"""Authoritative answers for cluster names: the rcode rules of the Kubernetes DNS backend.

- A name that is not in the index is NXDOMAIN; a name that exists without the asked type
  (an empty non-terminal included) is NOERROR with no answer (NODATA). Both carry the zone's
  SOA in the authority section (RFC 2308), with the zone written in the question's case.
- A CNAME (ExternalName Service) is the answer to every type but CNAME itself; its target is
  followed while it stays inside the zone. A target outside the zone ends the answer here and
  is named in ``chase``: with forwarding on, the server follows it through the upstream. A
  chain that loops or is longer than ``MAX_CHAIN`` links is SERVFAIL (as CoreDNS answers).
- SRV answers carry the targets' addresses in the additional section.
- Owner names of records at the question's name echo the question's case.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import RCODE, RR, DNSLabel

from mesh.dns import names
from mesh.dns.records import TYPE_ANY, TYPE_CNAME, TYPE_SOA, Node, cname
from mesh.dns.zone import ZoneIndex

MAX_CHAIN = 8

NOERROR: int = RCODE.NOERROR
NXDOMAIN: int = RCODE.NXDOMAIN
SERVFAIL: int = RCODE.SERVFAIL


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    authoritative: bool = True
    chase: str | None = None  # a CNAME target outside the zone the answer stops at


def resolve(index: ZoneIndex, qname: DNSLabel, key: str, qtype: int) -> Answer:
    """Answer ``qtype`` at ``qname`` (``key``: its absolute lower-case text) from ``index``."""
    ttl = index.ttl
    answer: list[RR] = []
    owner: DNSLabel | str = qname
    node = index.find(key)
    seen = {key}
    for _ in range(MAX_CHAIN):
        if node is None:
            return Answer(NXDOMAIN, tuple(answer), _soa(index, qname, key))
        if node.cname is not None and qtype != TYPE_CNAME:
            answer.append(RR(owner, TYPE_CNAME, ttl=ttl, rdata=cname(node.cname)))
            if not names.in_zone(node.cname, index.zone):
                return Answer(NOERROR, tuple(answer), chase=node.cname)
            if node.cname in seen:
                break
            owner = key = node.cname
            seen.add(key)
            node = index.find(key)
            continue
        return _records(index, qname, owner, key, node, qtype, answer)
    return Answer(SERVFAIL)  # a loop, or a chain too long to follow


def _records(
    index: ZoneIndex,
    qname: DNSLabel,
    owner: DNSLabel | str,
    key: str,
    node: Node,
    qtype: int,
    answer: list[RR],
) -> Answer:
    ttl = index.ttl
    if qtype == TYPE_CNAME and node.cname is not None:
        answer.append(RR(owner, TYPE_CNAME, ttl=ttl, rdata=cname(node.cname)))
        return Answer(NOERROR, tuple(answer))
    types = list(node.rrsets) if qtype == TYPE_ANY else [qtype] if qtype in node.rrsets else []
    if not types:
        return Answer(NOERROR, tuple(answer), _soa(index, qname, key))
    for rtype in types:
        soa_ttl = min(ttl, 300)
        for rdata in node.rrsets[rtype]:
            answer.append(RR(owner, rtype, ttl=soa_ttl if rtype == TYPE_SOA else ttl, rdata=rdata))
    additional = tuple(
        RR(name, rtype, ttl=ttl, rdata=rdata) for name, rtype, rdata in node.additional
    )
    return Answer(NOERROR, tuple(answer), (), additional)


def _soa(index: ZoneIndex, qname: DNSLabel, key: str) -> tuple[RR, ...]:
    """The SOA for a negative answer, owned by the apex in the question's case."""
    if names.in_zone(key, index.zone):
        depth = index.zone.count(".")
        apex_text = index.zone
    else:  # a reverse name the cluster owns: the reverse zone's apex, as CoreDNS answers
        depth = 2
        apex_text = "in-addr.arpa." if key.endswith("in-addr.arpa.") else "ip6.arpa."
    labels = qname.label
    apex: DNSLabel | str = apex_text
    if key.count(".") == len(labels) and len(labels) >= depth:
        apex = DNSLabel(labels[len(labels) - depth :])
    return (RR(apex, TYPE_SOA, ttl=min(index.ttl, 300), rdata=index.soa),)
