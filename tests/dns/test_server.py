"""The server's behaviour: readiness, config swaps, EDNS and truncation, TCP, bad packets,
metrics and the component interface."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
import trio

from mesh.component import Component, ConfigRejected
from mesh.config.dns import DnsConfig, DnsEndpoint, DnsService
from mesh.dns.server import DnsServer
from tests.dns.cases import CLUSTER
from tests.dns.serving import HOST, ask, ask_tcp, ask_udp, running, tcp_exchange, udp_exchange


def q(name: str, qtype: str = "A", **kw: object) -> dns.message.QueryMessage:
    return dns.message.make_query(name, dns.rdatatype.from_text(qtype), **kw)  # type: ignore[arg-type]


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in reply.answer for r in rrset)


def with_web(ip: str, version: int) -> DnsConfig:
    web = DnsService(namespace="shop", name="web", kind="ClusterIP", cluster_ips=(ip,))
    return DnsConfig(version=version, services=(web,))


async def test_servfail_for_the_zone_until_the_first_config() -> None:
    async with running(None) as server:
        assert [server.ready] == [False]
        assert server.config_json() is None
        for transport in ("udp", "tcp"):
            reply = await ask(server, q("web.shop.svc.cluster.local."), transport)
            assert reply.rcode() == dns.rcode.SERVFAIL
        # other names are not the zone's: forwarded, and with no upstream refused
        assert (await ask_udp(server, q("example.com."))).rcode() == dns.rcode.REFUSED
        server.apply(CLUSTER)
        assert server.ready
        reply = await ask_udp(server, q("web.shop.svc.cluster.local."))
        assert addresses(reply) == ["127.10.0.5"]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_new_config_answers_at_once(transport: str) -> None:
    async with running(with_web("127.10.0.5", 1)) as server:
        query = q("web.shop.svc.cluster.local.")
        for _ in range(3):  # the wire cache now holds this question
            assert addresses(await ask(server, query, transport)) == ["127.10.0.5"]
        server.apply(with_web("127.10.0.99", 2))
        assert addresses(await ask(server, query, transport)) == ["127.10.0.99"]
        server.apply(DnsConfig(version=3))
        assert (await ask(server, query, transport)).rcode() == dns.rcode.NXDOMAIN
        assert server.registry.get_sample_value("mesh_dns_config_version") == 3


async def test_question_case_is_echoed() -> None:
    async with running(CLUSTER) as server:
        for transport in ("udp", "tcp"):
            reply = await ask(server, q("WeB.ShOp.SVC.cluster.LOCAL."), transport)
            assert reply.question[0].name.to_text() == "WeB.ShOp.SVC.cluster.LOCAL."
            assert reply.answer[0].name.to_text() == "WeB.ShOp.SVC.cluster.LOCAL."
            assert addresses(reply) == ["127.10.0.5"]
            missing = await ask(server, q("Gone.Shop.Svc.Cluster.Local."), transport)
            assert missing.rcode() == dns.rcode.NXDOMAIN
            assert missing.authority[0].name.to_text() == "Cluster.Local."


async def test_zone_and_ttl_are_configurable() -> None:
    config = with_web("127.10.0.5", 1).model_copy(update={"zone": "corp.internal", "ttl": 30})
    async with running(config) as server:
        reply = await ask_udp(server, q("web.shop.svc.corp.internal."))
        assert addresses(reply) == ["127.10.0.5"]
        assert reply.answer[0].ttl == 30
        version = await ask_udp(server, q("dns-version.corp.internal.", "TXT"))
        assert version.answer[0].ttl == 30
        # cluster.local is not this cluster's zone any more: forwarded (refused, no upstream)
        other = await ask_udp(server, q("web.shop.svc.cluster.local."))
        assert other.rcode() == dns.rcode.REFUSED


BIG = DnsConfig(
    version=1,
    services=(
        DnsService(
            namespace="shop",
            name="big",
            kind="Headless",
            endpoints=tuple(DnsEndpoint(addresses=(f"10.9.0.{i}",)) for i in range(1, 61)),
        ),
    ),
)


async def test_truncation_without_edns_and_full_answer_over_tcp() -> None:
    async with running(BIG) as server:
        plain = q("big.shop.svc.cluster.local.")
        truncated = await ask_udp(server, plain)
        assert truncated.flags & dns.flags.TC
        assert truncated.answer == [] and truncated.rcode() == dns.rcode.NOERROR
        assert truncated.edns < 0
        full = await ask_tcp(server, plain)
        assert not full.flags & dns.flags.TC
        assert len(addresses(full)) == 60
        reply, used_tcp = await trio.to_thread.run_sync(
            lambda: dns.query.udp_with_fallback(plain, HOST, port=server.port, timeout=5)
        )
        assert used_tcp and len(addresses(reply)) == 60


async def test_edns_payload_size_is_honoured() -> None:
    async with running(BIG) as server:
        large = await ask_udp(server, q("big.shop.svc.cluster.local.", use_edns=0, payload=4096))
        assert not large.flags & dns.flags.TC
        assert len(addresses(large)) == 60
        assert large.edns == 0 and large.payload >= 512
        small = await ask_udp(server, q("big.shop.svc.cluster.local.", use_edns=0, payload=600))
        assert small.flags & dns.flags.TC and small.answer == []
        assert small.edns == 0  # the OPT record survives truncation
        # a payload below 512 counts as 512 (RFC 6891 6.2.5); a small answer fits
        tiny = await ask_udp(server, q("web.shop.svc.cluster.local.", use_edns=0, payload=100))
        assert tiny.rcode() == dns.rcode.NXDOMAIN and not tiny.flags & dns.flags.TC


async def test_edns_version_above_zero_is_badvers() -> None:
    async with running(CLUSTER) as server:
        reply = await ask_udp(server, q("web.shop.svc.cluster.local.", use_edns=1))
        assert reply.rcode() == dns.rcode.BADVERS
        assert reply.edns == 0


def header(ident: int, flags: int, qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


async def test_bad_packets() -> None:
    async with running(CLUSTER) as server:
        valid = q("web.shop.svc.cluster.local.")
        # Too short to answer, and a response (QR set): dropped; the next query's reply is
        # the first datagram to come back.
        first = await udp_exchange(
            server.port, [b"\x12\x34\x01", header(0x55, 0x8000, qd=1), valid.to_wire()]
        )
        assert dns.message.from_wire(first).id == valid.id
        # No question: FORMERR from the header, with its ID.
        reply = dns.message.from_wire(await udp_exchange(server.port, [header(0x4242, 0x0100)]))
        assert reply.id == 0x4242 and reply.rcode() == dns.rcode.FORMERR
        assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RD
        # A question that runs past the end: FORMERR.
        cut = valid.to_wire()[:20]
        reply = dns.message.from_wire(await udp_exchange(server.port, [cut]))
        assert reply.id == valid.id and reply.rcode() == dns.rcode.FORMERR
        # Opcode STATUS: NOTIMP.
        status = header(0x99, 2 << 11, qd=1) + valid.to_wire()[12:]
        reply = dns.message.from_wire(await udp_exchange(server.port, [status]))
        assert reply.rcode() == dns.rcode.NOTIMP and reply.opcode() == dns.opcode.STATUS
        # Class CHAOS and zone transfers: REFUSED.
        chaos = dns.message.make_query("version.bind.", "TXT", rdclass=dns.rdataclass.CH)
        assert (await ask_udp(server, chaos)).rcode() == dns.rcode.REFUSED
        axfr = q("cluster.local.", "AXFR")
        assert (await ask_tcp(server, axfr)).rcode() == dns.rcode.REFUSED
        # Still serving.
        assert addresses(await ask_udp(server, valid)) == ["127.10.0.5"]


async def test_tcp_several_queries_per_connection() -> None:
    async with running(CLUSTER) as server:
        names = ["web", "dual", "single", "gone"]
        queries = [q(f"{n}.shop.svc.cluster.local.") for n in names]
        replies = await tcp_exchange(server.port, [m.to_wire() for m in queries], len(queries))
        parsed = [dns.message.from_wire(r) for r in replies]
        assert [r.id for r in parsed] == [m.id for m in queries]
        assert [r.rcode() for r in parsed] == [0, 0, 0, dns.rcode.NXDOMAIN]
        # a malformed message on TCP gets FORMERR and the connection goes on
        garbage = header(7, 0x0100, qd=1) + b"\x03abc"
        replies = await tcp_exchange(server.port, [garbage, queries[0].to_wire()], 2)
        assert dns.message.from_wire(replies[0]).rcode() == dns.rcode.FORMERR
        assert dns.message.from_wire(replies[1]).id == queries[0].id


async def test_tcp_idle_connection_is_closed() -> None:
    async with running(CLUSTER, tcp_idle_timeout=0.2) as server:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(HOST, server.port)
            async with stream:
                assert await stream.receive_some(10) == b""  # closed by the server
            # half a length prefix, then silence: closed as well
            stream = await trio.open_tcp_stream(HOST, server.port)
            async with stream:
                await stream.send_all(b"\x00")
                assert await stream.receive_some(10) == b""


async def test_metrics() -> None:
    async with running(CLUSTER) as server:
        query = q("web.shop.svc.cluster.local.")
        for _ in range(5):
            await ask_udp(server, query)
        await ask_udp(server, q("gone.shop.svc.cluster.local."))
        await ask_tcp(server, q("_http._tcp.web.shop.svc.cluster.local.", "SRV"))
        value = server.registry.get_sample_value
        assert value("mesh_dns_queries_total", {"qtype": "A", "rcode": "NOERROR"}) == 5
        assert value("mesh_dns_queries_total", {"qtype": "A", "rcode": "NXDOMAIN"}) == 1
        assert value("mesh_dns_queries_total", {"qtype": "SRV", "rcode": "NOERROR"}) == 1
        assert value("mesh_dns_cache_hits_total", {"cache": "wire"}) == 4
        assert value("mesh_dns_cache_misses_total", {"cache": "wire"}) == 2
        assert value("mesh_dns_request_duration_seconds_count", {"path": "cache"}) == 4
        assert value("mesh_dns_request_duration_seconds_count", {"path": "cluster"}) == 3
        assert value("mesh_dns_config_version") == 7
        assert value("mesh_dns_forward_errors_total", {"reason": "timeout"}) is None


async def test_component_interface_and_rejected_config() -> None:
    server = DnsServer(("127.0.0.1", 0), [])
    assert isinstance(server, Component)
    assert server.name == "dns"
    server.apply(CLUSTER)
    assert server.config_json() == CLUSTER.model_dump(mode="json")
    bad = DnsConfig(
        version=8,
        services=(DnsService(namespace="a", name="b", kind="ClusterIP", cluster_ips=("nope",)),),
    )
    with pytest.raises(ConfigRejected):
        server.apply(bad)
    assert server.config_json()["version"] == 7  # the previous config stays live


async def test_mixed_case_questions_are_answered_from_the_index_and_not_cached() -> None:
    """0x20 randomisation: each spelling is answered with its case echoed, counted as a wire
    cache miss answered on the fast path, and kept in no cache (each spelling is asked once)."""
    async with running(CLUSTER) as server:
        for name in ("WeB.ShOp.svc.cluster.local.", "wEb.sHoP.SVC.cluster.local."):
            reply = await ask_udp(server, q(name))
            assert reply.question[0].name.to_text() == name
            assert reply.answer[0].name.to_text() == name  # a pointer to the question
            assert addresses(reply) == ["127.10.0.5"]
        missing = await ask_udp(server, q("NoPe.ShOp.svc.cluster.local."))
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert missing.question[0].name.to_text() == "NoPe.ShOp.svc.cluster.local."
        live = server._live  # the general path would have kept its replies in the wire cache
        assert len(live.cache) == 0 and len(live.negative) == 0
        value = server.registry.get_sample_value
        assert value("mesh_dns_cache_misses_total", {"cache": "wire"}) == 3
