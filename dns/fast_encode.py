"""Every owner name's reply sections, encoded once per config for the FastIndex.

The answer, authority and additional sections of each (name, type) are encoded as dnslib would
encode them behind a lower-case question at offset 12 (the same name compression), so the
fast path and the general path give the same bytes: the common answers (A, AAAA, SRV with its
addresses, PTR) by ``_Buffer``, which replays dnslib's compression at a fraction of its cost,
the rest through dnslib's own buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from dnslib import RR, DNSBuffer, DNSLabel

from mesh.dns.answer import MAX_CHAIN, Answer, resolve
from mesh.dns.part_wire import NO_ENTRIES, Entry
from mesh.dns.records import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_PTR,
    TYPE_SOA,
    TYPE_SRV,
    Node,
    RData,
)
from mesh.dns.zone import ZoneIndex

# A type no record has: what a CNAME node answers for every type its chain does not hold.
OTHER_TYPE = 65280

__all__ = ["OTHER_TYPE", "TO_GENERAL", "Entry", "encode_node", "reverse_nodata", "wire_name"]


def wire_name(name: str) -> bytes:
    """``web.shop.svc.cluster.local.`` -> ``\\x03web\\x04shop...\\x00``."""
    out = bytearray()
    for label in name.rstrip(".").split(".") if name != "." else ():
        raw = label.encode("ascii")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def encode_node(
    index: ZoneIndex, name: str, labels: tuple[bytes, ...], node: Node
) -> dict[int, Entry]:
    """The encoded answers of one owner name by query type; -1 holds the answer for every
    other type when it is not the plain NODATA the zone tail gives."""
    if node.cname is None:
        if not node.rrsets and labels[-len(index.zone.split(".")) + 1 :] == _zone_labels(index):
            return NO_ENTRIES  # an empty non-terminal: NODATA from the zone tail
        out = {}
        for t in node.rrsets:
            entry = _direct(index.ttl, labels, t, node)
            if entry is None:
                qname = DNSLabel(name)
                entry = _encode(qname, t, resolve(index, qname, name, t))
            out[t] = entry
        # A reverse name's NODATA (the reverse zone's SOA, with this version's serial) is not
        # stored here: the FastIndex makes it when asked (``reverse_nodata``), so a new
        # version does not touch every reverse name.
        return out
    qname = DNSLabel(name)
    types = {TYPE_CNAME, OTHER_TYPE}
    target: str | None = node.cname
    for _ in range(MAX_CHAIN + 1):  # every type any node along the chain holds
        found = index.find(target) if target is not None else None
        if found is None:
            break
        types.update(found.rrsets)
        target = found.cname
    out = {}
    for t in types:
        ans = resolve(index, qname, name, t)
        # A chain that leaves the zone is followed upstream by the server: general path.
        out[t] = _encode(qname, t, ans) if ans.chase is None else TO_GENERAL
    out[-1] = out.pop(OTHER_TYPE)
    return out


def reverse_nodata(labels: tuple[bytes, ...], soa: RData, ttl: int) -> Entry:
    """The NODATA of a reverse name: the reverse zone's SOA (in-addr.arpa. or ip6.arpa., the
    question's last two labels) as CoreDNS answers. Its bytes depend on the name's length and
    its last two labels only (the owner points into the question), and on the serial."""
    buf = _Buffer(labels)
    buf.record(labels[-2:], TYPE_SOA, min(ttl, 300), soa)
    return (0, 0, 1, 0, bytes(buf.out), b"", 0)


TO_GENERAL: Entry = (-1, 0, 0, 0, b"", b"", 0)  # answered by the general path


def _zone_labels(index: ZoneIndex) -> tuple[bytes, ...]:
    return tuple(label.encode("ascii") for label in index.zone.rstrip(".").split("."))


def _direct(ttl: int, qname: tuple[bytes, ...], qtype: int, node: Node) -> Entry | None:
    """The common positive answers (A, AAAA, SRV with its addresses, PTR) encoded here, the way
    dnslib's buffer would (same name compression), at a fraction of its cost; None for the
    rest, which ``_encode`` packs through dnslib itself."""
    if qtype not in (TYPE_A, TYPE_AAAA, TYPE_SRV, TYPE_PTR):
        return None
    buf = _Buffer(qname)
    for rdata in node.rrsets[qtype]:
        if qtype == TYPE_PTR and rdata.label.label[-1:] == qname[-1:]:
            return None  # a target sharing the question's suffix: leave it to dnslib
        buf.record(qname, qtype, ttl, rdata)
    main = bytes(buf.out)
    for owner, rtype, rdata in node.additional:
        buf.record(
            tuple(owner.rstrip(".").encode("ascii").split(b".")),
            rtype,
            ttl,
            rdata,
        )
    extra = bytes(buf.out)[len(main) :]
    return (0, len(node.rrsets[qtype]), 0, len(node.additional), main, extra, len(main))


class _Buffer:
    """dnslib's name compression replayed: every suffix written (or in the question at offset
    12) is remembered, and a later name ending in one points at it."""

    __slots__ = ("base", "names", "out")

    def __init__(self, qname: tuple[bytes, ...]) -> None:
        self.names: dict[tuple[bytes, ...], int] = {}
        offset = 12
        for i, label in enumerate(qname):
            self.names[qname[i:]] = offset
            offset += 1 + len(label)
        self.base = offset + 1 + 4  # the root label, then type and class
        self.out = bytearray()

    def name(self, labels: tuple[bytes, ...]) -> None:
        out = self.out
        while labels:
            at = self.names.get(labels)
            if at is not None:
                out += (0xC000 | at).to_bytes(2, "big")
                return
            self.names[labels] = self.base + len(out)
            out.append(len(labels[0]))
            out += labels[0]
            labels = labels[1:]
        out.append(0)

    def record(self, owner: tuple[bytes, ...], rtype: int, ttl: int, rdata: RData) -> None:
        self.name(owner)
        out = self.out
        out += struct.pack(">HHIH", rtype, 1, ttl, 0)
        start = len(out)
        if rtype in (TYPE_A, TYPE_AAAA):
            out += bytes(rdata.data)
        elif rtype == TYPE_SRV:  # the target is never compressed (RFC 2782)
            out += struct.pack(">HHH", rdata.priority, rdata.weight, rdata.port)
            for label in rdata.target.label:
                out.append(len(label))
                out += label
            out.append(0)
        elif rtype == TYPE_SOA:
            self.name(rdata.mname.label)
            self.name(rdata.rname.label)
            out += struct.pack(">IIIII", *rdata.times)
        else:  # PTR
            self.name(rdata.label.label)
        out[start - 2 : start] = (len(out) - start).to_bytes(2, "big")


def _encode(qname: DNSLabel, qtype: int, ans: Answer) -> Entry:
    """The sections of ``ans`` as dnslib packs them behind the question ``qname``."""
    buf = DNSBuffer()
    buf.append(bytes(12))
    buf.encode_name(qname)
    buf.pack("!HH", qtype, 1)
    start = buf.offset
    _pack(buf, ans.answer)
    alen = buf.offset - start
    _pack(buf, ans.authority)
    mid = buf.offset
    _pack(buf, ans.additional)
    data = bytes(buf.data)
    return (
        ans.rcode,
        len(ans.answer),
        len(ans.authority),
        len(ans.additional),
        data[start:mid],
        data[mid:],
        alen,
    )


def _pack(buf: DNSBuffer, records: Iterable[RR]) -> None:
    for rr in records:
        rr.pack(buf)
