"""The answers of a plain ClusterIP Service's names in wire form, made from templates.

Ten thousand Services are mostly alike: a name, a namespace, one IPv4 cluster IP, a named port
or two. Their answers differ only by those, so each is made here from a few bytes fixed per
build (the record heads with the TTL, the zone's wire form) plus the Service's own, with no
Node and no dnslib object: the A answer of ``<svc>.<ns>.svc.<zone>``, the PTR answer of its
reverse name, the SRV answer of each named port with the address in the additional section,
and the empty non-terminal ``_<proto>.<svc>...`` between them. The bytes are the ones
dns/fast_encode.py makes from the Service's nodes behind a lower-case question at offset 12
(its ``_direct``: the owner is a pointer to the question; a PTR or SRV target is written in
full, as no suffix of it is in the question; an SRV answer's additional owner, the base name,
points into the question), and tests hold the two to the same bytes.

Any other Service (ExternalName, headless, an IPv6 or non-canonical address, a label beyond
plain lower-case ASCII) gives None here and is made from its record operations instead.
"""

from __future__ import annotations

import re
import socket
import struct

from mesh.config.dns import DnsPort, DnsService

# rcode, ancount, nscount, arcount, answer + authority bytes, additional bytes, and how many
# of the first bytes are the answer section
Entry = tuple[int, int, int, int, bytes, bytes, int]
Entries = dict[int, Entry]  # by query type
NO_ENTRIES: Entries = {}  # a name with no data: NODATA from the zone tail (shared, never written)

TYPE_A, TYPE_PTR, TYPE_SRV = 1, 12, 33
# A label the templates take as it is: its text is its wire form and names.join keeps it.
_PLAIN = re.compile(r"[a-z0-9_-]{1,63}")
_OCTETS = {str(i): bytes((len(str(i)),)) + str(i).encode() for i in range(256)}
_IN_ADDR = b"\x07in-addr\x04arpa\x00"
_LENGTHS = [bytes((n,)) for n in range(256)]  # a label's (or a name's) length byte
_PROTOS = {"TCP": b"\x04_tcp", "UDP": b"\x04_udp", "SCTP": b"\x05_sctp"}  # wire labels

Made = tuple[tuple[str, ...], dict[bytes, Entries], tuple[bytes, ...]]
# One SRV name of a ports layout: its first two labels as text (``_http._tcp.``) and in wire
# form, the empty non-terminal's first label as text and wire (None when an earlier SRV name
# of the layout made it), its records' bytes after the RDLENGTH up to the target, one per
# distinct port, and the pointer + record head of its additional records.
_Srv = tuple[str, bytes, str | None, bytes, tuple[bytes, ...], bytes]


