"""Dual-stack DNS from the store up: Services admitted on a dual-stack cluster, EndpointSlices
per address type from the endpoints controller, the DNS translator, then the answers (zone
text) from the pure core and from the real server asked with dig."""

from __future__ import annotations

from typing import Any

import dns.message
import pytest
import trio

from mesh.config.dns import DnsConfig
from mesh.control.endpoints import desired_slices
from mesh.control.ipam import ServiceAllocator
from mesh.control.store import Store
from mesh.control.translate.dns import translate_dns
from mesh.dns.responder import Reply, Responder
from mesh.dns.zone import ZoneIndex
from mesh.objects import EndpointSlice, KubeObject, Pod, Service
from tests.conftest import require_tool
from tests.dns.cases import Case, check, query
from tests.dns.serving import running

RANGES = ["127.10.0.0/16", "fd00:10::/112"]


def _svc(name: str, **spec: Any) -> Service:
    spec.setdefault("ports", [{"name": "http", "port": 80}])
    return Service.model_validate({"metadata": {"name": name, "namespace": "shop"}, "spec": spec})


def _pod(name: str, ips: list[str], hostname: str | None = None) -> Pod:
    spec: dict[str, Any] = {"hostname": hostname, "subdomain": "db"} if hostname else {}
    return Pod.model_validate(
        {
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "db"}},
            "spec": spec,
            "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]},
        }
    )


def _slice(name: str, family: str, address: str) -> EndpointSlice:
    return EndpointSlice.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "ext"},
            },
            "addressType": family,
            "endpoints": [{"addresses": [address]}],
            "ports": [{"name": "http", "port": 80}],
        }
    )


def _cluster() -> tuple[Store, DnsConfig]:
    alloc = ServiceAllocator(RANGES)
    store = Store(admit=alloc.admit)
    alloc.lookup = store.get
    objects: list[KubeObject] = [
        _svc("web", ipFamilyPolicy="RequireDualStack", clusterIPs=["127.10.0.5", "fd00:10::5"]),
        _svc("v6", ipFamilies=["IPv6"], clusterIP="fd00:10::6"),
        _svc("v4", clusterIP="127.10.0.7"),
        _svc("db", clusterIP="None", selector={"app": "db"}, ipFamilyPolicy="PreferDualStack"),
        _svc("db4", clusterIP="None", selector={"app": "db"}),  # SingleStack: IPv4 only
        _pod("db-0", ["10.1.0.10", "fd00:1::10"], hostname="db-0"),
        _pod("db-1", ["10.1.0.11", "fd00:1::11"]),
        # Headless without a selector: RequireDualStack by default, hand-written slices.
        _svc("ext", clusterIP="None"),
        _slice("ext-v4", "IPv4", "10.2.0.1"),
        _slice("ext-v6", "IPv6", "fd00:2::1"),
    ]
    for obj in objects:
        store.apply(obj)
    for es in desired_slices(store.snapshot()).values():
        store.apply(es)
    return store, translate_dns(store.snapshot(), zone="cluster.local", ttl=5)


def test_slices_are_per_address_type() -> None:
    store, _ = _cluster()
    types = sorted(
        (o.service_name, o.address_type)
        for o in store.snapshot().list("EndpointSlice")
        if isinstance(o, EndpointSlice)
    )
    assert types == [
        ("db", "IPv4"),
        ("db", "IPv6"),
        ("db4", "IPv4"),
        ("ext", "IPv4"),
        ("ext", "IPv6"),
    ]
    ext = store.get("Service", "shop", "ext")
    assert isinstance(ext, Service)
    assert ext.spec.ip_family_policy == "RequireDualStack"
    assert ext.spec.ip_families == ("IPv4", "IPv6")


DB0 = "db-0.db.shop.svc.cluster.local."
REV6 = "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.d.f.ip6.arpa."
REV_DB0_6 = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa."

