"""First-time cluster questions answered from wire bytes: no dnslib on the way in or out.

Built once per config from the ZoneIndex. Every owner name is keyed by its wire form
(length-prefixed lower-case labels), and every (name, type) with data holds its reply sections
already encoded (dns/fast_encode.py): answer and authority in one string, additional in
another (RFC 2181 9: the additional section is the first to go when a reply does not fit).
The plain ClusterIP Services' names come encoded with their parts (dns/part_wire.py, the same
bytes), taken with one dict update per Service: only the other names are encoded here.
They are encoded as dnslib would encode them behind a lower-case question at offset 12, so
both paths give the same bytes. Negative answers (NXDOMAIN, and NODATA for names with no data of
the asked type) are one SOA record whose three names point at the zone apex inside the
question, so the tail depends only on where the apex starts: one tail per offset, made once
(and an NXDOMAIN's header and tail per offset, RD, CD and EDNS: a reply is three copies).

A query takes this path when it is a standard one: opcode QUERY, one question of class IN in a
lower-case, uncompressed, dot-free ASCII name, no answer or authority records, at most one
additional record that is an EDNS version 0 OPT owned by the root, and nothing after it. The
rest (None from ``answer``) goes through the general Responder, as do names outside the index
and the zone (forwarded) and the types that need it (ANY, zone transfers, OPT as a question).
A question in mixed case (0x20 randomisation) is looked up in lower case and its own case is
echoed: every name in the sections either points into the question or is written out in
lower case, exactly as the general Responder answers it (it encodes behind the lower-cased
question and copies the client's back in). Such replies are kept in no cache: a resolver that
randomises case asks every name in a new spelling, which would only evict the others.
A name not in the index whose parent is (a made-up label in front of a namespace, ``svc`` or
the apex) has its NXDOMAIN made with one check of its first label and no walk, and it is
marked for no cache: such a name is mostly asked once, and keeping it would cost a put per
name and fill a cache with names nobody asks again. ``forward`` classifies a standard query of a name
the cluster does not own for the upstream, with the fields the relay needs, so forwarding does
not parse it with dnslib either.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping

from mesh.dns import classify, names
from mesh.dns.answer import MAX_CHAIN
from mesh.dns.fast_encode import TO_GENERAL, Entry, encode_node, reverse_nodata, wire_name
from mesh.dns.packet import qtype_label, rcode_label
from mesh.dns.records import TYPE_A, TYPE_AAAA, TYPE_SOA, Node
from mesh.dns.responder import DEFAULT_MAX_UDP, Forward, Reply
from mesh.dns.zone import ZoneIndex

CLASSIC_UDP_LIMIT = 512
TCP_LIMIT = 65535
NXDOMAIN = 3
# Types the general path answers: ANY, AXFR, IXFR, OPT (a FORMERR), and 0 (reserved).
GENERAL_TYPES = frozenset((0, 41, 251, 252, 255))
# the whole reply, its (qtype, rcode) label, and which cache may keep it: True the wire cache,
# False the negative cache (an NXDOMAIN whose labels were walked), None neither (a mixed-case
# question, or an NXDOMAIN under a known parent: cheap to make again, mostly asked once)
FastReply = tuple[bytes, tuple[str, str], bool | None]
# An NXDOMAIN under a known parent, by ``flood_key``: (reply flags and counts, the SOA and OPT
# after the question, the parent's wire length, the label). The reply to a query ``data``
# whose first label is ``n = data[12]`` bytes long is ``data[:2] + head +
# data[12 : 17 + n + parent] + tail`` when that label is plain (ASCII, no dot, no zero byte)
# and the whole name, lower-cased, is none of the index (``flood_reply``).
Flood = tuple[bytes, bytes, int, tuple[str, str]]
FLOOD_KEYS = 4096

_COUNTS = struct.Struct(">HHHH")
# Bytes 4..12 of a standard query: one question, no answer or authority records, and no
# additional record or one (an OPT, checked below).
_NO_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_ONE_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"
# Reply flags by (RD << 5 | CD bit 0x10 | rcode): QR, AA and RA set, RD and CD echoed.
_FLAGS = [bytes((0x84 | (i >> 5), 0x80 | (i & 0x1F))) for i in range(64)]
_TC_FLAGS = [bytes((0x86 | (i >> 5), 0x80 | (i & 0x1F))) for i in range(64)]


class FastIndex:
    """Reply bytes for standard queries of cluster names, or None for the general path."""

    __slots__ = (
        "_chains",
        "_cnames",
        "_index_id",
        "_labels",
        "_max_udp",
        "_namespaces",
        "_negative",
        "_nodes",
        "_opt",
        "_pod_labels",
        "_pod_wire",
        "_rebuilt",
        "_reverse",
        "_reverse_tails",
        "_soa",
        "_soa_rdata_tail",
        "_soa_ttl",
        "_tails",
        "_ttl",
        "_zone_name",
        "_zone_wire",
        "flood",
    )

    def __init__(
        self,
        index: ZoneIndex,
        *,
        max_udp: int = DEFAULT_MAX_UDP,
        previous: FastIndex | None = None,
    ) -> None:
        """The index of ``index``; with ``previous`` (the FastIndex of the ZoneIndex that
        ``index`` was built from), only the owner names that changed are encoded again,
        and the CNAME names (their answers follow other names). No entry holds the SOA
        serial but the CNAME names': the negative answers' SOA records are made per index,
        when first asked."""
        self._max_udp = max_udp
        self._ttl = index.ttl
        self._soa_ttl = min(index.ttl, 300)
        self._zone_wire = wire_name(index.zone)
        self._pod_wire = wire_name("pod." + index.zone) if index.pod_mode == "insecure" else None
        self._pod_labels = index.zone.count(".") + 1  # labels of pod.<zone>
        self._namespaces = index.namespaces
        # The SOA's five numbers (serial, refresh, retry, expire, minimum) in wire form.
        s = self._soa = index.soa
        self._soa_rdata_tail = struct.pack(">IIIII", s.times[0], *s.times[1:])
        # Our OPT: root owner, type 41, our payload size as class, no extended rcode, version 0.
        self._opt = b"\x00\x00\x29" + max_udp.to_bytes(2, "big") + bytes(6)
        self._tails: dict[int, bytes] = {}
        self._negative: dict[int, tuple[bytes, bytes]] = {}  # see reply(): NXDOMAIN parts
        # The NXDOMAIN parts of names under a known parent, keyed by the query with its first
        # label's bytes cut out (see ``flood_key``): what the UDP loop answers a flood from
        # inline. Filled by ``reply``, bounded (a new key is a new parent, label length, type,
        # flags or OPT: a flood of one shape makes one), empty in each new index.
        self.flood: dict[bytes, Flood] = {}
        self._labels: dict[tuple[int, int], tuple[str, str]] = {}
        self._index_id = index.build_id
        self._zone_name = index.zone
        self._nodes: dict[bytes, dict[int, Entry]] = {}
        self._cnames: dict[bytes, str] = {}  # wire -> name of the nodes with a CNAME
        self._chains: dict[bytes, frozenset[str]] = {}  # their answers' names along the chain
        self._reverse: set[bytes] = set()  # reverse names (NODATA: the reverse zone's SOA)
        # their NODATA by (name length, reverse zone): made on first use, with this serial
        self._reverse_tails: dict[tuple[int, bytes], Entry] = {}
        self._rebuilt = 0  # owner names encoded for this index (tests pin the work)
        changed = index.changed_names
        if (
            previous is not None
            and changed is not None
            and previous._index_id == index.base_id
            and (previous._max_udp, previous._ttl, previous._zone_wire, previous._pod_wire)
            == (max_udp, self._ttl, self._zone_wire, self._pod_wire)
        ):
            self._update(index, previous, changed)
        else:
            # The plain Services' names come encoded with their parts (dns/part_wire.py):
            # one dict update per Service. The rest is encoded here, after them.
            nodes, reverse = self._nodes, self._reverse
            encoded, rest = index.wire_sources()
            for part in encoded:
                nodes.update(part.wire)  # type: ignore[arg-type]
                reverse.update(part.reverse)
            for name in rest:
                node = index.stored(name)
                if node is not None:
                    self._put(index, name, node)
            self._rebuilt = len(nodes)

    def _put(self, index: ZoneIndex, name: str, node: Node) -> None:
        # One encode and one split of the whole name, not one per label (40,000 names at start).
        labels = tuple(name.rstrip(".").encode("ascii").split(b"."))
        wire = b"".join([bytes((len(label),)) + label for label in labels]) + b"\x00"
        self._nodes[wire] = encode_node(index, name, labels, node)
        self._rebuilt += 1
        if node.cname is not None:
            self._cnames[wire] = name
            chain: set[str] = set()
            target: str | None = node.cname
            for _ in range(MAX_CHAIN + 1):  # as far as encode_node follows it
                if target is None or target in chain:
                    break
                chain.add(target)
                found = index.find(target)
                target = found.cname if found is not None else None
            self._chains[wire] = frozenset(chain)
        elif not names.in_zone(name, self._zone_name):
            self._reverse.add(wire)

    def _update(self, index: ZoneIndex, previous: FastIndex, changed: frozenset[str]) -> None:
        nodes = self._nodes
        nodes.update(previous._nodes)
        self._cnames.update(previous._cnames)
        self._chains.update(previous._chains)
        self._reverse.update(previous._reverse)
        redo = set(changed)
        # A CNAME's answers follow the names along its chain: encoded again when one of them
        # changed, else kept with the new serial in the SOA of their negative answers.
        serial = self._soa_rdata_tail[:4]
        for wire, name in previous._cnames.items():
            if name in changed or not previous._chains[wire].isdisjoint(changed):
                redo.add(name)
            else:
                nodes[wire] = {t: _new_serial(e, serial) for t, e in nodes[wire].items()}
        for name in redo:
            wire = wire_name(name)
            nodes.pop(wire, None)
            self._cnames.pop(wire, None)
            self._chains.pop(wire, None)
            self._reverse.discard(wire)
            node = index.stored(name)
            if node is not None:
                self._put(index, name, node)

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nodes(self) -> Mapping[bytes, object]:
        """The owner names (wire form, lower case) with data or children: what a name under
        a known parent must not be, for its NXDOMAIN (the UDP loop's inline flood check)."""
        return self._nodes

    def flood_reply(self, data: bytes) -> tuple[bytes, tuple[str, str]] | None:
        """The NXDOMAIN of ``data`` from ``flood`` (what the UDP loop inlines), or None when
        ``reply`` must decide. The key fixes every byte but the first label's: those are
        checked here, and the name looked up."""
        first = data[12]
        got = self.flood.get(flood_key(data))
        if got is None:
            return None
        head, tail, parent, label = got
        plain = data[13 : 13 + first]
        name = data[12 : 13 + first + parent]
        if 0 in plain or 46 in plain or not plain.isascii() or name.lower() in self._nodes:
            return None
        return data[:2] + head + data[12 : 17 + first + parent] + tail, label

    @property
    def zone_wire(self) -> bytes:
        """The zone's name in wire form: a query that holds it asks (almost surely) a name
        in the zone, which the answer cache of forwarded names never holds."""
        return self._zone_wire

    def answer(self, data: bytes, *, tcp: bool = False) -> Reply | None:
        got = self.reply(data, tcp)
        if got is None or isinstance(got, Forward):
            return None
        return Reply(got[0], got[1], cacheable=bool(got[2]))

    def reply(self, data: bytes, tcp: bool = False) -> FastReply | Forward | None:
        """``answer`` as a plain tuple (the whole reply, label, cacheable): the UDP loop's
        form, without a Reply object per query (the caches keep the reply after its ID). A
        standard query of a name outside the zone gives its Forward (``forward``'s, without a
        second parse). Ordered for the cheapest NXDOMAIN: a made-up name in the zone (a
        flood, a search-path expansion) is asked once and answered from here, not a cache."""
        # QR clear, opcode 0; one question, no answer or authority records, at most one
        # additional record (compared as one slice: the common shapes are these two).
        counts = data[4:12]
        if counts == _NO_OPT:
            edns = False
        elif counts == _ONE_OPT:
            edns = True
        else:
            return None
        if data[2] & 0xF8:
            return None
        # The name ends at its first zero byte when it is one of ours (their labels hold none);
        # any other name is walked label by label below, before it is answered.
        qend = data.find(0, 12) + 1  # 0: no name end; else at least 13
        n = len(data)
        if not edns:
            if qend + 4 != n:
                return None
            payload = CLASSIC_UDP_LIMIT
        else:
            pos = qend + 4
            if qend == 0 or pos + 11 > n or data[pos : pos + 3] != b"\x00\x00\x29" or data[pos + 6]:
                return None  # not a root-owned OPT, or EDNS version above 0 (BADVERS)
            payload = max(CLASSIC_UDP_LIMIT, (data[pos + 3] << 8) | data[pos + 4])
            end = pos + 11 + ((data[pos + 9] << 8) | data[pos + 10])
            if end != n:
                return None  # the OPT record must end the packet, exactly
            pos += 11
            while pos + 4 <= end:  # the options must fill the record exactly
                pos += 4 + ((data[pos + 2] << 8) | data[pos + 3])
            if pos != end:
                return None
        # type and class in one lookup: class IN, a type this path answers
        kind = _TYPES.get(data[qend : qend + 4])
        if kind is None:
            kind = _question_type(data[qend : qend + 4])
            if kind is None:
                return None
        qtype = kind[0]

        qname = data[12:qend]
        entries = self._nodes.get(qname)
        lower = qname
        if entries is None and not qname.islower():  # upper case, or no letter at all
            low = qname.lower()  # length bytes are below 64: only the letters change
            if low != qname:  # mixed case: ``lower is qname`` tells the two apart below
                lower = low
                entries = self._nodes.get(lower)
        if entries is not None:
            entry = entries.get(qtype) or entries.get(-1)
            if entry is TO_GENERAL:
                return None
            if entry is None:  # a name with no data of this type: NODATA
                if lower in self._reverse:
                    entry = self._reverse_tails.get((qend, lower[-14:]))
                    if entry is None:
                        entry = self._reverse_nodata(lower, qend)
                else:
                    entry = (0, 0, 1, 0, self._tail(qend - len(self._zone_wire)), b"", 0)
        else:
            zone_wire = self._zone_wire
            if not lower.endswith(zone_wire):
                # outside the zone: what the forwarding path needs, from this parse
                return classify.outside(data, lower, qend, qtype, edns, payload)
            if not qname.isascii() or b"." in qname or qend > 267:  # 255 bytes of name
                return None
            apex = qend - len(zone_wire)
            # The labels must end exactly at the apex. When the name's parent is a name of
            # the zone (a made-up label in front of a namespace, ``svc`` or the apex: a flood,
            # the first search-path step) they do: only the first label's length is checked.
            # (Every name of the index was made from its labels; one that ends with the
            # zone's bytes is in the zone.) Else walk them, with no list.
            first = qname[0]
            walked = first > 63 or lower[first + 1 :] not in self._nodes
            if walked:
                i = 12
                while i < apex:
                    length = data[i]
                    if length > 63:  # a compression pointer, or a reserved type (no zero
                        return None  # byte before ``qend``: the name ends at the first)
                    i += length + 1
                if i != apex:
                    return None
            pod_wire = self._pod_wire
            if pod_wire is None or not lower.endswith(pod_wire):
                # The common NXDOMAIN (a flood of made-up names, search-path expansions): its
                # header and tail depend only on the apex offset, RD, CD and EDNS; at most
                # 12 + 255 + 4 + 54 + 11 bytes, so it fits any limit from 512 bytes up.
                key = (apex << 7) | ((data[2] & 1) << 6) | (data[3] & 0x10) | edns
                parts = self._negative.get(key)
                if parts is None:
                    parts = self._negative_parts(key, apex, edns)
                if parts is not None:
                    # (not when the OPT carries option data: a cookie differs in every query)
                    if not walked and len(self.flood) < FLOOD_KEYS and n - qend < 20:
                        self.flood[flood_key(data)] = (*parts, qend - 13 - first, kind[1])
                    wire = data[:2] + parts[0] + data[12 : qend + 4] + parts[1]
                    # kept by the negative cache only when the labels were walked (a
                    # dotted name under a search domain, asked again at each lookup): one
                    # under a known parent (a flood) is cheap to make again: kept nowhere
                    return wire, kind[1], False if walked and lower is qname else None
                entry = (NXDOMAIN, 0, 1, 0, self._tail(apex), b"", 0)
            else:
                starts = _label_starts(data, qend)
                if starts is None:
                    return None
                pod = self._pod(data, starts, lower, qtype, apex)
                entry = (NXDOMAIN, 0, 1, 0, self._tail(apex), b"", 0) if pod is None else pod

        rcode, an, ns, ar, main, extra, alen = entry
        flags = ((data[2] & 1) << 5) | (data[3] & 0x10) | rcode
        question = data[12 : qend + 4]
        opt = self._opt if edns else b""
        wire = _FLAGS[flags] + _COUNTS.pack(1, an, ns, ar + edns) + question + main + extra + opt
        limit = TCP_LIMIT if tcp else min(payload, self._max_udp)
        if len(wire) + 2 > limit:
            # RFC 2181 9: what is only extra goes first, the additional records, then (when
            # there are answers) the authority records; TC only when the answers do not fit.
            fits = False
            if extra:
                wire = _FLAGS[flags] + _COUNTS.pack(1, an, ns, edns) + question + main + opt
                fits = len(wire) + 2 <= limit
            if not fits and an and ns:
                wire = _FLAGS[flags] + _COUNTS.pack(1, an, 0, edns) + question
                wire += main[:alen] + opt
                fits = len(wire) + 2 <= limit
            if not fits:  # header, question and OPT always fit in 512 bytes
                wire = _TC_FLAGS[flags] + _COUNTS.pack(1, 0, 0, edns) + question + opt
        label = self._labels.get((qtype, rcode))
        if label is None:
            label = self._labels[(qtype, rcode)] = (qtype_label(qtype), rcode_label(rcode))
        return data[:2] + wire, label, rcode != NXDOMAIN if lower is qname else None

    def forward(self, data: bytes) -> Forward | None:
        """A standard query of a name the cluster does not own, classified from its bytes
        for the upstream (no dnslib); None for everything else (the general path decides)."""
        return classify.forward(data, self._nodes, self._zone_wire)

    def _negative_parts(self, key: int, apex: int, edns: bool) -> tuple[bytes, bytes] | None:
        """The NXDOMAIN reply around the question (flags and counts; SOA and OPT) for a
        ``key`` of ``reply``; None when a small ``max_udp`` could make it too long."""
        if self._max_udp < CLASSIC_UDP_LIMIT:
            return None
        flags = ((key >> 1) & 0x20) | (key & 0x10) | NXDOMAIN
        head = _FLAGS[flags] + _COUNTS.pack(1, 0, 1, int(edns))
        parts = self._negative[key] = (head, self._tail(apex) + (self._opt if edns else b""))
        return parts

    def _reverse_nodata(self, lower: bytes, qend: int) -> Entry:
        """The NODATA of reverse name ``lower`` (wire form) asked in a question ending at
        ``qend``, with this index's serial; kept by what its bytes depend on."""
        labels = _wire_labels(lower)
        entry = self._reverse_tails[(qend, lower[-14:])] = reverse_nodata(
            labels, self._soa, self._ttl
        )
        return entry

    def _tail(self, apex: int) -> bytes:
        """The SOA record of a negative answer whose question holds the apex at ``apex``: owner,
        MNAME ``ns.dns.<apex>`` and RNAME ``hostmaster.<apex>`` all point there."""
        tail = self._tails.get(apex)
        if tail is None:
            ptr = (0xC000 | apex).to_bytes(2, "big")
            rdata = b"\x02ns\x03dns" + ptr + b"\x0ahostmaster" + ptr + self._soa_rdata_tail
            tail = ptr + struct.pack(">HHIH", TYPE_SOA, 1, self._soa_ttl, len(rdata)) + rdata
            self._tails[apex] = tail
        return tail

    def _pod(
        self, data: bytes, starts: list[int], qname: bytes, qtype: int, apex: int
    ) -> Entry | None:
        """An insecure-mode pod name (``a-b-c-d.<ns>.pod.<zone>``): any address, in a namespace
        that exists. None when the name is not one (NXDOMAIN)."""
        pod_wire = self._pod_wire
        if (
            pod_wire is None
            or len(starts) != self._pod_labels + 2
            or starts[2] != 12 + len(qname) - len(pod_wire)
            or not qname.endswith(pod_wire)
        ):
            return None
        namespace = data[starts[1] + 1 : starts[2]].decode("ascii").lower()
        if namespace not in self._namespaces:
            return None
        ip = names.pod_label_ip(data[starts[0] + 1 : starts[1]].decode("ascii").lower())
        if ip is None:
            return None
        raw = ipaddress.ip_address(ip).packed
        rtype = TYPE_A if len(raw) == 4 else TYPE_AAAA
        if qtype != rtype:
            return (0, 0, 1, 0, self._tail(apex), b"", 0)
        record = b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, self._ttl, len(raw)) + raw
        return (0, 1, 0, 0, record, b"", len(record))


