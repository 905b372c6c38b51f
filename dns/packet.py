"""DNS messages in and out: parsing a query, encoding a reply, replies to bad packets.

The blame rules (RFC 1035 4.1.1, RFC 6891):

- fewer than 12 bytes, or the QR bit set (a response, never answered: no reflection loops):
  dropped;
- an opcode other than QUERY: NOTIMP;
- not exactly one question, an undecodable message, several OPT records or an OPT not owned
  by the root: FORMERR, built from the header alone;
- EDNS version above 0: BADVERS.

A reply fits the client's limit (512 bytes without EDNS, its advertised payload size with
EDNS, capped by ours). RFC 2181 9: TC means the answer itself did not fit, so what is only
extra goes first: the additional records, then (when there are answers) the authority
records; only when the answer section does not fit is the reply sent with TC set and empty
sections, so the client retries over TCP.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

HEADER_SIZE = 12
CLASSIC_UDP_LIMIT = 512  # RFC 1035 2.3.4
TCP_LIMIT = 65535

TYPE_OPT: int = QTYPE.OPT
FORMERR: int = RCODE.FORMERR
SERVFAIL: int = RCODE.SERVFAIL
NOTIMP: int = RCODE.NOTIMP
REFUSED: int = RCODE.REFUSED
BADVERS = 16  # RFC 6891 6.1.3: extended rcode, upper bits travel in the OPT record

RCODE_NAMES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    BADVERS: "BADVERS",
}
QTYPE_NAMES = {
    int(getattr(QTYPE, n)): n
    for n in ("A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "SOA", "NS", "MX", "ANY", "HTTPS", "SVCB")
}


def qtype_label(qtype: int) -> str:
    """A bounded metrics label for a query type."""
    return QTYPE_NAMES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, "other")


@dataclass(frozen=True, slots=True)
class Query:
    record: DNSRecord
    question: DNSQuestion
    qtype: int
    qclass: int
    key: str | None  # absolute lower-case name; None when no cluster name can match it
    edns: bool
    edns_version: int
    payload: int  # the client's UDP limit

    @property
    def qname(self) -> DNSLabel:
        return self.question.qname


@dataclass(frozen=True, slots=True)
class Malformed:
    """A packet that is not a query we answer: ``wire`` is the reply, None to drop it."""

    wire: bytes | None
    rcode: int
    reason: str


def header_reply(data: bytes, rcode: int) -> bytes:
    """A reply with no sections, built from the first 12 bytes of ``data``."""
    opcode_rd = data[2] & 0x79  # opcode (4 bits) and RD
    return data[:2] + bytes((0x80 | opcode_rd, 0x80 | rcode)) + bytes(8)


def name_key(label: DNSLabel) -> str | None:
    """The index key of a name: absolute lower-case text; None when no cluster name could
    equal it (a label holding a dot or a non-ASCII byte)."""
    parts = label.label
    try:
        text = ".".join(p.decode("ascii") for p in parts)
    except UnicodeDecodeError:
        return None
    if text.count(".") != max(len(parts) - 1, 0):
        return None
    return text.lower() + "."


def parse_query(data: bytes) -> Query | Malformed:
    if len(data) < HEADER_SIZE:
        return Malformed(None, FORMERR, "short")
    if data[2] & 0x80:
        return Malformed(None, FORMERR, "response")
    if (data[2] >> 3) & 0xF != 0:
        return Malformed(header_reply(data, NOTIMP), NOTIMP, "opcode")
    if data[4:6] != b"\x00\x01":
        return Malformed(header_reply(data, FORMERR), FORMERR, "qdcount")
    try:
        record = DNSRecord.parse(data)
    except Exception:  # dnslib raises several types (and RecursionError on pointer chains)
        return Malformed(header_reply(data, FORMERR), FORMERR, "undecodable")
    opts = [rr for rr in record.ar if rr.rtype == TYPE_OPT]
    question = record.questions[0]
    if len(opts) > 1 or (opts and opts[0].rname.label) or question.qtype == TYPE_OPT:
        return Malformed(header_reply(data, FORMERR), FORMERR, "opt")
    opt = opts[0] if opts else None
    return Query(
        record=record,
        question=question,
        qtype=question.qtype,
        qclass=question.qclass,
        key=name_key(question.qname),
        edns=opt is not None,
        edns_version=(opt.ttl >> 16) & 0xFF if opt is not None else 0,
        payload=max(CLASSIC_UDP_LIMIT, opt.rclass) if opt is not None else CLASSIC_UDP_LIMIT,
    )


def encode_reply(
    query: Query,
    rcode: int,
    *,
    answer: Iterable[RR] = (),
    authority: Iterable[RR] = (),
    additional: Iterable[RR] = (),
    authoritative: bool = False,
    limit: int,
    advertise: int,
) -> bytes:
    """The reply to ``query``; truncated (TC, empty sections) when longer than ``limit``."""
    qh = query.record.header
    header = DNSHeader(
        id=qh.id, qr=1, opcode=0, aa=int(authoritative), rd=qh.rd, ra=1, cd=qh.cd, rcode=rcode & 0xF
    )
    extra = list(additional)
    opt = EDNS0(udp_len=advertise, ext_rcode=rcode >> 4) if query.edns else None
    if opt is not None:
        extra.append(opt)
    answers, auth = list(answer), list(authority)
    tail = [opt] if opt is not None else []
    choices = [(auth, extra)]
    if len(extra) > len(tail):
        choices.append((auth, tail))
    if answers and auth:
        choices.append(([], tail))
    for keep_auth, keep_extra in choices:
        msg = DNSRecord(header, [query.question], answers, auth=keep_auth, ar=keep_extra)
        wire = bytes(msg.pack())  # dnslib packs into a bytearray
        if len(wire) <= limit:
            return wire
    header.tc = 1
    short = DNSRecord(header, [query.question], [], auth=[], ar=[opt] if opt is not None else [])
    # Header, one question (at most 259 bytes) and an OPT always fit in 512 bytes.
    return bytes(short.pack())
