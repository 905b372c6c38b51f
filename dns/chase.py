"""Following an ExternalName's CNAME chain out of the zone, as CoreDNS does with forwarding on.

Pod resolvers (glibc, musl) expect the recursive server to give the CNAME and the target's
records in one answer. The chain starts with the cluster's own CNAMEs (``answer.resolve``
stops at the first target outside the zone), continues with the upstream's answer for that
target (from the forwarder, so it is cached by its TTL and asked once however many wait), and
comes back into the zone if the upstream's chain does. The final rcode is the last link's:
NXDOMAIN of the target is passed on with the CNAMEs. Bounded: a name seen twice or more than
``MAX_CHAIN`` links is SERVFAIL, never a hang. No I/O here: ``ask`` is the forwarder's
``resolve``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnslib import RR, DNSLabel, DNSRecord

from mesh.dns import names
from mesh.dns.answer import MAX_CHAIN, NXDOMAIN, SERVFAIL, Answer, resolve
from mesh.dns.records import TYPE_CNAME, TYPE_SOA
from mesh.dns.zone import ZoneIndex

if TYPE_CHECKING:  # the forwarder is the trio shell; this core only awaits what it is given
    from mesh.dns.upstream import Answer as UpstreamAnswer

Ask = Callable[[bytes, bool], Awaitable["UpstreamAnswer | None"]]
TYPE_OPT = 41


@dataclass(frozen=True, slots=True)
class Chased:
    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()


def question(name: str, qtype: int, qclass: int) -> bytes | None:
    """``name`` (absolute text) as a wire question; None when it is not a valid name."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii", "replace")
        if not 0 < len(raw) <= 63:
            return None
        out += bytes((len(raw),)) + raw
    out += b"\x00" + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")
    return bytes(out) if len(out) <= 259 else None


def chain_end(record: DNSRecord, start: str) -> str:
    """The name the CNAMEs of ``record``'s answer section lead to from ``start``."""
    cnames = {
        names.absolute(str(rr.rname)): names.absolute(str(rr.rdata.label))
        for rr in record.rr
        if rr.rtype == TYPE_CNAME
    }
    name = start
    for _ in range(MAX_CHAIN):
        nxt = cnames.get(name)
        if nxt is None or nxt == start:
            break
        name = nxt
    return name


async def chase(
    index: ZoneIndex, start: Answer, qtype: int, qclass: int, cd: bool, ask: Ask
) -> Chased:
    """Continue ``start`` (an answer that stopped at ``start.chase``) to its end."""
    records = list(start.answer)
    target = start.chase
    seen: set[str] = set()
    for _ in range(MAX_CHAIN):
        if target is None or target in seen:
            break
        seen.add(target)
        if names.in_zone(target, index.zone):
            inner = resolve(index, DNSLabel(target), target, qtype)
            if inner.rcode == SERVFAIL:
                break
            records += inner.answer
            if inner.chase is None:
                return Chased(inner.rcode, tuple(records), inner.authority)
            target = inner.chase
            continue
        wire = question(target, qtype, qclass)
        got = await ask(wire, cd) if wire is not None else None
        if got is None:
            break
        try:
            record = DNSRecord.parse(got.wire)
        except Exception:  # dnslib raises several types on garbage
            break
        rcode = record.header.rcode
        if rcode not in (0, NXDOMAIN):
            break
        records += [rr for rr in record.rr if rr.rtype != TYPE_OPT]
        end = chain_end(record, target)
        has_data = any(
            rr.rtype != TYPE_CNAME and names.absolute(str(rr.rname)) == end for rr in record.rr
        )
        negative = any(rr.rtype == TYPE_SOA for rr in record.auth)
        if end == target or rcode == NXDOMAIN or has_data or negative:
            authority = () if has_data else tuple(record.auth)
            return Chased(rcode, tuple(records), authority)
        target = end  # the upstream gave a CNAME without its target's records: ask on
    return Chased(SERVFAIL)
