"""The cluster the DNS conformance tests query, and the expected answers as zone text.

Each case is a question and the exact reply sections (CoreDNS-style tables). The same table
runs against the pure core (tests/dns/test_conformance_core.py) and against the real server
over UDP and TCP (tests/dns/test_conformance_server.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPod, DnsPort, DnsService

SOA = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 5"


def _ports(*ports: tuple[str | None, str, int]) -> tuple[DnsPort, ...]:
    return tuple(DnsPort(name=n, protocol=p, port=port) for n, p, port in ports)


CLUSTER = DnsConfig(
    version=7,
    namespaces=("shop", "empty", "kube-system"),
    services=(
        DnsService(
            namespace="shop",
            name="web",
            kind="ClusterIP",
            cluster_ips=("127.10.0.5",),
            ports=_ports(("http", "TCP", 80), ("dns", "UDP", 53)),
        ),
        DnsService(
            namespace="shop",
            name="dual",
            kind="ClusterIP",
            cluster_ips=("127.10.0.6", "fd00::6"),
            ports=_ports(("https", "TCP", 443)),
        ),
        DnsService(
            namespace="shop",
            name="v6",
            kind="ClusterIP",
            cluster_ips=("fd00::7",),
            ports=_ports(("http", "TCP", 80)),
        ),
        DnsService(
            namespace="shop", name="pending", kind="ClusterIP", ports=_ports(("http", "TCP", 80))
        ),
        DnsService(
            namespace="shop",
            name="single",
            kind="ClusterIP",
            cluster_ips=("127.10.0.8",),
            ports=_ports((None, "TCP", 8080)),
        ),
        DnsService(
            namespace="shop",
            name="db",
            kind="Headless",
            endpoints=(
                DnsEndpoint(
                    addresses=("10.1.0.10",), hostname="db-0", ports=_ports(("pg", "TCP", 5432))
                ),
                DnsEndpoint(
                    addresses=("10.1.0.11",), hostname="db-1", ports=_ports(("pg", "TCP", 5432))
                ),
                DnsEndpoint(addresses=("10.1.0.12",), ports=_ports(("pg", "TCP", 5432))),
            ),
        ),
        DnsService(
            namespace="shop",
            name="h6",
            kind="Headless",
            endpoints=(
                DnsEndpoint(addresses=("fd00::20",), ports=_ports(("http", "TCP", 80))),
                DnsEndpoint(
                    addresses=("fd00::21",), hostname="web-0", ports=_ports(("http", "TCP", 80))
                ),
            ),
        ),
        DnsService(namespace="shop", name="nobody", kind="Headless"),
        DnsService(namespace="shop", name="ext", kind="ExternalName", external_name="example.com"),
        DnsService(
            namespace="shop",
            name="alias",
            kind="ExternalName",
            external_name="web.shop.svc.cluster.local",
        ),
        DnsService(
            namespace="shop",
            name="dangling",
            kind="ExternalName",
            external_name="gone.shop.svc.cluster.local",
        ),
    ),
)


@dataclass(frozen=True)
class Case:
    id: str
    qname: str
    qtype: str
    rcode: str = "NOERROR"
    answer: tuple[str, ...] = ()
    additional: tuple[str, ...] = ()
    authority: tuple[str, ...] = ()


# A reverse name the cluster owns answers NODATA with the reverse zone's SOA, as CoreDNS does.
REVERSE_SOA = (
    "in-addr.arpa. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 5"
)
WEB_A = "web.shop.svc.cluster.local. 5 IN A 127.10.0.5"


def _c(
    id: str,
    qname: str,
    qtype: str,
    *answer: str,
    rcode: str = "NOERROR",
    additional: tuple[str, ...] = (),
    soa: bool = False,  # the authority section holds the zone's SOA (negative answers)
    authority: tuple[str, ...] = (),
) -> Case:
    return Case(id, qname, qtype, rcode, answer, additional, (SOA,) if soa else authority)


CASES: list[Case] = [
    # 2.2 schema version
    _c(
        "version",
        "dns-version.cluster.local.",
        "TXT",
        'dns-version.cluster.local. 5 IN TXT "1.1.0"',
    ),
    # 2.3.1 ClusterIP A / AAAA (dual stack, IPv6 only, not allocated yet)
    _c("clusterip-a", "web.shop.svc.cluster.local.", "A", WEB_A),
    _c("clusterip-aaaa-nodata", "web.shop.svc.cluster.local.", "AAAA", soa=True),
    _c("clusterip-mx-nodata", "web.shop.svc.cluster.local.", "MX", soa=True),
    _c(
        "dual-a",
        "dual.shop.svc.cluster.local.",
        "A",
        "dual.shop.svc.cluster.local. 5 IN A 127.10.0.6",
    ),
    _c(
        "dual-aaaa",
        "dual.shop.svc.cluster.local.",
        "AAAA",
        "dual.shop.svc.cluster.local. 5 IN AAAA fd00::6",
    ),
    _c(
        "v6-aaaa",
        "v6.shop.svc.cluster.local.",
        "AAAA",
        "v6.shop.svc.cluster.local. 5 IN AAAA fd00::7",
    ),
    _c("v6-a-nodata", "v6.shop.svc.cluster.local.", "A", soa=True),
    _c("unallocated-nodata", "pending.shop.svc.cluster.local.", "A", soa=True),
    _c(
        "unallocated-no-srv",
        "_http._tcp.pending.shop.svc.cluster.local.",
        "SRV",
        rcode="NXDOMAIN",
        soa=True,
    ),
    # 2.3.2 ClusterIP SRV
    _c(
        "clusterip-srv-tcp",
        "_http._tcp.web.shop.svc.cluster.local.",
        "SRV",
        "_http._tcp.web.shop.svc.cluster.local. 5 IN SRV 0 100 80 web.shop.svc.cluster.local.",
        additional=(WEB_A,),
    ),
    _c(
        "clusterip-srv-udp",
        "_dns._udp.web.shop.svc.cluster.local.",
        "SRV",
        "_dns._udp.web.shop.svc.cluster.local. 5 IN SRV 0 100 53 web.shop.svc.cluster.local.",
        additional=(WEB_A,),
    ),
    _c(
        "dual-srv",
        "_https._tcp.dual.shop.svc.cluster.local.",
        "SRV",
        "_https._tcp.dual.shop.svc.cluster.local. 5 IN SRV 0 100 443 dual.shop.svc.cluster.local.",
        additional=(
            "dual.shop.svc.cluster.local. 5 IN A 127.10.0.6",
            "dual.shop.svc.cluster.local. 5 IN AAAA fd00::6",
        ),
    ),
    _c(
        "srv-wrong-proto",
        "_http._udp.web.shop.svc.cluster.local.",
        "SRV",
        rcode="NXDOMAIN",
        soa=True,
    ),
    _c(
        "srv-unknown-port",
        "_nope._tcp.web.shop.svc.cluster.local.",
        "SRV",
        rcode="NXDOMAIN",
        soa=True,
    ),
    _c("srv-proto-ent", "_tcp.web.shop.svc.cluster.local.", "SRV", soa=True),
    _c("srv-a-nodata", "_http._tcp.web.shop.svc.cluster.local.", "A", soa=True),
    _c(
        "unnamed-port-a",
        "single.shop.svc.cluster.local.",
        "A",
        "single.shop.svc.cluster.local. 5 IN A 127.10.0.8",
    ),
    _c(
        "unnamed-port-no-srv",
        "_tcp.single.shop.svc.cluster.local.",
        "SRV",
        rcode="NXDOMAIN",
        soa=True,
    ),
    # 2.3.3 ClusterIP PTR
    _c(
        "ptr-v4",
        "5.0.10.127.in-addr.arpa.",
        "PTR",
        "5.0.10.127.in-addr.arpa. 5 IN PTR web.shop.svc.cluster.local.",
    ),
    _c(
        "ptr-v6",
        "6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        "PTR",
        "6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 5 IN PTR dual.shop.svc.cluster.local.",
    ),
    # 2.4.1 headless A / AAAA, per-hostname and auto-named endpoints
    _c(
        "headless-a",
        "db.shop.svc.cluster.local.",
        "A",
        "db.shop.svc.cluster.local. 5 IN A 10.1.0.10",
        "db.shop.svc.cluster.local. 5 IN A 10.1.0.11",
        "db.shop.svc.cluster.local. 5 IN A 10.1.0.12",
    ),
    _c("headless-aaaa-nodata", "db.shop.svc.cluster.local.", "AAAA", soa=True),
    _c(
        "headless-hostname",
        "db-0.db.shop.svc.cluster.local.",
        "A",
        "db-0.db.shop.svc.cluster.local. 5 IN A 10.1.0.10",
    ),
    _c(
        "headless-auto-name",
        "10-1-0-12.db.shop.svc.cluster.local.",
        "A",
        "10-1-0-12.db.shop.svc.cluster.local. 5 IN A 10.1.0.12",
    ),
    _c("headless-unknown-host", "db-9.db.shop.svc.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c(
        "headless-aaaa",
        "h6.shop.svc.cluster.local.",
        "AAAA",
        "h6.shop.svc.cluster.local. 5 IN AAAA fd00::20",
        "h6.shop.svc.cluster.local. 5 IN AAAA fd00::21",
    ),
    _c(
        "headless-v6-auto-name",
        "fd00--20.h6.shop.svc.cluster.local.",
        "AAAA",
        "fd00--20.h6.shop.svc.cluster.local. 5 IN AAAA fd00::20",
    ),
    _c(
        "headless-v6-hostname",
        "web-0.h6.shop.svc.cluster.local.",
        "AAAA",
        "web-0.h6.shop.svc.cluster.local. 5 IN AAAA fd00::21",
    ),
    _c("headless-no-endpoints", "nobody.shop.svc.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    # 2.4.2 headless SRV: one per endpoint, targets the endpoint names, addresses in additional
    _c(
        "headless-srv",
        "_pg._tcp.db.shop.svc.cluster.local.",
        "SRV",
        "_pg._tcp.db.shop.svc.cluster.local. 5 IN SRV 0 33 5432 db-0.db.shop.svc.cluster.local.",
        "_pg._tcp.db.shop.svc.cluster.local. 5 IN SRV 0 33 5432 db-1.db.shop.svc.cluster.local.",
        "_pg._tcp.db.shop.svc.cluster.local. 5 IN SRV 0 33 5432 10-1-0-12.db.shop.svc.cluster.local.",
        additional=(
            "db-0.db.shop.svc.cluster.local. 5 IN A 10.1.0.10",
            "db-1.db.shop.svc.cluster.local. 5 IN A 10.1.0.11",
            "10-1-0-12.db.shop.svc.cluster.local. 5 IN A 10.1.0.12",
        ),
    ),
    _c(
        "headless-srv-v6",
        "_http._tcp.h6.shop.svc.cluster.local.",
        "SRV",
        "_http._tcp.h6.shop.svc.cluster.local. 5 IN SRV 0 50 80 fd00--20.h6.shop.svc.cluster.local.",
        "_http._tcp.h6.shop.svc.cluster.local. 5 IN SRV 0 50 80 web-0.h6.shop.svc.cluster.local.",
        additional=(
            "fd00--20.h6.shop.svc.cluster.local. 5 IN AAAA fd00::20",
            "web-0.h6.shop.svc.cluster.local. 5 IN AAAA fd00::21",
        ),
    ),
    # 2.4.3 headless PTR
    _c(
        "headless-ptr",
        "10.0.1.10.in-addr.arpa.",
        "PTR",
        "10.0.1.10.in-addr.arpa. 5 IN PTR db-0.db.shop.svc.cluster.local.",
    ),
    _c(
        "headless-ptr-auto",
        "12.0.1.10.in-addr.arpa.",
        "PTR",
        "12.0.1.10.in-addr.arpa. 5 IN PTR 10-1-0-12.db.shop.svc.cluster.local.",
    ),
    _c("ptr-name-a-nodata", "5.0.10.127.in-addr.arpa.", "A", authority=(REVERSE_SOA,)),
    # 2.5 ExternalName: CNAME for every type, not chased out of the zone; chased inside it
    _c(
        "external-a",
        "ext.shop.svc.cluster.local.",
        "A",
        "ext.shop.svc.cluster.local. 5 IN CNAME example.com.",
    ),
    _c(
        "external-aaaa",
        "ext.shop.svc.cluster.local.",
        "AAAA",
        "ext.shop.svc.cluster.local. 5 IN CNAME example.com.",
    ),
    _c(
        "external-txt",
        "ext.shop.svc.cluster.local.",
        "TXT",
        "ext.shop.svc.cluster.local. 5 IN CNAME example.com.",
    ),
    _c(
        "external-cname",
        "ext.shop.svc.cluster.local.",
        "CNAME",
        "ext.shop.svc.cluster.local. 5 IN CNAME example.com.",
    ),
    _c("external-srv", "_http._tcp.ext.shop.svc.cluster.local.", "SRV", rcode="NXDOMAIN", soa=True),
    _c(
        "external-in-zone",
        "alias.shop.svc.cluster.local.",
        "A",
        "alias.shop.svc.cluster.local. 5 IN CNAME web.shop.svc.cluster.local.",
        WEB_A,
    ),
    _c(
        "external-in-zone-nodata",
        "alias.shop.svc.cluster.local.",
        "AAAA",
        "alias.shop.svc.cluster.local. 5 IN CNAME web.shop.svc.cluster.local.",
        soa=True,
    ),
    _c(
        "external-in-zone-nxdomain",
        "dangling.shop.svc.cluster.local.",
        "A",
        "dangling.shop.svc.cluster.local. 5 IN CNAME gone.shop.svc.cluster.local.",
        rcode="NXDOMAIN",
        soa=True,
    ),
    # names that do not exist, and empty non-terminals (NODATA)
    _c("unknown-service", "gone.shop.svc.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("unknown-namespace", "web.nowhere.svc.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("below-service", "a.b.web.shop.svc.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("unknown-in-zone", "what.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("namespace-ent", "shop.svc.cluster.local.", "A", soa=True),
    _c("empty-namespace-ent", "empty.svc.cluster.local.", "A", soa=True),
    _c("missing-namespace", "nowhere.svc.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("svc-ent", "svc.cluster.local.", "A", soa=True),
    _c("apex-a-nodata", "cluster.local.", "A", soa=True),
    _c("apex-soa", "cluster.local.", "SOA", SOA),
    # pods, insecure mode (the default): any address, in a namespace that exists
    _c(
        "pod-a",
        "10-0-0-1.shop.pod.cluster.local.",
        "A",
        "10-0-0-1.shop.pod.cluster.local. 5 IN A 10.0.0.1",
    ),
    _c("pod-a-aaaa-nodata", "10-0-0-1.shop.pod.cluster.local.", "AAAA", soa=True),
    _c(
        "pod-aaaa",
        "fd00--1.shop.pod.cluster.local.",
        "AAAA",
        "fd00--1.shop.pod.cluster.local. 5 IN AAAA fd00::1",
    ),
    _c(
        "pod-empty-namespace",
        "10-0-0-1.empty.pod.cluster.local.",
        "A",
        "10-0-0-1.empty.pod.cluster.local. 5 IN A 10.0.0.1",
    ),
    _c(
        "pod-missing-namespace",
        "10-0-0-1.nowhere.pod.cluster.local.",
        "A",
        rcode="NXDOMAIN",
        soa=True,
    ),
    _c("pod-not-an-address", "web.shop.pod.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("pod-namespace-ent", "shop.pod.cluster.local.", "A", soa=True),
    _c("pod-ent", "pod.cluster.local.", "A", soa=True),
]


VERIFIED = DnsConfig(
    version=7,
    pod_mode="verified",
    namespaces=("shop", "other"),
    pods=(DnsPod(namespace="shop", name="p1", ips=("10.2.0.1", "fd00::2:1")),),
)
VERIFIED_CASES: list[Case] = [
    _c(
        "verified-pod",
        "10-2-0-1.shop.pod.cluster.local.",
        "A",
        "10-2-0-1.shop.pod.cluster.local. 5 IN A 10.2.0.1",
    ),
    _c(
        "verified-pod-v6",
        "fd00--2-1.shop.pod.cluster.local.",
        "AAAA",
        "fd00--2-1.shop.pod.cluster.local. 5 IN AAAA fd00::2:1",
    ),
    _c(
        "verified-wrong-namespace",
        "10-2-0-1.other.pod.cluster.local.",
        "A",
        rcode="NXDOMAIN",
        soa=True,
    ),
    _c("verified-no-pod", "10-9-9-9.shop.pod.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("verified-namespace-ent", "other.pod.cluster.local.", "A", soa=True),
]

DISABLED = DnsConfig(version=7, pod_mode="disabled", namespaces=("shop",))
DISABLED_CASES: list[Case] = [
    _c("disabled-pod", "10-0-0-1.shop.pod.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("disabled-namespace", "shop.pod.cluster.local.", "A", rcode="NXDOMAIN", soa=True),
    _c("disabled-svc-ent", "shop.svc.cluster.local.", "A", soa=True),
]

TABLES: list[tuple[DnsConfig, Case]] = (
    [(CLUSTER, c) for c in CASES]
    + [(VERIFIED, c) for c in VERIFIED_CASES]
    + [(DISABLED, c) for c in DISABLED_CASES]
)


def normalize(lines: Iterable[object]) -> list[str]:
    return sorted(" ".join(str(line).lower().split()) for line in lines)


def rrset_lines(section: list[dns.rrset.RRset]) -> list[str]:
    out: list[str] = []
    for rrset in section:
        out.extend(rrset.to_text().splitlines())
    return normalize(out)


def check(case: Case, reply: dns.message.Message) -> None:
    """Assert ``reply`` is exactly the answer the case expects."""
    assert dns.rcode.to_text(reply.rcode()) == case.rcode, reply.to_text()
    assert reply.flags & dns.flags.AA, reply.to_text()
    assert rrset_lines(reply.answer) == normalize(case.answer), reply.to_text()
    assert rrset_lines(reply.additional) == normalize(case.additional), reply.to_text()
    assert rrset_lines(reply.authority) == normalize(case.authority), reply.to_text()


def query(case: Case, *, use_edns: bool | int = False) -> dns.message.QueryMessage:
    return dns.message.make_query(
        case.qname, dns.rdatatype.from_text(case.qtype), use_edns=use_edns
    )
