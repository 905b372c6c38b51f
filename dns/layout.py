"""Where things are in a DNS message, found without decoding it (RFC 1035 4.1).

``scan`` walks a message from an upstream once: it skips names (labels and compression
pointers, never following a pointer, so a pointer loop costs nothing), and records the end of
the question, the start of each section, the offset of every TTL field, the OPT record and
the SOA of the authority section. Everything is bounds-checked against the packet's length:
a packet that lies about its counts or lengths gives None, never an exception, and every
offset returned leaves four bytes inside the packet. The forward cache rewrites TTLs at
these offsets; ``relay`` re-addresses an upstream answer to a client by copying sections.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

HEADER = 12
TYPE_A = 1
TYPE_SOA = 6
TYPE_OPT = 41
MAX_TTL = 0x7FFFFFFF  # RFC 2181 8: a TTL with the top bit set is read as zero

_U16 = struct.Struct(">H")
_RR = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_COUNTS = struct.Struct(">HHH")
_TTL = struct.Struct(">I")


# Not frozen, though nothing changes one: a frozen dataclass sets each field through
# ``object.__setattr__``, and one Layout is made for every upstream reply (13 fields: about
# 2 us of a forwarded query's CPU).
@dataclass(slots=True)
class Layout:
    rcode: int
    tc: bool
    qend: int  # end of the question section (one question)
    answer: int  # start of each section
    authority: int
    additional: int
    end: int
    counts: tuple[int, int, int]  # answer, authority, additional (OPT included)
    ttls: tuple[tuple[int, int], ...]  # (offset, ttl) of every record but OPT
    answer_ttl: int | None  # the smallest TTL of the answer section, None when empty
    negative_ttl: int | None  # min(SOA TTL, SOA minimum) of the authority's first SOA
    opt: tuple[int, int] | None  # (start, end) of the OPT record
    opt_ttl: int  # the OPT's TTL field: extended rcode, version, flags

    def cache_ttl(self) -> int | None:
        """RFC 2308: how long the answer may be kept, None when never (errors, truncated)."""
        if self.tc or self.opt_ttl >> 24 or self.rcode not in (0, 3):
            return None
        if self.rcode == 0 and self.counts[0]:
            return self.answer_ttl
        return self.negative_ttl


def skip_name(data: bytes, pos: int, end: int) -> int:
    """The offset after the name at ``pos``; -1 when it is invalid: running past ``end``, an
    unknown label type, longer than 255 bytes, or a compression pointer that does not point
    strictly backwards (each pointer is followed to check the name it completes; strictly
    decreasing targets make that terminate, as resolvers require)."""
    after = -1
    limit = pos  # a pointer must point before this
    length = 0
    for _ in range(256):  # labels plus pointers of one name are fewer
        if pos >= end:
            return -1
        n = data[pos]
        if n == 0:
            return pos + 1 if after < 0 else after
        if n & 0xC0 == 0xC0:
            if pos + 2 > end:
                return -1
            if after < 0:
                after = pos + 2
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if target >= limit:
                return -1
            pos = limit = target
            continue
        if n & 0xC0:  # 0x40 and 0x80: extended label types (RFC 6891 obsoleted them)
            return -1
        length += n + 1
        if length > 254:
            return -1
        pos += 1 + n
    return -1


# types whose rdata holds names: (fixed bytes before the first name, names, fixed after)
_NAMED_RDATA = {2: (0, 1, 0), 5: (0, 1, 0), 12: (0, 1, 0), 39: (0, 1, 0), 15: (2, 1, 0)}
_NAMED_RDATA |= {33: (6, 1, 0), TYPE_SOA: (0, 2, 20)}


_FIXED_RDATA = {1: 4, 28: 16}  # A, AAAA
TYPE_TXT = 16


def _rdata_ok(data: bytes, rtype: int, start: int, stop: int) -> bool:
    """Whether the rdata of a known type has its shape: the names in it valid and filling it
    exactly, an address of its size, TXT strings filling it (what a client's parser checks:
    a reply we relay must parse)."""
    shape = _NAMED_RDATA.get(rtype)
    if shape is None:
        size = _FIXED_RDATA.get(rtype)
        if size is not None:
            return stop - start == size
        if rtype == TYPE_TXT:
            pos = start
            while pos < stop:  # one or more length-prefixed strings
                pos += 1 + data[pos]
            return pos == stop and stop > start
        return True
    before, count, after = shape
    pos = start + before
    for _ in range(count):
        pos = skip_name(data, pos, stop)
        if pos < 0:
            return False
    return pos + after == stop


_ONE_RECORD = b"\x00\x01\x00\x01\x00\x00"  # bytes 4..10: one question, one answer, no authority
_ADDRESS_SIZES = {b"\x00\x01": 4, b"\x00\x1c": 16}  # A, AAAA by their type bytes


def scan(data: bytes, question_end: int = 0) -> Layout | None:
    """The layout of a message with exactly one question, or None when it is malformed.
    ``question_end``: the caller checked that the question is one it made (a valid name)
    and ends there, so it is not walked again.

    The most common upstream answer (one A or AAAA record owned by the question's name,
    no authority, at most a root-owned OPT after it) is read at fixed offsets; it gives the
    same Layout as the walk (``_walk``, which takes every other shape)."""
    q = question_end
    if q and data[4:10] == _ONE_RECORD and data[q : q + 2] == b"\xc0\x0c":
        size = _ADDRESS_SIZES.get(data[q + 2 : q + 4])
        stop = q + 12 + (size or 0)
        if size and stop <= len(data) and data[q + 10] == 0 and data[q + 11] == size:
            ar = (data[10] << 8) | data[11]
            ttl = _TTL.unpack_from(data, q + 6)[0]
            if ttl > MAX_TTL:
                ttl = 0
            if ar == 0:
                return Layout(
                    data[3] & 0xF, bool(data[2] & 0x02), q, q, stop, stop, stop,
                    (1, 0, 0), ((q + 6, ttl),), ttl, None, None, 0,
                )  # fmt: skip
            if ar == 1 and stop + 11 <= len(data) and data[stop : stop + 3] == b"\x00\x00\x29":
                opt_end = stop + 11 + ((data[stop + 9] << 8) | data[stop + 10])
                if opt_end <= len(data):
                    return Layout(
                        data[3] & 0xF, bool(data[2] & 0x02), q, q, stop, stop, opt_end,
                        (1, 0, 1), ((q + 6, ttl),), ttl, None, (stop, opt_end),
                        _TTL.unpack_from(data, stop + 5)[0],
                    )  # fmt: skip
    return _walk(data, question_end)


def _walk(data: bytes, question_end: int) -> Layout | None:
    """``scan`` of any shape: every record walked."""
    end = len(data)
    if end < HEADER or _U16.unpack_from(data, 4)[0] != 1:
        return None
    an, ns, ar = _COUNTS.unpack_from(data, 6)
    qname_end = question_end - 4 if question_end else skip_name(data, HEADER, end)
    if qname_end < 0 or qname_end + 4 > end:
        return None
    qend = qname_end + 4
    pos = qend
    starts = []
    ttls: list[tuple[int, int]] = []
    answer_ttl: int | None = None
    negative_ttl: int | None = None
    opt: tuple[int, int] | None = None
    opt_ttl = 0
    for section, count in enumerate((an, ns, ar)):
        starts.append(pos)
        for _ in range(count):
            start = pos
            if pos + 12 <= end and data[pos] == 0xC0 and data[pos + 1] == HEADER:
                pos += 2  # a pointer to the question's name (the usual owner): checked above
            elif pos + 11 <= end and data[pos] == 0:
                pos += 1  # the root (an OPT's owner)
            else:
                pos = skip_name(data, pos, end)
                if pos < 0 or pos + 10 > end:
                    return None
            rtype, _rclass, ttl, rdlength = _RR.unpack_from(data, pos)
            ttl_at = pos + 4
            pos += 10 + rdlength
            if pos > end:
                return None
            if rtype == TYPE_A:  # the usual record: its shape checked here, without a call
                if rdlength != 4:
                    return None
            elif rtype != TYPE_OPT and not _rdata_ok(data, rtype, pos - rdlength, pos):
                return None
            if rtype == TYPE_OPT:
                if section != 2 or opt is not None:
                    return None
                opt, opt_ttl = (start, pos), ttl
                continue
            if ttl > MAX_TTL:
                ttl = 0
            ttls.append((ttl_at, ttl))
            if section == 0:
                answer_ttl = ttl if answer_ttl is None else min(answer_ttl, ttl)
            elif section == 1 and rtype == TYPE_SOA and negative_ttl is None and rdlength >= 22:
                minimum = struct.unpack_from(">I", data, pos - 4)[0]
                negative_ttl = min(ttl, minimum if minimum <= MAX_TTL else 0)
    return Layout(  # positional: the fields' order (keywords cost more on this path)
        data[3] & 0xF,  # rcode
        bool(data[2] & 0x02),  # tc
        qend,
        starts[0],  # answer
        starts[1],  # authority
        starts[2],  # additional
        pos,  # end
        (an, ns, ar),  # counts
        tuple(ttls),
        answer_ttl,
        negative_ttl,
        opt,
        opt_ttl,
    )


def opt_record(payload: int, ext_rcode: int = 0) -> bytes:
    """An OPT record (RFC 6891 6.1.2): root owner, our payload size, version 0, no options."""
    return b"\x00\x00\x29" + payload.to_bytes(2, "big") + bytes((ext_rcode, 0, 0, 0, 0, 0))


@functools.lru_cache(maxsize=8)
def _opt(payload: int) -> bytes:
    """``opt_record(payload)``, made once per payload size (once per forwarded query else)."""
    return opt_record(payload)


def relay(
    query: bytes,
    qend: int,
    reply: bytes,
    layout: Layout,
    *,
    edns: bool,
    limit: int,
    advertise: int,
) -> tuple[bytes, int] | None:
    """``reply`` (an upstream's answer to the same question) re-addressed to ``query``, and
    the offset in ``reply`` where what was kept ends (every TTL before it was kept, at the same
    offset).

    The client's ID, RD and CD bits and question (its case) are copied in; the sections are
    copied as they are, which keeps every compression pointer valid because the header and
    the question keep their sizes (and so every TTL offset). The upstream's OPT is replaced by
    ours when the client sent one. Too long for ``limit``: the additional records go first,
    then (when there are answers) the authority records, and only when the answer section
    itself does not fit is TC set, with empty sections (RFC 2181 9). None when the layout does
    not allow copying (an OPT that is not the last record, an extended rcode).
    """
    if qend != layout.qend or layout.opt_ttl >> 24:
        return None
    an, ns, ar = layout.counts
    extra_end = layout.end
    if layout.opt is not None:
        if layout.opt[1] != layout.end:
            return None
        extra_end = layout.opt[0]
        ar -= 1
    flags = 0x80 | (query[2] & 0x01)  # QR, RD; never AA: the answer is not ours
    flags2 = 0x80 | (reply[3] & 0x20) | (query[3] & 0x10) | layout.rcode  # RA, AD, CD, rcode
    opt = _opt(advertise) if edns else b""
    head = query[:2] + bytes((flags, flags2)) + b"\x00\x01"
    question = query[HEADER:qend]
    if qend + (extra_end - layout.answer) + len(opt) <= limit:  # the usual case: all fits
        counts = _COUNTS.pack(an, ns, ar + (1 if opt else 0))
        return head + counts + question + reply[layout.answer : extra_end] + opt, extra_end
    choices = [(an, ns, 0, layout.additional)]
    if an:
        choices.append((an, 0, 0, layout.authority))
    for keep_an, keep_ns, keep_ar, cut in choices:
        if qend + (cut - layout.answer) + len(opt) <= limit:
            counts = _COUNTS.pack(keep_an, keep_ns, keep_ar + (1 if opt else 0))
            return head + counts + question + reply[layout.answer : cut] + opt, cut
    counts = _COUNTS.pack(0, 0, 1 if opt else 0)
    return query[:2] + bytes((flags | 0x02, flags2)) + b"\x00\x01" + counts + question + opt, 0
