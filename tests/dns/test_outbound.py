"""The upstream exchanges of forwarded questions (dns/outbound.py), driven by hand.

No trio: the test plays the server's loop (``poll``, ``sweep``) and the upstream (a plain
UDP socket on loopback it answers from), with a fake timer for the timeouts.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from mesh.dns import outbound as outbound_module
from mesh.dns.metrics import DnsMetrics
from mesh.dns.outbound import PORTS_PER_UPSTREAM, Exchange, Outbound
from mesh.dns.upstream import Answer, Forwarder, matches, question_key

HOST = "127.0.0.1"


class Timer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A UDP socket on loopback that the test reads queries from and answers by hand."""

    def __init__(self, host: str = HOST) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(2)
        self.address: tuple[str, int] = self.sock.getsockname()

    def receive(self) -> tuple[dns.message.Message, bytes, tuple[str, int]]:
        data, source = self.sock.recvfrom(65535)
        return dns.message.from_wire(data), data, source

    def answer(
        self, query: dns.message.Message, source: tuple[str, int], ip: str = "192.0.2.1"
    ) -> None:
        self.sock.sendto(reply_to(query, ip=ip), source)


def reply_to(query: dns.message.Message, *, ip: str = "192.0.2.1", qid: int | None = None,
             name: str | None = None) -> bytes:  # fmt: skip
    response = dns.message.make_response(query)
    owner = name or query.question[0].name.to_text()
    if name is not None:  # another question than the one asked
        response.question = [
            dns.rrset.RRset(dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.A)
        ]
    response.answer.append(dns.rrset.from_text(owner, 300, "IN", "A", ip))
    if qid is not None:
        response.id = qid
    return response.to_wire()


def question(name: str) -> bytes:
    return dns.message.make_query(name, "A").to_wire()[12:]


@pytest.fixture
def listen() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield sock


def make(upstreams: list[Upstream], listen: socket.socket, timer: Timer) -> Outbound:
    forwarder = Forwarder(
        [u.address for u in upstreams], metrics=DnsMetrics(), policy="sequential", timeout=1.0
    )
    spawned: list[tuple[Exchange, int]] = []
    return Outbound(forwarder, listen.fileno(), lambda ex, i: spawned.append((ex, i)), timer)


def pump(out: Outbound, timer: Timer) -> None:
    """What the server's loop does once the epoll set is readable."""
    select.select([out.fileno()], [], [], 1.0)
    out.poll(timer())
    out.sweep(timer())


def keep(got: dict[str, Answer | None], key: str) -> Callable[[Answer | None], None]:
    def waiter(answer: Answer | None) -> None:
        got[key] = answer

    return waiter


def test_questions_share_a_bounded_set_of_ports_with_unique_ids(listen: socket.socket) -> None:
    up, timer = Upstream(), Timer()
    out = make([up], listen, timer)
    got: dict[str, Answer | None] = {}
    n = 3 * PORTS_PER_UPSTREAM
    for i in range(n):
        out.ask(question(f"n{i}.example."), False, keep(got, f"n{i}"), 0)
    seen = [up.receive() for _ in range(n)]
    ports = {source[1] for _, _, source in seen}
    assert len(ports) == PORTS_PER_UPSTREAM  # kept open and shared, not one per query
    ids = [(source[1], data[:2]) for _, data, source in seen]
    assert len(set(ids)) == n  # an ID names one exchange on its socket
    for query, _, source in seen:
        up.answer(query, source)
    while len(got) < n:
        pump(out, timer)
    assert all(a is not None and a.layout.rcode == 0 for a in got.values())
    assert not out.inflight


def test_a_burst_of_replies_is_drained_in_one_poll_each_checked_and_answered_once(
    listen: socket.socket,
) -> None:
    up, timer = Upstream(), Timer()
    out = make([up], listen, timer)
    got: dict[str, list[Answer | None]] = {}
    n = 3 * PORTS_PER_UPSTREAM + 5  # several replies waiting on every socket
    for i in range(n):
        out.ask(question(f"b{i}.example."), False, got.setdefault(f"b{i}", []).append, 0)
    for query, _, source in [up.receive() for _ in range(n)]:
        name = query.question[0].name.to_text()
        i = int(name.split(".")[0][1:])
        # before the real reply a mismatched one (right ID, another question), after it the
        # same reply again: both must be dropped, packet by packet, within the burst
        up.sock.sendto(reply_to(query, ip="203.0.113.66", name="other.example."), source)
        up.answer(query, source, ip=f"192.0.2.{i + 1}")
        up.answer(query, source, ip="203.0.113.67")
    out.poll(timer())  # one poll: every socket drained (loopback delivered them all)
    assert sorted(got) == sorted(f"b{i}" for i in range(n))
    for key, answers in got.items():
        assert len(answers) == 1  # exactly once
        answer = answers[0]
        assert answer is not None
        ip = dns.message.from_wire(answer.wire).answer[0][0].to_text()
        assert ip == f"192.0.2.{int(key[1:]) + 1}"
    assert out.forwarder.metrics.forward_errors["stray"] == 2 * n
    assert not out.inflight


