"""ExternalName Services pointing outside the cluster, followed through the upstream (a fake
one on loopback) as CoreDNS does: the CNAME plus the target's records in one answer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trio

from mesh.config.dns import DnsConfig, DnsService
from tests.conftest import require_root, require_tool
from tests.dns.fake_upstream import FakeUpstream
from tests.dns.serving import HOST, ask, ask_udp, running


def _ext(name: str, target: str) -> DnsService:
    return DnsService(namespace="shop", name=name, kind="ExternalName", external_name=target)


CONFIG = DnsConfig(
    version=1,
    namespaces=("shop",),
    services=(
        _ext("ext", "example.com"),  # the target has an A record upstream
        _ext("www", "www.example"),  # upstream: a CNAME to example.com and its A record
        _ext("nx", "gone.example"),  # upstream: a CNAME to a name that does not exist
        _ext("missing", "missing.example"),  # upstream: NXDOMAIN
        _ext("half", "half.example"),  # upstream: a CNAME without its target's records
        _ext("inner", "ext.shop.svc.cluster.local"),  # in the zone, then out of it
        _ext("ring", "back.example"),  # upstream: back.example CNAME ring.shop... (a loop)
        _ext("a", "b.shop.svc.cluster.local"),  # a loop inside the zone
        _ext("b", "a.shop.svc.cluster.local"),
    ),
)
ZONE = "shop.svc.cluster.local."


def q(name: str, qtype: str = "A") -> dns.message.QueryMessage:
    return dns.message.make_query(name, dns.rdatatype.from_text(qtype))


def answer_text(reply: dns.message.Message) -> list[str]:
    return sorted(
        f"{r.name} {dns.rdatatype.to_text(r.rdtype)} {item}" for r in reply.answer for item in r
    )


CASES = [
    (
        "ext",
        "NOERROR",
        [f"ext.{ZONE} CNAME example.com.", "example.com. A 192.0.2.1"],
    ),
    (
        "www",
        "NOERROR",
        [
            f"www.{ZONE} CNAME www.example.",
            "www.example. CNAME example.com.",
            "example.com. A 192.0.2.1",
        ],
    ),
    (
        "nx",
        "NXDOMAIN",
        [f"nx.{ZONE} CNAME gone.example.", "gone.example. CNAME nothing.example."],
    ),
    ("missing", "NXDOMAIN", [f"missing.{ZONE} CNAME missing.example."]),
    (
        "half",
        "NOERROR",
        [
            f"half.{ZONE} CNAME half.example.",
            "half.example. CNAME example.com.",
            "example.com. A 192.0.2.1",
        ],
    ),
    (
        "inner",
        "NOERROR",
        [
            f"inner.{ZONE} CNAME ext.{ZONE}",
            f"ext.{ZONE} CNAME example.com.",
            "example.com. A 192.0.2.1",
        ],
    ),
    ("ring", "SERVFAIL", []),
    ("a", "SERVFAIL", []),
]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize(("service", "rcode", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_chain_is_followed(
    upstream: FakeUpstream, transport: str, service: str, rcode: str, expected: list[str]
) -> None:
    async with running(CONFIG, upstreams=[(upstream.host, upstream.port)]) as server:
        reply = await ask(server, q(f"{service}.{ZONE}"), transport)
        assert dns.rcode.to_text(reply.rcode()) == rcode
        assert answer_text(reply) == sorted(expected)
        if rcode == "NXDOMAIN":  # the upstream's SOA, for the client's negative cache
            assert [r.name.to_text() for r in reply.authority] == ["example."]


async def test_target_answer_is_cached_by_its_ttl(upstream: FakeUpstream) -> None:
    clock = Clock()
    upstreams = [(upstream.host, upstream.port)]
    async with running(CONFIG, upstreams=upstreams, clock=clock) as server:
        for _ in range(3):
            reply = await ask_udp(server, q(f"ext.{ZONE}"))
            assert reply.rcode() == dns.rcode.NOERROR
        assert upstream.asked("example.com.") == ["udp"]
        clock.now += 299
        reply = await ask_udp(server, q(f"ext.{ZONE}"))
        assert [r.ttl for r in reply.answer] == [5, 1]  # the cluster TTL; 300 - 299
        clock.now += 1
        await ask_udp(server, q(f"ext.{ZONE}"))
        assert upstream.asked("example.com.") == ["udp", "udp"]


async def test_without_upstreams_only_the_cname_is_given() -> None:
    async with running(CONFIG, upstreams=[]) as server:
        reply = await ask_udp(server, q(f"ext.{ZONE}"))
        assert reply.rcode() == dns.rcode.NOERROR
        assert answer_text(reply) == [f"ext.{ZONE} CNAME example.com."]
        assert reply.flags & dns.flags.AA


async def test_dig_gets_the_cname_and_the_address(upstream: FakeUpstream) -> None:
    require_tool("dig")
    async with running(CONFIG, upstreams=[(upstream.host, upstream.port)]) as server:
        cmd = ["dig", "+short", "+time=5", "+tries=1", "-p", str(server.port), f"@{HOST}"]
        cmd += [f"ext.{ZONE}", "A"]
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(cmd, capture_output=True, text=True, check=True)
        )
        out = done.stdout
    assert out.split() == ["example.com.", "192.0.2.1"]


async def test_getent_hosts_resolves_an_external_name_service(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """glibc's stub resolver, as in a pod: it needs the CNAME and the address together."""
    require_root()
    require_tool("unshare", "mount", "getent")
    address = "127.0.0.53"  # port 53: glibc cannot be told another port
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {address}\noptions timeout:2 attempts:1\n")
    from mesh.dns.server import DnsServer

    server = DnsServer((address, 53), [(upstream.host, upstream.port)])
    server.apply(CONFIG)
    script = f"mount --bind {conf} /etc/resolv.conf && getent -s dns hosts ext.{ZONE}; echo rc=$?"
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(server.run)
        except OSError as exc:
            pytest.fail(f"cannot bind {address}:53: {exc}")
        out = await trio.to_thread.run_sync(
            lambda: (
                subprocess.run(
                    ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True
                ).stdout
            )
        )
        nursery.cancel_scope.cancel()
    # glibc prints the address, the canonical name (the CNAME's target) and the asked alias
    assert out.split() == ["192.0.2.1", "example.com", f"ext.{ZONE.rstrip('.')}", "rc=0"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