class Templates:
    """What the template parts of one zone and TTL share. ``usable`` is False for a zone the
    templates do not cover (a label beyond plain lower-case ASCII, or a last label ``arpa``,
    where a PTR target would share the question's suffix). Namespaces and port layouts are
    checked and encoded once each."""

    __slots__ = (
        "_layouts",
        "_svc_text",
        "_svc_wire",
        "_ttl",
        "a_answer",
        "by_tuple",
        "ptr_head",
        "srv_head",
        "suffixes",
        "usable",
    )

    def __init__(self, zone: str, ttl: int) -> None:
        labels = zone.rstrip(".").split(".")
        self.usable = all(_PLAIN.fullmatch(label) for label in labels) and labels[-1] != "arpa"
        self._svc_text = ".svc." + zone
        zone_wire = b"".join(bytes((len(label),)) + label.encode() for label in labels)
        self._svc_wire = b"\x03svc" + zone_wire + b"\x00"
        self._ttl = ttl
        self.a_answer = b"\xc0\x0c" + struct.pack(">HHIH", TYPE_A, 1, ttl, 4)
        self.ptr_head = b"\xc0\x0c" + struct.pack(">HHI", TYPE_PTR, 1, ttl)
        self.srv_head = b"\xc0\x0c" + struct.pack(">HHI", TYPE_SRV, 1, ttl)
        # namespace -> ``namespace``'s; the ports' layouts by value, and by the tuple's identity
        self.suffixes: dict[str, tuple[str, bytes] | tuple[()]] = {}
        self._layouts: dict[object, tuple[_Srv, ...] | None] = {}
        self.by_tuple: dict[int, tuple[object, tuple[_Srv, ...] | None]] = {}

    def namespace(self, ns: str) -> tuple[str, bytes] | tuple[()]:
        """``.<ns>.svc.<zone>`` as text and wire form, kept in ``suffixes``; empty for a
        namespace not plain."""
        made: tuple[str, bytes] | tuple[()] = ()
        if _PLAIN.fullmatch(ns) is not None:
            made = ("." + ns + self._svc_text, _LENGTHS[len(ns)] + ns.encode() + self._svc_wire)
        self.suffixes[ns] = made
        return made

    def layout(self, ports: tuple[DnsPort, ...]) -> tuple[_Srv, ...] | None:
        """The SRV names of ``ports`` (empty: none is named); None when a port is not one the
        templates take."""
        key: object = (
            (ports[0].name, ports[0].protocol, ports[0].port)
            if len(ports) == 1
            else tuple([(p.name, p.protocol, p.port) for p in ports])
        )
        try:
            return self._layouts[key]
        except KeyError:
            pass
        made = self._layouts[key] = self._layout(ports)
        return made

    def _layout(self, ports: tuple[DnsPort, ...]) -> tuple[_Srv, ...] | None:
        # SRV name prefix -> (its wire form, its protocol's label, the distinct port numbers)
        by_name: dict[str, tuple[bytes, str, bytes, dict[int, None]]] = {}
        for port in ports:
            if not port.name:  # unnamed ports have no SRV record (spec 2.3.2)
                continue
            label = "_" + port.name
            proto = _PROTOS.get(port.protocol)
            if proto is None or _PLAIN.fullmatch(label) is None or not 0 <= port.port <= 0xFFFF:
                return None
            proto_text = proto[1:].decode() + "."
            prefix = f"{label}.{proto_text}"
            found = by_name.get(prefix)
            if found is None:
                head = bytes((len(label),)) + label.encode() + proto
                found = by_name[prefix] = (head, proto_text, proto, {})
            found[3][port.port] = None
        out = []
        ents: set[str] = set()
        for prefix, (head, proto_text, proto, numbers) in by_name.items():
            weight = max(1, 100 // len(numbers))
            tails = tuple(struct.pack(">HHH", 0, weight, p) for p in numbers)
            # the additional records' owner, the base name, points into the question
            owner = (0xC000 | (12 + len(head))).to_bytes(2, "big")
            add = owner + struct.pack(">HHIH", TYPE_A, 1, self._ttl, 4)
            ent = None if proto_text in ents else proto_text
            ents.add(proto_text)
            out.append((prefix, head, ent, proto, tails, add))
        return tuple(out)


def clusterip_wire(svc: DnsService, t: Templates) -> Made | None:
    """(owner names, wire name -> entries, the reverse names' wire names) of a plain
    ClusterIP Service; None for any other (module doc)."""
    if svc.kind != "ClusterIP" or not t.usable:
        return None
    name = svc.name
    suffix = t.suffixes.get(svc.namespace)
    if suffix is None:
        suffix = t.namespace(svc.namespace)
    if not suffix or _PLAIN.fullmatch(name) is None:
        return None
    ips, ports = svc.cluster_ips, svc.ports
    if len(ips) > 1:
        ips = tuple(dict.fromkeys(ips))  # a repeated address is one record
    layout: tuple[_Srv, ...] | None = ()
    if ips and ports:
        hit = t.by_tuple.get(id(ports))  # the translator shares a port's tuple: by identity
        if hit is not None and hit[0] is ports:
            layout = hit[1]
        else:
            layout = t.layout(ports)
            t.by_tuple[id(ports)] = (ports, layout)
        if layout is None:
            return None
    base = name + suffix[0]
    bw = _LENGTHS[len(name)] + name.encode() + suffix[1]
    if not ips:  # no address allocated yet: the name exists with no data, and no SRV
        return (base,), {bw: NO_ENTRIES}, ()
    owned = [base]
    reverse = []
    raw = []
    for ip in ips:
        octets = ip.split(".")
        if len(octets) != 4:
            return None
        a, b, c, d = octets
        wa, wb, wc, wd = _OCTETS.get(a), _OCTETS.get(b), _OCTETS.get(c), _OCTETS.get(d)
        if wa is None or wb is None or wc is None or wd is None:
            return None  # not a canonical IPv4 address (an IPv6 one, leading zeros...)
        raw.append(socket.inet_aton(ip))
        reverse.append(wd + wc + wb + wa + _IN_ADDR)
        owned.append(f"{d}.{c}.{b}.{a}.in-addr.arpa.")
    if len(raw) == 1:
        main = t.a_answer + raw[0]
        wire: dict[bytes, Entries] = {bw: {TYPE_A: (0, 1, 0, 0, main, b"", 16)}}
    else:
        main = b"".join([t.a_answer + r for r in raw])
        wire = {bw: {TYPE_A: (0, len(raw), 0, 0, main, b"", len(main))}}
    ptr = t.ptr_head + len(bw).to_bytes(2, "big") + bw
    ptr_entries = {TYPE_PTR: (0, 1, 0, 0, ptr, b"", len(ptr))}
    for rw in reverse:
        wire[rw] = ptr_entries
    if layout:
        head = t.srv_head + (6 + len(bw)).to_bytes(2, "big")
        ents = []
        for prefix, srv_head, ent, proto, tails, add in layout:
            owned.append(prefix + base)
            main = (
                head + tails[0] + bw
                if len(tails) == 1
                else b"".join([head + x + bw for x in tails])
            )
            extra = add + raw[0] if len(raw) == 1 else b"".join([add + r for r in raw])
            wire[srv_head + bw] = {TYPE_SRV: (0, len(tails), 0, len(raw), main, extra, len(main))}
            if ent is not None:
                ents.append(ent + base)
                wire[proto + bw] = NO_ENTRIES
        owned.extend(ents)
    return tuple(owned), wire, tuple(reverse)
