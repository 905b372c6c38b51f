"""The TTL-offset walker and the wire relay: tables over real upstream messages, and
arbitrary or mutated packets that must never crash it or make it write outside a packet."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.dns.forward_cache import with_ttls
from mesh.dns.layout import opt_record, relay, scan

SOA = "ns.example. host.example. 1 7200 900 86400 30"


def upstream(
    name: str = "example.com.",
    *,
    answer: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
    authority: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
    additional: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
    rcode: int = 0,
    edns: bool = True,
    tc: bool = False,
) -> bytes:
    query = dns.message.make_query(name, "A", use_edns=0 if edns else False)
    msg = dns.message.make_response(query)
    msg.set_rcode(dns.rcode.Rcode(rcode))
    if tc:
        msg.flags |= dns.flags.TC
    for section, rows in ((msg.answer, answer), (msg.authority, authority)):
        for owner, ttl, rtype, text in rows:
            section.append(dns.rrset.from_text(owner, ttl, "IN", rtype, text))
    for owner, ttl, rtype, text in additional:
        msg.additional.append(dns.rrset.from_text(owner, ttl, "IN", rtype, text))
    return msg.to_wire()


A = ("example.com.", 300, "A", "192.0.2.1")


@pytest.mark.parametrize(
    ("wire", "ttls", "cache_ttl"),
    [
        (upstream(answer=[A]), [300], 300),
        (upstream(answer=[A, ("example.com.", 60, "A", "192.0.2.2")]), [300, 60], 60),
        (
            upstream(answer=[("example.com.", 120, "CNAME", "x.example."), A]),
            [120, 300],
            120,
        ),
        (upstream(rcode=3, authority=[("example.", 3600, "SOA", SOA)]), [3600], 30),
        (upstream(rcode=3, authority=[("example.", 10, "SOA", SOA)]), [10], 10),
        (upstream(authority=[("example.", 3600, "SOA", SOA)]), [3600], 30),  # NODATA
        (upstream(rcode=3), [], None),  # negative without an SOA: not cached
        (upstream(rcode=2), [], None),  # SERVFAIL
        (upstream(answer=[A], tc=True), [300], None),
        (upstream(answer=[("example.com.", 2**31 + 5, "A", "192.0.2.1")]), [0], 0),
        (
            upstream(answer=[A], additional=[("ns.example.", 77, "A", "192.0.2.53")], edns=False),
            [300, 77],
            300,
        ),
    ],
)
def test_scan_finds_every_ttl(wire: bytes, ttls: list[int], cache_ttl: int | None) -> None:
    layout = scan(wire)
    assert layout is not None
    assert [t for _, t in layout.ttls] == ttls
    for offset, ttl in layout.ttls:
        assert min(struct.unpack_from(">I", wire, offset)[0], 0x7FFFFFFF) in (ttl, 0x7FFFFFFF)
    assert layout.cache_ttl() == cache_ttl
    assert layout.end == len(wire)


def test_scan_skips_the_opt_record() -> None:
    wire = upstream(answer=[A])
    layout = scan(wire)
    assert layout is not None and layout.opt is not None
    assert layout.opt[1] == len(wire) and wire[layout.opt[0]] == 0


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x00" * 11,
        upstream(answer=[A])[:-3],  # cut inside the OPT
        upstream(answer=[A])[:40],  # cut inside a record
        b"\x00\x00\x81\x80\x00\x02" + b"\x00" * 6,  # two questions
        b"\x00\x00\x81\x80\x00\x01\x00\x05\x00\x00\x00\x00\x03com\x00\x00\x01\x00\x01",  # lies
        b"\x00\x00\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
    ],
)
def test_scan_refuses_malformed(wire: bytes) -> None:
    layout = scan(wire)
    if layout is not None:  # a pointer as the question name is skipped, never followed
        assert layout.end <= len(wire)
    assert scan(wire[:11]) is None


def client(name: str = "Example.COM.", *, edns: bool = True, payload: int = 1232) -> bytes:
    msg = dns.message.make_query(name, "A", use_edns=0 if edns else False, payload=payload)
    msg.id = 0x4242
    return msg.to_wire()


def test_relay_copies_id_case_and_sections() -> None:
    wire = upstream(answer=[A])
    layout = scan(wire)
    query = client()
    assert layout is not None
    out = relay(query, layout.qend, wire, layout, edns=True, limit=1232, advertise=4096)
    assert out is not None
    msg = dns.message.from_wire(out[0])
    assert msg.id == 0x4242 and msg.question[0].name.to_text() == "Example.COM."
    assert msg.answer[0].name.to_text() == "Example.COM."  # a pointer to the question
    assert [r.to_text() for r in msg.answer[0]] == ["192.0.2.1"]
    assert msg.payload == 4096 and not msg.flags & dns.flags.AA


BIG_ANSWER = [("example.com.", 300, "A", f"192.0.2.{i}") for i in range(1, 40)]
BIG_EXTRA = [("ns.example.", 300, "TXT", '"' + "x" * 250 + '" "' + "y" * 250 + '"')]
NS = [("example.com.", 300, "NS", "ns.example.")]


@pytest.mark.parametrize(
    ("rows", "limit", "tc", "sections"),
    [
        ({"answer": [A], "additional": BIG_EXTRA}, 512, False, (1, 0, 1)),  # extra dropped
        ({"answer": [A], "additional": BIG_EXTRA}, 1232, False, (1, 0, 2)),
        ({"answer": [A], "authority": NS, "additional": BIG_EXTRA}, 100, False, (1, 1, 1)),
        ({"answer": [A], "authority": NS, "additional": BIG_EXTRA}, 70, False, (1, 0, 1)),
        ({"answer": [A], "authority": NS}, 110, False, (1, 1, 1)),
        ({"answer": BIG_ANSWER}, 512, True, (0, 0, 1)),  # the answer itself does not fit
        ({"answer": BIG_ANSWER}, 1232, False, (39, 0, 1)),
    ],
)
def test_relay_truncates_per_rfc_2181(
    rows: dict[str, list[tuple[str, int, str, str]]],
    limit: int,
    tc: bool,
    sections: tuple[int, ...],
) -> None:
    wire = upstream(**rows)  # type: ignore[arg-type]
    layout = scan(wire)
    query = client()
    assert layout is not None
    out = relay(query, layout.qend, wire, layout, edns=True, limit=limit, advertise=1232)
    assert out is not None and len(out[0]) <= limit
    msg = dns.message.from_wire(out[0])
    assert bool(msg.flags & dns.flags.TC) == tc
    counts = struct.unpack_from(">HHH", out[0], 6)
    assert counts == sections


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = draw(
        st.sampled_from(
            [
                upstream(answer=[A]),
                upstream(answer=BIG_ANSWER[:3], authority=NS, additional=BIG_EXTRA),
                upstream(rcode=3, authority=[("example.", 3600, "SOA", SOA)]),
                upstream(answer=[("example.com.", 9, "CNAME", "x.example."), A], edns=False),
            ]
        )
    )
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if kind == "flip":
            data[i] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[i:]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i]
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.binary(max_size=700), mutated()), st.integers(0, 2**32 - 1))
def test_walker_never_crashes_or_writes_outside(data: bytes, age: int) -> None:
    layout = scan(data)
    if layout is None:
        return
    assert 12 <= layout.qend <= layout.answer <= layout.authority <= layout.additional
    assert layout.additional <= layout.end <= len(data)
    for offset, ttl in layout.ttls:
        assert layout.qend <= offset and offset + 4 <= layout.end
        assert 0 <= ttl <= 0x7FFFFFFF
    aged = with_ttls(data, layout.ttls, age % 100_000)
    assert len(aged) == len(data)
    touched = {o + k for o, _ in layout.ttls for k in range(4)}
    assert all(aged[i] == data[i] for i in range(len(data)) if i not in touched)
    query = client(edns=False)
    if layout.qend == len(query):
        out = relay(query, layout.qend, data, layout, edns=False, limit=512, advertise=512)
        assert out is None or len(out[0]) <= 512


def test_opt_record_is_well_formed() -> None:
    msg = dns.message.make_query("example.com.", "A", use_edns=False)
    wire = msg.to_wire()
    wire = wire[:10] + b"\x00\x01" + wire[12:] + opt_record(1232)
    parsed = dns.message.from_wire(wire)
    assert parsed.edns == 0 and parsed.payload == 1232


LONG_NAME = (b"\x3f" + b"a" * 63) * 4 + b"\x00"


def _with_answer(rdata_type: int, rdata: bytes, owner: bytes = b"\xc0\x0c") -> bytes:
    question = b"\x07example\x03com\x00\x00\x01\x00\x01"
    header = b"\x00\x00\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    record = owner + struct.pack(">HHIH", rdata_type, 1, 60, len(rdata)) + rdata
    return header + question + record


@pytest.mark.parametrize(
    ("wire", "valid"),
    [
        (_with_answer(1, bytes(4)), True),
        (_with_answer(5, b"\x01x\xc0\x0c"), True),  # CNAME x.example.com.
        (_with_answer(5, b"\x01x\xc0\x40"), False),  # a pointer forwards
        (_with_answer(5, b"\x01x\xc0\x0c\x00"), False),  # rdata longer than the name
        (_with_answer(5, b"\x41x\x00"), False),  # an unknown label type
        (_with_answer(1, bytes(4), owner=b"\xc0\xff"), False),  # owner points past itself
        (_with_answer(15, b"\x00\x0a\xc0\x0c"), True),  # MX
        (_with_answer(15, b"\xc0\x0c"), False),  # MX without its preference
        (_with_answer(6, b"\xc0\x0c\xc0\x0c" + bytes(20)), True),  # SOA
        (_with_answer(6, b"\xc0\x0c\xc0\x0c" + bytes(19)), False),
        (_with_answer(5, LONG_NAME), False),  # a name of 257 bytes
        (_with_answer(1, bytes(5)), False),  # an IPv4 address of 5 bytes
        (_with_answer(28, bytes(16)), True),  # AAAA
        (_with_answer(28, bytes(4)), False),
        (_with_answer(16, b"\x02hi\x00"), True),  # TXT "hi" ""
        (_with_answer(16, b"\x05hi"), False),  # a string longer than the rdata
        (_with_answer(16, b""), False),  # TXT holds at least one string
        (_with_answer(65280, b"\x05hi"), True),  # a type we do not know: opaque
    ],
)
def test_names_in_records_are_checked(wire: bytes, valid: bool) -> None:
    assert (scan(wire) is not None) == valid
    if valid:
        dns.message.from_wire(wire)  # what we accept, a resolver library accepts


def _address_reply(rtype: str, text: str, *, edns: bool, options: bool = False) -> bytes:
    query = dns.message.make_query("example.com.", rtype, use_edns=0 if edns else False)
    msg = dns.message.make_response(query)
    if options:
        msg.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")])
    msg.answer.append(dns.rrset.from_text("example.com.", 300, "IN", rtype, text))
    return msg.to_wire()


ONE_ADDRESS = [
    _address_reply("A", "192.0.2.1", edns=True),
    _address_reply("A", "192.0.2.1", edns=False),
    _address_reply("AAAA", "2001:db8::1", edns=True),
    _address_reply("AAAA", "2001:db8::1", edns=True, options=True),
]
QEND = 12 + len(b"\x07example\x03com\x00") + 4


@pytest.mark.parametrize("wire", ONE_ADDRESS)
def test_one_address_is_read_at_fixed_offsets_as_the_walk_reads_it(
    wire: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mesh.dns import layout as module

    walk = module._walk
    walked: list[bytes] = []

    def counted(data: bytes, question_end: int) -> module.Layout | None:
        walked.append(data)
        return walk(data, question_end)

    monkeypatch.setattr(module, "_walk", counted)
    layout = scan(wire, QEND)
    assert walked == []  # read at fixed offsets
    assert layout is not None and layout == walk(wire, QEND) == scan(wire)
    assert layout.counts[0] == 1 and layout.ttls == ((QEND + 6, 300),)


@settings(max_examples=800, deadline=None)
@given(
    st.sampled_from(ONE_ADDRESS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
    st.integers(0, 12),
    st.binary(max_size=4),
)
def test_the_fixed_offset_read_agrees_with_the_walk(
    wire: bytes, flips: list[tuple[int, int]], cut: int, extra: bytes
) -> None:
    """Any byte changed, the end cut or bytes added: the same Layout, or None, both ways."""
    from mesh.dns.layout import _walk

    data = bytearray(wire)
    for i, value in flips:
        if QEND <= i < len(data) or 2 <= i < 12:  # the question is the caller's (matched)
            data[i] = value
    mutated = bytes(data[: len(data) - cut]) + extra
    assert scan(mutated, QEND) == _walk(mutated, QEND)