def test_forged_and_mismatched_replies_are_dropped_and_never_cached(
    listen: socket.socket,
) -> None:
    up, timer = Upstream(), Timer()
    out = make([up], listen, timer)
    got: list[Answer | None] = []
    out.ask(question("spoof.example."), False, got.append, 0)
    query, data, source = up.receive()
    wrong_id = (int.from_bytes(data[:2], "big") + 1) & 0xFFFF
    up.sock.sendto(reply_to(query, ip="203.0.113.66", qid=wrong_id), source)
    up.sock.sendto(reply_to(query, ip="203.0.113.66", name="other.example."), source)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:  # another address
        forger.bind(("127.0.0.99", 0))
        forger.sendto(reply_to(query, ip="203.0.113.66"), source)
    pump(out, timer)
    assert got == []
    assert out.forwarder.metrics.forward_errors["stray"] == 2  # the kernel dropped the third
    up.answer(query, source)
    while not got:
        pump(out, timer)
    answer = got[0]
    assert answer is not None
    assert dns.message.from_wire(answer.wire).answer[0][0].to_text() == "192.0.2.1"
    cached = out.forwarder.cached(question("spoof.example.").lower() + b"\x00", 0)
    assert cached is not None and b"\xcb\x00\x71\x42" not in cached.wire  # 203.0.113.66


def test_a_timeout_moves_on_and_the_late_reply_is_ignored(listen: socket.socket) -> None:
    first, second, timer = Upstream(), Upstream(), Timer()
    out = make([first, second], listen, timer)
    got: list[Answer | None] = []
    out.ask(question("late.example."), False, got.append, 0)
    query, _, source = first.receive()
    timer.now += 1.5
    out.sweep(timer())
    assert out.forwarder.metrics.forward_errors["timeout"] == 1
    late_query, _, late_source = second.receive()
    first.answer(query, source, ip="198.51.100.1")  # too late: its exchange moved on
    pump(out, timer)
    assert got == [] and out.forwarder.metrics.forward_errors["stray"] == 1
    second.answer(late_query, late_source, ip="192.0.2.7")
    while not got:
        pump(out, timer)
    answer = got[0]
    assert answer is not None
    assert dns.message.from_wire(answer.wire).answer[0][0].to_text() == "192.0.2.7"


def test_every_upstream_timing_out_is_none(listen: socket.socket) -> None:
    up, timer = Upstream(), Timer()
    out = make([up], listen, timer)
    got: list[Answer | None] = []
    out.ask(question("slow.example."), False, got.append, 0)
    up.receive()
    assert out.next_deadline() == timer.now + 1.0
    timer.now += 1.0
    out.sweep(timer())
    assert got == [None] and out.next_deadline() is None and not out.inflight


def test_identical_questions_are_sent_once(listen: socket.socket) -> None:
    up, timer = Upstream(), Timer()
    out = make([up], listen, timer)
    got: list[Answer | None] = []
    for name in ("same.example.", "SAME.example."):
        out.ask(question(name), False, got.append, 0)
    query, _, source = up.receive()
    up.answer(query, source)
    while len(got) < 2:
        pump(out, timer)
    assert out.forwarder.metrics.forward_shared == 1
    up.sock.settimeout(0.1)
    with pytest.raises(TimeoutError):
        up.receive()  # nothing else was sent


def test_sockets_are_retired_after_their_queries(
    listen: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbound_module, "PORT_QUERIES", 2)
    up, timer = Upstream(), Timer()
    out = make([up], listen, timer)
    got: list[Answer | None] = []
    ports: set[int] = set()
    for i in range(4 * PORTS_PER_UPSTREAM):
        out.ask(question(f"r{i}.example."), False, got.append, 0)
        query, _, source = up.receive()
        ports.add(source[1])
        up.answer(query, source)
        while len(got) <= i:
            pump(out, timer)
    # every socket sent at most 2 queries, then a new one took its place
    assert len(ports) >= 2 * PORTS_PER_UPSTREAM
    assert len(out.ports) <= PORTS_PER_UPSTREAM  # the retired ones are closed


def test_wake_makes_the_loop_look_and_poll_resets_it(listen: socket.socket) -> None:
    up, timer = Upstream(), Timer()
    out = make([up], listen, timer)
    assert select.select([out.fileno()], [], [], 0)[0] == []
    out.wake()
    out.wake()  # once is enough
    assert select.select([out.fileno()], [], [], 0)[0] == [out.fileno()]
    out.poll(timer())
    assert not out.woken
    assert select.select([out.fileno()], [], [], 0)[0] == []
    out.close()