# (qtype, its NXDOMAIN label) by the question's last four bytes (type, class IN), for the
# types this path answers: one lookup instead of reading two fields and a label's key tuple.
# Filled when first asked; at most one entry per type.
_TYPES: dict[bytes, tuple[int, tuple[str, str]]] = {}


def _question_type(tail: bytes) -> tuple[int, tuple[str, str]] | None:
    """``_TYPES``' entry of a question's type and class ``tail``; None for a class other than
    IN or a type the general path answers (kept nowhere)."""
    if tail[2:] != b"\x00\x01":
        return None
    qtype = (tail[0] << 8) | tail[1]
    if qtype in GENERAL_TYPES:
        return None
    kind = _TYPES[tail] = (qtype, (qtype_label(qtype), "NXDOMAIN"))
    return kind


def flood_key(data: bytes) -> bytes:
    """A query's bytes after its ID with the bytes of its first label cut out (its length
    byte kept): what an NXDOMAIN under a known parent depends on, besides that label."""
    return data[2:13] + data[13 + data[12] :]


def _new_serial(entry: Entry, serial: bytes) -> Entry:
    """``entry`` with ``serial`` in its SOA when it has one: a negative answer's authority
    record, the last of its sections (its RDATA ends with the five numbers, serial first)."""
    rcode, an, ns, ar, main, extra, alen = entry
    if ns != 1:
        return entry
    return (rcode, an, ns, ar, main[:-20] + serial + main[-16:], extra, alen)


def _wire_labels(wire: bytes) -> tuple[bytes, ...]:
    """``\\x01a\\x02bc\\x00`` -> ``(b"a", b"bc")``."""
    labels = []
    i = 0
    while wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]])
        i += wire[i] + 1
    return tuple(labels)


def _label_starts(data: bytes, qend: int) -> list[int] | None:
    """The offsets of the question's labels when its name is plain (no compression pointer,
    at most 255 bytes) and ends at ``qend``; else None."""
    if qend - 12 > 255:
        return None
    starts = []
    i = 12
    while i < qend:
        length = data[i]
        if length == 0:
            break
        if length > 63:  # a compression pointer (or a reserved label type)
            return None
        starts.append(i)
        i += length + 1
    return starts if i == qend - 1 else None
