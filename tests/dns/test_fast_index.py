"""The wire-form fast path against the general (dnslib) path: the same bytes wherever both answer.

The conformance tables run through both; hypothesis feeds random names, types, flags and EDNS
options (and random bytes) through both; the fast path must answer every standard question of
a name in the zone (in any case: 0x20 randomisation), and leave everything else to the
general path (None).
"""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPort, DnsService
from mesh.dns.fast_encode import wire_name
from mesh.dns.fast_index import FastIndex
from mesh.dns.responder import Forward, Reply, Responder
from mesh.dns.zone import ZoneIndex
from tests.dns.cases import CLUSTER, TABLES, Case, check, query

_PATHS: dict[int, tuple[Responder, FastIndex]] = {}


def paths(config: DnsConfig, max_udp: int = 4096) -> tuple[Responder, FastIndex]:
    key = hash((id(config), max_udp))
    if key not in _PATHS:
        index = ZoneIndex.build(config)
        _PATHS[key] = (Responder(index, max_udp=max_udp), FastIndex(index, max_udp=max_udp))
    return _PATHS[key]


def both(config: DnsConfig, data: bytes, *, tcp: bool = False, max_udp: int = 4096) -> Reply:
    """The fast path's reply, asserted equal to the general path's."""
    general, fast = paths(config, max_udp)
    ours = fast.answer(data, tcp=tcp)
    theirs = general.handle(data, tcp=tcp)
    assert isinstance(theirs, Reply)
    if theirs.chase is not None:  # an ExternalName leaving the zone: the server follows it
        assert ours is None
        return theirs
    assert ours is not None, data.hex()
    assert ours.wire == theirs.wire, (ours.wire.hex(), theirs.wire.hex())
    assert ours.label == theirs.label
    return ours


