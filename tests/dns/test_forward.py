"""Forwarding names outside the cluster to upstream servers (a fake one on loopback)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import trio

from mesh.config.dns import DnsService
from mesh.dns.server import DnsServer
from tests.dns.cases import CLUSTER
from tests.dns.fake_upstream import BIG_TXT, FakeUpstream
from tests.dns.serving import HOST, ask, ask_tcp, ask_udp, running


def q(name: str, qtype: str = "A", **kw: object) -> dns.message.QueryMessage:
    return dns.message.make_query(name, dns.rdatatype.from_text(qtype), **kw)  # type: ignore[arg-type]


def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_positive_answer_is_relayed_and_cached(
    upstream: FakeUpstream, transport: str
) -> None:
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        first = await ask(server, q("example.com."), transport)
        assert first.rcode() == dns.rcode.NOERROR
        assert [r.to_text() for r in first.answer[0]] == ["192.0.2.1"]
        assert first.flags & dns.flags.RA and not first.flags & dns.flags.AA
        second = await ask(server, q("Example.COM."), transport)
        assert [r.to_text() for r in second.answer[0]] == ["192.0.2.1"]
        assert second.answer[0].ttl <= 300
        assert second.question[0].name.to_text() == "Example.COM."
        assert upstream.asked("example.com.") == ["udp"]  # the second came from the cache
        value = server.registry.get_sample_value
        # the second reply is rebuilt from the question cache; over UDP it is kept in the
        # answer cache then (not at the first: a name asked once costs no entry), and the
        # third is a copy from there
        assert value("mesh_dns_cache_hits_total", {"cache": "forward"}) == 1
        assert value("mesh_dns_cache_misses_total", {"cache": "forward"}) == 1
        assert len(server._answers) == (1 if transport == "udp" else 0)
        third = await ask(server, q("example.com."), transport)
        assert [r.to_text() for r in third.answer[0]] == ["192.0.2.1"]
        hits = value("mesh_dns_cache_hits_total", {"cache": "answer"})
        assert (hits or 0) == (1 if transport == "udp" else 0)
        assert upstream.asked("example.com.") == ["udp"]


async def test_a_burst_of_queries_is_answered_once_each(upstream: FakeUpstream) -> None:
    """Forwarded, cluster and made-up cluster names in one burst (the loop reads them in
    batches): every query gets one reply, to its own question."""
    names = [f"burst{i}.example." for i in range(40)]
    names += ["web.shop.svc.cluster.local.", "nope.shop.svc.cluster.local."] * 5
    names += [f"made-up{i}.shop.svc.cluster.local." for i in range(20)]
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.connect((HOST, server.port))
            sent: dict[int, str] = {}
            for i, name in enumerate(names):
                query = q(name)
                query.id = i
                sent[i] = name
                await sock.send(query.to_wire())
            answered: dict[int, str] = {}
            with trio.fail_after(5):
                while len(answered) < len(names):
                    reply = dns.message.from_wire(await sock.recv(65535))
                    assert reply.id not in answered  # once
                    answered[reply.id] = reply.question[0].name.to_text()
            assert answered == sent
            with trio.move_on_after(0.3):
                extra = await sock.recv(65535)
                raise AssertionError(f"a second reply: {extra!r}")
    asked = {name: upstream.asked(name) for name in names[:40]}
    assert all(a == ["udp"] for a in asked.values())  # each forwarded once


async def test_negative_answer_is_relayed_and_cached(upstream: FakeUpstream) -> None:
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        for _ in range(2):
            reply = await ask_udp(server, q("missing.example."))
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert reply.authority[0].rdtype == dns.rdatatype.SOA
            assert reply.authority[0].ttl <= 3600
        assert upstream.asked("missing.example.") == ["udp"]


async def test_truncated_upstream_answer_is_fetched_over_tcp(upstream: FakeUpstream) -> None:
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        reply = await ask_udp(server, q("big.example.", "TXT", use_edns=0, payload=4096))
        assert not reply.flags & dns.flags.TC
        assert len(reply.answer[0]) == BIG_TXT
        assert upstream.asked("big.example.") == ["udp", "tcp"]
        # a client without EDNS gets TC over UDP and the whole answer over TCP (from the cache)
        plain, used_tcp = await trio.to_thread.run_sync(
            lambda: dns.query.udp_with_fallback(
                q("big.example.", "TXT"), HOST, port=server.port, timeout=5
            )
        )
        assert used_tcp and len(plain.answer[0]) == BIG_TXT
        assert upstream.asked("big.example.") == ["udp", "tcp"]


async def test_upstream_timeout_is_servfail(upstream: FakeUpstream) -> None:
    upstreams = [(upstream.host, upstream.port)]
    async with running(CLUSTER, upstreams=upstreams, forward_timeout=0.2) as server:
        for transport in ("udp", "tcp"):
            reply = await ask(server, q("slow.example."), transport)
            assert reply.rcode() == dns.rcode.SERVFAIL
        assert (
            server.registry.get_sample_value("mesh_dns_forward_errors_total", {"reason": "timeout"})
            == 2
        )
        # the server is not stuck: the next name is answered
        assert (await ask_udp(server, q("example.com."))).rcode() == dns.rcode.NOERROR


async def test_next_upstream_after_a_dead_one(upstream: FakeUpstream) -> None:
    upstreams = [(HOST, dead_port()), (upstream.host, upstream.port)]
    async with running(
        CLUSTER, upstreams=upstreams, forward_timeout=2.0, upstream_policy="sequential"
    ) as server:
        reply = await ask_udp(server, q("example.com."))
        assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.1"]
        assert (
            server.registry.get_sample_value("mesh_dns_forward_errors_total", {"reason": "network"})
            == 1
        )


async def test_upstream_servfail_is_relayed_and_not_cached(upstream: FakeUpstream) -> None:
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        for _ in range(2):
            assert (await ask_udp(server, q("fail.example."))).rcode() == dns.rcode.SERVFAIL
        assert upstream.asked("fail.example.") == ["udp", "udp"]


async def test_no_upstream_is_refused() -> None:
    async with running(CLUSTER, upstreams=[]) as server:
        assert (await ask_udp(server, q("example.com."))).rcode() == dns.rcode.REFUSED


async def test_cluster_names_and_cluster_reverse_names_stay_local(upstream: FakeUpstream) -> None:
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        for name, qtype in [
            ("web.shop.svc.cluster.local.", "A"),
            ("gone.shop.svc.cluster.local.", "A"),
            ("5.0.10.127.in-addr.arpa.", "PTR"),
        ]:
            reply = await ask_udp(server, q(name, qtype))
            assert reply.flags & dns.flags.AA
        assert upstream.seen == []
        # a reverse name the cluster does not own is forwarded
        reply = await ask_udp(server, q("1.2.0.192.in-addr.arpa.", "PTR"))
        assert [r.to_text() for r in reply.answer[0]] == ["host.example."]
        assert upstream.asked("1.2.0.192.in-addr.arpa.") == ["udp"]


async def test_many_forwards_at_once(upstream: FakeUpstream) -> None:
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        results: dict[str, int] = {}

        async def one(i: int) -> None:
            reply = await ask_udp(server, q(f"n{i}.example."))
            results[f"n{i}"] = reply.rcode()

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert sorted(results.values()) == [dns.rcode.NXDOMAIN] * 20


async def test_upstreams_from_resolv_conf(tmp_path: Path, upstream: FakeUpstream) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch svc.cluster.local\nnameserver 127.0.0.77\nnameserver bogus\n"
    )
    server = DnsServer((HOST, 0), None, resolv_conf=str(conf))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert server.upstreams == [("127.0.0.77", 53)]
        nursery.cancel_scope.cancel()


async def test_forged_replies_are_ignored(upstream: FakeUpstream) -> None:
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        for _ in range(2):  # the second from the cache: what was cached is the real answer
            reply = await ask_udp(server, q("spoof.example."))
            assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.9"]
        assert upstream.forged == 2
        assert upstream.asked("spoof.example.") == ["udp"]


async def test_identical_questions_in_flight_are_sent_once(upstream: FakeUpstream) -> None:
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        answers: list[list[str]] = []

        async def one(i: int) -> None:
            # different IDs, cases and client sockets: the same question
            name = "late.example." if i % 2 else "LATE.example."
            reply = await ask_udp(server, q(name))
            answers.append([r.to_text() for r in reply.answer[0]])

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
        assert answers == [["192.0.2.9"]] * 10
        assert upstream.asked("late.example.") == ["udp"]
        shared = server.registry.get_sample_value("mesh_dns_forward_shared_total")
        assert shared is not None and shared >= 1


async def test_queries_in_flight_beyond_the_bound_are_servfail(upstream: FakeUpstream) -> None:
    upstreams = [(upstream.host, upstream.port)]
    async with running(CLUSTER, upstreams=upstreams, max_forwards=2, forward_timeout=1.0) as s:
        # slow.example. is never answered: two questions hold both slots until the timeout
        async with trio.open_nursery() as nursery:
            for qtype in ("A", "AAAA"):
                nursery.start_soon(ask_udp, s, q("slow.example.", qtype))
            await trio.sleep(0.1)
            reply = await ask_udp(s, q("example.com."))
        assert reply.rcode() == dns.rcode.SERVFAIL
        overload = s.registry.get_sample_value(
            "mesh_dns_forward_errors_total", {"reason": "overload"}
        )
        assert overload == 1
        # once the slots are free, forwarding works again
        assert (await ask_udp(s, q("example.com."))).rcode() == dns.rcode.NOERROR


async def test_failover_marks_a_dead_upstream_down_and_health_checks_bring_it_back(
    upstream: FakeUpstream,
) -> None:
    second = FakeUpstream("127.0.0.78")
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        upstream.down = True
        upstreams = [(upstream.host, upstream.port), (second.host, second.port)]
        async with running(
            CLUSTER,
            upstreams=upstreams,
            upstream_policy="sequential",
            max_fails=2,
            health_check=0.1,
            forward_timeout=0.3,
        ) as server:
            for i in range(3):
                reply = await ask_udp(server, q(f"n{i}.example."))
                assert reply.rcode() == dns.rcode.NXDOMAIN  # from the second upstream
            # down after two timeouts: the third question went to the second upstream at once
            assert [n for _, n, _ in second.seen if n.startswith("n")] == [
                "n0.example.",
                "n1.example.",
                "n2.example.",
            ]
            value = server.registry.get_sample_value
            assert value("mesh_dns_forward_errors_total", {"reason": "timeout"}) == 2
            upstream.down = False
            await wait_health(server)
            await ask_udp(server, q("n9.example."))
            assert upstream.asked("n9.example.") == ["udp"]  # back first in line
        nursery.cancel_scope.cancel()


async def wait_health(server: DnsServer) -> None:
    for _ in range(100):
        if server.registry.get_sample_value("mesh_dns_health_checks_total", {"result": "ok"}):
            return
        await trio.sleep(0.05)
    raise AssertionError("no health check succeeded")


@pytest.mark.parametrize("policy", ["random", "round_robin"])
async def test_policies_spread_questions(upstream: FakeUpstream, policy: str) -> None:
    second = FakeUpstream("127.0.0.78")
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        upstreams = [(upstream.host, upstream.port), (second.host, second.port)]
        async with running(CLUSTER, upstreams=upstreams, upstream_policy=policy) as server:
            for i in range(20):
                await ask_udp(server, q(f"spread{i}.example."))
        assert upstream.seen and second.seen
        assert len(upstream.seen) + len(second.seen) == 20
        if policy == "round_robin":
            assert len(upstream.seen) == len(second.seen) == 10
        nursery.cancel_scope.cancel()


async def test_serve_stale_when_every_upstream_fails(upstream: FakeUpstream) -> None:
    clock = FakeClock()
    upstreams = [(upstream.host, upstream.port)]
    async with running(
        CLUSTER, upstreams=upstreams, serve_stale=3600, forward_timeout=0.3, clock=clock
    ) as server:
        fresh = await ask_tcp(server, q("example.com."))
        assert fresh.answer[0].ttl == 300
        clock.now += 301  # expired
        upstream.down = True
        stale = await ask_tcp(server, q("example.com."))
        assert [r.to_text() for r in stale.answer[0]] == ["192.0.2.1"]
        assert stale.answer[0].ttl == 30  # RFC 8767's stale TTL
        clock.now += 3600  # past the stale window
        assert (await ask_tcp(server, q("example.com."))).rcode() == dns.rcode.SERVFAIL


async def test_without_serve_stale_an_expired_answer_is_not_used(upstream: FakeUpstream) -> None:
    clock = FakeClock()
    upstreams = [(upstream.host, upstream.port)]
    async with running(CLUSTER, upstreams=upstreams, forward_timeout=0.3, clock=clock) as server:
        await ask_tcp(server, q("example.com."))
        clock.now += 301
        upstream.down = True
        assert (await ask_tcp(server, q("example.com."))).rcode() == dns.rcode.SERVFAIL


async def test_answer_cache_ages_ttls_and_echoes_case(upstream: FakeUpstream) -> None:
    clock = FakeClock()
    upstreams = [(upstream.host, upstream.port)]
    async with running(CLUSTER, upstreams=upstreams, clock=clock) as server:
        await ask_udp(server, q("wWw.example."))
        # from the question cache, and kept in the answer cache from now on (lower case)
        lower = await ask_udp(server, q("www.example."))
        assert lower.question[0].name.to_text() == "www.example."
        assert lower.answer[0].name.to_text() == "www.example."
        clock.now += 100.5
        reply = await ask_udp(server, q("WWW.Example."))
        assert reply.question[0].name.to_text() == "WWW.Example."
        assert reply.answer[0].name.to_text() == "WWW.Example."  # a pointer to the question
        assert [rrset.ttl for rrset in reply.answer] == [200, 20]
        clock.now += 19
        reply = await ask_udp(server, q("www.example."))
        assert [rrset.ttl for rrset in reply.answer] == [181, 1]
        clock.now += 1  # the A record expired: the answer is asked again
        await ask_udp(server, q("www.example."))
        assert upstream.asked("www.example.") == ["udp", "udp"]
        value = server.registry.get_sample_value
        assert value("mesh_dns_cache_hits_total", {"cache": "answer"}) == 2
        assert value("mesh_dns_cache_hits_total", {"cache": "forward"}) == 1


async def test_answer_cache_hits_inline_until_the_next_second_and_never_past_expiry(
    upstream: FakeUpstream,
) -> None:
    """The UDP loop answers a lower-case question from the entry's memo without calling the
    cache while the memo's second lasts; the second after, and in another case, the cache
    ages it; the memo of the last second before expiry ends at expiry."""
    clock = FakeClock()
    upstreams = [(upstream.host, upstream.port)]
    async with running(CLUSTER, upstreams=upstreams, clock=clock) as server:
        answers = server._answers
        calls: list[float] = []
        answer = answers.answer

        def counted(data: bytes, key: bytes, now: float) -> tuple[bytes, Any] | None:
            calls.append(now)
            return answer(data, key, now)

        answers.answer = counted  # type: ignore[method-assign]
        await ask_tcp(server, q("www.example."))  # forwarded: the question cache keeps it
        clock.now = 1000.5  # from the question cache: the answer cache keeps it 119.5 s
        await ask_udp(server, q("www.example."))
        calls.clear()
        for _ in range(3):
            reply = await ask_udp(server, q("www.example."))
            assert [rrset.ttl for rrset in reply.answer] == [300, 120]
        assert calls == [1000.5]  # the first hit made the memo, the others used it
        clock.now += 0.25
        await ask_udp(server, q("WWW.example."))  # another case: the cache copies it in
        assert len(calls) == 2
        clock.now = 1119.75  # the memo's last second: its A record expires at 1120
        for _ in range(2):
            reply = await ask_udp(server, q("www.example."))
            assert [rrset.ttl for rrset in reply.answer] == [181, 1]
        assert len(calls) == 3
        clock.now = 1120.25  # expired, though the memo's second would last until 1120.5
        await ask_udp(server, q("www.example."))
        assert len(calls) == 4
        assert upstream.asked("www.example.") == ["udp", "udp"]
        value = server.registry.get_sample_value
        assert value("mesh_dns_cache_hits_total", {"cache": "answer"}) == 6


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_reverse_name_the_cluster_takes_over_is_answered_by_the_cluster(
    upstream: FakeUpstream,
) -> None:
    ptr = q("1.2.0.192.in-addr.arpa.", "PTR")
    async with running(CLUSTER, upstreams=[(upstream.host, upstream.port)]) as server:
        for _ in range(2):
            reply = await ask_udp(server, ptr)
            assert [r.to_text() for r in reply.answer[0]] == ["host.example."]
        svc = DnsService(namespace="shop", name="new", kind="ClusterIP", cluster_ips=("192.0.2.1",))
        server.apply(
            CLUSTER.model_copy(update={"version": 8, "services": (*CLUSTER.services, svc)})
        )
        reply = await ask_udp(server, ptr)
        assert reply.flags & dns.flags.AA
        assert [r.to_text() for r in reply.answer[0]] == ["new.shop.svc.cluster.local."]