def test_only_the_name_is_lower_cased_never_the_type(listen: socket.socket) -> None:
    # HTTPS is type 65 (0x0041, an ASCII "A"): lower-casing the whole question would ask
    # type 97 instead, and one cache key would serve both types.
    up, timer = Upstream(), Timer()
    out = make([up], listen, timer)
    got: list[Answer | None] = []
    https = dns.message.make_query("Svc.Example.", "HTTPS").to_wire()[12:]
    out.ask(https, False, got.append, 0)
    query, _, source = up.receive()
    assert query.question[0].rdtype == dns.rdatatype.HTTPS
    assert query.question[0].name.to_text() == "svc.example."
    response = dns.message.make_response(query)
    up.sock.sendto(response.to_wire(), source)
    while not got:
        pump(out, timer)
    assert got[0] is not None
    type97 = https[:-4] + b"\x00\x61\x00\x01"
    assert question_key(https, False) != question_key(type97, False)
    assert out.forwarder.cached(question_key(type97, False), 0) is None


def test_an_upstream_after_a_tcp_retry_still_times_out(listen: socket.socket) -> None:
    # The first upstream's reply is truncated and its TCP answer a SERVFAIL; the next
    # upstream never answers. Its timeout must still end the exchange (the fallback
    # SERVFAIL answers), not leave the askers waiting forever.
    first, second, timer = Upstream(), Upstream(), Timer()
    forwarder = Forwarder(
        [first.address, second.address], metrics=DnsMetrics(), policy="sequential", timeout=1.0
    )
    spawned: list[tuple[Exchange, int]] = []
    out = Outbound(forwarder, listen.fileno(), lambda ex, i: spawned.append((ex, i)), timer)
    got: list[Answer | None] = []
    out.ask(question("big.example."), False, got.append, 0)
    query, _, source = first.receive()
    truncated = dns.message.make_response(query)
    truncated.flags |= dns.flags.TC
    first.sock.sendto(truncated.to_wire(), source)
    while not spawned:
        pump(out, timer)
    ex, i = spawned[0]
    servfail = dns.message.make_response(query)
    servfail.set_rcode(dns.rcode.SERVFAIL)
    wire = servfail.to_wire()
    layout = matches(wire, ex.wire, ex.qend)
    assert layout is not None
    out.tcp_done(ex, i, (wire, layout), timer())
    second.receive()  # asked, never answers
    timer.now += 1.5
    out.sweep(timer())
    assert len(got) == 1 and got[0] is not None and got[0].layout.rcode == dns.rcode.SERVFAIL
    assert not out.inflight and not any(p.pending for p in out.ports.values())


def test_an_upstream_named_localhost_is_answered(listen: socket.socket) -> None:
    # --upstream accepts localhost:PORT; the replies come from the address it resolved to.
    up, timer = Upstream(), Timer()
    forwarder = Forwarder([("localhost", up.address[1])], metrics=DnsMetrics(), timeout=1.0)
    out = Outbound(forwarder, listen.fileno(), lambda ex, i: None, timer)
    got: list[Answer | None] = []
    out.ask(question("local.example."), False, got.append, 0)
    query, _, source = up.receive()
    up.answer(query, source)
    for _ in range(20):
        if got:
            break
        pump(out, timer)
    assert got and got[0] is not None and got[0].layout.rcode == 0
    assert out.forwarder.metrics.forward_errors["stray"] == 0


def _sent() -> bytes:
    return b"\x12\x34" + dns.message.make_query("www.example.", "A").to_wire()[2:]


def _reply(edit: Callable[[dns.message.Message], None] = lambda m: None) -> bytes:
    response = dns.message.make_response(dns.message.from_wire(_sent()))
    response.answer.append(dns.rrset.from_text("www.example.", 60, "IN", "A", "192.0.2.1"))
    edit(response)
    return response.to_wire()


def _question(name: str, rdtype: str = "A") -> Callable[[dns.message.Message], None]:
    def edit(m: dns.message.Message) -> None:
        m.question = [dns.rrset.RRset(dns.name.from_text(name), dns.rdataclass.IN,
                                      dns.rdatatype.from_text(rdtype))]  # fmt: skip

    return edit


def _wire_edit(edit: Callable[[bytearray], None]) -> bytes:
    wire = bytearray(_reply())
    edit(wire)
    return bytes(wire)


@pytest.mark.parametrize(
    ("reply", "matched"),
    [
        (_reply(), True),
        (_reply(_question("WWW.Example.")), True),  # the upstream's own case (0x20)
        (_reply(_question("www.example.", "AAAA")), False),  # another type
        (_reply(_question("wwx.example.")), False),  # another name of the same length
        (_reply(_question("ww.example.")), False),
        (_wire_edit(lambda w: w.__setitem__(0, 0x99)), False),  # another ID
        (_wire_edit(lambda w: w.__setitem__(2, w[2] & 0x7F)), False),  # QR clear: a query
        (_wire_edit(lambda w: w.__setitem__(12, 2)), False),  # other labels: the same bytes
        (_reply()[:-1], False),  # the answer cut short
    ],
)
def test_a_reply_matches_only_its_own_question(reply: bytes, matched: bool) -> None:
    sent = _sent()
    qend = 12 + len(b"\x03www\x07example\x00") + 4
    layout = matches(reply, sent, qend)
    assert (layout is not None) is matched
    if layout is not None:
        assert layout.qend == qend and layout.counts[0] == 1