@pytest.mark.parametrize(("config", "case"), TABLES, ids=[c.id for _, c in TABLES])
@pytest.mark.parametrize("edns", [False, 0], ids=["plain", "edns"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_conformance_both_paths(config: DnsConfig, case: Case, edns: bool | int, tcp: bool) -> None:
    q = query(case, use_edns=edns)
    reply = both(config, q.to_wire(), tcp=tcp)
    parsed = dns.message.from_wire(reply.wire)
    assert parsed.id == q.id
    assert (parsed.edns >= 0) == (edns is not False)
    check(case, parsed)


def test_flags_echoed() -> None:
    for rd in (False, True):
        for cd in (False, True):
            q = dns.message.make_query("web.shop.svc.cluster.local.", "A")
            q.flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
            both(CLUSTER, q.to_wire())


@pytest.mark.parametrize(
    "data",
    [
        dns.message.make_query("web.shop.svc.cluster.local.", "ANY").to_wire(),
        dns.message.make_query("cluster.local.", "AXFR").to_wire(),
        dns.message.make_query("web.shop.svc.cluster.local.", "A", rdclass="CH").to_wire(),
        dns.message.make_query("web.shop.svc.cluster.local.", "A", use_edns=1).to_wire(),
        dns.message.make_query("example.org.", "A").to_wire(),  # forwarded
        dns.message.make_query("9.9.9.9.in-addr.arpa.", "PTR").to_wire(),  # not ours
        dns.message.make_query("web.shop.svc.cluster.local.", "A").to_wire() + b"x",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
        b"\x12\x34\x81\x00" + bytes(8),
    ],
    ids=[
        "any",
        "axfr",
        "chaos",
        "edns1",
        "external",
        "foreign-ptr",
        "trailing",
        "ptr",
        "qr",
    ],
)
def test_general_path_kept(data: bytes) -> None:
    assert paths(CLUSTER)[1].answer(data) is None


def test_mixed_case_answered_by_both_paths_with_the_case_echoed() -> None:
    reply = both(CLUSTER, dns.message.make_query("WeB.ShOp.svc.cluster.local.", "A").to_wire())
    assert b"\x03WeB\x04ShOp\x03svc" in reply.wire


def mixed_case(name: str, seed: int) -> str:
    """``name`` spelled as a resolver using 0x20 randomisation might: every letter whose bit
    in ``seed`` is set in upper case."""
    return "".join(c.upper() if seed >> (i % 31) & 1 else c for i, c in enumerate(name))


@pytest.mark.parametrize(("config", "case"), TABLES, ids=[c.id for _, c in TABLES])
@pytest.mark.parametrize("seed", [0x55555555, 0x2AAAAAAA, 0x7FFFFFFF], ids=["odd", "even", "all"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_conformance_both_paths_in_mixed_case(
    config: DnsConfig, case: Case, seed: int, tcp: bool
) -> None:
    """0x20 randomisation: the fast path answers from the index, the bytes equal the general
    path's, the case of the question is echoed, and the answer is the lower-case one."""
    q = dns.message.make_query(
        mixed_case(case.qname, seed), dns.rdatatype.from_text(case.qtype), use_edns=0
    )
    data = q.to_wire()
    reply = both(config, data, tcp=tcp)
    assert reply.wire[12 : len(data) - 11] == data[12 : len(data) - 11]  # the question as asked
    parsed = dns.message.from_wire(reply.wire)
    check(case, parsed)  # dnspython compares names case-insensitively


def _headless(n: int) -> DnsService:
    """A headless Service with ``n`` named endpoints: long SRV answers and additionals."""
    endpoints = tuple(
        DnsEndpoint(
            addresses=(f"10.{n}.{i // 200}.{i % 200 + 1}",),
            hostname=f"host-with-a-long-name-{i}",
            ports=(DnsPort(name="http", port=80),),
        )
        for i in range(n)
    )
    return DnsService(namespace="ns", name=f"h{n}", kind="Headless", endpoints=endpoints)


BIG = DnsConfig(version=3, services=tuple(_headless(n) for n in (5, 9, 12, 40, 200)))


@pytest.mark.parametrize("n", [5, 9, 12, 40, 200])
@pytest.mark.parametrize("edns", [False, 0, 1232], ids=["plain", "edns", "edns1232"])
@pytest.mark.parametrize("qtype", ["A", "SRV"])
def test_truncation_matches(n: int, edns: bool | int, qtype: str) -> None:
    """Too long for the client: the additional section goes first (RFC 2181 9), then TC."""
    name = (
        f"h{n}.ns.svc.cluster.local." if qtype == "A" else f"_http._tcp.h{n}.ns.svc.cluster.local."
    )
    payload = edns if isinstance(edns, int) and edns > 0 else 1232
    q = dns.message.make_query(
        name, qtype, use_edns=0 if edns is not False else False, payload=payload
    )
    for tcp in (False, True):
        reply = both(BIG, q.to_wire(), tcp=tcp)
        parsed = dns.message.from_wire(reply.wire)
        if tcp:
            assert not parsed.flags & dns.flags.TC
            assert sum(len(r) for r in parsed.answer) == n


def test_additional_dropped_before_tc() -> None:
    # 5 SRV records fit in 512 bytes; with their 5 addresses they do not.
    q = dns.message.make_query("_http._tcp.h5.ns.svc.cluster.local.", "SRV")
    assert len(both(BIG, q.to_wire(), tcp=True).wire) > 512
    parsed = dns.message.from_wire(both(BIG, q.to_wire()).wire)
    assert not parsed.flags & dns.flags.TC
    assert sum(len(r) for r in parsed.answer) == 5
    assert parsed.additional == []
    q = dns.message.make_query("_http._tcp.h40.ns.svc.cluster.local.", "SRV")
    parsed = dns.message.from_wire(both(BIG, q.to_wire()).wire)
    assert parsed.flags & dns.flags.TC
    assert parsed.answer == []


def test_small_max_udp() -> None:
    q = dns.message.make_query("h9.ns.svc.cluster.local.", "A", use_edns=0, payload=4096)
    both(BIG, q.to_wire(), max_udp=512)


def test_wire_name() -> None:
    assert wire_name("web.shop.") == b"\x03web\x04shop\x00"
    assert wire_name(".") == b"\x00"


# --- random questions through both paths --------------------------------------------------

LABELS = [
    "web", "shop", "svc", "pod", "cluster", "local", "db", "db-0", "10-1-0-12", "_http", "_tcp",
    "_pg", "ext", "alias", "dangling", "empty", "nowhere", "10-0-0-1", "fd00--1", "in-addr",
    "arpa", "5", "0", "10", "127", "dns-version", "x", "a-b", "999-1-1-1",
]  # fmt: skip
SUFFIXES = [
    "", "cluster.local.", "svc.cluster.local.", "shop.svc.cluster.local.",
    "shop.pod.cluster.local.", "pod.cluster.local.", "in-addr.arpa.", "db.shop.svc.cluster.local.",
    "example.org.",
]  # fmt: skip
TYPES = ["A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "SOA", "NS", "MX", "HTTPS", "ANY", "OPT"]

label = st.one_of(
    st.sampled_from(LABELS),
    st.text("abcz019-_", min_size=1, max_size=12),
    st.text("abcXYZ.\u00e9-", min_size=1, max_size=6),
)


@st.composite
def questions(draw: st.DrawFn) -> bytes:
    prefix = draw(st.lists(label, max_size=4))
    name = ".".join([*prefix, draw(st.sampled_from(SUFFIXES))]).strip(".") + "."
    if name == ".":
        name = "cluster.local."
    rtype = draw(st.one_of(st.sampled_from(TYPES), st.integers(1, 65535)))
    edns = draw(st.sampled_from([False, 0, 1]))
    options: list[dns.edns.Option] = []
    if edns is not False and draw(st.booleans()):
        options = [dns.edns.GenericOption(65001, draw(st.binary(max_size=16)))]  # type: ignore[arg-type]
    try:
        q = dns.message.make_query(
            name,
            dns.rdatatype.RdataType.make(rtype),
            use_edns=edns,
            payload=draw(st.sampled_from([512, 600, 1232, 4096])),
            options=options,
        )
    except Exception:  # a name dnspython refuses (too long, empty label)
        q = dns.message.make_query("cluster.local.", "A")
    q.id = draw(st.integers(0, 65535))
    q.flags = draw(st.sampled_from([0, 0x0100, 0x0010, 0x0110]))
    return q.to_wire()


@settings(max_examples=500, deadline=None)
@given(data=questions(), seed=st.integers(1, 2**31 - 1), tcp=st.booleans())
def test_random_mixed_case_questions_agree(data: bytes, seed: int, tcp: bool) -> None:
    """Whatever the fast path answers in lower case it answers in any case, with the same
    bytes as the general path."""
    msg = dns.message.from_wire(data)
    name = msg.question[0].name
    spelled = dns.name.from_text(mixed_case(name.to_text(), seed))
    if spelled != name or b"\\" in name.to_text().encode():
        return  # a label with escapes: respelling it is not only a change of case
    msg.question[0].name = spelled
    mixed = msg.to_wire()
    for config in (CLUSTER, BIG):
        general, fast = paths(config)
        ours = fast.answer(mixed, tcp=tcp)
        if fast.answer(data, tcp=tcp) is not None:
            assert ours is not None
        if ours is None:
            continue
        theirs = general.handle(mixed, tcp=tcp)
        assert isinstance(theirs, Reply)
        assert ours.wire == theirs.wire
        assert ours.label == theirs.label


@settings(max_examples=1500, deadline=None)
@given(data=questions(), tcp=st.booleans())
def test_random_questions_agree(data: bytes, tcp: bool) -> None:
    for config in (CLUSTER, BIG):
        general, fast = paths(config)
        ours = fast.answer(data, tcp=tcp)
        theirs = general.handle(data, tcp=tcp)
        if ours is None:
            continue
        assert isinstance(theirs, Reply)
        assert ours.wire == theirs.wire
        assert ours.label == theirs.label


@settings(max_examples=500, deadline=None)
@given(data=questions())
def test_lower_case_zone_names_take_the_fast_path(data: bytes) -> None:
    msg = dns.message.from_wire(data)
    name = msg.question[0].name.to_text()
    standard = (
        name.lower().endswith("cluster.local.")
        and msg.edns <= 0
        and msg.question[0].rdtype not in (0, 41, 251, 252, 255)
        and all(b"." not in lb and lb.isascii() for lb in msg.question[0].name.labels)
    )
    general, fast = paths(CLUSTER)
    theirs = general.handle(data)
    if standard and not (isinstance(theirs, Reply) and theirs.chase is not None):
        assert fast.answer(data) is not None


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=80), prefix=questions())
def test_random_bytes_agree(data: bytes, prefix: bytes) -> None:
    general, fast = paths(CLUSTER)
    for packet in (data, prefix[: len(data) % (len(prefix) + 1)] + data, prefix + data):
        ours = fast.answer(packet)
        if ours is not None:
            theirs = general.handle(packet)
            assert isinstance(theirs, Reply)
            assert ours.wire == theirs.wire


def forward_agrees(packet: bytes) -> bool:
    """Whether the wire classification forwards ``packet``; when it does, the general path
    forwards it too, with the same name key, type, EDNS and payload."""
    general, fast = paths(CLUSTER)
    ours = fast.forward(packet)
    # the UDP loop's one parse (``reply``) forwards exactly these, with the same fields
    looped = fast.reply(packet)
    assert isinstance(looped, Forward) == (ours is not None), packet.hex()
    if ours is None:
        return False
    assert isinstance(looped, Forward)
    assert (looped.wire_name, looped.qtype, looped.edns, looped.payload, looped.qend) == (
        ours.wire_name,
        ours.qtype,
        ours.edns,
        ours.payload,
        ours.qend,
    )
    theirs = general.handle(packet)
    assert isinstance(theirs, Forward), packet.hex()
    assert (ours.key, ours.qtype, ours.edns, ours.payload) == (
        theirs.key,
        theirs.qtype,
        theirs.edns,
        theirs.payload,
    )
    assert ours.query.key == theirs.query.key  # parsed on demand, for failure replies
    return True


@pytest.mark.parametrize(
    ("name", "rtype", "edns", "forwarded"),
    [
        ("example.org.", "A", -1, True),
        ("Example.ORG.", "AAAA", 0, True),
        ("a.b.c.d.example.com.", "MX", 0, True),
        ("9.9.9.9.in-addr.arpa.", "PTR", -1, True),  # a reverse name no Service has
        ("web.shop.svc.cluster.local.", "A", -1, False),  # the zone's
        ("nothing.cluster.local.", "A", 0, False),
        ("example.org.", "ANY", -1, False),  # the general path decides
        ("example.org.", "A", 1, False),  # BADVERS
        (".", "NS", -1, False),
    ],
)
def test_forward_classified_from_bytes(name: str, rtype: str, edns: int, forwarded: bool) -> None:
    q = dns.message.make_query(name, rtype, use_edns=edns)
    assert forward_agrees(q.to_wire()) is forwarded


@settings(max_examples=1000, deadline=None)
@given(data=questions(), junk=st.binary(max_size=40))
def test_random_forward_classification_agrees(data: bytes, junk: bytes) -> None:
    for packet in (data, data + junk, data[: len(junk)]):
        forward_agrees(packet)


@pytest.mark.parametrize("qname", ["kubernetes.default.svc.cluster.local.", "example.org."])
@pytest.mark.parametrize("declared", [4, 8, 300])
def test_an_opt_record_longer_than_the_packet_takes_the_general_path(
    qname: str, declared: int
) -> None:
    """An OPT record whose declared length runs past the end of the packet (a fuzzer found
    the option walk reading past it): neither the answer nor the forwarding classification
    takes it, and the general path answers it as the malformed query it is."""
    wire = dns.message.make_query(qname, "A", use_edns=0).to_wire()
    assert wire[-2:] == b"\x00\x00"  # the OPT record's RDLENGTH, no options
    cut = wire[:-2] + declared.to_bytes(2, "big") + b"\x00\x0a"[: declared % 3]
    general, fast = paths(CLUSTER)
    # the same packet with the length it really has is taken (the cut one is the only change)
    assert fast.answer(wire) is not None or fast.forward(wire) is not None
    assert fast.answer(cut) is None
    assert fast.forward(cut) is None
    assert fast.reply(cut) is None or not isinstance(fast.reply(cut), Forward)
    theirs = general.handle(cut)
    assert isinstance(theirs, Reply)