CASES = [
    Case("dual-a", "web.shop.svc.cluster.local.", "A",
         answer=("web.shop.svc.cluster.local. 5 IN A 127.10.0.5",)),
    Case("dual-aaaa", "web.shop.svc.cluster.local.", "AAAA",
         answer=("web.shop.svc.cluster.local. 5 IN AAAA fd00:10::5",)),
    Case("dual-srv-carries-both", "_http._tcp.web.shop.svc.cluster.local.", "SRV",
         answer=("_http._tcp.web.shop.svc.cluster.local. 5 IN SRV 0 100 80 web.shop.svc.cluster.local.",),
         additional=("web.shop.svc.cluster.local. 5 IN A 127.10.0.5",
                     "web.shop.svc.cluster.local. 5 IN AAAA fd00:10::5")),
    Case("ptr-v4", "5.0.10.127.in-addr.arpa.", "PTR",
         answer=("5.0.10.127.in-addr.arpa. 5 IN PTR web.shop.svc.cluster.local.",)),
    Case("ptr-v6", REV6, "PTR", answer=(f"{REV6} 5 IN PTR web.shop.svc.cluster.local.",)),
    Case("v6-only-aaaa", "v6.shop.svc.cluster.local.", "AAAA",
         answer=("v6.shop.svc.cluster.local. 5 IN AAAA fd00:10::6",)),
    Case("v6-only-a-nodata", "v6.shop.svc.cluster.local.", "A",
         authority=("cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
                    "{v} 7200 1800 86400 5",)),
    Case("headless-both-families-a", "db.shop.svc.cluster.local.", "A",
         answer=("db.shop.svc.cluster.local. 5 IN A 10.1.0.10",
                 "db.shop.svc.cluster.local. 5 IN A 10.1.0.11")),
    Case("headless-both-families-aaaa", "db.shop.svc.cluster.local.", "AAAA",
         answer=("db.shop.svc.cluster.local. 5 IN AAAA fd00:1::10",
                 "db.shop.svc.cluster.local. 5 IN AAAA fd00:1::11")),
    Case("headless-hostname-aaaa", DB0, "AAAA", answer=(f"{DB0} 5 IN AAAA fd00:1::10",)),
    Case("headless-hostname-a", DB0, "A", answer=(f"{DB0} 5 IN A 10.1.0.10",)),
    Case("headless-auto-name-v6", "fd00-1--11.db.shop.svc.cluster.local.", "AAAA",
         answer=("fd00-1--11.db.shop.svc.cluster.local. 5 IN AAAA fd00:1::11",)),
    Case("headless-ptr-v6", REV_DB0_6, "PTR", answer=(f"{REV_DB0_6} 5 IN PTR {DB0}",)),
    Case("selectorless-headless-a", "ext.shop.svc.cluster.local.", "A",
         answer=("ext.shop.svc.cluster.local. 5 IN A 10.2.0.1",)),
    Case("selectorless-headless-aaaa", "ext.shop.svc.cluster.local.", "AAAA",
         answer=("ext.shop.svc.cluster.local. 5 IN AAAA fd00:2::1",)),
    Case("headless-single-stack-aaaa-nodata", "db4.shop.svc.cluster.local.", "AAAA",
         authority=("cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
                    "{v} 7200 1800 86400 5",)),
]  # fmt: skip


def _resolve(case: Case, config: DnsConfig) -> Case:
    authority = tuple(a.replace("{v}", str(config.version)) for a in case.authority)
    return Case(
        case.id, case.qname, case.qtype, case.rcode, case.answer, case.additional, authority
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_core(case: Case) -> None:
    _, config = _cluster()
    q = query(case, use_edns=0)
    outcome = Responder(ZoneIndex.build(config)).handle(q.to_wire())
    assert isinstance(outcome, Reply)
    check(_resolve(case, config), dns.message.from_wire(outcome.wire))


DIG = [
    (["web.shop.svc.cluster.local", "A"], ["127.10.0.5"]),
    (["web.shop.svc.cluster.local", "AAAA"], ["fd00:10::5"]),
    (["-x", "fd00:10::5"], ["web.shop.svc.cluster.local."]),
    (["-x", "127.10.0.5"], ["web.shop.svc.cluster.local."]),
    (["db.shop.svc.cluster.local", "AAAA"], ["fd00:1::10", "fd00:1::11"]),
    (["db-0.db.shop.svc.cluster.local", "AAAA"], ["fd00:1::10"]),
    (["-x", "fd00:1::10"], [DB0]),
]


@pytest.mark.parametrize(("args", "want"), DIG, ids=[" ".join(a) for a, _ in DIG])
async def test_dig(args: list[str], want: list[str]) -> None:
    require_tool("dig")
    _, config = _cluster()
    async with running(config) as server:
        cmd = ["dig", "@127.0.0.1", "-p", str(server.port), "+short", "+tries=1", "+time=5"]
        result = await trio.run_process([*cmd, *args], capture_stdout=True)
    assert sorted(result.stdout.decode().split()) == want
