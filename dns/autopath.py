"""Server-side search paths, as CoreDNS's ``autopath`` plugin: pure decisions, no I/O.

A pod with ``ndots:5`` resolving ``example.org`` asks, in order, ``example.org.<ns>.svc.<zone>``,
``example.org.svc.<zone>``, ``example.org.<zone>`` and ``example.org``: three NXDOMAINs before
the name it meant. The server knows the pod by its source address, so when the first question
does not exist it walks the rest of that path itself and answers with a CNAME from the asked
name to the first one that resolves, plus that name's records: one round trip instead of four.

Only for pods the config lists (the address says which namespace, so which search path); only
when the asked name is the first step of that path and does not exist. A step that does not
exist (NXDOMAIN) or has no record of the type (NODATA) is skipped, as the stub resolver would;
when every step fails the pod gets the plain NXDOMAIN of what it asked, and walks on as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dnslib import RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from mesh.config.dns import DnsConfig
from mesh.dns import names
from mesh.dns.answer import NOERROR, resolve
from mesh.dns.packet import Query, encode_reply, parse_query, qtype_label
from mesh.dns.records import TYPE_ANY, TYPE_CNAME, cname
from mesh.dns.responder import CLASS_IN, ZONE_TRANSFERS, Reply, Responder
from mesh.dns.zone import ZoneIndex

NOT_WALKED = ZONE_TRANSFERS | {TYPE_ANY}


def pod_namespaces(config: DnsConfig) -> Mapping[str, str]:
    """Pod IP -> namespace."""
    return dict(config.pod_namespaces)


def search_base(key: str, namespace: str, zone: str) -> str | None:
    """``example.org.`` when ``key`` is ``example.org.<namespace>.svc.<zone>`` (the first step
    of that pod's search path), else None. All absolute and lower case."""
    suffix = f".{namespace}.svc.{zone}"
    if not key.endswith(suffix) or len(key) == len(suffix):
        return None
    return key[: -len(suffix)] + "."


def steps(base: str, zone: str) -> tuple[str, ...]:
    """The rest of the search path for ``base``: ``svc.<zone>``, ``<zone>``, then the name as
    given (the resolver's last try; outside the zone it is forwarded)."""
    stem = base.rstrip(".")
    return (f"{stem}.svc.{zone}", f"{stem}.{zone}", base)


@dataclass(frozen=True, slots=True)
class AutopathWalk:
    """One pod's question whose name does not exist, and the rest of its search path."""

    responder: Responder
    index: ZoneIndex
    query: Query
    inside_steps: tuple[str, ...]
    outside: bytes | None  # the question for the name as given (name, type, class), to forward
    outside_name: str = ""
    tcp: bool = False

    @classmethod
    def start(
        cls, responder: Responder, data: bytes, namespace: str, *, tcp: bool = False
    ) -> AutopathWalk | None:
        """The walk for query ``data`` from a pod in ``namespace``; None when autopath does not
        apply (not a plain question, not the first step of the pod's path, or a name that
        exists): the query is answered as usual."""
        index = responder.index
        query = parse_query(data)
        if index is None or not isinstance(query, Query) or query.key is None:
            return None
        if query.qclass != CLASS_IN or query.edns_version or query.qtype in NOT_WALKED:
            return None
        base = search_base(query.key, namespace, index.zone)
        if base is None or index.find(query.key) is not None:
            return None
        walk = steps(base, index.zone)
        inside = tuple(s for s in walk if names.in_zone(s, index.zone))
        outside = None
        if not names.in_zone(base, index.zone) and not names.is_reverse(base):
            wire = DNSRecord(DNSHeader(rd=1), q=DNSQuestion(base, query.qtype)).pack()
            outside = bytes(wire[12:])  # the question alone, as the forwarder takes it
        return cls(responder, index, query, inside, outside, base, tcp)

    def inside(self) -> Reply | None:
        """The answer from the first step inside the zone that has records of the type."""
        for step in self.inside_steps:
            ans = resolve(self.index, DNSLabel(step), step, self.query.qtype)
            if ans.rcode == NOERROR and ans.answer:
                return self._reply(step, ans.answer, ans.additional, authoritative=True)
        return None

    def forwarded(self, upstream_wire: bytes) -> Reply | None:
        """The answer from the upstream for the name as given (its TTLs as they stand now);
        None unless it has records."""
        try:
            upstream = DNSRecord.parse(upstream_wire)
        except Exception:  # dnslib raises several types; the forwarder checked it already
            return None
        if upstream.header.rcode != NOERROR or not upstream.rr:
            return None
        return self._reply(self.outside_name, list(upstream.rr), (), authoritative=False)

    def nxdomain(self) -> Reply:
        """What the pod asked, answered as usual (NXDOMAIN): it walks its path itself."""
        outcome = self.responder.respond(self.query, tcp=self.tcp)
        assert isinstance(outcome, Reply)
        return outcome

    def _reply(
        self,
        target: str,
        answer: Sequence[RR],
        additional: Sequence[RR],
        *,
        authoritative: bool,
    ) -> Reply:
        query = self.query
        link = RR(query.qname, TYPE_CNAME, ttl=self.index.ttl, rdata=cname(target))
        wire = encode_reply(
            query,
            NOERROR,
            answer=[link, *answer],
            additional=additional,
            authoritative=authoritative,
            limit=self.responder.limit(query, self.tcp),
            advertise=self.responder.max_udp,
        )
        return Reply(wire, (qtype_label(query.qtype), "NOERROR"))
