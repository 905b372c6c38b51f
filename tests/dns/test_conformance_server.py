"""The conformance table against the real server, over UDP and TCP, with real clients."""

from __future__ import annotations

import pytest
import trio

from mesh.config.dns import DnsConfig
from tests.conftest import require_tool
from tests.dns.cases import CLUSTER, TABLES, Case, check, query
from tests.dns.serving import ask, running


@pytest.mark.parametrize(("config", "case"), TABLES, ids=[c.id for _, c in TABLES])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_conformance(config: DnsConfig, case: Case, transport: str) -> None:
    async with running(config) as server:
        for edns in (False, 0):  # plain, then EDNS: the second also exercises the wire cache
            q = query(case, use_edns=edns)
            reply = await ask(server, q, transport)
            assert reply.id == q.id
            check(case, reply)
            again = await ask(server, q, transport)
            check(case, again)


DIG_CASES = [
    (["web.shop.svc.cluster.local", "A"], "127.10.0.5"),
    (["dual.shop.svc.cluster.local", "AAAA"], "fd00::6"),
    (["_http._tcp.web.shop.svc.cluster.local", "SRV"], "0 100 80 web.shop.svc.cluster.local."),
    (["-x", "127.10.0.5"], "web.shop.svc.cluster.local."),
    (["dns-version.cluster.local", "TXT"], '"1.1.0"'),
    (["ext.shop.svc.cluster.local", "A"], "example.com."),
]


@pytest.mark.parametrize(("args", "expected"), DIG_CASES, ids=[" ".join(a) for a, _ in DIG_CASES])
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
async def test_dig(args: list[str], expected: str, transport: str) -> None:
    require_tool("dig")
    async with running(CLUSTER) as server:
        cmd = [
            "dig",
            "@127.0.0.1",
            "-p",
            str(server.port),
            "+short",
            "+tries=1",
            "+time=5",
            transport,
        ]
        result = await trio.run_process([*cmd, *args], capture_stdout=True)
        assert result.stdout.decode().split("\n")[0].strip() == expected


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("gone.shop.svc.cluster.local", "NXDOMAIN"),
        ("shop.svc.cluster.local", "NOERROR"),
        ("nobody.shop.svc.cluster.local", "NXDOMAIN"),
    ],
)
async def test_dig_status(name: str, status: str) -> None:
    require_tool("dig")
    async with running(CLUSTER) as server:
        cmd = ["dig", "@127.0.0.1", "-p", str(server.port), "+tries=1", "+time=5", name, "A"]
        out = (await trio.run_process(cmd, capture_stdout=True)).stdout.decode()
        assert f"status: {status}" in out
        assert " aa " in out.split("flags:", 1)[1].split(";", 1)[0] + " "
        assert "SOA\tns.dns.cluster.local. hostmaster.cluster.local." in out
