"""Standard queries classified from their bytes, for the forwarding path: no dnslib.

A standard query (the FastIndex's definition: opcode QUERY, one question of class IN in an
uncompressed name, at most one EDNS version 0 OPT owned by the root and nothing after it) of a
name the cluster does not own goes upstream; ``forward`` gives the relay what it needs (the
name's key, type, EDNS and payload) and leaves the dnslib parse to the rare failure reply.
Anything else gives None, and the general Responder decides.
"""

from __future__ import annotations

from collections.abc import Container

from mesh.dns.responder import Forward

CLASSIC_UDP_LIMIT = 512
# Types the general path answers: ANY, AXFR, IXFR, OPT (a FORMERR), and 0 (reserved).
GENERAL_TYPES = frozenset((0, 41, 251, 252, 255))


def forward(data: bytes, nodes: Container[bytes], zone_wire: bytes) -> Forward | None:
    """``data`` for the upstream when it is a standard query of a name outside ``zone_wire``
    that is none of ``nodes`` (wire names, lower case); else None."""
    q = _standard(data)
    if q is None:
        return None
    qend, qtype, edns, payload = q
    qname = data[12:qend].lower()
    if qtype in GENERAL_TYPES or qname in nodes or qname.endswith(zone_wire):
        return None
    return outside(data, qname, qend, qtype, edns, payload)


def outside(
    data: bytes, qname: bytes, qend: int, qtype: int, edns: bool, payload: int
) -> Forward | None:
    """The Forward of a standard query (``_standard``'s fields) whose lower-cased name
    ``qname`` is neither the cluster's nor in its zone, when that name is plain labels;
    else None. The FastIndex calls this once its own lookup missed: no second parse."""
    if not qname.isascii() or b"." in qname or qname == b"\x00" or qend - 12 > 255:
        return None
    i = 12
    while True:  # plain labels only, ending at the question's end
        length = data[i]
        if length == 0:
            break
        if length > 63:
            return None
        i += length + 1
    if i != qend - 1:
        return None
    return Forward.standard(data, qname, qtype, edns, payload, qend + 4)


def _standard(data: bytes) -> tuple[int, int, bool, int] | None:
    """(end of the name, qtype, EDNS, payload) of a standard query (the checks of
    ``FastIndex.reply``, which inlines them for speed), else None."""
    n = len(data)
    if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None
    arcount = (data[10] << 8) | data[11]
    qend = data.find(b"\x00", 12) + 1
    if arcount > 1 or qend == 0 or qend + 4 > n or data[qend + 2 : qend + 4] != b"\x00\x01":
        return None
    qtype = (data[qend] << 8) | data[qend + 1]
    pos = qend + 4
    if not arcount:
        return (qend, qtype, False, CLASSIC_UDP_LIMIT) if pos == n else None
    if data[pos : pos + 3] != b"\x00\x00\x29" or pos + 11 > n or data[pos + 6]:
        return None
    payload = max(CLASSIC_UDP_LIMIT, (data[pos + 3] << 8) | data[pos + 4])
    end = pos + 11 + ((data[pos + 9] << 8) | data[pos + 10])
    if end != n:
        return None  # the OPT record must end the packet, exactly
    pos += 11
    while pos + 4 <= end:
        pos += 4 + ((data[pos + 2] << 8) | data[pos + 3])
    return (qend, qtype, True, payload) if pos == end else None
