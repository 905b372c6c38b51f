"""Pure parts of forwarding: RFC 2181 truncation of cluster answers, the upstream pool's
policies and health, and the wire-form forward cache (virtual clock)."""

from __future__ import annotations

import random
import struct

import dns.flags
import dns.message
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, TXT, A

from mesh.dns.forward_cache import ForwardCache, query_key
from mesh.dns.layout import scan
from mesh.dns.packet import Query, encode_reply, parse_query
from mesh.dns.pool import Pool
from tests.dns.test_layout import SOA, upstream


def parsed(payload: int | None) -> Query:
    msg = dns.message.make_query(
        "Srv.Example.", "SRV", use_edns=False if payload is None else 0, payload=payload or 512
    )
    query = parse_query(msg.to_wire())
    assert isinstance(query, Query)
    return query


def rrs(n: int, rtype: str, size: int = 0) -> list[RR]:
    if rtype == "A":
        return [RR("srv.example.", QTYPE.A, ttl=5, rdata=A(f"10.0.0.{i}")) for i in range(n)]
    return [RR("srv.example.", QTYPE.TXT, ttl=5, rdata=TXT("x" * size)) for _ in range(n)]


@pytest.mark.parametrize(
    ("payload", "answer", "authority", "additional", "tc", "counts"),
    [
        (None, 2, 0, 2, False, (2, 0, 2)),  # everything fits
        (None, 2, 0, 40, False, (2, 0, 0)),  # additional dropped, no TC
        (1232, 2, 0, 40, False, (2, 0, 41)),  # a larger client gets it all (OPT counted)
        (None, 40, 0, 0, True, (0, 0, 0)),  # the answer itself does not fit: TC
        (1232, 40, 0, 0, False, (40, 0, 1)),
        (None, 1, 30, 0, False, (1, 0, 0)),  # authority dropped when there are answers
        (None, 0, 1, 40, False, (0, 1, 0)),  # negative: the SOA stays, the extras go
    ],
)
def test_cluster_replies_truncate_per_rfc_2181(
    payload: int | None,
    answer: int,
    authority: int,
    additional: int,
    tc: bool,
    counts: tuple[int, int, int],
) -> None:
    query = parsed(payload)
    limit = query.payload
    wire = encode_reply(
        query,
        0,
        answer=rrs(answer, "A"),
        authority=rrs(authority, "TXT", 20),
        additional=rrs(additional, "A"),
        limit=limit,
        advertise=1232,
    )
    assert len(wire) <= limit
    msg = dns.message.from_wire(wire)
    assert bool(msg.flags & dns.flags.TC) == tc
    assert struct.unpack_from(">HHH", wire, 6) == counts


# --- the pool ------------------------------------------------------------------------------

UPSTREAMS = [("127.0.0.1", 53), ("127.0.0.2", 53), ("127.0.0.3", 53)]


