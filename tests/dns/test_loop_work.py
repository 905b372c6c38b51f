"""The work the UDP loop does per query, pinned without timings: which path answers, what each
cache holds afterwards. The loop's batch (``DnsServer._drain``) runs on real loopback sockets,
driven here without trio."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from mesh.dns import fast_index
from mesh.dns.fast_index import FastIndex
from mesh.dns.server import DnsServer
from mesh.dns.wire_cache import REFRESH, NegativeCache
from mesh.dns.zone import ZoneIndex
from tests.dns.cases import CLUSTER

HOST = "127.0.0.1"
DEADLINE = 5.0  # seconds a test waits for its replies


class Loop:
    """A configured server whose UDP loop is driven one batch at a time, counting the
    queries it hands to the general path (``_udp_miss``)."""

    def __init__(self, server: DnsServer, sock: socket.socket, client: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.client = client
        self.general: list[bytes] = []
        miss = server._udp_miss

        def counted(sock: socket.socket, data: bytes, addr: Any, *args: Any) -> None:
            self.general.append(data)
            miss(sock, data, addr, *args)

        server._udp_miss = counted  # type: ignore[method-assign,assignment]

    def ask(self, packets: Sequence[bytes]) -> list[bytes]:
        """Send ``packets``, run batches until as many replies came back (bounded in time)."""
        address = self.sock.getsockname()
        replies: list[bytes] = []
        deadline = time.monotonic() + DEADLINE
        for k in range(0, len(packets), 32):  # below the socket buffers
            for p in packets[k : k + 32]:
                self.client.sendto(p, address)
            want = min(k + 32, len(packets))
            while len(replies) < want and time.monotonic() < deadline:
                self.server._drain(self.sock, 64)
                while True:
                    try:
                        replies.append(self.client.recv(65535))
                    except BlockingIOError:
                        break
        assert len(replies) == len(packets)
        return replies

    def counter(self, family: str, cache: str) -> float | None:
        return self.server.registry.get_sample_value(
            f"mesh_dns_cache_{family}_total", {"cache": cache}
        )


@contextmanager
def loop(**options: Any) -> Iterator[Loop]:
    server = DnsServer((HOST, 0), [], **options)
    server.apply(CLUSTER)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        sock.bind((HOST, 0))
        sock.setblocking(False)
        client.bind((HOST, 0))
        client.setblocking(False)
        yield Loop(server, sock, client)


def query(name: str, qtype: str = "A", qid: int = 0x1234) -> bytes:
    q = dns.message.make_query(name, dns.rdatatype.from_text(qtype))
    q.id = qid
    return q.to_wire()


def check_nxdomain(packets: Sequence[bytes], replies: Sequence[bytes]) -> None:
    got = {}
    for wire in replies:
        reply = dns.message.from_wire(wire)
        got[(reply.id, reply.question[0].name.to_text())] = reply
    for p in packets:
        q = dns.message.from_wire(p)
        reply = got[(q.id, q.question[0].name.to_text())]
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.authority[0].rdtype == dns.rdatatype.SOA


# Made-up names under a name the zone has (a random-subdomain flood, a single label under a
# search domain), in both types and with 0x20 case, first-time each.
FLOOD = (
    [
        query(f"r{i}-{i * 7919 % 10007}.shop.svc.cluster.local.", qtype, qid=i)
        for i in range(150)
        for qtype in ("A", "AAAA")
    ]
    + [query(f"x{i}.cluster.local.", qid=i) for i in range(50)]
    + [query(f"Rnd{i}.svc.cluster.local.", qid=i) for i in range(50)]
)


def test_a_flood_of_made_up_names_is_answered_from_the_index_and_kept_nowhere() -> None:
    with loop() as lp:
        web = query("web.shop.svc.cluster.local.")
        lp.ask([web])
        live = lp.server._live
        kept = dict(live.cache.entries)
        assert len(kept) == 1
        replies = lp.ask(FLOOD)
        check_nxdomain(FLOOD, replies)
        assert lp.general == []  # every one answered inline by the FastIndex
        assert live.cache.entries == kept  # the wire cache neither grew nor lost its entry
        assert len(live.negative) == 0
        assert lp.counter("misses", "wire") == 1 + len(FLOOD)
        assert lp.counter("hits", "wire") is None or lp.counter("hits", "wire") == 0
        lp.ask([web])
        assert lp.counter("hits", "wire") == 1


def test_search_path_expansions_of_dotted_names_are_kept_and_asked_again_from_the_cache() -> None:
    names = [
        f"{host}.{suffix}"
        for host in ("example.com", "api.example.org")
        for suffix in ("shop.svc.cluster.local.", "svc.cluster.local.", "cluster.local.")
    ]
    packets = [query(name, qtype) for name in names for qtype in ("A", "AAAA")]
    with loop() as lp:
        first = lp.ask(packets)
        check_nxdomain(packets, first)
        live = lp.server._live
        assert len(live.negative) == len(packets) and len(live.cache) == 0
        again = lp.ask([p[:1] + b"\x99" + p[2:] for p in packets])  # other IDs
        assert sorted(r[2:] for r in again) == sorted(r[2:] for r in first)
        assert lp.counter("hits", "wire") == len(packets)
        assert lp.general == []


def test_the_negative_cache_admits_while_it_has_room_and_evicts_nothing() -> None:
    packets = [query(f"host{i}.example.com.shop.svc.cluster.local.") for i in range(7)]
    with loop(wire_cache_size=4) as lp:
        lp.ask(packets)
        negative = lp.server._live.negative.entries
        assert set(negative) == {p[2:] for p in packets[:4]}  # the first four, and only
        lp.ask(packets[:4])
        assert lp.counter("hits", "wire") == 4
        lp.ask(packets[4:])  # still answered, from the index
        assert set(negative) == {p[2:] for p in packets[:4]}


def test_a_full_negative_cache_is_emptied_after_it_stayed_full() -> None:
    cache = NegativeCache(2)
    assert cache.room(0.0) == 2
    cache.entries[b"a"] = (b"", ("A", "NXDOMAIN"))
    cache.entries[b"b"] = (b"", ("A", "NXDOMAIN"))
    assert cache.room(10.0) == 0  # full since 10 s
    assert cache.room(10.0 + REFRESH / 2) == 0
    assert len(cache) == 2
    assert cache.room(10.0 + REFRESH) == 2
    assert len(cache) == 0
    assert NegativeCache(0).room(1e9) == 0  # a cache of size 0 never takes anything


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("web.shop.svc.cluster.local.", True),  # an answer: the wire cache
        ("r1.shop.svc.cluster.local.", None),  # NXDOMAIN under a known parent: nowhere
        ("r1.cluster.local.", None),
        ("x.ext.shop.svc.cluster.local.", None),  # under an ExternalName: NXDOMAIN too
        ("a.b.shop.svc.cluster.local.", False),  # walked: the negative cache
        ("example.com.svc.cluster.local.", False),
        ("R1.shop.svc.cluster.local.", None),  # 0x20 case: nowhere
        ("Example.com.svc.cluster.local.", None),
    ],
)
def test_which_cache_may_keep_a_fast_reply(name: str, kept: bool | None) -> None:
    fast = FastIndex(ZoneIndex.build(CLUSTER))
    got = fast.reply(query(name))
    assert isinstance(got, tuple)
    assert got[2] is kept
    assert got[0][:2] == b"\x12\x34"  # the whole reply, the query's ID in front


class _Counted:
    """A FastIndex whose ``reply`` calls are counted (the loop reads these four names)."""

    def __init__(self, fast: FastIndex) -> None:
        self.fast = fast
        self.flood = fast.flood
        self.nodes = fast.nodes
        self.zone_wire = fast.zone_wire
        self.calls = 0

    def reply(self, data: bytes, tcp: bool = False) -> Any:
        self.calls += 1
        return self.fast.reply(data, tcp)


def raw_query(name: bytes, qtype: int = 1, qid: int = 0x4242, opt: bytes = b"") -> bytes:
    """A query of the wire name ``name`` as given (labels a text form would escape)."""
    counts = b"\x00\x01\x00\x00\x00\x00\x00\x01" if opt else b"\x00\x01\x00\x00\x00\x00\x00\x00"
    return qid.to_bytes(2, "big") + b"\x01\x00" + counts + name + bytes((0, qtype, 0, 1)) + opt


_TAIL = b"\x04shop\x03svc\x07cluster\x05local\x00"
_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


# Queries of the shape the flood below primes (a three-byte first label under shop.svc), each
# answered by the loop exactly as the FastIndex's ``reply`` (or the general path) answers it.
SAME_SHAPE = [
    raw_query(b"\x03zzz" + _TAIL),  # made up: NXDOMAIN
    raw_query(b"\x03web" + _TAIL),  # a Service of that label length: its answer
    raw_query(b"\x03WeB" + _TAIL),  # the same in 0x20 case
    raw_query(b"\x03a.b" + _TAIL),  # a dot inside the label: the general path
    raw_query(b"\x03a\x00b" + _TAIL),  # a zero byte inside it
    raw_query(b"\x03\xe9ab" + _TAIL),  # not ASCII
    raw_query(b"\x03q-9" + _TAIL, qtype=28),  # another type: its own shape
    raw_query(b"\x03q_9" + _TAIL, opt=_OPT),  # EDNS: its own shape
    raw_query(b"\x03zzz" + _TAIL.upper()),  # the parent in upper case
]


def test_a_flood_of_one_shape_is_answered_inline_after_its_first_query() -> None:
    with loop() as lp:
        live = lp.server._live
        assert live.fast is not None
        counted = _Counted(live.fast)
        object.__setattr__(live, "fast", counted)  # the loop reads it once per batch
        packets = [raw_query(b"\x03r%02d" % i + _TAIL, qid=i) for i in range(60)]
        replies = lp.ask(packets)
        check_nxdomain(packets, replies)
        assert counted.calls == 1  # the first made the shape's key; the rest: no call
        assert len(counted.flood) == 1
        assert lp.general == []
        assert len(live.cache) == 0 and len(live.negative) == 0
        assert lp.counter("misses", "wire") == len(packets)


@pytest.mark.parametrize("packet", SAME_SHAPE)
def test_the_inline_flood_answer_is_the_fast_index_answer(packet: bytes) -> None:
    with loop() as lp:
        lp.ask([raw_query(b"\x03r00" + _TAIL), raw_query(b"\x03r00" + _TAIL.upper())])
        for qtype, opt in ((28, b""), (1, _OPT)):
            lp.ask([raw_query(b"\x03r00" + _TAIL, qtype=qtype, opt=opt)])
        live = lp.server._live
        assert live.fast is not None and len(live.fast.flood) == 4
        (got,) = lp.ask([packet])
        fresh = FastIndex(ZoneIndex.build(CLUSTER))  # no flood keys: ``reply`` decides
        expected = fresh.reply(packet)
        if isinstance(expected, tuple):
            assert got == expected[0]
            assert live.fast.flood_reply(packet) in (None, expected[:2])
        else:  # the general path's answer, not an NXDOMAIN made inline
            assert live.fast.flood_reply(packet) is None
            assert lp.general == [packet]
            assert got == live.responder.handle(packet, tcp=False).wire  # type: ignore[union-attr]


def test_flood_keys_are_bounded_and_empty_in_a_new_index(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = FastIndex(ZoneIndex.build(CLUSTER))
    made = 0
    for n in range(1, 64):  # one key per first-label length, type and parent
        for qtype in (1, 28, 16):
            got = fast.reply(raw_query(bytes((n,)) + b"q" * n + _TAIL, qtype=qtype))
            # a length byte of 46 reads as a dot: the general path answers those
            assert isinstance(got, tuple) or n == 46
            made += isinstance(got, tuple) and got[1][1] == "NXDOMAIN"
    assert made > 150 and len(fast.flood) == made
    again = FastIndex(ZoneIndex.build(CLUSTER), previous=fast)
    assert again.flood == {}
    monkeypatch.setattr(fast_index, "FLOOD_KEYS", 5)
    for n in range(1, 20):
        got = again.reply(raw_query(bytes((n,)) + b"q" * n + _TAIL))
        assert isinstance(got, tuple) and got[1][1] == "NXDOMAIN"  # answered all the same
    assert len(again.flood) == 5


def test_a_query_whose_opt_carries_option_data_makes_no_flood_key() -> None:
    """A cookie differs in every query: its key would be used once."""
    fast = FastIndex(ZoneIndex.build(CLUSTER))
    cookie = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c\x00\x0a\x00\x08" + b"c" * 8
    got = fast.reply(raw_query(b"\x03r00" + _TAIL, opt=cookie))
    assert isinstance(got, tuple) and got[1][1] == "NXDOMAIN"
    assert fast.flood == {}
    fast.reply(raw_query(b"\x03r00" + _TAIL, opt=_OPT))  # no option data: a key
    assert len(fast.flood) == 1
