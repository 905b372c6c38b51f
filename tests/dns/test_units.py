"""Small pure parts: names, the forward cache (virtual clock), the wire cache, resolv.conf,
and the rule that the cores never import trio."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dnslib import QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from mesh.dns import names, resolvconf
from mesh.dns.forward_cache import ForwardCache, cache_ttl
from mesh.dns.packet import name_key
from mesh.dns.wire_cache import WireCache


@pytest.mark.parametrize(
    ("ip", "label"),
    [
        ("10.0.0.1", "10-0-0-1"),
        ("fd00::1", "fd00--1"),
        ("fd00::", "fd00--0"),
        ("2001:db8::a:1", "2001-db8--a-1"),
    ],
)
def test_endpoint_labels_round_trip(ip: str, label: str) -> None:
    assert names.endpoint_label(ip) == label
    assert names.pod_label_ip(label) == ip


@pytest.mark.parametrize("label", ["web", "10-0-0", "10-0-0-1-2", "1-2-3-999", ""])
def test_pod_labels_that_are_not_addresses(label: str) -> None:
    assert names.pod_label_ip(label) is None


def test_reverse_names() -> None:
    assert names.reverse_name("10.3.0.1") == "1.0.3.10.in-addr.arpa."
    assert names.reverse_name("2001:db8::1") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
    )


def test_name_keys() -> None:
    assert name_key(DNSLabel("Web.Shop.svc.Cluster.Local")) == "web.shop.svc.cluster.local."
    assert name_key(DNSLabel(".")) == "."
    assert name_key(DNSLabel([b"a.b", b"cluster", b"local"])) is None  # a dot inside a label
    assert name_key(DNSLabel([b"caf\xc3\xa9", b"local"])) is None


def answer(name: str, ttl: int, rcode: int = 0, tc: int = 0) -> DNSRecord:
    r = DNSRecord(DNSHeader(qr=1, rcode=rcode, tc=tc), [DNSQuestion(name)])
    r.add_answer(RR(name, QTYPE.A, ttl=ttl, rdata=A("192.0.2.1")))
    return r


def negative(name: str, soa_ttl: int, minimum: int, rcode: int = RCODE.NXDOMAIN) -> DNSRecord:
    r = DNSRecord(DNSHeader(qr=1, rcode=rcode), [DNSQuestion(name)])
    soa = SOA("ns.example.", "host.example.", (1, 2, 3, 4, minimum))
    r.add_auth(RR("example.", QTYPE.SOA, ttl=soa_ttl, rdata=soa))
    return r


def test_cache_ttl_rules() -> None:
    caps = {"max_ttl": 3600, "max_negative_ttl": 300}
    assert cache_ttl(answer("a.example.", 120), **caps) == 120
    assert cache_ttl(answer("a.example.", 86400), **caps) == 3600
    assert cache_ttl(answer("a.example.", 0), **caps) is None
    assert cache_ttl(answer("a.example.", 60, tc=1), **caps) is None
    assert cache_ttl(answer("a.example.", 60, rcode=RCODE.SERVFAIL), **caps) is None
    assert cache_ttl(negative("n.example.", 3600, 30), **caps) == 30
    assert cache_ttl(negative("n.example.", 10, 30), **caps) == 10
    assert cache_ttl(negative("n.example.", 9000, 9000), **caps) == 300
    assert cache_ttl(negative("n.example.", 60, 60, rcode=RCODE.NOERROR), **caps) == 60  # NODATA
    no_soa = DNSRecord(DNSHeader(qr=1, rcode=RCODE.NXDOMAIN), [DNSQuestion("n.example.")])
    assert cache_ttl(no_soa, **caps) is None


def test_forward_cache_expiry_age_and_bound() -> None:
    cache = ForwardCache(max_entries=2)
    key = ("a.example.", 1, 1)
    assert cache.put(key, answer("a.example.", 60), now=100.0)
    hit = cache.get(key, now=130.5)
    assert hit is not None and hit[1] == 30
    assert cache.get(key, now=160.0) is None  # expired, and dropped
    assert len(cache) == 0
    for i in range(3):
        cache.put((f"{i}.example.", 1, 1), answer(f"{i}.example.", 60), now=0.0)
    assert len(cache) == 2 and cache.get(("0.example.", 1, 1), now=1.0) is None
    assert not cache.put(key, answer("a.example.", 60, rcode=RCODE.SERVFAIL), now=0.0)


def test_wire_cache_is_bounded() -> None:
    cache = WireCache(max_entries=3)
    for i in range(3):
        cache.put(bytes([i]), b"reply", ("A", "NOERROR"))
    assert len(cache) == 3 and cache.get(b"\x00") == (b"reply", ("A", "NOERROR"))
    cache.put(b"\x09", b"other", ("A", "NXDOMAIN"))
    assert len(cache) == 1 and cache.get(b"\x00") is None


RESOLV = """
# generated
nameserver 127.0.0.53
nameserver 10.0.0.2 ; trailing comment
nameserver not-an-ip
search svc.cluster.local
nameserver ::1
"""


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        (("127.0.0.1", 5353), [("127.0.0.53", 53), ("10.0.0.2", 53), ("::1", 53)]),
        (("127.0.0.53", 53), [("10.0.0.2", 53), ("::1", 53)]),  # ourselves
        (("0.0.0.0", 53), [("10.0.0.2", 53)]),  # every loopback nameserver is ourselves
        (("127.0.0.1", 53), [("127.0.0.53", 53), ("10.0.0.2", 53), ("::1", 53)]),
    ],
)
def test_resolv_conf_upstreams(listen: tuple[str, int], expected: list[tuple[str, int]]) -> None:
    assert resolvconf.upstreams(RESOLV, listen) == expected


def test_cores_do_not_import_trio() -> None:
    code = (
        "import sys\n"
        "import mesh.dns.responder, mesh.dns.zone, mesh.dns.answer, mesh.dns.packet\n"
        "import mesh.dns.wire_cache, mesh.dns.forward_cache, mesh.dns.resolvconf\n"
        "import mesh.dns.metrics, mesh.control.translate.dns\n"
        "mods = [m for m in sys.modules if m == 'trio' or m.startswith('trio.')]\n"
        "assert not mods, mods\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