def test_sequential_and_round_robin_orders() -> None:
    assert Pool(UPSTREAMS, policy="sequential").order() == [0, 1, 2]
    rr = Pool(UPSTREAMS, policy="round_robin")
    assert [rr.order() for _ in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_random_order_uses_every_upstream_first() -> None:
    pool = Pool(UPSTREAMS, policy="random", rng=random.Random(7))
    firsts = {pool.order()[0] for _ in range(60)}
    assert firsts == {0, 1, 2}


@pytest.mark.parametrize(
    ("max_fails", "failures", "order", "down"),
    [
        (2, [0], [0, 1, 2], []),  # one failure: still up
        (2, [0, 0], [1, 2, 0], [0]),  # max_fails reached: last in line
        (2, [0, 0, 1, 1, 2, 2], [0, 1, 2], [0, 1, 2]),  # all down: all still tried
        (0, [0, 0, 0], [0, 1, 2], []),  # 0: never marked down
    ],
)
def test_health_bookkeeping(
    max_fails: int, failures: list[int], order: list[int], down: list[int]
) -> None:
    pool = Pool(UPSTREAMS, policy="sequential", max_fails=max_fails)
    for i in failures:
        pool.failed(i)
    assert pool.order() == order
    assert pool.unhealthy() == down
    if down:
        assert pool.succeeded(down[0]) and down[0] not in pool.unhealthy()


def test_pool_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown upstream policy"):
        Pool(UPSTREAMS, policy="fastest")
    with pytest.raises(ValueError, match="max_fails"):
        Pool(UPSTREAMS, max_fails=-1)


# --- the wire-form cache -------------------------------------------------------------------

A_REC = ("example.com.", 300, "A", "192.0.2.1")


def put(cache: ForwardCache, key: bytes, wire: bytes, now: float) -> bool:
    layout = scan(wire)
    assert layout is not None
    ttl = cache.keep_for(layout)
    return cache.put(key, wire, layout.ttls, layout.qend, ttl=ttl, now=now) is not None


@pytest.mark.parametrize(
    ("wire", "kept"),
    [
        (upstream(answer=[A_REC]), 300),
        (upstream(answer=[("example.com.", 86400, "A", "192.0.2.1")]), 3600),  # capped
        (upstream(rcode=3, authority=[("example.", 3600, "SOA", SOA)]), 30),  # SOA minimum
        (upstream(rcode=3, authority=[("example.", 9000, "SOA", SOA.replace("30", "9000"))]), 300),
        (upstream(rcode=3), 0),
        (upstream(rcode=2), 0),
        (upstream(answer=[("example.com.", 0, "A", "192.0.2.1")]), 0),
    ],
)
def test_how_long_answers_are_kept(wire: bytes, kept: int) -> None:
    layout = scan(wire)
    assert layout is not None
    assert ForwardCache().keep_for(layout) == kept


def test_lru_eviction_by_entries_keeps_the_recently_used() -> None:
    cache = ForwardCache(max_entries=2)
    wire = upstream(answer=[A_REC])
    put(cache, b"a", wire, 0.0)
    put(cache, b"b", wire, 0.0)
    assert cache.get(b"a", 1.0) is not None  # a is now the most recently used
    put(cache, b"c", wire, 1.0)
    assert b"a" in cache and b"c" in cache and b"b" not in cache
    assert len(cache) == 2


def test_eviction_by_bytes() -> None:
    wire = upstream(answer=[A_REC])
    cache = ForwardCache(max_bytes=3 * (len(wire) + 200))
    for key in (b"1", b"2", b"3", b"4"):
        put(cache, key, wire, 0.0)
    assert len(cache) == 3 and b"1" not in cache
    assert cache.bytes <= cache.max_bytes


def test_expiry_and_the_stale_window() -> None:
    cache = ForwardCache(serve_stale=60)
    put(cache, b"k", upstream(answer=[A_REC]), 0.0)
    assert cache.get(b"k", 299.0) is not None and cache.stale(b"k", 299.0) is None
    assert cache.get(b"k", 300.0) is None
    assert cache.stale(b"k", 330.0) is not None
    assert cache.get(b"k", 360.0) is None and b"k" not in cache  # gone after the window


def test_hot_path_answer_copies_id_and_case_and_ages_ttls() -> None:
    cache = ForwardCache()
    stored = dns.message.make_query("example.com.", "A", use_edns=False)
    reply = dns.message.make_response(stored)
    reply.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "192.0.2.1"))
    wire = reply.to_wire()
    layout = scan(wire)
    key = query_key(stored.to_wire())
    assert layout is not None and key is not None
    cache.put(key, wire, layout.ttls, layout.qend, ttl=300, now=0.0, label=("A", "NOERROR"))
    ask = dns.message.make_query("EXAMPLE.com.", "A", use_edns=False)
    ask.flags = stored.flags
    hit = cache.answer(ask.to_wire(), ask.to_wire()[2:], 42.7)
    assert hit is not None and hit[1] == ("A", "NOERROR")
    msg = dns.message.from_wire(hit[0])
    assert msg.id == ask.id and msg.question[0].name.to_text() == "EXAMPLE.com."
    assert msg.answer[0].ttl == 258
    lower = dns.message.make_query("example.com.", "A", use_edns=False)
    lower.flags = stored.flags
    hit = cache.answer(lower.to_wire(), lower.to_wire()[2:], 43.0)
    assert hit is not None and hit[0][:2] == lower.to_wire()[:2]
    assert dns.message.from_wire(hit[0]).answer[0].ttl == 257
    assert cache.answer(ask.to_wire(), ask.to_wire()[2:], 300.0) is None  # expired
    other = dns.message.make_query("example.com.", "AAAA", use_edns=False)
    assert cache.answer(other.to_wire(), other.to_wire()[2:], 1.0) is None
    junk = b"\x01" * 30  # no name end: a miss, not an error
    assert cache.answer(junk, junk[2:], 1.0) is None
    assert dns.rdatatype.A == msg.answer[0].rdtype


def test_an_upstream_answer_dnslib_cannot_decode_is_a_servfail_counted_as_malformed() -> None:
    """An extended rcode (no wire copy: decoded and encoded again) in a message whose CNAME
    target has a label that is no text: the upstream's fault, a SERVFAIL, never an internal
    error."""
    from mesh.dns.forwarding import ForwardPath
    from mesh.dns.metrics import DnsMetrics
    from mesh.dns.responder import Forward, Responder
    from mesh.dns.upstream import Answer, Forwarder
    from mesh.dns.zone import ZoneIndex
    from tests.dns.cases import CLUSTER

    wire = bytes.fromhex(
        "ea9981000001000200010001026e30076578616d706c65036f72670000010001c00c0005000100"
        "00003c000b0180076578616d706c6500c02c000100010000003c0004c0000207c02e0002000100"
        "00003c0005026e73c02e00002900002000000000000000"
    )
    query = bytes.fromhex(
        "d3b701000001000000000001026e30074578616d706c65036f7267000001000100002904d0000000000000"
    )
    layout = scan(wire)
    assert layout is not None and layout.opt_ttl >> 24  # the shape is valid; the rcode is not
    metrics = DnsMetrics()
    path = ForwardPath(
        Forwarder([], metrics=metrics), ForwardCache(), metrics, max_udp=1232, clock=lambda: 0.0
    )
    responder = Responder(ZoneIndex.build(CLUSTER))
    qend = 12 + 16 + 4
    parsed = parse_query(query)
    assert isinstance(parsed, Query)
    fwd = Forward(parsed)
    got = Answer(wire, layout, layout.ttls, 0)
    reply, label = path.reply_udp(fwd, query, qend, got, responder)
    assert reply[:2] == query[:2] and reply[3] & 0xF == 2  # SERVFAIL
    assert label[1] == "SERVFAIL"
    assert metrics.forward_errors == {"malformed": 1}
    tcp = path.reply(fwd, query, qend, got, responder, tcp=True)
    assert tcp.wire[3] & 0xF == 2 and metrics.forward_errors == {"malformed": 2}
