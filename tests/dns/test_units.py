"""Small pure parts: names, the wire cache, resolv.conf,
and the rule that the cores never import trio."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dnslib import DNSLabel

from mesh.dns import names, resolvconf
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
        "import mesh.dns.layout, mesh.dns.pool, mesh.dns.chase\n"
        "import mesh.dns.metrics, mesh.control.translate.dns\n"
        "mods = [m for m in sys.modules if m == 'trio' or m.startswith('trio.')]\n"
        "assert not mods, mods\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
